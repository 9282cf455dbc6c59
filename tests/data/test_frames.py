"""Frame extraction: geometry, resize/crop, index schema, stride, quarantine of corrupt videos."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dreampose.config import FramesConfig
from dreampose.data.frames import (
    INDEX_SCHEMA,
    extract_frames,
    fit_geometry,
    frame_indices,
    index_columns,
    index_table,
    resize_center_crop,
)
from dreampose.video import write_video


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        ((256, 192), (64, 48), (64, 48, 0, 0)),  # same aspect: plain resize
        ((720, 1280), (640, 512), (640, 1138, 0, 313)),  # landscape: sides cropped
        ((940, 720), (640, 512), (668, 512, 14, 0)),  # UBC portrait: top/bottom cropped
        ((64, 48), (128, 96), (128, 96, 0, 0)),  # upscaling
        ((100, 100), (64, 48), (64, 64, 0, 8)),
        ((64, 48), (64, 48), (64, 48, 0, 0)),
    ],
)
def test_fit_geometry_exact(src, dst, expected):
    new_h, new_w, top, left = fit_geometry(*src, *dst)
    assert (new_h, new_w, top, left) == expected
    assert new_h >= dst[0] and new_w >= dst[1]  # the target is always covered


def test_fit_geometry_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        fit_geometry(0, 10, 8, 8)


def test_resize_center_crop_nearest_keeps_labels_and_centre():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, :50, 0] = 7  # left half label 7, right half label 9
    img[:, 50:, 0] = 9
    out = resize_center_crop(img, 64, 48, nearest=True)
    assert out.shape == (64, 48, 3)
    assert set(np.unique(out[..., 0])) == {7, 9}  # no blended labels
    # 100 -> 64 then crop 8 columns each side: the boundary stays in the middle
    assert (out[:, :24, 0] == 7).all() and (out[:, 24:, 0] == 9).all()


def test_resize_center_crop_identity_and_bilinear():
    img = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_center_crop(img, 64, 48), img)
    flat = np.full((128, 96, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_center_crop(flat, 64, 48), np.full((64, 48, 3), 77, np.uint8))
    two = np.full((40, 40, 2), 5, np.uint8)  # non-RGB channel counts work too
    assert resize_center_crop(two, 16, 24).shape == (16, 24, 2)
    with pytest.raises(ValueError, match="uint8"):
        resize_center_crop(img.astype(np.float32), 8, 8)


def test_frame_indices():
    assert frame_indices(10, 1, None) == list(range(10))
    assert frame_indices(10, 3, None) == [0, 3, 6, 9]
    assert frame_indices(10, 2, 3) == [0, 2, 4]


def _video(frames: int, h: int = 80, w: int = 60, shade: int = 0) -> np.ndarray:
    x = np.zeros((frames, h, w, 3), np.uint8)
    x[..., 0] = shade
    x[..., 1] = (np.arange(frames) * 10)[:, None, None]  # frame number readable from green
    return x


@pytest.fixture
def workspace(tmp_path):
    videos = tmp_path / "data" / "raw" / "videos"
    write_video(_video(12, shade=50), videos / "train" / "a.mp4", fps=12)
    write_video(_video(9, shade=150), videos / "train" / "b.mp4", fps=12)
    write_video(_video(10, 96, 128), videos / "test" / "c.mp4", fps=10)  # landscape
    return tmp_path


def test_extract_frames_index_schema_and_files(workspace):
    cfg = FramesConfig(height=32, width=24, stride=1, workers=2)
    summary = extract_frames(cfg, workspace / "data/raw/videos", workspace / "data/frames")
    assert summary["videos"] == 3 and summary["quarantined"] == 0 and summary["frames"] == 31
    assert summary["fps"] > 0
    table = pq.read_table(workspace / "data/frames/index.parquet")
    assert table.schema.equals(INDEX_SCHEMA)
    df = table.to_pandas()
    assert list(df.columns) == ["video", "split", "frame", "source_frame", "timestamp", "path", "width", "height"]
    assert df.groupby("video").size().to_dict() == {"a": 12, "b": 9, "c": 10}
    row = df[(df.video == "c") & (df.frame == 4)].iloc[0]
    assert row.split == "test" and row.timestamp == pytest.approx(0.4)
    assert row.path == "data/frames/test/c/00004.jpg"
    for r in df.itertuples():
        img = np.asarray(Image.open(workspace / r.path))
        assert img.shape == (32, 24, 3) and (r.width, r.height) == (24, 32)
        assert abs(int(img[..., 1].mean()) - 10 * r.source_frame) <= 4  # the right source frame
    assert json.loads((workspace / "data/frames/quarantine.json").read_text())["count"] == 0


@pytest.mark.parametrize("size", [(32, 24), (48, 64), (80, 56)])  # resize, resize + crop, crop only
def test_frame_files_are_the_reference_encode_byte_for_byte(workspace, size):
    """Each JPEG is exactly ``Image.fromarray(resize_center_crop(decoded frame)).save(quality, subsampling=0)``:
    however the stage hands frames to its encoders, the bytes every later stage hashes and reads stay the same."""
    import io

    from dreampose.video import iter_video

    cfg = FramesConfig(height=size[0], width=size[1], workers=2)
    extract_frames(cfg, workspace / "data/raw/videos", workspace / "data/frames")
    for split, name in (("train", "a"), ("train", "b"), ("test", "c")):
        for k, (_, frame) in enumerate(iter_video(workspace / f"data/raw/videos/{split}/{name}.mp4")):
            ref = io.BytesIO()
            Image.fromarray(resize_center_crop(frame, *size)).save(ref, format="JPEG", quality=95, subsampling=0)
            assert (workspace / f"data/frames/{split}/{name}/{k:05d}.jpg").read_bytes() == ref.getvalue(), (name, k)


def test_index_table_is_the_pandas_built_file_byte_for_byte(tmp_path):
    """The index is built column by column without pandas; its file stays the one a DataFrame of the rows gave
    (pandas metadata included), so DVC sees the same ``index.parquet`` and pandas reads it back the same."""
    cfg = FramesConfig(height=32, width=24)
    cols = index_columns("a", "train", "data/frames/train/a", [0, 3, 6], 12.0, cfg)
    cols2 = index_columns("c", "test", "data/frames/test/c", [0, 1], 0.0, cfg)  # fps 0: timestamps 0
    both = {k: cols[k] + cols2[k] for k in cols}
    rows = [dict(zip(both, vals, strict=True)) for vals in zip(*both.values(), strict=True)]
    assert rows[1] == {
        "video": "a",
        "split": "train",
        "frame": 1,
        "source_frame": 3,
        "timestamp": 0.25,
        "path": "data/frames/train/a/00001.jpg",
        "width": 24,
        "height": 32,
    }
    assert rows[4]["timestamp"] == 0.0
    ref = pa.Table.from_pandas(pd.DataFrame(rows), schema=INDEX_SCHEMA, preserve_index=False)
    pq.write_table(ref, tmp_path / "ref.parquet")
    pq.write_table(index_table(both), tmp_path / "ours.parquet")
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "ref.parquet").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ours.parquet"), pd.read_parquet(tmp_path / "ref.parquet"))


def test_stride_and_max_frames(workspace):
    cfg = FramesConfig(height=32, width=24, stride=3, max_frames=3)
    extract_frames(cfg, workspace / "data/raw/videos", workspace / "data/frames")
    df = pd.read_parquet(workspace / "data/frames/index.parquet")
    a = df[df.video == "a"]
    assert a.frame.tolist() == [0, 1, 2] and a.source_frame.tolist() == [0, 3, 6]
    assert a.timestamp.tolist() == pytest.approx([0.0, 0.25, 0.5])
    assert df[df.video == "b"].source_frame.tolist() == [0, 3, 6]


@pytest.mark.parametrize("junk", [b"just some text, not a video\n", bytes(np.random.default_rng(1).bytes(4096))])
def test_corrupt_video_is_quarantined(workspace, junk):
    (workspace / "data/raw/videos/train/broken.mp4").write_bytes(junk)
    cfg = FramesConfig(height=32, width=24)
    summary = extract_frames(cfg, workspace / "data/raw/videos", workspace / "data/frames")
    assert summary["quarantined"] == 1 and summary["videos"] == 3
    q = json.loads((workspace / "data/frames/quarantine.json").read_text())
    assert q["count"] == 1 and q["videos"][0]["video"] == "broken"
    assert "not a readable video" in q["videos"][0]["reason"]
    df = pd.read_parquet(workspace / "data/frames/index.parquet")
    assert "broken" not in set(df.video) and not (workspace / "data/frames/train/broken").exists()


def test_all_corrupt_is_an_error_and_keeps_old_output(tmp_path):
    videos = tmp_path / "data/raw/videos/train"
    videos.mkdir(parents=True)
    (videos / "x.mp4").write_text("nope")
    (videos / "y.mp4").write_bytes(b"\x00" * 100)
    out = tmp_path / "data/frames"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    with pytest.raises(ValueError, match="none of 2 videos is readable"):
        extract_frames(FramesConfig(height=32, width=24), tmp_path / "data/raw/videos", out)
    assert (out / "keep.txt").read_text() == "previous run"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["frames", "raw"]


def test_missing_or_empty_videos_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no videos directory"):
        extract_frames(FramesConfig(), tmp_path / "nope", tmp_path / "frames")
    (tmp_path / "v" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no videos found"):
        extract_frames(FramesConfig(), tmp_path / "v", tmp_path / "frames")
