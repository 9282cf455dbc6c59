import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dreampose.config import DensePoseConfig, FramesConfig, ManifestConfig, SyntheticConfig
from dreampose.data.dataset import PairDataset, color_change, load_pose_sequence, recolor
from dreampose.data.densepose import run_densepose
from dreampose.data.densepose.iuv import pose_window
from dreampose.data.manifest import build_manifests
from tests.data.test_densepose import H, W, make_workspace

CFG = ManifestConfig(pairs_per_video=16, test_num_targets=2, test_min_gap=4, subject_frames=1)


def _workspace(tmp_path, ext="jpg"):
    ws = make_workspace(tmp_path, {"train": {"a": 12}, "test": {"t0": 8}}, ext=ext)
    run_densepose(DensePoseConfig(), ws / "data/frames", ws / "data/raw", ws / "data/densepose")
    build_manifests(CFG, ws / "data/frames", ws / "data/densepose", ws / "data/manifests")
    return ws


def test_items_and_five_different_poses_for_a_moving_subject(tmp_path):
    ws = _workspace(tmp_path)
    ds = PairDataset(ws / "data/manifests/train.parquet", ws, H, W)
    rows = pd.read_parquet(ws / "data/manifests/train.parquet")
    i = int(np.flatnonzero(rows.target_frame.between(2, 9))[0])
    item = ds[i]
    assert item["input_pixels"].shape == item["target_pixels"].shape == (3, H, W)
    assert item["input_pixels"].dtype == torch.float32
    assert item["target_pixels"].min() >= -1 and item["target_pixels"].max() <= 1
    assert item["poses"].shape == (10, H, W) and item["subject_id"] == "a"
    poses = item["poses"].view(5, 2, H, W)
    for p in range(5):
        for q in range(p + 1, 5):
            assert not torch.equal(poses[p], poses[q]), (p, q)
    with np.load(ws / "data/densepose/train/a.npz") as z:
        torch.testing.assert_close(item["poses"], pose_window(z["iuv"], int(rows.target_frame[i])))


def test_crop_augmentation_keeps_image_and_pose_aligned(tmp_path):
    # Lossless frames whose green channel is U: after the crop the pose must still predict the pixels.
    ws = _workspace(tmp_path, ext="png")
    ds = PairDataset(ws / "data/manifests/train.parquet", ws, H, W, augment=(0.5, 0.7), seed=3)
    plain = PairDataset(ws / "data/manifests/train.parquet", ws, H, W)
    checked = 0
    for i in range(8):
        item, ref = ds[i], plain[i]
        assert not torch.equal(item["target_pixels"], ref["target_pixels"])  # it did crop
        g = (item["target_pixels"][1] + 1) / 2  # u in [0, 1] on the body
        red = (item["target_pixels"][0] + 1) / 2 * 255  # part * 10 on the body
        u_pose = item["poses"][4]  # u of the target frame (window centre)
        body_img, body_pose = red > 5, u_pose > 0
        # the masks agree up to bilinear blending at the border
        assert (body_img ^ body_pose).float().mean() < 0.15
        inner = body_img & body_pose
        # away from the silhouette border, where bilinear (image) and nearest (pose) resampling differ
        core = F.max_pool2d((~inner).float()[None, None], 3, 1, 1)[0, 0] == 0
        assert core.sum() > 20
        err = (g - (u_pose - 0.1) / 0.9).abs()
        assert err[core].mean() < 0.05
        # control: the uncropped pose against the cropped image is far off
        err_ref = (g - (ref["poses"][4] - 0.1) / 0.9).abs()
        assert err_ref[core].mean() > 3 * err[core].mean() + 0.05
        checked += 1
    assert checked == 8


