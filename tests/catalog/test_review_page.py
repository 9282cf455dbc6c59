"""The review page: pure helpers, and the page itself opened in headless Chromium (video plays, images load)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dreampose.catalog import review_page as rp
from tests.browser import body_data, dump_dom


def _page(truth: bool = True, **kw) -> rp.ReviewPage:
    rng = np.random.default_rng(0)
    gen = rng.integers(0, 255, (6, 64, 48, 3), dtype=np.uint8)
    photo = np.full((64, 48, 3), 200, np.uint8)
    photo[12:60, 10:26] = (30, 60, 200)
    return rp.ReviewPage(
        item_id="sku.1",
        model_name="catalog-model",
        version="3",
        photo=photo,
        pose=np.zeros_like(gen),
        generated=gen,
        truth=gen[::-1].copy() if truth else None,
        fps=16,
        scores={"l1": 0.123456, "ssim": 0.5, "temporal_l1": 0.02, "num_frames": 6.0},
        reference={"l1": 0.0418, "ssim": 0.7615},
        run_id="abc123",
        **kw,
    )


def test_enlarge_and_video_scale():
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = rp.enlarge(img, 3)
    assert big.shape == (6, 6, 3) and (big[:3, :3] == img[0, 0]).all() and (big[3:, 3:] == img[1, 1]).all()
    assert rp.video_scale(64) == 5 and rp.video_scale(512) == 1
    with pytest.raises(ValueError, match="factor"):
        rp.enlarge(img, 0)


@pytest.mark.parametrize(("fmt", "codec"), [("webm", "vp9"), ("mp4", "h264")])
def test_encode_video_is_browser_format(fmt, codec):
    import av

    frames = np.random.default_rng(1).integers(0, 255, (4, 33, 25, 3), dtype=np.uint8)  # odd sides
    data = rp.encode_video(frames, 8, fmt)
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == codec and s.codec_context.pix_fmt == "yuv420p"
        assert (s.codec_context.height, s.codec_context.width) == (34, 26)
        assert sum(1 for _ in c.decode(s)) == 4
    with pytest.raises(ValueError, match="webm or mp4"):
        rp.encode_video(frames, 8, "gif")


def test_labelled_strip_has_a_label_band_and_columns():
    a = np.zeros((5, 8, 6, 3), np.uint8)
    photo = np.full((8, 6, 3), 255, np.uint8)
    strip = rp.labelled_strip({"input": photo, "generated": a}, rows=3, column_width=12)
    assert strip.shape == (rp.LABEL_BAND + 3 * 16, 2 * 12, 3)
    band = strip[: rp.LABEL_BAND]
    assert (band < 128).any()  # label text was drawn
    assert (strip[rp.LABEL_BAND :, :12] == 255).all() and (strip[rp.LABEL_BAND :, 12:] == 0).all()
    with pytest.raises(ValueError, match="differ in size"):
        rp.labelled_strip({"a": photo, "b": np.zeros((4, 4, 3), np.uint8)})


def test_metric_rows_direction_reference_and_precision():
    rows = {r["key"]: r for r in rp.metric_rows({"l1": 0.123456, "ssim": 0.5, "x": 1.0}, {"l1": 0.04})}
    assert set(rows) == {"l1", "ssim"}
    assert rows["l1"]["value"] == "0.1235" and rows["l1"]["direction"].startswith("↓")
    assert rows["l1"]["reference"] == "0.04" and rows["ssim"]["reference"] == "—"
    assert rows["ssim"]["direction"].startswith("↑")
    assert rp.format_value(float("nan")) == "—"


def test_page_html_names_commands_and_alias():
    html = rp.render_html(_page())
    assert "dreampose review approve catalog-model 3" in html and "dreampose review reject catalog-model 3" in html
    assert "models:/catalog-model@approved-sku_1" in html
    assert html.count("<source ") == 2 and "file://" not in html
    assert "ground truth" in html and "demo reference" in html


def test_review_page_plays_in_chromium(chromium, tmp_path):
    page = rp.write_page(_page(), tmp_path / "review.html")
    dom = dump_dom(chromium, page)
    data = body_data(dom)
    assert data.get("video") == "playing", data
    assert data.get("images") == "loaded", data
    assert data.get("item") == "sku.1"
    assert dom.count("data-metric=") == 4 and "0.1235" in dom
