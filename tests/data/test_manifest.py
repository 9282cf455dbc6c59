import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dreampose.config import DensePoseConfig, ManifestConfig
from dreampose.data.densepose import run_densepose
from dreampose.data.manifest import (
    SCHEMA,
    build_manifests,
    fvd_clip_start,
    inspect_manifests,
    select_eval_subjects,
    spread_targets,
)
from tests.data.test_densepose import make_workspace


def _prepared(tmp_path, videos, empty=frozenset()):
    ws = make_workspace(tmp_path, videos, empty=empty)
    run_densepose(DensePoseConfig(), ws / "data/frames", ws / "data/raw", ws / "data/densepose")
    return ws


def _build(ws, cfg):
    return build_manifests(cfg, ws / "data/frames", ws / "data/densepose", ws / "data/manifests")


CFG = ManifestConfig(pairs_per_video=10, test_num_targets=4, test_min_gap=8, test_input_frame=0, subject_frames=2)


def test_spread_targets_is_even_and_distinct():
    assert spread_targets(range(8, 48), 8) == [8, 14, 19, 25, 30, 36, 41, 47]
    assert spread_targets([3, 5, 9], 3) == [3, 5, 9]
    assert spread_targets([3, 5, 9], 1) == [5]
    with pytest.raises(ValueError, match="cannot pick 4"):
        spread_targets([1, 2, 3], 4)


def test_manifests_schema_protocol_and_skipped_frames(tmp_path):
    ws = _prepared(
        tmp_path,
        {"train": {"a": 12, "b": 12}, "test": {"t0": 20}},
        empty=frozenset({("a", 3), ("a", 4), ("t0", 19)}),
    )
    counts = _build(ws, CFG)
    assert counts == {
        "train_rows": 20,
        "train_videos": 2,
        "subject_rows": 2,
        "subject_videos": 1,
        "test_rows": 4,
        "test_videos": 1,
        "frames_skipped_no_person": 3,
        "videos_skipped": 0,
        "skipped": [],
    }
    for name in ("train", "subject", "test"):
        assert pq.read_schema(ws / f"data/manifests/{name}.parquet").equals(SCHEMA, check_metadata=False)
    train = pd.read_parquet(ws / "data/manifests/train.parquet")
    a = train[train.video == "a"]
    assert not set(a.input_frame) & {3, 4} and not set(a.target_frame) & {3, 4}
    assert (train.subject_id == train.video).all() and (train.split == "train").all()
    r = train.iloc[0]
    assert r.target_path == f"data/frames/train/{r.video}/{r.target_frame:05d}.jpg"
    assert r.densepose_path == f"data/densepose/train/{r.video}.npz"
    assert list(r.pose_frames) == [min(max(f, 0), 11) for f in range(r.target_frame - 2, r.target_frame + 3)]
    test = pd.read_parquet(ws / "data/manifests/test.parquet")
    assert (test.input_frame == 0).all()
    assert (test.target_frame - test.input_frame >= 8).all()  # the min gap
    assert test.target_frame.tolist() == [8, 11, 15, 18]  # spread over 8..18 (frame 19 has no person)
    subject = pd.read_parquet(ws / "data/manifests/subject.parquet")
    assert subject.input_frame.tolist() == [0, 1] and (subject.input_frame == subject.target_frame).all()
    # seeded: the same pairs again; a different seed gives different pairs
    _build(ws, CFG)
    pd.testing.assert_frame_equal(train, pd.read_parquet(ws / "data/manifests/train.parquet"))
    _build(ws, CFG.model_copy(update={"seed": 1}))
    assert not train.equals(pd.read_parquet(ws / "data/manifests/train.parquet"))


def test_unusable_videos_are_skipped_and_reported_until_too_few_remain(tmp_path):
    # t1: no person in its input frame; t2: too short for 4 targets 8 frames away; c: no person at all;
    # t3: its video was unreadable in the frames stage (quarantine.json).
    ws = _prepared(
        tmp_path,
        {"train": {"a": 12, "c": 3}, "test": {"t0": 20, "t1": 20, "t2": 10}},
        empty=frozenset({("t1", 0), ("c", 0), ("c", 1), ("c", 2)}),
    )
    quarantine = {"count": 1, "videos": [{"video": "t3", "split": "test", "path": "x", "reason": "no video stream"}]}
    (ws / "data/frames/quarantine.json").write_text(json.dumps(quarantine))
    counts = _build(ws, CFG.model_copy(update={"min_train_videos": 1, "min_test_videos": 1}))
    assert counts["test_videos"] == counts["subject_videos"] == 1 and counts["train_videos"] == 1
    assert counts["videos_skipped"] == 4
    assert counts["skipped"] == [
        "test/t3: no video stream",
        "test/t1: no person was found in input frame 0",
        "test/t2: 10 frames leave 2 targets with a person at least 8 frames from input frame 0; "
        "manifest.test_num_targets is 4",
        "train/c: no frame with a person",
    ]
    report = json.loads((ws / "data/manifests/skipped.json").read_text())
    assert report["usable"] == {"train": 1, "test": 1} and report["count"] == 4
    assert [(v["split"], v["video"], v["stage"]) for v in report["videos"]][:2] == [
        ("test", "t3", "frames"),
        ("test", "t1", "manifest"),
    ]
    assert set(pd.read_parquet(ws / "data/manifests/subject.parquet").video) == {"t0"}

    shutil.rmtree(ws / "data/manifests")
    with pytest.raises(ValueError, match=r"only 1 usable test videos, need 2 \(manifest.min_test_videos\); skipped: "
                       r"test/t3: no video stream; test/t1: no person .*skipped.json"):  # fmt: skip
        _build(ws, CFG.model_copy(update={"min_test_videos": 2}))
    assert not (ws / "data/manifests/train.parquet").exists()  # nothing half-written
    assert json.loads((ws / "data/manifests/skipped.json").read_text())["count"] == 4  # but the reasons are


