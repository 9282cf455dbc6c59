import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dreampose.config import DensePoseConfig
from dreampose.data.densepose import run_densepose
from dreampose.data.densepose.base import DensePoseBackend
from dreampose.data.densepose.synthetic import SyntheticBackend
from dreampose.data.densepose.torchscript import TorchScriptBackend

H, W = 16, 12


def synthetic_iuv(t: int, height: int = H, width: int = W, person: bool = True) -> np.ndarray:
    """A moving box-shaped body: part and position change with t, U ramps across x, V down y."""
    iuv = np.zeros((height, width, 3), np.uint8)
    if not person:
        return iuv
    x0 = 1 + t % 5
    ys, xs = np.mgrid[2 : height - 2, x0 : x0 + width // 2]
    iuv[ys, xs, 0] = 1 + t % 24
    iuv[ys, xs, 1] = (xs * 255 // (width - 1)).astype(np.uint8)
    iuv[ys, xs, 2] = (ys * 255 // (height - 1)).astype(np.uint8)
    return iuv


def iuv_to_rgb(iuv: np.ndarray) -> np.ndarray:
    """A frame whose colour is a function of its IUV (R = part, G = u, B = v)."""
    return np.stack([iuv[..., 0] * 10, iuv[..., 1], iuv[..., 2]], -1).astype(np.uint8)


def make_workspace(root, videos: dict[str, dict[str, int]], empty: frozenset = frozenset(), ext: str = "jpg"):
    """``data/raw/iuv`` + ``data/frames`` (+ index) for ``{split: {video: num_frames}}``; ``empty`` = (video, frame)s
    without a person ((video, None) for the whole video)."""
    rows = []
    for split, vids in videos.items():
        for video, n in vids.items():
            seq = np.stack(
                [synthetic_iuv(t, person=(video, t) not in empty and (video, None) not in empty) for t in range(n)]
            )
            (root / "data/raw/iuv" / split).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(root / "data/raw/iuv" / split / f"{video}.npz", iuv=seq)
            d = root / "data/frames" / split / video
            d.mkdir(parents=True, exist_ok=True)
            for t in range(n):
                rel = f"data/frames/{split}/{video}/{t:05d}.{ext}"
                Image.fromarray(iuv_to_rgb(seq[t])).save(root / rel)
                rows.append(
                    dict(
                        video=video, split=split, frame=t, source_frame=t, timestamp=t / 16, path=rel, width=W, height=H
                    )
                )
    pd.DataFrame(rows).to_parquet(root / "data/frames/index.parquet")
    return root


class ChartModule(torch.nn.Module):
    """The TorchScript export's contract with a tiny real network: uint8 BGR (H, W, 3) in; boxes, scores and
    per-box chart outputs (coarse 2, fine 25, U 25, V 25 at S x S) out. Two detections: a small confident one
    and the large person, whose box is the bright region of the frame."""

    def __init__(self, s: int = 8):
        super().__init__()
        self.s = s
        self.head = torch.nn.Conv2d(3, 2 + 25 * 3, 1)

    def _one(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        x = img.permute(2, 0, 1).float()[None] / 255.0
        mask = x.sum(1)[0] > 0
        ys = torch.nonzero(mask.any(1)).flatten()
        xs = torch.nonzero(mask.any(0)).flatten()
        big = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        small = torch.tensor([0.0, 0.0, 2.0, 2.0])
        boxes = torch.stack([small, big])
        crop = x[:, :, int(big[1]) : int(big[3]), int(big[0]) : int(big[2])]
        feats = self.head(torch.nn.functional.interpolate(crop, size=(self.s, self.s), mode="bilinear"))
        coarse = torch.cat([torch.zeros(1, 1, self.s, self.s), torch.ones(1, 1, self.s, self.s)], 1)
        out = feats.repeat(2, 1, 1, 1)
        return {
            "pred_boxes": boxes,
            "scores": torch.tensor([0.99, 0.9]),
            "pred_densepose_coarse_segm": coarse.repeat(2, 1, 1, 1),
            "pred_densepose_fine_segm": out[:, 2:27],
            "pred_densepose_u": torch.sigmoid(out[:, 27:52]),
            "pred_densepose_v": torch.sigmoid(out[:, 52:77]),
        }

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._one(img)

    @torch.jit.export
    def forward_batch(self, imgs: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self._one(i) for i in imgs]


def save_module(path, batched=True):
    torch.manual_seed(0)
    inner = ChartModule()
    with torch.no_grad():
        inner.head.bias[2] = -100.0  # fine-segmentation background channel never wins inside the person

    class Single(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.inner(img)

    torch.jit.script((inner if batched else Single()).eval()).save(str(path))
    return path


def _frames():
    return np.stack([iuv_to_rgb(synthetic_iuv(t)) for t in range(3)])


def test_torchscript_backend_batched_and_single_agree(tmp_path):
    frames = _frames()
    b = TorchScriptBackend(save_module(tmp_path / "b.pt"), min_score=0.5, device="auto")
    s = TorchScriptBackend(save_module(tmp_path / "s.pt", batched=False), min_score=0.5, device="cpu")
    assert isinstance(b, DensePoseBackend) and b.batched and not s.batched
    rb, rs = b.predict(frames, None), s.predict(frames, None)
    assert len(rb) == 3
    for t, (x, y) in enumerate(zip(rb, rs, strict=True)):
        np.testing.assert_array_equal(x.iuv, y.iuv)
        assert x.person_found and x.score == pytest.approx(0.9)  # the large person, not the first detection
        assert x.box == tuple(float(v) for v in synthetic_iuv_box(t))
        body = synthetic_iuv(t)[..., 0] > 0
        assert x.iuv.shape == (H, W, 3)
        assert (x.iuv[..., 0] > 0)[~body].sum() == 0  # nothing pasted outside the person's box
        assert (x.iuv[..., 0] > 0)[body].all()


def synthetic_iuv_box(t):
    x0 = 1 + t % 5
    return (x0, 2, x0 + W // 2, H - 2)


def test_torchscript_min_score_and_missing_weights(tmp_path):
    b = TorchScriptBackend(save_module(tmp_path / "b.pt"), min_score=0.999)
    r = b.predict(_frames()[:1], None)[0]
    assert not r.person_found and r.iuv.sum() == 0
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*DensePose-TorchScript"):
        TorchScriptBackend(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a module")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        TorchScriptBackend(tmp_path / "junk.pt")


def test_detectron2_backend_explains_how_to_install():
    from dreampose.data.densepose.detectron2 import Detectron2Backend

    with pytest.raises(ValueError, match="DensePose backends"):
        Detectron2Backend("cfg.yaml", "w.pkl")


def test_run_densepose_synthetic_writes_aligned_archives_and_flags_empty(tmp_path, caplog):
    ws = make_workspace(tmp_path, {"train": {"a": 6, "b": 3}}, empty=frozenset({("a", 2), ("b", None)}))
    cfg = DensePoseConfig(backend="synthetic", batch_size=4)
    summary = run_densepose(cfg, ws / "data/frames", ws / "data/raw", ws / "data/densepose")
    assert summary["frames"] == 9 and summary["frames_without_person"] == 4
    assert summary["videos_without_person"] == ["train/b"] and "b" in caplog.text
    with np.load(ws / "data/densepose/train/a.npz") as z:
        iuv = z["iuv"]
    assert iuv.shape == (6, H, W, 3) and iuv.dtype == np.uint8
    np.testing.assert_array_equal(iuv[4], synthetic_iuv(4))
    assert iuv[2].sum() == 0
    idx = pd.read_parquet(ws / "data/densepose/index.parquet")
    assert list(idx.columns) == [
        "video",
        "split",
        "frame",
        "person_found",
        "score",
        "box_x0",
        "box_y0",
        "box_x1",
        "box_y1",
    ]
    a = idx[idx.video == "a"].set_index("frame")
    assert a.person_found.tolist() == [True, True, False, True, True, True]
    assert tuple(a.loc[1, ["box_x0", "box_y0", "box_x1", "box_y1"]]) == synthetic_iuv_box(1)
    assert np.isnan(a.loc[2, "box_x0"])
    assert not list(ws.glob("data/.densepose*"))  # no temp dirs left


def test_run_densepose_torchscript_backend_end_to_end(tmp_path):
    ws = make_workspace(tmp_path, {"test": {"c": 3}})
    cfg = DensePoseConfig(backend="torchscript", weights=str(save_module(tmp_path / "m.pt")), batch_size=2)
    summary = run_densepose(cfg, ws / "data/frames", ws / "data/raw", ws / "data/densepose")
    assert summary["backend"] == "torchscript" and summary["frames_with_person"] == 3
    assert summary["frames_per_s"] > 0


def test_run_densepose_bad_inputs(tmp_path):
    ws = make_workspace(tmp_path, {"train": {"a": 2}}, empty=frozenset({("a", None)}))
    out = ws / "data/densepose"
    with pytest.raises(ValueError, match="no person found in any of 2 frames"):
        run_densepose(DensePoseConfig(), ws / "data/frames", ws / "data/raw", out)
    assert not out.exists()
    (ws / "data/raw/iuv/train/a.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"a\.npz: corrupt IUV archive"):
        run_densepose(DensePoseConfig(), ws / "data/frames", ws / "data/raw", out)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        run_densepose(
            DensePoseConfig(backend="torchscript", weights=str(tmp_path / "missing.pt")),
            ws / "data/frames",
            ws / "data/raw",
            out,
        )
    with pytest.raises(FileNotFoundError, match="dreampose frames"):
        run_densepose(DensePoseConfig(), tmp_path / "nowhere", ws / "data/raw", out)


def test_synthetic_backend_rejects_out_of_range_source_frame(tmp_path):
    ws = make_workspace(tmp_path, {"train": {"a": 2}})
    rows = pd.DataFrame([dict(video="a", split="train", frame=0, source_frame=5)])
    with pytest.raises(ValueError, match="source frame 5 out of range"):
        SyntheticBackend(ws / "data/raw", H, W).predict(np.zeros((1, 0, 0, 3), np.uint8), rows)


def test_runtime_device_reaches_the_densepose_stage(tmp_path, monkeypatch):
    from dreampose import stages
    from dreampose.config import Params

    monkeypatch.setenv("DREAMPOSE_NO_MLFLOW", "1")
    ws = make_workspace(tmp_path, {"test": {"c": 2}})
    save_module(tmp_path / "m.pt")
    params = Params(densepose={"backend": "torchscript", "weights": "m.pt"}, runtime={"device": "cpu"})
    summary = stages.densepose(params, ws)
    assert summary["device"] == "cpu" and summary["frames_with_person"] == 2
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"runtime\.device: 'cuda' requested"):
            run_densepose(DensePoseConfig(backend="torchscript", weights=str(tmp_path / "m.pt")),
                          ws / "data/frames", ws / "data/raw", tmp_path / "out", device="cuda")  # fmt: skip


def test_rooted_config_takes_weight_paths_from_the_workspace(tmp_path):
    from dreampose.config import DensePoseConfig
    from dreampose.data.densepose.run import rooted_config

    cfg = DensePoseConfig(backend="torchscript", weights="models/dp.pt")
    got = rooted_config(cfg, tmp_path)
    assert got.weights == str(tmp_path / "models/dp.pt")
    assert got.detectron2_config == str(tmp_path / cfg.detectron2_config)
    assert cfg.weights == "models/dp.pt"  # the given config is not changed
