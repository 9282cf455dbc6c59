"""Pure IUV functions: chart prediction -> per-pixel I, U, V; pasting; person choice; model input.

Conventions (docs/architecture.md, "IUV conventions"):

- stored IUV is uint8 ``(..., H, W, 3)``: channel 0 the part index I (0 background, 1-24 body parts),
  channels 1, 2 the surface coordinates U, V quantized as ``round(u * 255)``;
- the model sees ``uv_to_model(iuv)``: background 0, body U, V mapped into ``[UV_LOW, 1]``. This one
  function is used in training, rendering and catalog items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

NUM_PARTS = 24
ArrayLike = np.ndarray | torch.Tensor
UV_LOW = 0.1  # body U,V start here so a body pixel with u = 0 still differs from the background


def chart_to_iuv(
    coarse: torch.Tensor, fine: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DensePose chart outputs -> ``(I, U, V)`` at the chart's resolution.

    ``coarse``: ``(..., 2, h, w)`` foreground logits; ``fine``, ``u``, ``v``: ``(..., 25, h, w)`` (channel 0 is
    background). I is the fine-part argmax masked by the coarse foreground argmax; U, V are read from
    the channel of the winning part. Returns I as int64 and U, V as float32, each ``(..., h, w)``;
    U, V are 0 on the background.
    """
    if coarse.shape[-3] != 2:
        raise ValueError(f"coarse segmentation must have 2 channels, got shape {tuple(coarse.shape)}")
    for name, t in (("fine", fine), ("u", u), ("v", v)):
        if t.shape[-3] != NUM_PARTS + 1 or t.shape[-2:] != coarse.shape[-2:]:
            raise ValueError(
                f"{name} must have shape (..., {NUM_PARTS + 1}, {coarse.shape[-2]}, {coarse.shape[-1]}), "
                f"got {tuple(t.shape)}"
            )
    fg = coarse.argmax(dim=-3) > 0
    part = fine.argmax(dim=-3) * fg
    idx = part.unsqueeze(-3)
    uu = torch.gather(u, -3, idx).squeeze(-3) * fg
    vv = torch.gather(v, -3, idx).squeeze(-3) * fg
    return part.long(), uu.float(), vv.float()


def encode_iuv(part: ArrayLike, u: ArrayLike, v: ArrayLike) -> np.ndarray:
    """``(I, U, V)`` -> compact uint8 ``(..., 3)``; U, V clipped to [0, 1] and zeroed on the background."""
    part, u, v = (np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x) for x in (part, u, v))
    if np.any((part < 0) | (part > NUM_PARTS)):
        raise ValueError(f"part index must be in [0, {NUM_PARTS}], got range [{part.min()}, {part.max()}]")
    body = part > 0
    uq = np.rint(np.clip(u, 0.0, 1.0) * 255.0) * body
    vq = np.rint(np.clip(v, 0.0, 1.0) * 255.0) * body
    return np.stack([part, uq, vq], axis=-1).astype(np.uint8)


