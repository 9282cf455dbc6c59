"""The validated catalog item every later step works from: ``ItemSpec`` holds the checked photo(s), the pose
sequence with its optional ground truth, the photo's own pose and the reuse key. ``item`` builds one;
``attempts`` tags runs from it and ``register`` logs and registers it, so each imports this module instead of
each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dreampose.catalog.photo import Photo
from dreampose.catalog.poses import PoseSequence


@dataclass(frozen=True)
class ItemSpec:
    """A validated catalog item, ready to train."""

    item_id: str
    photo: Photo
    seq: PoseSequence
    truth: np.ndarray | None
    photo_iuv: np.ndarray
    photo_iuv_source: str
    key: str
    base_digest: str = ""
    # Further photos of the same garment (subject-finetune targets beside ``photo``) and their poses.
    more_photos: tuple[Photo, ...] = ()
    more_photo_iuvs: tuple[np.ndarray, ...] = ()
    finetune: bool = True  # False: render with the base model, no subject finetune
