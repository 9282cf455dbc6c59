"""Catalog photo intake: bytes or a (policy-checked) URL in, the model's ``H x W`` RGB frame out, or one clear
error line (not an image, truncated, tiny, decompression bomb, blank). CMYK, RGBA, 16-bit and EXIF-rotated photos
are converted, not rejected."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dreampose.catalog.safe_fetch import UrlPolicy, fetch_url

MIN_SIDE = 64
MAX_PIXELS = 40_000_000  # 40 MP: larger than any catalog camera, far below a decompression bomb
MAX_DOWNLOAD_BYTES = 50_000_000
BLANK_STD = 2.0 / 255.0  # a photo whose pixels barely vary holds no person


@dataclass(frozen=True)
class Photo:
    """A validated photo: ``pixels`` is uint8 ``(H, W, 3)`` at the model's size."""

    pixels: np.ndarray
    source: str
    original_size: tuple[int, int]  # (width, height) after EXIF rotation
    original_mode: str
    notes: tuple[str, ...] = field(default=())


def read_photo_bytes(
    photo: str,
    timeout_s: float = 30.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    url_policy: UrlPolicy | None = None,
) -> bytes:
    """The photo's bytes from a local path or an http(s) URL (size-capped).

    A URL may not reach loopback, private, link-local or other internal addresses, nor redirect to them,
    unless ``url_policy`` allows it (``dreampose.catalog.safe_fetch``).
    """
    parsed = urlparse(photo)
    if parsed.scheme in ("http", "https"):
        try:
            return fetch_url(photo, url_policy or UrlPolicy(), timeout_s=timeout_s, max_bytes=max_bytes)
        except ValueError as err:  # BlockedUrlError stays itself
            raise type(err)(f"photo {err}") from None
    if parsed.scheme and len(parsed.scheme) > 1:  # a one-letter "scheme" is a Windows drive
        raise ValueError(f"photo {photo!r}: only local paths and http(s) URLs are accepted")
    path = Path(photo)
    if not path.is_file():
        raise FileNotFoundError(f"photo {photo}: no such file")
    if path.stat().st_size > max_bytes:
        raise ValueError(f"photo {photo} is larger than {max_bytes} bytes")
    return path.read_bytes()


def photo_url_policy(cfg, allow_private: bool = False) -> UrlPolicy:
    """The URL policy of a ``photo_url`` config section; ``allow_private`` (a CLI flag) widens it."""
    return UrlPolicy.of(cfg.allow_private or allow_private, cfg.allow_hosts, cfg.max_redirects)


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float images to 8 bits (``convert('RGB')`` would clip at 255)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr8 = np.clip(arr * 255.0 + 0.5, 0, 255)
    else:
        # PNG 16-bit greyscale opens as I;16 (or I); its range is 0..65535.
        arr8 = np.clip(arr.astype(np.float64) / 257.0 + 0.5, 0, 255)
    return Image.fromarray(arr8.astype(np.uint8)).convert("RGB")


def to_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any Pillow mode → 8-bit RGB; transparency composited on white. Returns the notes of what changed."""
    notes: list[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _sixteen_bit_to_rgb(img), [f"converted {mode} to 8-bit RGB (scaled, not clipped)"]
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"composited {mode} on white")
        return Image.alpha_composite(white, rgba).convert("RGB"), notes
    if img.mode != "RGB":
        notes.append(f"converted {mode} to RGB")
        img = img.convert("RGB")
    return img, notes


def resize_center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Resize (aspect kept) so the image covers ``height x width``, then center-crop: the frames-stage geometry."""
    from dreampose.data.frames import resize_center_crop as fit

    return Image.fromarray(fit(np.asarray(img), height, width))


def is_blank(pixels: np.ndarray, threshold: float = BLANK_STD) -> bool:
    """True when every channel's standard deviation (in [0, 1] units) is below ``threshold``."""
    arr = np.asarray(pixels, dtype=np.float64) / 255.0
    return bool(arr.reshape(-1, arr.shape[-1]).std(axis=0).max() < threshold)


def validate_photo(
    photo: str,
    height: int,
    width: int,
    min_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    url_policy: UrlPolicy | None = None,
) -> Photo:
    """Load, check and convert one catalog photo to uint8 ``(height, width, 3)``.

    A side shorter than ``min_side`` (default: 64 px, or the model's side when that is smaller) is
    refused. Raises ``ValueError`` (``FileNotFoundError`` for a missing path) with one line naming the photo.
    """
    data = read_photo_bytes(photo, url_policy=url_policy)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"photo {photo}: not an image (Pillow cannot identify it)") from None
    except Image.DecompressionBombError:
        raise ValueError(
            f"photo {photo}: refusing a decompression bomb (claims more than {max_pixels} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # a recognised header with broken data after it
        raise ValueError(f"photo {photo}: truncated or corrupt image data ({err})") from None
    w, h = img.size
    # The header's claimed size is checked before any pixel is decoded.
    if w * h > max_pixels:
        raise ValueError(f"photo {photo}: {w}x{h} is too large ({w * h} pixels > {max_pixels}); refusing to decode")
    mode = img.mode
    notes: list[str] = []
    try:
        img.load()
        orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"photo {photo}: truncated or corrupt image data ({err})") from None
    if orientation not in (1, None):
        notes.append(f"applied EXIF orientation {orientation}")
    w, h = img.size
    # 64 px, or the model's own side when the model is smaller (the demo renders 48 px wide).
    min_w = min(MIN_SIDE, width) if min_side is None else min_side
    min_h = min(MIN_SIDE, height) if min_side is None else min_side
    if w < min_w or h < min_h:
        raise ValueError(f"photo {photo}: {w}x{h} is too small (need at least {min_w}x{min_h} px)")
    img, conv = to_rgb(img)
    notes.extend(conv)
    pixels = np.asarray(resize_center_crop(img, height, width), dtype=np.uint8)
    if is_blank(pixels):
        raise ValueError(f"photo {photo}: the image is blank/uniform, no person to animate")
    return Photo(pixels=pixels, source=photo, original_size=(w, h), original_mode=mode, notes=tuple(notes))
