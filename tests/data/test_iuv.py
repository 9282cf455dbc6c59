import math

import numpy as np
import pytest
import torch

from dreampose.data.densepose import iuv as I


def _chart(h=2, w=2):
    coarse = torch.zeros(2, h, w)
    fine = torch.zeros(25, h, w)
    u = torch.zeros(25, h, w)
    v = torch.zeros(25, h, w)
    return coarse, fine, u, v


def test_chart_to_iuv_masks_by_coarse_and_reads_uv_of_winning_part():
    coarse, fine, u, v = _chart()
    coarse[1] = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])  # (1,0) is background
    fine[3, 0, 0] = 5
    fine[7, 0, 1] = 5
    fine[3, 1, 0] = 5  # fine says part 3 but coarse says background
    fine[24, 1, 1] = 5
    u[3], v[3] = 0.25, 0.75
    u[7], v[7] = 0.5, 0.125
    u[24], v[24] = 1.0, 0.0
    u[5] = 0.9  # a losing part's U must not leak
    part, uu, vv = I.chart_to_iuv(coarse, fine, u, v)
    assert part.tolist() == [[3, 7], [0, 24]]
    assert uu.tolist() == [[0.25, 0.5], [0.0, 1.0]]
    assert vv.tolist() == [[0.75, 0.125], [0.0, 0.0]]


def test_chart_to_iuv_checks_shapes():
    coarse, fine, u, v = _chart()
    with pytest.raises(ValueError, match="fine"):
        I.chart_to_iuv(coarse, fine[:10], u, v)
    with pytest.raises(ValueError, match="coarse"):
        I.chart_to_iuv(coarse[:1], fine, u, v)


def test_encode_decode_round_trip_on_quantized_values():
    rng = np.random.default_rng(0)
    part = rng.integers(0, 25, (6, 7))
    uq = rng.integers(0, 256, (6, 7)) * (part > 0)
    vq = rng.integers(0, 256, (6, 7)) * (part > 0)
    enc = I.encode_iuv(part, uq / 255.0, vq / 255.0)
    assert enc.dtype == np.uint8
    np.testing.assert_array_equal(enc, np.stack([part, uq, vq], -1))
    p2, u2, v2 = I.decode_iuv(enc)
    np.testing.assert_array_equal(I.encode_iuv(p2, u2, v2), enc)
    # quantization is round(u * 255) and background UV is zeroed
    e = I.encode_iuv(np.array([1, 0]), np.array([0.5, 0.7]), np.array([1.2, 0.3]))
    assert e.tolist() == [[1, 128, 255], [0, 0, 0]]
    with pytest.raises(ValueError, match="part index"):
        I.encode_iuv(np.array([25]), np.array([0.0]), np.array([0.0]))


def test_box_extent_and_paste_clip_to_image():
    assert I.box_extent((1.2, 0.5, 3.1, 2.0)) == (1, 0, 3, 2)
    assert I.box_extent((2.0, 2.0, 2.0, 2.0)) == (2, 2, 1, 1)
    with pytest.raises(ValueError, match="box"):
        I.box_extent((3, 0, 1, 1))
    with pytest.raises(ValueError, match="box"):
        I.box_extent((math.nan, 0, 1, 1))
    patch = np.arange(1, 10, dtype=np.uint8).reshape(3, 3, 1)
    out = I.paste(patch, -1, 2, 4, 3)  # one column off the left, one row off the bottom
    assert out[..., 0].tolist() == [[0, 0, 0], [0, 0, 0], [2, 3, 0], [5, 6, 0]]
    assert I.paste(patch, 5, 5, 4, 3).sum() == 0


