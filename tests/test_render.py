import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dreampose.config import RenderConfig
from dreampose.data.densepose.iuv import uv_to_model
from dreampose.render import (
    consecutive_runs,
    frame_generators,
    iuv_to_rgb,
    png_complete,
    poster,
    read_rgb,
    render_frames,
    render_sequence,
    render_subject,
    side_by_side,
    smoothing_support,
    temporal_smooth,
    to_uint8,
)
from dreampose.video import probe_video
from tests.metrics._workspace import (
    SUBJECTS,
    CountingPipeline,
    H,
    W,
    make_fvd_manifest,
    make_iuv,
    make_workspace,
    tiny_pipeline,
)

CFG = RenderConfig(num_inference_steps=2, frame_batch_size=2, fps=8)


def test_iuv_to_rgb_codes_part_u_v():
    iuv = np.zeros((2, 2, 3), np.uint8)
    iuv[0, 0] = [24, 10, 20]
    iuv[0, 1] = [12, 0, 255]
    iuv[1, 1] = [0, 99, 99]  # background: U,V ignored
    out = iuv_to_rgb(iuv)
    assert out[0, 0].tolist() == [255, 10, 20]
    assert out[0, 1].tolist() == [128, 0, 255]
    assert out[1, 1].tolist() == [0, 0, 0]


def test_side_by_side_and_poster_shapes():
    seq = np.zeros((5, 4, 3, 3), np.uint8)
    photo = np.full((4, 3, 3), 7, np.uint8)
    sbs = side_by_side([photo, seq, seq])
    assert sbs.shape == (5, 4, 9, 3)
    assert (sbs[:, :, :3] == 7).all()
    assert poster(sbs, max_rows=3).shape == (12, 9, 3)
    with pytest.raises(ValueError, match="differ in size"):
        side_by_side([photo, np.zeros((5, 4, 4, 3), np.uint8)])


def test_render_frames_is_deterministic_per_frame_whatever_the_batching():
    pipe = tiny_pipeline()
    image = np.full((H, W, 3), 128, np.uint8)
    poses = uv_to_model(np.stack([make_iuv(t) for t in range(3)])).repeat(1, 5, 1, 1)
    whole = render_frames(pipe, image, poses, CFG.model_copy(update={"frame_batch_size": 3}), frame_ids=[4, 5, 6])
    last = render_frames(pipe, image, poses[2:], CFG, frame_ids=[6])
    assert whole.shape == (3, H, W, 3) and whole.dtype == np.uint8
    np.testing.assert_allclose(whole[2].astype(int), last[0].astype(int), atol=2)


def test_render_subject_writes_outputs_and_resumes(tmp_path):
    manifest = make_workspace(tmp_path, targets=(4, 6))
    out = tmp_path / "renders" / SUBJECTS[0]
    pipe = CountingPipeline(tiny_pipeline())
    first = render_subject(CFG, tmp_path / "unused", manifest, SUBJECTS[0], tmp_path, out, pipe=pipe)
    assert (first["rendered"], first["skipped"], pipe.frames) == (2, 0, 2)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "frames").glob("*.png")}
    assert sorted(before) == ["00004.png", "00006.png"]

    manifest = make_workspace(tmp_path, targets=(4, 6, 8, 10))
    (out / "frames" / "00004.png").write_bytes(before["00004.png"][1][:40])  # a truncated file is redone
    second = render_subject(CFG, tmp_path / "unused", manifest, SUBJECTS[0], tmp_path, out, pipe=pipe)
    assert (second["rendered"], second["skipped"], pipe.frames) == (3, 1, 5)
    assert (out / "frames" / "00006.png").stat().st_mtime_ns == before["00006.png"][0]
    assert png_complete(out / "frames" / "00004.png", (H, W))

    info = probe_video(out / "side_by_side.mp4")
    assert (info.num_frames, info.width, info.height) == (4, 4 * W, H)
    assert probe_video(out / "video.mp4").num_frames == 4
    assert read_rgb(out / "poster.png").shape == (4 * H, 4 * W, 3)
    meta = json.loads((out / "render.json").read_text())
    assert meta["frames"] == [4, 6, 8, 10] and meta["settings"]["num_inference_steps"] == 2
    assert "seconds" in second and not {"seconds", "seconds_per_frame"} & set(meta)  # timings: MLflow only
    assert meta["settings"]["fps"] == 8  # a setting of the same kind of name stays
    assert not list(out.rglob(".*tmp*"))


def test_render_subject_bad_inputs(tmp_path):
    manifest = make_workspace(tmp_path, targets=(4,))
    with pytest.raises(ValueError, match="'nobody' is not in"):
        render_subject(CFG, tmp_path, manifest, "nobody", tmp_path, tmp_path / "r", pipe=object())
    empty = tmp_path / "empty.parquet"
    pd.read_parquet(manifest).iloc[:0].to_parquet(empty)
    with pytest.raises(ValueError, match="test manifest is empty"):
        render_subject(CFG, tmp_path, empty, SUBJECTS[0], tmp_path, tmp_path / "r", pipe=object())
    Image.new("RGB", (W + 8, H)).save(tmp_path / "data/frames/test" / SUBJECTS[0] / "00000.png")
    with pytest.raises(ValueError, match=r"00000\.png: image is"):
        render_subject(CFG, tmp_path, manifest, SUBJECTS[0], tmp_path, tmp_path / "r", pipe=object())


