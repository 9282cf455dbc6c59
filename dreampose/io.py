"""File I/O shared by the stages: images, JSON and DensePose IUV archives, each written atomically.

IUV archives (``.npz``): one writer, :func:`write_iuv_archive`, and one reader API, :func:`load_iuv` (whole),
:func:`read_iuv_frames` / :class:`IUVArchive` (any frames, at a cost proportional to the frames read) and
:func:`iuv_shape`. An archive is a standard zip that ``np.load(path)["iuv"]`` reads as uint8 ``(T, H, W, 3)``;
its ``iuv.npy`` member is one deflate stream with a full flush after the array header and after every frame
(each frame starts on a byte boundary with an empty dictionary), and the member ``iuv_index.npy`` (int64
``(T, 3)``: start and end of frame ``t`` in the compressed member, CRC-32 of its raw bytes) says where each
frame's deflate blocks lie, so a frame is read by inflating that frame alone. Archives written before the
index existed (a plain ``np.savez_compressed``) are still read, by inflating from the start up to the frame.
See docs/architecture.md ("IUV archives").
"""

from __future__ import annotations

import io
import json
import logging
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dreampose.fsutil import atomic_write


def png_complete(path: Path, size: tuple[int, int] | None = None) -> bool:
    """True when ``path`` decodes fully as an image (of ``size`` = (H, W), when given)."""
    try:
        with Image.open(path) as im:
            im.load()
            return size is None or (im.height, im.width) == tuple(size)
    except (OSError, ValueError, SyntaxError):
        return False


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such image")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_png(image: np.ndarray, path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def write_json(data: dict[str, Any], path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str)))


log = logging.getLogger(__name__)

IUV_MEMBER = "iuv.npy"
IUV_INDEX_MEMBER = "iuv_index.npy"
_ZIP_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01 00:00: a fixed stamp, so equal arrays give equal bytes
_ZIP64 = 0xFFFFFFFF
_legacy_warned: set[Path] = set()


def _check_iuv_array(iuv: np.ndarray, what: str) -> None:
    if iuv.dtype != np.uint8 or iuv.ndim != 4 or iuv.shape[-1] != 3:
        raise ValueError(f"{what}: 'iuv' must be uint8 (T, H, W, 3), got {iuv.dtype} {iuv.shape}")


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _zip_member(name: str, data: bytes, crc: int, size: int, offset: int) -> tuple[bytes, bytes]:
    """A deflated zip entry (local header + data) and its central-directory record, sizes and offset in zip64
    extras (as numpy's ``savez`` forces), with a fixed timestamp."""
    raw = name.encode()
    local_extra = struct.pack("<HHQQ", 1, 16, size, len(data))
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, _ZIP_DOS_DATE, crc, _ZIP64, _ZIP64, len(raw), len(local_extra)
    )
    central_extra = struct.pack("<HHQQQ", 1, 24, size, len(data), offset)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, _ZIP_DOS_DATE, crc, _ZIP64, _ZIP64, len(raw),
        len(central_extra), 0, 0, 0, 0o644 << 16, _ZIP64,
    )  # fmt: skip
    return local + raw + local_extra + data, central + raw + central_extra


def _zip_end(entries: int, cd_offset: int, cd_size: int) -> bytes:
    """Zip64 end record + locator + end record (readers take the zip64 values)."""
    end64_at = cd_offset + cd_size
    end64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, end64_at, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, min(cd_size, _ZIP64), min(cd_offset, _ZIP64), 0)
    return end64 + locator + end