def test_subject_manifest_covers_every_usable_test_video_and_selection(tmp_path):
    ws = _prepared(tmp_path, {"train": {"a": 12}, "test": {"t2": 20, "t0": 20, "t1": 20}})
    _build(ws, CFG)
    subject = pd.read_parquet(ws / "data/manifests/subject.parquet")
    assert subject.video.tolist() == ["t0", "t0", "t1", "t1", "t2", "t2"]  # subject_frames=2 each
    test = pd.read_parquet(ws / "data/manifests/test.parquet")
    assert select_eval_subjects(test, None) == ["t0", "t1", "t2"]
    assert select_eval_subjects(test, 2) == ["t0", "t1"]
    assert select_eval_subjects(test.iloc[::-1], 5) == ["t0", "t1", "t2"]  # id order, capped by what exists
    with pytest.raises(ValueError, match="no usable test video"):
        select_eval_subjects(test.iloc[:0], 2)


def test_inspect_prints_counts_and_writes_preview(tmp_path, capsys):
    from dreampose import cli

    ws = _prepared(tmp_path, {"train": {"a": 12}, "test": {"t0": 20}})
    _build(ws, CFG)
    info = inspect_manifests(ws / "data/manifests", ws, ws / "data/inspect/preview.png")
    capsys.readouterr()
    assert cli.main(["--root", str(ws), "inspect"]) == 0  # `dreampose inspect` prints the same, as JSON
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(info, default=str))
    assert info["train_rows"] == 10 and info["test_schema"]["pose_frames"] == "list<element: int32>"
    from PIL import Image

    with Image.open(info["preview"]) as im:
        assert im.size == (3 * 12, 16)
        arr = np.asarray(im)
    assert arr[:, 24:].any()  # the IUV panel shows the body


def test_fvd_clip_start_is_the_first_full_run_with_a_person():
    assert fvd_clip_start([True] * 20, 8, 4) == 8
    person = [True] * 20
    person[10] = False
    assert fvd_clip_start(person, 8, 4) == 11  # 8..11 would include the person-less frame 10
    assert fvd_clip_start(person, 8, 10) is None
    assert fvd_clip_start([True] * 5, 8, 2) is None


def test_fvd_manifest_lists_consecutive_frames_after_the_gap(tmp_path):
    ws = _prepared(tmp_path, {"train": {"a": 12}, "test": {"t0": 20, "t1": 20}}, empty=frozenset({("t1", 9)}))
    before = _build(ws, CFG)
    tables = {n: (ws / f"data/manifests/{n}.parquet").read_bytes() for n in ("train", "subject", "test")}
    assert not (ws / "data/manifests/fvd.parquet").exists()  # no clip length, no FVD manifest
    counts = build_manifests(CFG, ws / "data/frames", ws / "data/densepose", ws / "data/manifests", fvd_clip_len=4)
    assert counts == {**before, "fvd_rows": 8, "fvd_videos": 2}
    # the target manifests are byte-identical with or without the FVD clips
    assert all((ws / f"data/manifests/{n}.parquet").read_bytes() == b for n, b in tables.items())
    assert pq.read_schema(ws / "data/manifests/fvd.parquet").equals(SCHEMA, check_metadata=False)
    fvd = pd.read_parquet(ws / "data/manifests/fvd.parquet")
    clips = fvd.groupby("video").target_frame.apply(list).to_dict()
    assert clips == {"t0": [8, 9, 10, 11], "t1": [10, 11, 12, 13]}  # test_min_gap 8; t1 frame 9 has no person
    assert (fvd.input_frame == 0).all() and (fvd.split == "test").all()
    assert list(fvd.pose_frames.iloc[0]) == [6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="fvd_clip_len must be >= 2"):
        build_manifests(CFG, ws / "data/frames", ws / "data/densepose", ws / "data/manifests", fvd_clip_len=1)
