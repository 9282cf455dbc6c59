"""Video I/O: H.264 mp4 writing (PyAV), reading and probing (decord).

Writes are atomic: frames are encoded into a temporary file beside the target, which is
renamed into place only once the container is closed, so a crash never leaves a
half-written ``.mp4`` that looks valid to the next stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")  # what the pipeline reads as a video file


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` reports about a readable video."""

    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def _check_frame(frame: np.ndarray, index: int, shape: tuple[int, ...] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index}: expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"frame {index}: shape {frame.shape} differs from the first frame's {shape}")
    return frame


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by one replicated edge row/column.

    yuv420p stores chroma at half resolution, so H.264 needs even sizes. Replicating the
    edge keeps every source pixel (cropping would lose a row) and adds no visible border.
    """
    h, w = frame.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return frame


def _iter_frames(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames: expected a uint8 (T, H, W, 3) array, got shape {frames.shape}")
        yield from frames
    else:
        yield from frames


def write_video(
    frames: np.ndarray | Iterable[np.ndarray],
    path: str | Path,
    fps: float,
    crf: int = 18,
) -> Path:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` (array or iterable) as an H.264 yuv420p mp4.

    Odd sizes are padded to even by edge replication (see ``pad_to_even``). ``crf`` is x264's
    constant rate factor (0 lossless ... 51 worst; 18 is visually lossless). Returns ``path``.
    """
    import av

    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.mp4")
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None
            shape = None
            for i, frame in enumerate(_iter_frames(frames)):
                frame = _check_frame(frame, i, shape)
                if stream is None:
                    shape = frame.shape
                    even = pad_to_even(frame)
                    stream = container.add_stream("libx264", rate=rate)
                    stream.height, stream.width = even.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.time_base = 1 / rate
                    # mbtree off: with it, x264 gave different bytes for identical small frames run to run,
                    # and DVC should see byte-identical outputs for identical inputs
                    stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(frame)), format="rgb24")
                vf.pts, vf.time_base = i, 1 / rate  # explicit timestamps: identical input -> identical bytes
                for packet in stream.encode(vf):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


_DECORD_LOCK = threading.Lock()
_decord_module: Any = None


def _decord():
    """decord, imported with its native library loaded ``RTLD_LOCAL``.

    decord loads ``libdecord.so`` with ``RTLD_GLOBAL``, which puts its bundled FFmpeg 4 and libvpx 6 into the
    process's global symbol scope. PyAV bundles FFmpeg 7 and libvpx 12 and resolves their symbols lazily, at first
    call: after decord, PyAV's VP9 encoder binds to decord's libvpx and fails to open (``avcodec_open2`` returns
    EINVAL), so a process that read a video and then wrote a review page lost the page. decord needs no global
    symbols (it calls its library through its own handle), so the import loads it local. ``ctypes.CDLL`` is
    replaced only during the first import, under a lock: threads that probe videos at once (the download stage)
    wait for the whole import instead of seeing a half-initialised module."""
    global _decord_module
    with _DECORD_LOCK:
        if _decord_module is None:
            real = ctypes.CDLL

            class _LocalCDLL(real):  # type: ignore[misc, valid-type]
                def __init__(self, name, mode=ctypes.DEFAULT_MODE, *args, **kwargs):
                    super().__init__(name, mode & ~ctypes.RTLD_GLOBAL, *args, **kwargs)

            ctypes.CDLL = _LocalCDLL
            try:
                import decord
            finally:
                ctypes.CDLL = real
            _decord_module = decord
        return _decord_module