def test_load_pose_sequence_and_bad_inputs(tmp_path):
    ws = _workspace(tmp_path)
    seq = load_pose_sequence(ws / "data/densepose/test/t0.npz", [0, 3, 7])
    assert seq.shape == (3, 10, H, W)
    with np.load(ws / "data/densepose/test/t0.npz") as z:
        torch.testing.assert_close(seq[1], pose_window(z["iuv"], 3))
    with pytest.raises(FileNotFoundError, match="dreampose manifest"):
        PairDataset(ws / "data/manifests/none.parquet", ws, H, W)
    (ws / "data/frames/train/a/00000.jpg").unlink()
    ds = PairDataset(ws / "data/manifests/train.parquet", ws, H, W)
    rows = pd.read_parquet(ws / "data/manifests/train.parquet")
    bad = int(np.flatnonzero((rows.target_frame == 0) | (rows.input_frame == 0))[0])
    with pytest.raises(FileNotFoundError, match=r"00000\.jpg"):
        ds[bad]


@pytest.mark.slow
def test_integration_with_generator_and_frames_stage(tmp_path):
    """Real synthetic videos -> frames (another geometry) -> densepose -> manifests -> dataset."""
    from dreampose.data.frames import extract_frames
    from dreampose.data.synthetic import generate_dataset

    syn = SyntheticConfig(num_train_subjects=1, num_test_subjects=1, frames_per_video=12, height=40, width=32)
    generate_dataset(syn, tmp_path / "data/raw", seed=0)
    extract_frames(FramesConfig(height=24, width=16, workers=1), tmp_path / "data/raw/videos", tmp_path / "data/frames")
    summary = run_densepose(
        DensePoseConfig(), tmp_path / "data/frames", tmp_path / "data/raw", tmp_path / "data/densepose"
    )
    assert summary["frames"] == 24 and summary["frames_with_person"] > 0
    cfg = ManifestConfig(pairs_per_video=4, test_num_targets=2, test_min_gap=4)
    counts = build_manifests(cfg, tmp_path / "data/frames", tmp_path / "data/densepose", tmp_path / "data/manifests")
    assert counts["train_rows"] == 4 and counts["test_rows"] == 2
    ds = PairDataset(tmp_path / "data/manifests/train.parquet", tmp_path, 24, 16)
    item = ds[0]
    assert item["poses"].shape == (10, 24, 16)
    # The IUV body mask marks the pixels that differ from the background (pixel alignment after resize+crop).
    img = (item["target_pixels"] + 1) / 2
    body = item["poses"][4] > 0
    bg = img[:, ~body].median(dim=1).values[:, None, None]
    dev = (img - bg).abs().sum(0)
    shifted = torch.roll(body, shifts=4, dims=1)
    assert dev[body].mean() > dev[~body].mean() + 0.05
    assert dev[body].mean() > dev[shifted & ~body].mean()


def test_crops_are_a_pure_function_of_seed_key_index_and_draw(tmp_path):
    from tests.training.tiny import H as TH
    from tests.training.tiny import W as TW
    from tests.training.tiny import write_workspace

    manifest = write_workspace(tmp_path)

    def crops(key: int, indices: list[int], ds: PairDataset | None = None) -> list[torch.Tensor]:
        ds = ds or PairDataset(manifest, tmp_path, TH, TW, augment=(0.4, 0.7), seed=1)
        ds.set_augment_key(key)
        return [ds[i]["target_pixels"] for i in indices]

    a = crops(7, [0, 1, 0])
    warm = PairDataset(manifest, tmp_path, TH, TW, augment=(0.4, 0.7), seed=1)
    crops(3, [0, 1, 2], warm)  # earlier draws on an instance must not shift later ones
    b = crops(7, [0, 1, 0], warm)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[2])  # a repeated item in one batch gets its own crop
    assert not torch.equal(a[0], crops(8, [0])[0])
    with pytest.raises(ValueError, match="augment key"):
        warm.set_augment_key(-1)


