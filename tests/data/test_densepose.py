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
    """The TorchScript export's contract with a tiny real network: a float BGR (H, W, 3) image in (uint8 is
    refused, as the export's bilinear resize on CUDA refuses it); boxes, scores and
    per-box chart outputs (coarse 2, fine 25, U 25, V 25 at S x S) out. Two detections: a small confident one
    and the large person, whose box is the bright region of the frame."""

    def __init__(self, s: int = 8):
        super().__init__()
        self.s = s
        self.head = torch.nn.Conv2d(3, 2 + 25 * 3, 1)

    def _one(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        if not img.is_floating_point():  # the export resizes bilinearly first: CUDA refuses uint8 there
            raise RuntimeError("\"upsample_bilinear2d_out_frame\" not implemented for 'Byte'")
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
    from dreampose.config import Params
    from dreampose.stages import densepose

    monkeypatch.setenv("DREAMPOSE_NO_MLFLOW", "1")
    ws = make_workspace(tmp_path, {"test": {"c": 2}})
    save_module(tmp_path / "m.pt")
    params = Params(densepose={"backend": "torchscript", "weights": "m.pt"}, runtime={"device": "cpu"})
    summary = densepose.run(params, ws)
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


# ---------------------------------------------------------------- the export's input contract


def _standin(path, dtype=torch.float32):
    from tests.rehearsal.world import DensePoseStandIn

    torch.jit.script(DensePoseStandIn().to(dtype).eval()).save(str(path))
    return path


def _person_frames(n=3, height=40, width=32):
    """Near-white frames with a dark figure whose box moves with t (what the rehearsal stand-in detects)."""
    frames = np.full((n, height, width, 3), 245, np.uint8)
    for t in range(n):
        frames[t, 5 : height - 5, 4 + t : 16 + t] = (20 + t, 60, 200)  # RGB: B differs from R
    return frames


def test_torchscript_backend_feeds_the_export_what_cuda_accepts(tmp_path):
    """The export resizes its input with bilinear F.interpolate, which on CUDA refuses uint8: the stand-in refuses
    it on every device. Before, the backend passed uint8 BGR on the model's device (the first frame raised)."""
    frames = _person_frames()
    backend = TorchScriptBackend(_standin(tmp_path / "dp.pt"), device="cpu")
    results = backend.predict(frames, None)
    assert [r.box for r in results] == [(4.0 + t, 5.0, 16.0 + t, 35.0) for t in range(3)]
    assert all(r.person_found and r.score == pytest.approx(0.99) for r in results)
    with pytest.raises(torch.jit.Error, match="not implemented for 'Byte'"):  # what the old code passed
        backend.module(torch.from_numpy(np.ascontiguousarray(frames[0, ..., ::-1])))
    x = backend.to_model_input(frames)
    assert x.dtype == torch.float32 and x.device == backend.device and x.shape == frames.shape
    np.testing.assert_array_equal(x.numpy(), frames[..., ::-1].astype(np.float32))  # BGR, 0..255, not rescaled


def test_torchscript_backend_runs_an_fp16_export_in_its_dtype(tmp_path):
    """An fp16 export gets fp16 images on CUDA (its convolutions refuse float32) and runs as fp32 on the CPU,
    as the export's own runner does; the results are the fp32 export's."""
    from dreampose.data.densepose.torchscript import input_dtype, module_dtype

    assert input_dtype(torch.float16, torch.device("cuda")) == torch.float16
    assert input_dtype(torch.bfloat16, torch.device("cuda:1")) == torch.bfloat16
    assert input_dtype(torch.float16, torch.device("cpu")) == torch.float32
    assert input_dtype(torch.float32, torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="floating dtype"):
        input_dtype(torch.int8, torch.device("cpu"))
    half = TorchScriptBackend(_standin(tmp_path / "h.pt", torch.float16), device="cpu")
    assert half.dtype == torch.float32 and module_dtype(half.module) == torch.float32
    full = TorchScriptBackend(_standin(tmp_path / "f.pt"), device="cpu")
    frames = _person_frames()
    for a, b in zip(half.predict(frames), full.predict(frames), strict=True):
        np.testing.assert_array_equal(a.iuv, b.iuv)
        assert a.box == b.box
    standin = torch.jit.load(str(tmp_path / "h.pt"))  # the fp16 module refuses a float32 image
    with pytest.raises(torch.jit.Error, match="Input type and weight type"):
        standin(torch.zeros(8, 8, 3))


def test_catalog_photo_densepose_goes_through_the_export_contract(tmp_path):
    """The closing catalog item runs DensePose on its photo through the same backend (catalog.photo_pose)."""
    from dreampose import catalog
    from dreampose.config import parse_params

    (tmp_path / "models").mkdir()
    _standin(tmp_path / "models/dp.pt")
    params = parse_params({"densepose": {"backend": "torchscript", "weights": "models/dp.pt"}})
    pixels = _person_frames(1, 64, 48)[0]
    photo = catalog.Photo(pixels=pixels, source="photo.png", original_size=(48, 64), original_mode="RGB")
    seq = catalog.PoseSequence(iuv=np.zeros((1, 64, 48, 3), np.uint8), frame_ids=[0], source="test")
    iuv, source = catalog.photo_pose(photo, seq, params, tmp_path)
    assert source == "densepose" and iuv.shape == (64, 48, 3)
    body = iuv[..., 0] > 0
    assert body[5:59, 4:16].mean() > 0.9 and not body[:, 20:].any()


# ---------------------------------------------------------------- decoding, model and writing overlap


def _reference_run(backend, frames_dir, index, batch_size, out):
    """The stage as it was: per video, per batch, decode -> predict -> collect; the archive at the video's end."""
    from dreampose.data.densepose.run import _load_frames, save_npz

    records = []
    for (split, video), rows in index.groupby(["split", "video"], sort=True):
        iuvs = []
        for s in range(0, len(rows), batch_size):
            batch = rows.iloc[s : s + batch_size]
            results = backend.predict(_load_frames(frames_dir, batch), batch)
            for r, res in zip(batch.itertuples(index=False), results, strict=True):
                iuvs.append(res.iuv)
                records.append((video, split, int(r.frame), res.person_found, res.score, *res.box))
        (out / split).mkdir(parents=True, exist_ok=True)
        save_npz(out / split / f"{video}.npz", iuv=np.stack(iuvs))
    return records


def _densepose_threads():
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("densepose-")]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_overlapped_stage_writes_the_same_bytes(tmp_path, workers):
    from dreampose.data.densepose.run import read_frames_index

    ws = make_workspace(tmp_path, {"train": {"a": 5, "b": 3}, "test": {"c": 4}})
    weights = save_module(tmp_path / "m.pt")
    cfg = DensePoseConfig(backend="torchscript", weights=str(weights), batch_size=2)
    ref = _reference_run(
        TorchScriptBackend(weights, cfg.min_score, "cpu"),
        ws / "data/frames",
        read_frames_index(ws / "data/frames"),
        2,
        tmp_path / "ref",
    )
    out = tmp_path / "out"
    summary = run_densepose(cfg, ws / "data/frames", ws / "data/raw", out, device="cpu", workers=workers)
    assert summary["frames"] == 12
    for split, video in (("train", "a"), ("train", "b"), ("test", "c")):
        assert (out / split / f"{video}.npz").read_bytes() == (tmp_path / "ref" / split / f"{video}.npz").read_bytes()
    idx = pd.read_parquet(out / "index.parquet")
    got = [(r.video, r.split, r.frame, r.person_found, r.score, r.box_x0, r.box_y0, r.box_x1, r.box_y1)
           for r in idx.itertuples(index=False)]  # fmt: skip
    ref_sorted = sorted(ref, key=lambda r: (r[1], r[0], r[2]))
    np.testing.assert_array_equal(np.array(got, dtype=object)[:, :4], np.array(ref_sorted, dtype=object)[:, :4])
    np.testing.assert_allclose(
        np.array([g[4:] for g in got], float), np.array([r[4:] for r in ref_sorted], float).astype(np.float32)
    )
    assert not _densepose_threads()