def test_render_sequence_without_ground_truth(tmp_path):
    pipe = CountingPipeline(tiny_pipeline())
    iuv = np.stack([make_iuv(t) for t in range(3)])
    summary = render_sequence(pipe, np.full((H, W, 3), 90, np.uint8), iuv, CFG, tmp_path / "item")
    assert summary["rendered"] == 3 and summary["columns"] == ["input", "pose", "generated"]
    assert probe_video(tmp_path / "item" / "side_by_side.mp4").width == 3 * W
    again = render_sequence(pipe, np.full((H, W, 3), 90, np.uint8), iuv, CFG, tmp_path / "item")
    assert (again["rendered"], again["skipped"], pipe.frames) == (0, 3, 3)


def test_render_subject_renders_the_fvd_clip_beside_the_targets(tmp_path):
    manifest = make_workspace(tmp_path, targets=(4, 8))
    fvd_manifest = make_fvd_manifest(tmp_path, start=5, length=3)
    pipe = tiny_pipeline()
    plain = render_subject(CFG, tmp_path, manifest, SUBJECTS[0], tmp_path, tmp_path / "plain", pipe=pipe)
    out = tmp_path / "with_fvd"
    meta = render_subject(CFG, tmp_path, manifest, SUBJECTS[0], tmp_path, out, pipe=pipe, fvd_manifest=fvd_manifest)
    assert meta["frames"] == plain["frames"] == [4, 8] and meta["fvd_frames"] == [5, 6, 7]
    assert meta["rendered"] == 5
    assert sorted(p.name for p in (out / "fvd/frames").glob("*.png")) == ["00005.png", "00006.png", "00007.png"]
    for name in ("00004.png", "00008.png"):  # the target renders are the same as without the clip
        assert (out / "frames" / name).read_bytes() == (tmp_path / "plain/frames" / name).read_bytes()
    assert probe_video(out / "video.mp4").num_frames == 2
    with pytest.raises(FileNotFoundError, match="no FVD clip manifest"):
        render_subject(CFG, tmp_path, manifest, SUBJECTS[0], tmp_path, out, pipe=pipe, fvd_manifest=tmp_path / "x")


def test_a_bright_photo_reaches_the_pipeline_unambiguously():
    """A white-background photo of a light garment has no pixel below mid-grey: as a [-1, 1] tensor it would be
    read as [0, 1] by the diffusers image convention; render_frames hands the pipeline [0, 1] values instead."""
    import torch

    pipe = tiny_pipeline()
    rng = np.random.default_rng(0)
    bright = rng.integers(128, 256, size=(H, W, 3), dtype=np.uint8)
    poses = torch.from_numpy(np.concatenate([uv_to_model(make_iuv(t)) for t in range(5)])[None]).float()
    cfg = RenderConfig(num_inference_steps=2, frame_batch_size=2, seed=0)
    ours = render_frames(pipe, bright, poses, cfg)
    as_tensor = render_frames(pipe, torch.from_numpy(bright).permute(2, 0, 1).float() / 127.5 - 1.0, poses, cfg)
    np.testing.assert_array_equal(ours, as_tensor)  # uint8 and [-1, 1] tensor callers get the same frames

    def direct(image):
        gen = frame_generators(cfg.seed, [0])
        frames = pipe(
            image,
            poses,
            num_inference_steps=2,
            image_guidance_scale=cfg.image_guidance_scale,
            pose_guidance_scale=cfg.pose_guidance_scale,
            generator=gen,
            output_type="np",
        ).frames
        return to_uint8(frames)

    np.testing.assert_array_equal(ours, direct(bright))  # what the pipeline makes of the photo itself
    misread = direct(torch.from_numpy(bright).permute(2, 0, 1).float() / 127.5 - 1.0)  # no negative value
    assert (ours != misread).any()  # the ambiguity is real for the pipeline's raw input


# ----- temporal smoothing of the output (render.temporal_smoothing; paper Table 2, Ours_smooth)


