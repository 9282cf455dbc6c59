"""``metrics.item``: the catalog item's scores that need no ground truth (temporal change, colour drift)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dreampose.metrics.item import appearance_drift, temporal_l1


def test_temporal_l1_is_the_mean_change_between_consecutive_frames():
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1] = 255
    assert temporal_l1(frames) == pytest.approx(1.0)  # black -> white -> black: every pixel changes fully, twice
    assert temporal_l1(frames[:1]) == 0.0  # one frame: nothing to compare
    ramp = np.stack([np.full((2, 2, 3), 51 * t, np.uint8) for t in range(5)])
    assert temporal_l1(ramp) == pytest.approx(0.2)


def _pose(n: int) -> np.ndarray:
    iuv = np.zeros((n, 4, 4, 3), np.uint8)
    iuv[:, 1:3, 1:3, 0] = 1  # the person: the centre 2 x 2
    return iuv


def test_appearance_drift_measures_colour_inside_the_poses():
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1] = 255
    iuv = _pose(3)
    photo = np.full((4, 4, 3), 255, np.uint8)
    # Frames 0 and 2 are black where the photo is white: distance sqrt(3) (the means; both stds are 0); frame 1
    # matches.
    assert appearance_drift(frames, iuv, photo, iuv[0]) == pytest.approx(2 * np.sqrt(3) / 3)
    # Only the masked pixels count: a white frame with a black background outside the person matches the photo.
    framed = np.zeros((1, 4, 4, 3), np.uint8)
    framed[0, 1:3, 1:3] = 255
    assert appearance_drift(framed, iuv[:1], photo, iuv[0]) == pytest.approx(0.0)


def test_appearance_drift_without_masks():
    frames = np.full((2, 4, 4, 3), 255, np.uint8)
    photo = np.full((4, 4, 3), 255, np.uint8)
    photo[0] = 0  # outside the pose: only counted when the photo has no pose of its own
    iuv = _pose(2)
    empty = np.zeros((4, 4, 3), np.uint8)
    assert appearance_drift(frames, iuv, photo, iuv[0]) == pytest.approx(0.0)
    # No person found in the photo: its whole frame is the reference, so the black top row now counts.
    assert appearance_drift(frames, iuv, photo, empty) > 0.1
    # A frame whose pose is empty is skipped; none left: no score (NaN), not an error.
    iuv[1] = 0
    assert appearance_drift(frames, iuv, photo, iuv[0]) == pytest.approx(0.0)
    assert math.isnan(appearance_drift(frames, np.zeros_like(iuv), photo, iuv[0]))