def write_iuv_archive(path: Path, iuv: np.ndarray, level: int = 1) -> Path:
    """Write uint8 ``(T, H, W, 3)`` IUV to ``path`` (atomically) as a frame-indexed archive (module docstring).

    The only IUV writer: the same array always gives the same bytes (fixed timestamps, one zlib ``level``).
    Level 1: on 640x512 stand-in IUV a window inflates ~1.7x faster than at numpy's level 6, for ~3 % more disk.
    """
    iuv = np.ascontiguousarray(iuv)
    _check_iuv_array(iuv, str(path))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(iuv))
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    head = header.getvalue()
    chunks = [comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)]
    pos, crc = len(chunks[0]), zlib.crc32(head)
    table = np.zeros((len(iuv), 3), np.int64)
    for t, frame in enumerate(iuv):
        raw = frame.tobytes()
        chunk = comp.compress(raw) + comp.flush(zlib.Z_FULL_FLUSH)
        frame_crc = zlib.crc32(raw)
        table[t] = (pos, pos + len(chunk), frame_crc)
        chunks.append(chunk)
        pos += len(chunk)
        crc = zlib.crc32(raw, crc)
    chunks.append(comp.flush())
    data = b"".join(chunks)
    index_raw = _npy_bytes(table)
    index_comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    index_data = index_comp.compress(index_raw) + index_comp.flush()
    iuv_local, iuv_central = _zip_member(IUV_MEMBER, data, crc, len(head) + iuv.nbytes, 0)
    idx_local, idx_central = _zip_member(IUV_INDEX_MEMBER, index_data, zlib.crc32(index_raw), len(index_raw),
                                         len(iuv_local))  # fmt: skip
    cd_offset = len(iuv_local) + len(idx_local)
    tail = iuv_central + idx_central + _zip_end(2, cd_offset, len(iuv_central) + len(idx_central))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(iuv_local)
            f.write(idx_local)
            f.write(tail)

    return atomic_write(Path(path), write)


def _corrupt(path: Path, err: object) -> ValueError:
    return ValueError(f"{path}: corrupt IUV archive ({err}); re-run the download/densepose stage that writes it")