def _archives(tmp_path, n, frames=6, h=8, w=6, layout="indexed"):
    from dreampose.io import write_iuv_archive

    rng = np.random.default_rng(0)
    save = {"deflated": np.savez_compressed, "stored": np.savez}  # archives written before the frame index
    paths = []
    for i in range(n):
        p = tmp_path / f"v{i}.npz"
        iuv = rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8)
        if layout == "indexed":
            write_iuv_archive(p, iuv)
        else:
            save[layout](p, iuv=iuv)
        paths.append(p)
    return paths


@pytest.mark.parametrize("layout", ["indexed", "deflated", "stored"])
def test_windowed_read_is_bit_identical_to_the_whole_array(tmp_path, layout):
    from dreampose.data.dataset import iuv_shape, read_iuv_frames
    from dreampose.io import load_iuv

    (path,) = _archives(tmp_path, 1, frames=9, layout=layout)
    whole = load_iuv(path)
    assert iuv_shape(path) == whole.shape
    for frames in ([0, 0, 0, 1, 2], [4, 5, 6, 7, 8], [8, 2, 8], [3]):
        got = read_iuv_frames(path, frames)
        assert got.dtype == np.uint8 and np.array_equal(got, whole[frames]), frames
    with pytest.raises(ValueError, match="pose frame 9 beyond its 9 frames"):
        read_iuv_frames(path, [7, 8, 9])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt IUV archive"):
        read_iuv_frames(tmp_path / "bad.npz", [0])
    np.savez(tmp_path / "other.npz", pose=whole)
    with pytest.raises(ValueError, match="no 'iuv' array"):
        read_iuv_frames(tmp_path / "other.npz", [0])