def test_paste_iuv_resizes_nearest_into_box():
    box_iuv = np.array([[[1, 10, 20], [2, 30, 40]]], dtype=np.uint8)  # 1 x 2 at box resolution
    out = I.paste_iuv(box_iuv, (1.0, 1.0, 5.0, 3.0), 4, 6)  # box 4 wide, 2 high
    assert out[..., 0].tolist() == [
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 2, 2, 0],
        [0, 1, 1, 2, 2, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    assert out[1, 1].tolist() == [1, 10, 20] and out[2, 4].tolist() == [2, 30, 40]


def test_paste_chart_constant_chart_fills_box_only():
    coarse, fine, u, v = _chart(4, 4)
    coarse[1] = 1
    fine[2] = 1
    u[2], v[2] = 0.5, 0.25
    out = I.paste_chart(coarse, fine, u, v, (2.0, 1.0, 8.0, 3.0), 4, 6)  # box runs past the right edge
    expect = np.zeros((4, 6), np.uint8)
    expect[1:3, 2:6] = 2
    np.testing.assert_array_equal(out[..., 0], expect)
    assert set(map(tuple, out[expect > 0].tolist())) == {(2, 128, 64)}


def test_select_person_prefers_score_times_area_not_first():
    boxes = np.array([[0, 0, 2, 2], [0, 0, 10, 10], [0, 0, 20, 20]], float)
    scores = np.array([0.99, 0.6, 0.4])
    assert I.select_person(boxes, scores, 0.5) == 1  # 0.6*100 > 0.99*4; box 2 is below min_score
    assert I.select_person(boxes, scores, 0.3) == 2
    assert I.select_person(boxes, scores, 0.995) is None
    assert I.select_person(np.zeros((0, 4)), np.zeros(0), 0.5) is None
    assert I.select_person(torch.tensor(boxes[:2]), torch.tensor([0.9, 0.9 * 4 / 100]), 0.0) == 0  # tie -> first


def test_uv_to_model_pins_the_normalization():
    iuv = np.array([[[0, 200, 100], [1, 0, 0], [24, 255, 255], [3, 51, 102]]], dtype=np.uint8)
    m = I.uv_to_model(iuv)
    assert m.dtype == torch.float32 and m.shape == (2, 1, 4)
    expect_u = [0.0, 0.1, 1.0, 0.1 + 0.9 * 0.2]
    expect_v = [0.0, 0.1, 1.0, 0.1 + 0.9 * 0.4]
    torch.testing.assert_close(m[0, 0], torch.tensor(expect_u), rtol=0, atol=1e-6)
    torch.testing.assert_close(m[1, 0], torch.tensor(expect_v), rtol=0, atol=1e-6)
    assert m.shape == I.uv_to_model(torch.from_numpy(iuv)).shape
    assert I.uv_to_model(np.zeros((3, 2, 5, 4, 3), np.uint8)).shape == (3, 2, 2, 5, 4)
    with pytest.raises(ValueError, match="uint8"):
        I.uv_to_model(iuv.astype(np.float32))


def test_pose_window_indices_clamped():
    assert I.pose_window_indices(0, 10) == [0, 0, 0, 1, 2]
    assert I.pose_window_indices(1, 10) == [0, 0, 1, 2, 3]
    assert I.pose_window_indices(5, 10) == [3, 4, 5, 6, 7]
    assert I.pose_window_indices(9, 10) == [7, 8, 9, 9, 9]
    assert I.pose_window_indices(0, 1, 3) == [0, 0, 0]
    assert I.pose_window_indices(4, 10, 1) == [4]  # manifest.pose_window: 1 (paper Table 2, Ours_1-pose)
    with pytest.raises(ValueError, match="odd"):
        I.pose_window_indices(0, 10, 4)
    with pytest.raises(ValueError, match="outside"):
        I.pose_window_indices(10, 10)


def test_pose_window_orders_u_v_per_frame():
    seq = np.zeros((4, 1, 1, 3), np.uint8)
    seq[:, 0, 0] = [[1, 0, 255], [1, 255, 0], [0, 9, 9], [1, 51, 51]]
    w = I.pose_window(seq, 1)  # frames [0, 0, 1, 2, 3]
    assert w.shape == (10, 1, 1)
    expect = [0.1, 1.0, 0.1, 1.0, 1.0, 0.1, 0.0, 0.0, 0.28, 0.28]
    torch.testing.assert_close(w[:, 0, 0], torch.tensor(expect), rtol=0, atol=1e-6)


def test_iuv_bbox():
    iuv = np.zeros((5, 6, 3), np.uint8)
    assert I.iuv_bbox(iuv) is None
    iuv[1:3, 2:5, 0] = 4
    assert I.iuv_bbox(iuv) == (2.0, 1.0, 5.0, 3.0)


def test_uv_to_model_table_path_equals_the_formula_bit_for_bit():
    """The CPU path gathers from a 256-entry table; every (I, U, V) value and a strided view give the formula's
    float32 values exactly (training items stay bit-identical to those of the formula)."""
    parts = torch.tensor([0, 1, 13, 24, 255], dtype=torch.uint8)
    grid = torch.meshgrid(
        parts, torch.arange(256, dtype=torch.uint8), torch.arange(256, dtype=torch.uint8), indexing="ij"
    )
    iuv = torch.stack(grid, -1)  # (5, 256, 256, 3): every U, V under background and body parts
    assert torch.equal(I.uv_to_model(iuv), I._uv_formula(iuv))
    view = iuv.permute(1, 0, 2, 3)[:, 1:4].permute(1, 0, 2, 3)  # non-contiguous
    assert torch.equal(I.uv_to_model(view), I._uv_formula(view)) and I.uv_to_model(view).is_contiguous()