def _open_reader(path: Path):
    decord = _decord()

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises its own DECORDError (a RuntimeError) with a C++ trace
        raise ValueError(f"{path}: not a readable video ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """Undo decord's row padding: return a contiguous uint8 ``(H, W, 3)`` frame.

    For some widths (e.g. 48) decord 0.6 hands back the decoder's padded rows (stride > 3 * W)
    reshaped as ``(H, W, C')`` with a bogus channel count. The height is right, so the rows
    are recovered from the flat buffer and cut to ``3 * W`` bytes.
    """
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    h, w = frame.shape[:2]
    flat = np.ascontiguousarray(frame).reshape(-1)
    stride = flat.size // h
    if flat.size % h or stride < 3 * w:
        raise ValueError(f"decoded frame has an unexpected layout {frame.shape}")
    return np.ascontiguousarray(flat.reshape(h, stride)[:, : 3 * w].reshape(h, w, 3))


def open_stream(path: str | Path) -> tuple[Any, int, float]:
    """A decord reader at frame 0, its frame count and average fps, with nothing decoded yet (``open_video``
    also decodes frame 0 and seeks back, which costs several frames' decoding time per video).
    ``ValueError`` if the container cannot be opened or holds no frames; ``iter_video`` reports a frame
    that does not decode."""
    path = Path(path)
    vr = _open_reader(path)
    n = len(vr)
    if n == 0:
        raise ValueError(f"{path}: not a readable video (no frames)")
    return vr, n, float(vr.get_avg_fps())


def open_video(path: str | Path) -> tuple[Any, VideoInfo]:
    """A decord reader positioned at frame 0 and the video's ``VideoInfo``; ``ValueError`` if unreadable."""
    path = Path(path)
    vr = _open_reader(path)
    n = len(vr)
    if n == 0:
        raise ValueError(f"{path}: not a readable video (no frames)")
    try:
        h, w = vr[0].shape[:2]
        vr.seek(0)
    except Exception as err:
        raise ValueError(f"{path}: not a readable video (first frame does not decode: {_first_line(err)})") from None
    return vr, VideoInfo(num_frames=n, fps=float(vr.get_avg_fps()), height=int(h), width=int(w))


def iter_video(
    path: str | Path, indices: Iterable[int] | None = None, reader: Any = None, reuse: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode sequentially, yielding ``(source_index, uint8 (H, W, 3))`` for the wanted frames.

    Sequential ``next()`` decoding is used instead of ``get_batch`` (which fails outright on the
    padded-row widths ``as_rgb`` repairs) and is as fast as seeking, since H.264 frames
    depend on their predecessors anyway. ``reader`` reuses one from ``open_video``.
    ``reuse=True`` copies every frame into one array, overwritten by the next frame (for a consumer that copies
    what it keeps, as the frames stage does into a PIL image): no fresh array per frame to allocate and fault in
    (~0.03 ms of a decoding thread's 0.3 ms per 256 × 192 frame here).
    """
    path = Path(path)
    vr = reader if reader is not None else _open_reader(path)
    n = len(vr)
    wanted = None if indices is None else sorted(set(indices))
    last = n - 1 if wanted is None else min(max(wanted, default=-1), n - 1)
    keep = None if wanted is None else set(wanted)
    buffer = None
    for i in range(last + 1):
        try:
            frame = vr.next()
        except StopIteration:
            raise ValueError(f"{path}: not a readable video (ended at frame {i} of {n})") from None
        except Exception as err:
            raise ValueError(f"{path}: not a readable video (frame {i}: {_first_line(err)})") from None
        if keep is None or i in keep:
            if reuse:
                buffer = _asnumpy_into(frame, buffer)
                yield i, as_rgb(buffer)
            else:
                yield i, as_rgb(frame.asnumpy())


def _asnumpy_into(frame: Any, out: np.ndarray | None) -> np.ndarray:
    """decord's ``NDArray.asnumpy()`` of a uint8 frame, into ``out`` when it has the frame's shape (else a new
    array): the same copy call decord's own ``asnumpy`` makes, without its fresh ``np.empty``."""
    from decord._ffi.base import _LIB, check_call

    shape = tuple(frame.shape)
    if frame.dtype != "uint8":  # never seen for video frames; decord's conversion handles any other type
        return frame.asnumpy()
    if out is None or out.shape != shape:
        out = np.empty(shape, np.uint8)
    check_call(
        _LIB.DECORDArrayCopyToBytes(frame.handle, out.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(out.nbytes))
    )
    return out


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps and size of a video; ``ValueError`` naming the file if it cannot be decoded."""
    return open_video(path)[1]


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames as uint8 ``(T, H, W, 3)`` RGB and the average fps."""
    path = Path(path)
    reader, info = open_video(path)
    frames = [f for _, f in iter_video(path, reader=reader)]
    if len(frames) != info.num_frames:
        raise ValueError(f"{path}: not a readable video ({len(frames)} of {info.num_frames} frames decoded)")
    return np.stack(frames), info.fps