def test_iuv_cache_never_exceeds_its_bound_and_streams_large_videos(tmp_path):
    from dreampose.data.dataset import CACHE_ENTRY_FRACTION, IUVFrames
    from dreampose.io import load_iuv

    paths = _archives(tmp_path, 20)  # 6 * 8 * 6 * 3 = 864 bytes each
    cache = IUVFrames(max_bytes=864 * 3 + 100)
    assert cache.max_entry_bytes == (864 * 3 + 100) // CACHE_ENTRY_FRACTION < 864  # too big to cache whole
    for p in paths * 2:
        assert np.array_equal(cache.frames(p, [1, 2, 3]), load_iuv(p)[[1, 2, 3]])
        assert len(cache) == 0 and cache.cached_bytes == 0
    cache = IUVFrames(max_bytes=864 * CACHE_ENTRY_FRACTION + 1)  # whole videos, CACHE_ENTRY_FRACTION at most
    peak = 0
    for i, p in enumerate(paths * 2):
        assert np.array_equal(cache.frames(p, [5, 0]), load_iuv(p)[[5, 0]])
        assert cache.cached_bytes <= cache.max_bytes and cache.cached_bytes == 864 * len(cache)
        peak = max(peak, len(cache))
        assert len(cache) == min(i + 1, cache.max_bytes // 864)
    assert peak == cache.max_bytes // 864 < len(paths)
    with pytest.raises(ValueError, match="beyond its 6 frames"):
        cache.frames(paths[-1], [6])  # a cached video checks the range too


def test_dataset_memory_is_bounded_and_items_unchanged(tmp_path):
    ws = _workspace(tmp_path)
    big = PairDataset(ws / "data/manifests/train.parquet", ws, H, W)
    none = PairDataset(ws / "data/manifests/train.parquet", ws, H, W, cache_bytes=0)  # every window streamed
    for i in range(len(big)):
        a, b = big[i], none[i]
        assert torch.equal(a["poses"], b["poses"]) and torch.equal(a["target_pixels"], b["target_pixels"])
    assert len(big.iuv) == 1 and len(none.iuv) == 0


def test_recolor_is_one_colour_change_for_photo_and_target():
    x = torch.linspace(-1, 1, 3 * 4 * 5).view(3, 4, 5)
    same = recolor(x, [0, 1, 2], [1.0, 1.0, 1.0])
    torch.testing.assert_close(same, x)
    out = recolor(x, [2, 0, 1], [0.5, 1.0, 2.0])
    torch.testing.assert_close((out[0] + 1) / 2, ((x[2] + 1) / 2 * 0.5))
    torch.testing.assert_close((out[1] + 1) / 2, (x[0] + 1) / 2)
    torch.testing.assert_close((out[2] + 1) / 2, ((x[1] + 1) / 2 * 2.0).clamp(0, 1))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        recolor(x[:2], [0, 1, 2], [1.0, 1.0, 1.0])
    perm, gain = color_change(np.random.default_rng(0))
    assert sorted(perm) == [0, 1, 2] and all(0.6 <= g <= 1.4 for g in gain)


def test_colour_augmentation_changes_photo_and_target_alike_and_keeps_poses(tmp_path):
    ws = _workspace(tmp_path, ext="png")
    path = ws / "data/manifests/train.parquet"
    plain = PairDataset(path, ws, H, W)
    never = PairDataset(path, ws, H, W, color_augment=0.0, seed=1)
    always = PairDataset(path, ws, H, W, color_augment=1.0, seed=1)
    always.set_augment_key(5)
    items = [always[i] for i in range(4)]
    for i in range(4):
        ref, off, item = plain[i], never[i], items[i]
        for k in ("input_pixels", "target_pixels", "poses"):
            assert torch.equal(off[k], ref[k])  # probability 0: the items as before, bit for bit
        assert torch.equal(item["poses"], ref["poses"])
        assert not torch.equal(item["target_pixels"], ref["target_pixels"])
        # one change for both: some (perm, gain) maps the plain pair onto the augmented pair
        rng = np.random.default_rng([1, 5, i, 0, 0])
        assert rng.random() < 1.0  # the draw that decides whether this pair is recoloured
        perm, gain = color_change(rng)
        torch.testing.assert_close(item["input_pixels"], recolor(ref["input_pixels"], perm, gain))
        torch.testing.assert_close(item["target_pixels"], recolor(ref["target_pixels"], perm, gain).clamp(-1, 1))
    again = PairDataset(path, ws, H, W, color_augment=1.0, seed=1)
    again.set_augment_key(5)
    assert torch.equal(again[0]["target_pixels"], items[0]["target_pixels"])  # a pure function of the key
    with pytest.raises(ValueError, match="probability"):
        PairDataset(path, ws, H, W, color_augment=1.5)


def test_items_are_bit_identical_to_the_float_formulas(tmp_path, monkeypatch):
    """Pixels and poses come through 256-entry tables now; items (plain, cropped, recoloured) are the values the
    float formulas gave: ``float(x) / 127.5 - 1`` per pixel and ``uv_to_model``'s formula per pose."""
    import dreampose.data.dataset as D
    from dreampose.data.densepose.iuv import _uv_formula
    from tests.training.tiny import H as TH
    from tests.training.tiny import W as TW
    from tests.training.tiny import write_workspace

    def formula_pixels(pixels):
        return pixels.float() / 127.5 - 1.0

    manifest = write_workspace(tmp_path)
    for kw in ({}, {"augment": (0.5, 0.9), "color_augment": 1.0}):
        ours = [PairDataset(manifest, tmp_path, TH, TW, seed=3, **kw).keyed_item(i, 11) for i in range(4)]
        with monkeypatch.context() as m:
            m.setattr(D, "pixels_to_model", formula_pixels)
            m.setattr(D, "uv_to_model", lambda iuv: _uv_formula(torch.as_tensor(iuv)))
            ref = [PairDataset(manifest, tmp_path, TH, TW, seed=3, **kw).keyed_item(i, 11) for i in range(4)]
        for a, b in zip(ours, ref, strict=True):
            for k in ("input_pixels", "target_pixels", "poses"):
                assert torch.equal(a[k], b[k].clamp(-1, 1) if k == "target_pixels" else b[k]), (kw, k)
