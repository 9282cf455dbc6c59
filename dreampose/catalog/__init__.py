"""Catalog items (package): one product photo + a pose sequence in, a reviewed subject model and video out.

``validate_photo`` turns whatever a catalog team uploads into the model's ``H x W`` RGB frame or
fails with one clear line (not an image, truncated, tiny, decompression bomb, blank). CMYK, RGBA,
16-bit and EXIF-rotated photos are converted, not rejected.

``run_catalog_item`` is the library core of the ``catalog-item`` flow: validate → subject finetune
from the base model → render → score → log to MLflow → register a ``review=pending`` version.
Every run writes only under ``catalog/<item_id>/<run_id>/`` so two items running at once never mix.

Person detection: with a real DensePose backend (``torchscript``/``detectron2``) the photo must
contain a detected person. The ``synthetic`` backend cannot look at arbitrary photos, so there the
check is only that the photo is not blank or uniform, and the photo's own pose is taken to be the
first pose of the sequence (true for the demo, whose photo is frame 0 of a test video).

Modules, in the order an item flows through them: ``photo`` (intake and validation, URL policy; photo URLs are
fetched by ``safe_fetch``), ``poses`` (pose sequence and ground truth resolution), ``spec`` (``ItemSpec``, the
validated item the later modules share), ``item`` (the orchestration), ``attempts`` (run tags and clean-up),
``register`` (MLflow model from ``mlflow_model``, review page from ``review_page``, registered version). Item
metrics live in ``dreampose.metrics.item``.
"""

from dreampose.catalog.attempts import ATTEMPT_TAG, remove_run_dir, run_tags, settle_attempts
from dreampose.catalog.item import input_key, model_digest, photo_pose, run_catalog_item, score_item
from dreampose.catalog.photo import (
    BLANK_STD,
    MAX_DOWNLOAD_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    Photo,
    is_blank,
    photo_url_policy,
    read_photo_bytes,
    resize_center_crop,
    to_rgb,
    validate_photo,
)
from dreampose.catalog.poses import (
    ITEM_ID,
    VIDEO_SUFFIXES,
    PoseSequence,
    fit_iuv,
    item_id_from,
    load_ground_truth,
    resolve_poses,
)
from dreampose.io import read_rgb
from dreampose.metrics.item import appearance_drift, temporal_l1

__all__ = [
    "ATTEMPT_TAG",
    "BLANK_STD",
    "ITEM_ID",
    "MAX_DOWNLOAD_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "VIDEO_SUFFIXES",
    "Photo",
    "PoseSequence",
    "appearance_drift",
    "fit_iuv",
    "input_key",
    "is_blank",
    "item_id_from",
    "load_ground_truth",
    "model_digest",
    "photo_pose",
    "photo_url_policy",
    "read_photo_bytes",
    "read_rgb",
    "remove_run_dir",
    "resize_center_crop",
    "resolve_poses",
    "run_catalog_item",
    "run_tags",
    "score_item",
    "settle_attempts",
    "temporal_l1",
    "to_rgb",
    "validate_photo",
]