def decode_iuv(iuv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 ``(..., 3)`` -> ``(I int64, U float32, V float32)`` with U, V in [0, 1]."""
    iuv = np.asarray(iuv)
    if iuv.dtype != np.uint8 or iuv.shape[-1] != 3:
        raise ValueError(f"IUV must be uint8 (..., 3), got {iuv.dtype} {iuv.shape}")
    return iuv[..., 0].astype(np.int64), iuv[..., 1].astype(np.float32) / 255.0, iuv[..., 2].astype(np.float32) / 255.0


def box_extent(box: Sequence[float]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` float box -> integer pixel extent ``(x, y, w, h)`` covering it (w, h >= 1)."""
    x0, y0, x1, y1 = (float(b) for b in box)
    if not all(math.isfinite(b) for b in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
        raise ValueError(f"box must be finite (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {tuple(box)}")
    x, y = math.floor(x0), math.floor(y0)
    return x, y, max(math.ceil(x1) - x, 1), max(math.ceil(y1) - y, 1)


def paste(patch: np.ndarray, x: int, y: int, height: int, width: int) -> np.ndarray:
    """Place ``patch`` (h, w, C) with its top-left at pixel (x, y) on a zero (height, width, C) canvas, clipped."""
    h, w = patch.shape[:2]
    out = np.zeros((height, width, *patch.shape[2:]), dtype=patch.dtype)
    dx0, dy0 = max(x, 0), max(y, 0)
    dx1, dy1 = min(x + w, width), min(y + h, height)
    if dx1 > dx0 and dy1 > dy0:
        out[dy0:dy1, dx0:dx1] = patch[dy0 - y : dy1 - y, dx0 - x : dx1 - x]
    return out


def paste_iuv(box_iuv: np.ndarray, box: Sequence[float], height: int, width: int) -> np.ndarray:
    """A box-resolution uint8 IUV -> the full frame: nearest-resized into the box's pixel extent, clipped."""
    x, y, w, h = box_extent(box)
    t = torch.from_numpy(np.ascontiguousarray(box_iuv)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(t, size=(h, w), mode="nearest")[0].permute(1, 2, 0).to(torch.uint8).numpy()
    return paste(resized, x, y, height, width)


def paste_chart(
    coarse: torch.Tensor,
    fine: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    box: Sequence[float],
    height: int,
    width: int,
) -> np.ndarray:
    """One detection's chart outputs ``(C, s, s)`` -> uint8 IUV ``(height, width, 3)`` of the full frame.

    As DensePose does, the logits and U, V are resized bilinearly to the box's pixel extent before the
    argmax (so part borders are sharp at frame resolution), then pasted with clipping.
    """
    x, y, w, h = box_extent(box)
    chans = [coarse.shape[-3], fine.shape[-3], u.shape[-3]]
    stacked = torch.cat([coarse, fine, u, v], dim=-3).float()[None]
    stacked = F.interpolate(stacked, size=(h, w), mode="bilinear", align_corners=False)[0]
    c, f, uu, vv = torch.split(stacked, [chans[0], chans[1], chans[2], chans[2]], dim=0)
    part, ub, vb = chart_to_iuv(c, f, uu, vv)
    return paste(encode_iuv(part, ub, vb), x, y, height, width)


def select_person(boxes: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, min_score: float) -> int | None:
    """The detection to keep: among scores >= ``min_score``, the largest ``score * box area``.

    Fashion videos show one model filling the frame; weighting the score by area prefers that person
    over a small confident background figure. Ties go to the lower index. ``None`` when nothing qualifies.
    """
    b = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    key = np.where(s >= min_score, s * area, -np.inf)
    if len(key) == 0 or not np.isfinite(key).any():
        return None
    return int(np.argmax(key))


def iuv_bbox(iuv: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight ``(x0, y0, x1, y1)`` box (pixel edges) around the body pixels, ``None`` if there are none."""
    ys, xs = np.nonzero(np.asarray(iuv)[..., 0])
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def uv_to_model(iuv: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 IUV ``(..., H, W, 3)`` -> float32 ``(..., 2, H, W)``: background 0, body ``UV_LOW + (1 - UV_LOW) * uv``.

    THE normalization of pose input, for training and inference alike. The values come from one 256-entry
    table (:func:`_uv_table`, the formula evaluated on the CPU) on every device, so a window converted on a GPU
    (training batches are shipped as uint8 and converted there) equals the one converted on the CPU bit for bit.
    """
    t = torch.as_tensor(iuv)
    if t.dtype != torch.uint8 or t.ndim < 3 or t.shape[-1] != 3:
        raise ValueError(f"IUV must be uint8 (..., H, W, 3), got {t.dtype} {tuple(t.shape)}")
    if t.device.type == "cpu":
        # One gather instead of six float passes (a paper-size training item's window is 13 MB of float32).
        a = np.moveaxis(t.numpy(), -1, -3)
        uv = np.take(_uv_table(), a[..., 1:3, :, :])
        np.multiply(uv, a[..., :1, :, :] > 0, out=uv)
        return torch.from_numpy(uv)
    return _uv_gather(t)


def _uv_gather(t: torch.Tensor) -> torch.Tensor:
    """:func:`uv_to_model` through torch ops on ``t``'s device: the table's values gathered there (a GPU's own
    float division may round differently from the CPU's; a gather cannot)."""
    table = torch.from_numpy(_uv_table()).to(t.device)
    chw = t.movedim(-1, -3)
    uv = chw[..., 1:3, :, :]
    out = table.index_select(0, uv.reshape(-1).int()).view(uv.shape)
    return out * (chw[..., :1, :, :] > 0)


def _uv_formula(t: torch.Tensor) -> torch.Tensor:
    body = (t[..., :1] > 0).float()
    uv = (UV_LOW + (1.0 - UV_LOW) * t[..., 1:3].float() / 255.0) * body
    return uv.movedim(-1, -3).contiguous()


_UV_TABLE: np.ndarray | None = None


def _uv_table() -> np.ndarray:
    """``_uv_formula`` of a body pixel for every uint8 U/V value, float32 (bit-identical: the same torch ops)."""
    global _UV_TABLE
    if _UV_TABLE is None:
        values = torch.zeros(256, 1, 1, 3, dtype=torch.uint8)
        values[..., 0] = 1
        values[..., 1] = torch.arange(256, dtype=torch.uint8).view(256, 1, 1)
        _UV_TABLE = _uv_formula(values)[:, 0, 0, 0].numpy().copy()
    return _UV_TABLE


def pose_window_indices(t: int, num_frames: int, window: int = 5) -> list[int]:
    """Frame indices of the ``window`` frames centered on ``t``, clamped to ``[0, num_frames - 1]``."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"pose window must be a positive odd number, got {window}")
    if not 0 <= t < num_frames:
        raise ValueError(f"frame {t} outside a sequence of {num_frames} frames")
    half = window // 2
    return [min(max(i, 0), num_frames - 1) for i in range(t - half, t + half + 1)]


def pose_window(iuv_seq: np.ndarray | torch.Tensor, t: int, window: int = 5) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 IUV -> float32 ``(2 * window, H, W)``: ``[u(t-2), v(t-2), …, u(t+2), v(t+2)]``."""
    seq = torch.as_tensor(iuv_seq)
    if seq.ndim != 4:
        raise ValueError(f"IUV sequence must be (T, H, W, 3), got {tuple(seq.shape)}")
    idx = pose_window_indices(t, seq.shape[0], window)
    return uv_to_model(seq[idx]).flatten(0, 1)
