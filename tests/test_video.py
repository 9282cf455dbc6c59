"""Video I/O: H.264 round trip, odd sizes, the decord padded-row repair, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from dreampose.video import as_rgb, iter_video, pad_to_even, probe_video, read_video, write_video


def _clip(t: int = 12, h: int = 64, w: int = 48) -> np.ndarray:
    """Smooth content (block + moving gradient) that H.264 keeps almost exactly."""
    x = np.zeros((t, h, w, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    x[..., 1] = (np.arange(t) * 255 // max(t - 1, 1))[:, None, None]
    x[:, h // 4 : h // 2, w // 4 : w // 2, 2] = 200
    return x


@pytest.mark.parametrize("size", [(64, 48), (32, 40), (64, 64)])
def test_round_trip(tmp_path, size):
    x = _clip(12, *size)
    path = write_video(x, tmp_path / "a.mp4", fps=16)
    y, fps = read_video(path)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert fps == pytest.approx(16.0)
    assert np.abs(y.astype(int) - x).mean() < 3.0
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (12, *size)
    assert info.duration_s == pytest.approx(12 / 16)


def test_odd_size_is_padded_by_edge_replication(tmp_path):
    x = _clip(6, 33, 47)
    y, _ = read_video(write_video(iter(list(x)), tmp_path / "odd.mp4", fps=10))
    assert y.shape == (6, 34, 48, 3)
    assert np.abs(y[:, :33, :47].astype(int) - x).mean() < 3.0
    assert pad_to_even(x[0]).shape == (34, 48, 3)
    np.testing.assert_array_equal(pad_to_even(x[0])[33, :47], x[0][32])


def test_iter_video_selects_frames(tmp_path):
    x = _clip(10)
    path = write_video(x, tmp_path / "a.mp4", fps=16)
    got = list(iter_video(path, [0, 3, 9, 40]))
    assert [i for i, _ in got] == [0, 3, 9]
    assert np.abs(got[1][1].astype(int) - x[3]).mean() < 3.0


@pytest.mark.parametrize("size", [(64, 48), (32, 40), (40, 60)])  # width 48: decord's padded rows
def test_iter_video_reuse_gives_the_same_frames_in_one_buffer(tmp_path, size):
    path = write_video(_clip(6, *size), tmp_path / "a.mp4", fps=16)
    fresh = list(iter_video(path, [1, 2, 4]))
    reused = [(i, f.copy(), f) for i, f in iter_video(path, [1, 2, 4], reuse=True)]
    assert [i for i, *_ in reused] == [i for i, _ in fresh] == [1, 2, 4]
    for (_, want), (_, got, _) in zip(fresh, reused, strict=True):
        assert got.shape == (*size, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)  # the bytes decord's asnumpy gives
    if size[1] != 48:  # (the padded-row repair copies, so only there is each frame a new array)
        assert reused[0][2] is reused[1][2] is reused[2][2]  # one buffer, overwritten frame by frame


def test_as_rgb_repairs_padded_rows():
    frame = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    padded = np.zeros((4, 8 * 3), np.uint8)  # rows padded to 8 pixels, as decord returns them
    padded[:, :12] = frame.reshape(4, 12)
    bogus = padded.reshape(4, 4, -1)  # what decord hands back: right H, W, wrong channel count
    assert bogus.shape[2] != 3
    np.testing.assert_array_equal(as_rgb(bogus), frame)
    assert as_rgb(frame) is frame


def test_write_is_atomic_and_validates(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "empty.mp4", fps=8)
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "f.mp4", fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(_clip(2), tmp_path / "z.mp4", fps=0)
    assert list(tmp_path.iterdir()) == []  # no target, no temp file left behind


@pytest.mark.parametrize("content", [b"this is not a video\n", bytes(range(256)) * 20])
def test_unreadable_file_raises_clear_error(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.mp4: not a readable video"):
        probe_video(bad)
    with pytest.raises(ValueError, match="not a readable video"):
        read_video(bad)
    with pytest.raises(FileNotFoundError, match="no such video"):
        probe_video(tmp_path / "missing.mp4")


def test_truncated_mp4_is_unreadable(tmp_path):
    path = write_video(_clip(12), tmp_path / "a.mp4", fps=16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable video"):
        read_video(path)


def _fresh_python(code: str) -> bytes:
    """``code`` run in a new interpreter (the import order is the point of the tests below); its stdout."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-1500:]
    return res.stdout


def test_reading_a_video_leaves_the_vp9_encoder_working(tmp_path):
    """decord's own import puts its FFmpeg 4 / libvpx 6 in the global symbol scope, after which PyAV's VP9 encoder
    (the review page's webm) fails to open. Reading through dreampose.video first must leave it working; a fresh
    interpreter, since the order of imports is the point."""
    path = write_video(_clip(4, 32, 24), tmp_path / "a.mp4", fps=8)
    code = (  # read first: decord loads before PyAV does
        "from dreampose.video import read_video\n"
        f"x, _ = read_video({str(path)!r})\n"
        "from dreampose.catalog.review_page import encode_video\n"
        "import sys; sys.stdout.buffer.write(encode_video(x, 8, 'webm')[:4])\n"
    )
    assert _fresh_python(code) == b"\x1a\x45\xdf\xa3"  # the EBML magic of a webm file


def test_threads_probing_at_first_import_all_see_the_whole_module(tmp_path):
    """The download stage probes videos from several threads, the first time decord is imported: no thread may see
    a half-imported module (a video would be reported corrupt). A fresh interpreter, so the import is the first."""
    path = write_video(_clip(4, 32, 24), tmp_path / "a.mp4", fps=8)
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from dreampose.video import probe_video\n"
        f"with ThreadPoolExecutor(8) as pool: infos = list(pool.map(probe_video, [{str(path)!r}] * 8))\n"
        "print(sorted({i.num_frames for i in infos}))\n"
    )
    assert _fresh_python(code).strip() == b"[4]"
