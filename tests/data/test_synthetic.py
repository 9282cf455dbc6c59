"""Synthetic mannequin videos: determinism, layout, IUV validity, distinct subjects, real motion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dreampose.config import SyntheticConfig
from dreampose.data.synthetic import PARTS, generate_dataset, generate_video, video_ids
from dreampose.video import read_video

SMALL = SyntheticConfig(num_train_subjects=2, num_test_subjects=1, frames_per_video=16, height=64, width=48)
VALID_I = set(range(25))


def test_same_seed_same_arrays_other_seed_differs():
    rgb1, iuv1 = generate_video(SMALL, "train", 0, seed=3)
    rgb2, iuv2 = generate_video(SMALL, "train", 0, seed=3)
    np.testing.assert_array_equal(rgb1, rgb2)
    np.testing.assert_array_equal(iuv1, iuv2)
    rgb3, _ = generate_video(SMALL, "train", 0, seed=4)
    assert not np.array_equal(rgb1, rgb3)


def test_shapes_dtypes_and_iuv_conventions():
    rgb, iuv = generate_video(SMALL, "test", 0, seed=0)
    assert rgb.shape == iuv.shape == (16, 64, 48, 3)
    assert rgb.dtype == iuv.dtype == np.uint8
    parts = iuv[..., 0]
    assert set(np.unique(parts)) <= VALID_I
    # a walking, turning figure shows torso, head, arms and legs
    assert {1, 2} & set(np.unique(parts)) and {23, 24} & set(np.unique(parts))
    assert set(np.unique(parts)) & {15, 16, 17, 18} and set(np.unique(parts)) & {7, 8, 9, 10}
    background = parts == 0
    assert (iuv[..., 1][background] == 0).all() and (iuv[..., 2][background] == 0).all()
    coverage = (~background).mean()
    assert 0.08 < coverage < 0.6, coverage  # a figure, not an empty frame or a full one
    # u runs the full length of the parts
    assert iuv[..., 1][~background].min() == 0 and iuv[..., 1][~background].max() == 255
    # the figure stays in the frame: background on the left and right borders most of the time
    assert background[:, :, 0].mean() > 0.8 and background[:, :, -1].mean() > 0.8


def test_part_table_follows_densepose():
    table = {name: (back, front) for name, _, _, back, front, _ in PARTS}
    assert table["hand_right"] == (3, 3) and table["hand_left"] == (4, 4)
    assert table["foot_left"] == (5, 5) and table["foot_right"] == (6, 6)
    assert set(table["upper_leg_right"]) == {7, 9} and set(table["upper_leg_left"]) == {8, 10}
    assert set(table["lower_leg_right"]) == {11, 13} and set(table["lower_leg_left"]) == {12, 14}
    assert set(table["upper_arm_left"]) == {15, 17} and set(table["upper_arm_right"]) == {16, 18}
    assert set(table["lower_arm_left"]) == {19, 21} and set(table["lower_arm_right"]) == {20, 22}
    assert set(table["head"]) == {23, 24} and set(table["torso"]) == {1, 2}


def test_subjects_look_different():
    cfg = SMALL
    means = []
    for i in range(4):
        rgb, iuv = generate_video(cfg, "train", i, seed=0)
        body = iuv[0, ..., 0] == 2  # the front of the torso: the shirt
        torso = iuv[0, ..., 0] > 0
        means.append(rgb[0][body if body.any() else torso].astype(float).mean(axis=0))
    dists = [np.abs(means[a] - means[b]).sum() for a in range(4) for b in range(a + 1, 4)]
    assert min(dists) > 15, dists


def test_frames_far_apart_are_in_different_poses():
    cfg = SyntheticConfig(num_train_subjects=1, num_test_subjects=1, frames_per_video=48)
    for i in range(3):
        _, iuv = generate_video(cfg, "train", i, seed=0)
        parts = iuv[..., 0]
        for t in range(0, 40, 4):
            changed = (parts[t] != parts[t + 8]).mean()
            assert changed > 0.02, (i, t, changed)  # silhouette / parts move between frames 8 apart
        # and the appearance at the same pixel changes: a copied input frame is a poor prediction
        assert (parts[0] != parts[24]).mean() > 0.04


def test_appearance_is_a_function_of_surface_coordinates():
    """The same (part, u, v) bin has (nearly) the same colour in different frames of one subject."""
    rgb, iuv = generate_video(SMALL, "train", 1, seed=0)
    key = iuv[..., 0].astype(np.int64) * 10_000 + (iuv[..., 1] // 32) * 100 + (iuv[..., 2] // 32)
    a, b = key[0], key[8]
    common = np.intersect1d(a[a > 9_999], b[b > 9_999])
    assert len(common) > 5
    diffs = []
    for k in common:
        ca = rgb[0][a == k].astype(float).mean(axis=0)
        cb = rgb[8][b == k].astype(float).mean(axis=0)
        diffs.append(np.abs(ca - cb).mean())
    assert np.median(diffs) < 25, np.median(diffs)


def test_generate_dataset_layout_report_and_atomic_replace(tmp_path):
    out = tmp_path / "data" / "raw"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older run")
    summary = generate_dataset(SMALL, out, seed=0)
    assert summary["videos"] == 3 and summary["frames"] == 48
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.joinpath("data").iterdir()] == ["raw"]  # no temp dirs left
    ids = video_ids(SMALL)
    assert ids == {"train": ["syn_train_000", "syn_train_001"], "test": ["syn_test_000"]}
    report = json.loads((out / "download_report.json").read_text())
    assert report["source"] == "synthetic" and report["total"] == 3
    for entry in report["videos"]:
        video = out / entry["path"]
        assert video.is_file() and video.stat().st_size == entry["bytes"] and len(entry["sha256"]) == 64
        frames, fps = read_video(video)
        iuv = np.load(out / entry["iuv"])["iuv"]
        assert frames.shape == iuv.shape == (16, 64, 48, 3) and fps == pytest.approx(SMALL.fps)
        expected_rgb, expected_iuv = generate_video(SMALL, entry["split"], int(entry["id"][-3:]), seed=0)
        np.testing.assert_array_equal(iuv, expected_iuv)
        # yuv420p halves chroma resolution: ~4 levels of mean error even when lossless at this size
        assert np.abs(frames.astype(int) - expected_rgb).mean() < 6


def test_failed_generation_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "raw"
    generate_dataset(SMALL, out, seed=0)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("dreampose.data.synthetic.write_video", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset(SMALL, out, seed=1)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_dataset_bytes_are_reproducible(tmp_path):
    """Same seed -> byte-identical videos, so DVC sees an unchanged output."""
    cfg = SyntheticConfig(num_train_subjects=3, num_test_subjects=1, frames_per_video=32)
    reports = []
    for name in ("a", "b"):
        generate_dataset(cfg, tmp_path / name, seed=0)
        reports.append(json.loads((tmp_path / name / "download_report.json").read_text()))
    assert [e["sha256"] for e in reports[0]["videos"]] == [e["sha256"] for e in reports[1]["videos"]]
