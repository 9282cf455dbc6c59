"""IUV archives: one writer, random-access reads whose cost does not grow with the frame number."""

import zipfile
import zlib

import numpy as np
import pytest

from dreampose.io import IUVArchive, iuv_shape, load_iuv, read_iuv_frames, write_iuv_archive


def _iuv(frames=12, h=20, w=16, seed=0) -> np.ndarray:
    """A DensePose-like clip: background zeros, a moving body with noisy U/V (so each frame compresses
    to a different, non-trivial size)."""
    rng = np.random.default_rng(seed)
    iuv = np.zeros((frames, h, w, 3), np.uint8)
    for t in range(frames):
        x0 = t % (w // 2)
        iuv[t, 2 : h - 2, x0 : x0 + w // 2] = rng.integers(1, 255, (h - 4, w // 2, 3))
    return iuv


class _Inflated:
    """Counts the bytes every zlib inflater (the archive reader's and zipfile's) produces."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        real = zlib.decompressobj
        counter = self

        class Counting:
            def __init__(self, *args):
                self._d = real(*args)

            def decompress(self, data, *args):
                out = self._d.decompress(data, *args)
                counter.bytes += len(out)
                return out

            def flush(self, *args):
                out = self._d.flush(*args)
                counter.bytes += len(out)
                return out

            def __getattr__(self, name):
                return getattr(self._d, name)

        monkeypatch.setattr(zlib, "decompressobj", Counting)

    def during(self, fn) -> int:
        before = self.bytes
        fn()
        return self.bytes - before


def test_round_trip_is_bit_identical_deterministic_and_np_load_compatible(tmp_path):
    iuv = _iuv()
    a = write_iuv_archive(tmp_path / "a.npz", iuv)
    b = write_iuv_archive(tmp_path / "b.npz", iuv.copy())
    assert a.read_bytes() == b.read_bytes()  # equal arrays, equal bytes (DVC hashes them)
    with zipfile.ZipFile(a) as zf:
        assert zf.testzip() is None  # every member's CRC checks: a standard zip
    with np.load(a) as z:  # what np.savez_compressed's readers expect: key 'iuv'
        assert np.array_equal(z["iuv"], iuv)
    assert np.array_equal(load_iuv(a), iuv) and load_iuv(a).dtype == np.uint8
    assert iuv_shape(a) == iuv.shape
    for frames in ([0, 1, 2, 3, 4], [11, 3, 11], [7], list(range(12))):
        assert np.array_equal(read_iuv_frames(a, frames), iuv[frames]), frames
    empty = write_iuv_archive(tmp_path / "e.npz", np.zeros((0, 4, 4, 3), np.uint8))
    assert load_iuv(empty).shape == (0, 4, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        write_iuv_archive(tmp_path / "f.npz", iuv.astype(np.float32))


@pytest.mark.parametrize("save", [np.savez_compressed, np.savez], ids=["deflated", "stored"])
def test_archives_written_before_the_frame_index_still_read(tmp_path, save):
    iuv = _iuv()
    save(tmp_path / "old.npz", iuv=iuv)
    assert IUVArchive.open(tmp_path / "old.npz").table is None
    assert np.array_equal(read_iuv_frames(tmp_path / "old.npz", [9, 0, 9]), iuv[[9, 0, 9]])
    assert np.array_equal(load_iuv(tmp_path / "old.npz"), iuv)


def test_a_late_window_inflates_no_more_than_an_early_one(tmp_path, monkeypatch):
    """The issue's defect: in a deflated npz, frame t could only be reached by inflating frames 0..t. The stage's
    archive writer now gives an item at frame 359 the inflate cost of an item at frame 0."""
    from dreampose.data.dataset import read_iuv_frames as dataset_read
    from dreampose.data.densepose.run import save_npz

    frames, h, w = 360, 32, 32
    iuv = _iuv(frames, h, w)
    save_npz(tmp_path / "v.npz", iuv=iuv)  # the densepose stage's writer
    counter = _Inflated(monkeypatch)
    first = counter.during(lambda: dataset_read(tmp_path / "v.npz", [0, 1, 2, 3, 4]))
    last = counter.during(lambda: dataset_read(tmp_path / "v.npz", [355, 356, 357, 358, 359]))
    window = 5 * h * w * 3
    assert first >= window and last >= window
    assert last <= 1.5 * first, (first, last)  # the old layout: last ~ 67 x first
    # Once the archive's layout is read (the dataset keeps it), a window inflates that window alone.
    from dreampose.data.dataset import IUVFrames

    cache = IUVFrames(max_bytes=0)  # a video too large to keep whole
    cache.frames(tmp_path / "v.npz", [0])
    for at in (0, 180, 355):
        got = counter.during(lambda at=at: cache.frames(tmp_path / "v.npz", range(at, at + 5)))
        assert window <= got <= window + 64, (at, got)


def test_bad_archives_give_clear_errors(tmp_path):
    iuv = _iuv()
    good = write_iuv_archive(tmp_path / "good.npz", iuv)
    data = good.read_bytes()
    (tmp_path / "text.npz").write_bytes(b"not a zip")
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileNotFoundError, match="no IUV archive"):
        read_iuv_frames(tmp_path / "missing.npz", [0])
    for name in ("text.npz", "cut.npz"):
        with pytest.raises(ValueError, match=r"corrupt IUV archive.*re-run"):
            read_iuv_frames(tmp_path / name, [0])
        with pytest.raises(ValueError, match="corrupt IUV archive"):
            load_iuv(tmp_path / name)
    # One flipped byte inside frame 5's compressed data: a read of frame 5 fails, others still read.
    arc = IUVArchive.open(good)
    at = arc.data_start + int(arc.table[5, 0] + arc.table[5, 1]) // 2
    flipped = bytearray(data)
    flipped[at] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt IUV archive"):
        read_iuv_frames(tmp_path / "flip.npz", [4, 5, 6])
    assert np.array_equal(read_iuv_frames(tmp_path / "flip.npz", [0, 11]), iuv[[0, 11]])
    np.savez(tmp_path / "other.npz", pose=iuv)
    with pytest.raises(ValueError, match="no 'iuv' array"):
        read_iuv_frames(tmp_path / "other.npz", [0])
    np.savez(tmp_path / "float.npz", iuv=iuv.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        iuv_shape(tmp_path / "float.npz")
    with pytest.raises(ValueError, match="pose frame 12 beyond its 12 frames"):
        read_iuv_frames(good, [3, 12])