@dataclass(frozen=True)
class IUVArchive:
    """An IUV archive's layout, read once (a few hundred bytes); :meth:`read` opens the file per call, so an
    instance holds no file handle and may be shared with forked DataLoader workers.

    ``table`` is the frame index (``None`` for an archive written before it existed: frames are then inflated
    from the start of the array, ``O(last frame)``); ``data_start`` is the file offset of ``iuv.npy``'s data.
    """

    path: Path
    shape: tuple[int, int, int, int]
    data_start: int
    table: np.ndarray | None

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.shape[1:]))

    @classmethod
    def open(cls, path: str | Path) -> IUVArchive:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no IUV archive (run the download/densepose stage that writes it)")
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if IUV_MEMBER not in names:
                    raise ValueError(f"{path}: IUV archive has no 'iuv' array (keys: {[n[:-4] for n in names]})")
                with zf.open(IUV_MEMBER) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(f)
                if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran:
                    raise ValueError(f"{path}: 'iuv' must be uint8 (T, H, W, 3), got {dtype} {shape}")
                info = zf.getinfo(IUV_MEMBER)
                table = None
                if IUV_INDEX_MEMBER in names:
                    table = np.load(io.BytesIO(zf.read(IUV_INDEX_MEMBER)), allow_pickle=False)
                    ok = table.dtype == np.int64 and table.shape == (shape[0], 3)
                    if ok and len(table):
                        starts, ends = table[:, 0], table[:, 1]
                        ok = bool(
                            starts[0] > 0
                            and (ends >= starts).all()
                            and (starts[1:] == ends[:-1]).all()
                            and ends[-1] <= info.compress_size
                        )
                    if not ok or info.compress_type != zipfile.ZIP_DEFLATED:
                        raise _corrupt(path, "its frame index does not match the 'iuv' array")
            with open(path, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise _corrupt(path, "bad local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
        except (zipfile.BadZipFile, OSError, EOFError, KeyError, struct.error) as err:
            raise _corrupt(path, err) from None
        except ValueError as err:
            if str(err).startswith(str(path)):
                raise
            raise _corrupt(path, err) from None
        return cls(path, tuple(int(d) for d in shape), info.header_offset + 30 + name_len + extra_len, table)  # type: ignore[arg-type]

    def check_frames(self, frames: Sequence[int]) -> list[int]:
        frames = [int(t) for t in frames]
        if not frames:
            raise ValueError(f"{self.path}: no frames requested")
        if min(frames) < 0 or max(frames) >= self.shape[0]:
            bad = max(frames) if max(frames) >= self.shape[0] else min(frames)
            raise ValueError(f"{self.path}: pose frame {bad} beyond its {self.shape[0]} frames")
        return frames

    def read(self, frames: Sequence[int]) -> np.ndarray:
        """``load_iuv(path)[frames]``, bit for bit, inflating only the requested frames (indexed archives);
        memory is ``O(len(frames))`` either way."""
        frames = self.check_frames(frames)
        got = self._read_indexed(sorted(set(frames))) if self.table is not None else self._read_stream(frames)
        return np.stack([got[t] for t in frames])

    def _read_indexed(self, wanted: list[int]) -> dict[int, np.ndarray]:
        assert self.table is not None
        runs: list[list[int]] = []  # consecutive frames are inflated in one go
        for t in wanted:
            if runs and runs[-1][-1] == t - 1:
                runs[-1].append(t)
            else:
                runs.append([t])
        fb, got = self.frame_bytes, {}
        try:
            with open(self.path, "rb") as fh:
                for run in runs:
                    lo, hi = int(self.table[run[0], 0]), int(self.table[run[-1], 1])
                    fh.seek(self.data_start + lo)
                    raw = zlib.decompressobj(-15).decompress(fh.read(hi - lo), len(run) * fb)
                    if len(raw) != len(run) * fb:
                        raise _corrupt(self.path, f"frames {run[0]}-{run[-1]} are truncated")
                    for k, t in enumerate(run):
                        frame = raw[k * fb : (k + 1) * fb]
                        if zlib.crc32(frame) != int(self.table[t, 2]):
                            raise _corrupt(self.path, f"frame {t} fails its CRC check")
                        got[t] = np.frombuffer(frame, np.uint8).reshape(self.shape[1:])
        except (OSError, zlib.error) as err:
            raise _corrupt(self.path, err) from None
        return got

    def _read_stream(self, frames: list[int]) -> dict[int, np.ndarray]:
        """An archive without a frame index: stream ``iuv.npy`` up to the last requested frame."""
        if self.frame_bytes * self.shape[0] > 16 << 20 and self.path not in _legacy_warned:
            _legacy_warned.add(self.path)
            log.warning("%s: IUV archive without a frame index; each read inflates from its start (re-run the "
                        "densepose stage to write indexed archives)", self.path)  # fmt: skip
        fb, got = self.frame_bytes, {}
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(IUV_MEMBER) as f:
                version = np.lib.format.read_magic(f)
                (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
                start = f.tell()
                for t in sorted(set(frames)):
                    f.seek(start + t * fb)  # forward only: a deflated member inflates and drops the gap
                    buf = f.read(fb)
                    if len(buf) != fb:
                        raise _corrupt(self.path, f"frame {t} is truncated")
                    got[t] = np.frombuffer(buf, np.uint8).reshape(self.shape[1:])
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
            raise _corrupt(self.path, err) from None
        return got


def iuv_shape(path: str | Path) -> tuple[int, int, int, int]:
    """``(T, H, W, 3)`` of an IUV archive, from its header alone."""
    return IUVArchive.open(path).shape


def read_iuv_frames(path: str | Path, frames: Sequence[int]) -> np.ndarray:
    """``load_iuv(path)[frames]`` without decoding the whole video (see :class:`IUVArchive`)."""
    return IUVArchive.open(path).read(frames)


def load_iuv(path: str | Path) -> np.ndarray:
    """The whole ``iuv`` uint8 ``(T, H, W, 3)``; a clear error for a missing, corrupt or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no IUV archive (run the download/densepose stage that writes it)")
    if not zipfile.is_zipfile(path):  # np.load would try other formats and say something unrelated
        raise _corrupt(path, "not a zip archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "iuv" not in z.files:
                raise ValueError(f"{path}: IUV archive has no 'iuv' array (keys: {z.files})")
            iuv = z["iuv"]
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, err) from None
    _check_iuv_array(iuv, str(path))
    return iuv
