"""Catalog photo validation: every bad input fails with a clear line, convertible ones are converted."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreampose import catalog

H, W = 64, 48


def _person(h: int = 160, w: int = 120) -> np.ndarray:
    """A grey background with a coloured figure: not blank, asymmetric top/bottom."""
    img = np.full((h, w, 3), 200, np.uint8)
    img[h // 8 : h // 3, w // 3 : 2 * w // 3] = (220, 170, 140)  # head
    img[h // 3 :, w // 4 : 3 * w // 4] = (30, 60, 200)  # body
    return img


def _save(tmp_path: Path, name: str, img: Image.Image, **kw) -> str:
    p = tmp_path / name
    img.save(p, **kw)
    return str(p)


def test_valid_rgb_photo_is_resized_and_cropped(tmp_path):
    path = _save(tmp_path, "ok.jpg", Image.fromarray(_person()), quality=95)
    photo = catalog.validate_photo(path, H, W)
    assert photo.pixels.shape == (H, W, 3) and photo.pixels.dtype == np.uint8
    assert photo.original_size == (120, 160)
    # 160x120 scales by 0.4 to exactly 64x48: the body colour survives at the bottom centre.
    assert np.abs(photo.pixels[-4, W // 2].astype(int) - (30, 60, 200)).max() < 20


def test_resize_center_crop_keeps_the_center(tmp_path):
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 140:160] = 255  # a vertical white stripe in the middle of a wide image
    out = np.asarray(catalog.resize_center_crop(Image.fromarray(img), 64, 48))
    assert out.shape == (64, 48, 3)
    assert out[:, 24].mean() > 200 and out[:, 0].mean() < 10 and out[:, -1].mean() < 10


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture")
    with pytest.raises(ValueError, match="not an image"):
        catalog.validate_photo(str(p), H, W)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        catalog.validate_photo(str(tmp_path / "nope.png"), H, W)


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="only local paths and http"):
        catalog.validate_photo("ftp://example.com/a.jpg", H, W)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_person()).save(buf, format="JPEG", quality=95)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        catalog.validate_photo(str(p), H, W)


def test_tiny_photo(tmp_path):
    path = _save(tmp_path, "tiny.png", Image.fromarray(_person(40, 200)))
    with pytest.raises(ValueError, match="too small"):
        catalog.validate_photo(path, H, W)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` RGB: a decompression bomb as far as the header goes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [8_000, 60_000])  # over our limit; over Pillow's own bomb limit
def test_decompression_bomb(tmp_path, side):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(side, side))
    with pytest.raises(ValueError, match=r"too large|decompression bomb"):
        catalog.validate_photo(str(p), H, W)


def test_cmyk_is_converted(tmp_path):
    path = _save(tmp_path, "cmyk.jpg", Image.fromarray(_person()).convert("CMYK"), quality=95)
    photo = catalog.validate_photo(path, H, W)
    assert photo.original_mode == "CMYK"
    assert any("CMYK" in n for n in photo.notes)
    assert np.abs(photo.pixels[-4, W // 2].astype(int) - (30, 60, 200)).max() < 25


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((160, 120, 4), np.uint8)
    rgba[..., :3] = (30, 60, 200)
    rgba[:, 40:80, 3] = 255  # opaque figure on a transparent background
    photo = catalog.validate_photo(_save(tmp_path, "a.png", Image.fromarray(rgba)), H, W)
    assert tuple(photo.pixels[H // 2, 0]) == (255, 255, 255)  # transparent → white, not black
    assert tuple(photo.pixels[H // 2, W // 2]) == (30, 60, 200)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 120).astype(np.uint16), (160, 1))
    ramp[:, :10] = 0
    path = _save(tmp_path, "deep.png", Image.fromarray(ramp))
    photo = catalog.validate_photo(path, H, W)
    row = photo.pixels[H // 2, :, 0].astype(int)
    # A clipped conversion would be 255 everywhere but the darkest pixels; scaling keeps the ramp.
    assert row[0] < 10 and row[-1] > 245 and 100 < row[W // 2] < 160
    assert np.all(np.diff(row[3:]) >= 0)


def test_exif_rotation_is_honoured(tmp_path):
    upright = _person()  # 160 tall, 120 wide, body at the bottom
    stored = np.rot90(upright, k=1)  # stored sideways (120 tall, 160 wide), as a camera would
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: the viewer rotates 90° clockwise (undoes the rot90 above)
    path = _save(tmp_path, "rot.jpg", Image.fromarray(np.ascontiguousarray(stored)), exif=exif, quality=95)
    photo = catalog.validate_photo(path, H, W)
    assert photo.original_size == (120, 160)
    assert any("EXIF" in n for n in photo.notes)
    assert np.abs(photo.pixels[-4, W // 2].astype(int) - (30, 60, 200)).max() < 20  # body at the bottom
    assert np.abs(photo.pixels[2, W // 2].astype(int) - 200).max() < 20  # background at the top


def test_blank_photo_has_no_person(tmp_path):
    path = _save(tmp_path, "blank.png", Image.new("RGB", (200, 300), (250, 250, 250)))
    with pytest.raises(ValueError, match="blank"):
        catalog.validate_photo(path, H, W)


def test_is_blank_threshold():
    flat = np.full((8, 8, 3), 100, np.uint8)
    assert catalog.is_blank(flat)
    flat[0, 0] = 255
    assert not catalog.is_blank(flat, threshold=0.01)


def test_cli_catalog_item_bad_photo_is_one_line_exit_2(tmp_path, capsys):
    from dreampose import cli

    (tmp_path / "params.yaml").write_text("tracking: {registered_model: cli-test}\n")
    bad = tmp_path / "menu.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rc = cli.main(["--root", str(tmp_path), "catalog-item", "--photo", str(bad), "--poses", "syn_test_000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("dreampose: error: photo") and "menu.jpg" in err[0]
    assert not (tmp_path / "catalog").exists()


def test_fit_iuv_never_blends_part_indices():
    iuv = np.zeros((2, 128, 96, 3), np.uint8)
    iuv[:, :, :48, 0] = 1
    iuv[:, :, 48:, 0] = 24
    iuv[:, :, :, 1] = np.arange(96, dtype=np.uint8)[None, :]
    out = catalog.fit_iuv(iuv, 64, 48)
    assert out.shape == (2, 64, 48, 3)
    assert set(np.unique(out[..., 0])) == {1, 24}  # a bilinear resize would create parts 2..23


def test_photo_at_the_models_own_size_is_accepted(tmp_path):
    # The demo model is 64x48: a 48 px wide frame is not "tiny" for it, a 40 px one is.
    ok = catalog.validate_photo(_save(tmp_path, "frame.png", Image.fromarray(_person(64, 48))), 64, 48)
    assert ok.pixels.shape == (64, 48, 3)
    with pytest.raises(ValueError, match="too small"):
        catalog.validate_photo(_save(tmp_path, "narrow.png", Image.fromarray(_person(64, 40))), 64, 48)


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path``; yields its base URL."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_photo_from_url(tmp_path, http_dir):
    from dreampose.catalog.safe_fetch import BlockedUrlError, UrlPolicy

    _save(tmp_path, "shirt.png", Image.fromarray(_person()))
    # The test server is on loopback: allowed explicitly, by its exact host:port.
    allow = UrlPolicy.of(allow_hosts=[http_dir.removeprefix("http://")])
    photo = catalog.validate_photo(f"{http_dir}/shirt.png", H, W, url_policy=allow)
    assert photo.pixels.shape == (H, W, 3) and photo.source.endswith("/shirt.png")
    with pytest.raises(ValueError, match="HTTP 404"):
        catalog.validate_photo(f"{http_dir}/missing.png", H, W, url_policy=allow)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        catalog.read_photo_bytes(f"{http_dir}/shirt.png", max_bytes=100, url_policy=allow)
    with pytest.raises(BlockedUrlError, match="loopback"):
        catalog.validate_photo(f"{http_dir}/shirt.png", H, W)  # not without the allowance


def test_photo_pose_reads_densepose_weights_relative_to_the_workspace(tmp_path, monkeypatch):
    """The pipeline flow runs the catalog item with ``root`` != the working directory; the weights path in
    params.yaml is relative to ``root``, as in the densepose stage."""
    from dreampose.config import parse_params
    from tests.data.test_densepose import save_module
    from tests.flows.conftest import person_photo

    ws = tmp_path / "ws"
    (ws / "models/densepose").mkdir(parents=True)
    save_module(ws / "models/densepose/dp.pt", batched=False)
    params = parse_params(
        {
            "frames": {"height": 64, "width": 48},
            "densepose": {"backend": "torchscript", "weights": "models/densepose/dp.pt"},
        }
    )
    photo = catalog.validate_photo(person_photo(tmp_path / "photo.png"), 64, 48)
    seq = catalog.PoseSequence(iuv=np.zeros((1, 64, 48, 3), np.uint8), frame_ids=[0], source="test")
    monkeypatch.chdir(tmp_path)  # not the workspace
    iuv, source = catalog.photo_pose(photo, seq, params, ws)
    assert source == "densepose" and iuv.shape == (64, 48, 3) and iuv[..., 0].any()