def test_temporal_smooth_keeps_constants_is_identity_at_window_1_and_cuts_the_window_at_the_ends():
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 256, (6, 4, 3, 3), dtype=np.uint8)
    const = np.full((5, 4, 3, 3), 77, np.uint8)
    np.testing.assert_array_equal(temporal_smooth(const, 5), const)
    np.testing.assert_array_equal(temporal_smooth(seq, 1), seq)
    np.testing.assert_array_equal(temporal_smooth(seq, 0), seq)
    out = temporal_smooth(seq, 3)
    assert out.dtype == np.uint8 and out.shape == seq.shape
    f = seq.astype(np.float64)
    np.testing.assert_array_equal(out[0], np.rint((f[0] + f[1]) / 2).astype(np.uint8))  # cut at the start
    np.testing.assert_array_equal(out[2], np.rint((f[1] + f[2] + f[3]) / 3).astype(np.uint8))
    np.testing.assert_array_equal(out[-1], np.rint((f[-2] + f[-1]) / 2).astype(np.uint8))  # and at the end
    with pytest.raises(ValueError, match="odd"):
        temporal_smooth(seq, 4)


def test_temporal_smooth_reduces_flicker():
    flicker = np.stack([np.full((2, 2, 3), 100 + 40 * (t % 2), np.uint8) for t in range(9)])
    smooth = temporal_smooth(flicker, 3)
    assert temporal_l1_of(smooth) < 0.5 * temporal_l1_of(flicker)


def temporal_l1_of(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames.astype(np.float64), axis=0)).mean())


def test_smoothing_support_and_runs():
    assert smoothing_support([4, 8], 3, 12) == [3, 4, 5, 7, 8, 9]
    assert smoothing_support([0, 11], 5, 12) == [0, 1, 2, 9, 10, 11]
    assert smoothing_support([4], 0, 12) == [4]
    assert consecutive_runs([9, 3, 4, 5, 8, 7]) == [[3, 4, 5], [7, 8, 9]]
    with pytest.raises(ValueError, match="odd window"):
        RenderConfig(temporal_smoothing=4)


def test_render_subject_with_smoothing_renders_the_neighbours_and_smooths_over_them(tmp_path):
    manifest = make_workspace(tmp_path, targets=(4, 8))
    fvd_manifest = make_fvd_manifest(tmp_path, start=5, length=3)
    pipe = CountingPipeline(tiny_pipeline())
    off = render_subject(CFG, tmp_path, manifest, SUBJECTS[0], tmp_path, tmp_path / "off", pipe=pipe.pipe)
    cfg = CFG.model_copy(update={"temporal_smoothing": 3})
    out = tmp_path / "smooth"
    meta = render_subject(cfg, tmp_path, manifest, SUBJECTS[0], tmp_path, out, pipe=pipe, fvd_manifest=fvd_manifest)
    # targets 4, 8 and their neighbours 3, 5, 7, 9; the FVD clip 5..7 adds 6 (its 4 and 8 are already there)
    assert sorted(p.name for p in (out / "raw/frames").glob("*.png")) == [f"{f:05d}.png" for f in range(3, 10)]
    assert pipe.frames == meta["rendered"] == 7
    assert meta["frames"] == off["frames"] == [4, 8]
    raw = {f: read_rgb(out / "raw/frames" / f"{f:05d}.png").astype(np.float64) for f in range(3, 10)}
    for f in (4, 8):  # a smoothed target is the mean of its own raw render and its two neighbours'
        want = np.rint((raw[f - 1] + raw[f] + raw[f + 1]) / 3).astype(np.uint8)
        np.testing.assert_array_equal(read_rgb(out / "frames" / f"{f:05d}.png"), want)
        unsmoothed = read_rgb(tmp_path / "off/frames" / f"{f:05d}.png").astype(int)
        np.testing.assert_allclose(raw[f], unsmoothed, atol=2)  # the raw render is the plain render
    for f in (5, 6, 7):
        want = np.rint((raw[f - 1] + raw[f] + raw[f + 1]) / 3).astype(np.uint8)
        np.testing.assert_array_equal(read_rgb(out / "fvd/frames" / f"{f:05d}.png"), want)
    assert not np.array_equal(read_rgb(out / "frames/00004.png"), read_rgb(tmp_path / "off/frames/00004.png"))
    assert json.loads((out / "render.json").read_text())["settings"]["temporal_smoothing"] == 3


def test_the_registered_model_smooths_as_the_catalog_render_did(tmp_path):
    from dreampose.catalog.mlflow_model import DreamPoseSubjectModel

    pipe = tiny_pipeline()
    photo = np.full((H, W, 3), 90, np.uint8)
    iuv = np.stack([make_iuv(t) for t in range(4)])
    cfg = CFG.model_copy(update={"temporal_smoothing": 3})
    render_sequence(pipe, photo, iuv, cfg, tmp_path / "item", frame_ids=[1, 2])
    model = DreamPoseSubjectModel()
    model.pipe, model.photo, model.render_cfg, model.window = pipe, photo, cfg, 5
    got = model.predict(None, iuv, {"frame_ids": [1, 2]})
    for k, f in enumerate((1, 2)):
        np.testing.assert_allclose(got[k].astype(int), read_rgb(tmp_path / f"item/frames/{f:05d}.png"), atol=2)
    assert sorted(p.name for p in (tmp_path / "item/raw/frames").glob("*.png")) == [f"{f:05d}.png" for f in range(4)]