def test_overlapped_stage_failures_stop_its_threads_and_leave_nothing(tmp_path):
    from dreampose.data.densepose.run import _densepose_videos, read_frames_index

    ws = make_workspace(tmp_path, {"train": {"a": 4, "b": 4}})
    weights = save_module(tmp_path / "m.pt")
    cfg = DensePoseConfig(backend="torchscript", weights=str(weights), batch_size=2)
    (ws / "data/frames/train/b/00003.jpg").unlink()  # a frame that cannot be decoded
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"00003\.jpg"):
        run_densepose(cfg, ws / "data/frames", ws / "data/raw", out, workers=2)
    assert not out.exists() and not _densepose_threads()
    # A failing write (the archive's directory is a file) surfaces in the caller.
    index = read_frames_index(ws / "data/frames")
    (tmp_path / "blocked").write_text("")
    videos = [(index[index.video == "a"], tmp_path / "blocked" / "a.npz")]
    backend = TorchScriptBackend(weights, device="cpu")
    with pytest.raises((FileExistsError, NotADirectoryError)):
        _densepose_videos(backend, cfg, ws / "data/frames", videos, H, W, workers=2)
    assert not _densepose_threads()
    # A failure while turning outputs into IUV (on the results thread) surfaces too.
    wrong = SyntheticBackend(ws / "data/raw", H + 1, W)
    with pytest.raises(ValueError, match=r"IUV shape \(17, 12, 3\)"):
        run_densepose(DensePoseConfig(), ws / "data/frames", ws / "data/raw", out, backend=wrong, workers=2)
    assert not out.exists() and not _densepose_threads()
    with pytest.raises(ValueError, match="workers must be >= 0"):
        run_densepose(cfg, ws / "data/frames", ws / "data/raw", out, workers=-1)
