"""Parquet pair manifests: which input frame conditions which target frame, with its pose window.

- ``train.parquet``: train split, ``pairs_per_video`` seeded (input, target) pairs per video;
- ``subject.parquet``: per usable test video (every possible evaluation subject), the frames its subject
  finetune sees (input = target), so the manifests do not depend on which subjects ``eval.subjects`` lists;
- ``test.parquet``: test split, the paper's protocol: one input frame, ``test_num_targets`` targets each at
  least ``test_min_gap`` frames away, spread evenly over the allowed range;
- ``fvd.parquet`` (when a clip length is given): test split, one clip per video of ``fvd_clip_len``
  *consecutive* frames for FVD (the paper's "FVD (16f)"), the first run of frames with a person that
  starts at least ``test_min_gap`` frames after the input frame. Same columns as the others.
- ``skipped.json``: the videos left out and why (unreadable in the frames stage, no person in a training
  video, a test video whose input frame has no person or that has too few targets). The stage fails only
  when fewer than ``min_train_videos`` / ``min_test_videos`` usable videos remain.

Frames without a person (``data/densepose/index.parquet``) are never used as input or target. Frame
numbers index the video's rows of the frames index and so its DensePose archive. Paths are relative to
the workspace root (the directory holding ``data/``). Columns are documented in ``data/README.md``.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dreampose.fsutil import atomic_write
from dreampose.config import ManifestConfig
from dreampose.data.densepose.iuv import pose_window_indices

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("subject_id", pa.string()),
        ("video", pa.string()),
        ("split", pa.string()),
        ("input_frame", pa.int32()),
        ("target_frame", pa.int32()),
        ("input_path", pa.string()),
        ("target_path", pa.string()),
        ("densepose_path", pa.string()),
        ("pose_frames", pa.list_(pa.int32())),
    ]
)
MANIFESTS = ("train", "subject", "test")
FVD = "fvd"  # consecutive test frames for FVD, written when a clip length is given
SKIPPED = "skipped.json"


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def spread_targets(allowed: Sequence[int], num: int) -> list[int]:
    """``num`` distinct entries of ``allowed`` (sorted) spread evenly from its first to its last."""
    allowed = sorted(allowed)
    if num > len(allowed):
        raise ValueError(f"cannot pick {num} targets from {len(allowed)} allowed frames")
    if num == 1:
        return [allowed[len(allowed) // 2]]
    # Evenly spaced positions with step >= 1 after rounding, so the picks are distinct.
    pos = np.floor(np.arange(num) * (len(allowed) - 1) / (num - 1) + 0.5).astype(int)
    return [allowed[p] for p in pos]


def fvd_clip_start(has_person: Sequence[bool], earliest: int, clip_len: int) -> int | None:
    """The first ``t >= earliest`` with ``has_person[t : t + clip_len]`` all true, or ``None`` if there is none."""
    run = 0
    for t in range(max(earliest, 0), len(has_person)):
        run = run + 1 if has_person[t] else 0
        if run == clip_len:
            return t - clip_len + 1
    return None


def _video_seed(seed: int, video: str) -> np.random.Generator:
    # crc32, not hash(): stable across processes, so pairs do not change between runs.
    return np.random.default_rng([seed, zlib.crc32(video.encode())])


def _load_indexes(frames_dir: Path, densepose_dir: Path) -> pd.DataFrame:
    fpath, dpath = Path(frames_dir) / "index.parquet", Path(densepose_dir) / "index.parquet"
    for p, stage in ((fpath, "frames"), (dpath, "densepose")):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing (run `dreampose {stage}` first)")
    frames = pd.read_parquet(fpath, columns=["video", "split", "frame", "path"])
    dp = pd.read_parquet(dpath, columns=["video", "split", "frame", "person_found"])
    df = frames.merge(dp, on=["video", "split", "frame"], how="left", validate="one_to_one")
    lost = df["person_found"].isna()
    if lost.any():
        r = df[lost].iloc[0]
        raise ValueError(
            f"{dpath}: {int(lost.sum())} frames of the frames index have no DensePose row "
            f"(first: {r.split}/{r.video} frame {r.frame}); re-run `dreampose densepose`"
        )
    df["person_found"] = df["person_found"].astype(bool)
    df = df.sort_values(["split", "video", "frame"], kind="stable").reset_index(drop=True)
    for (split, video), g in df.groupby(["split", "video"], sort=False):
        if g["frame"].tolist() != list(range(len(g))):
            raise ValueError(f"{fpath}: frames of {split}/{video} are not numbered 0..{len(g) - 1}")
    return df


def _rows(
    g: pd.DataFrame, pairs: Sequence[tuple[int, int]], dp_rel: str, window: int, split: str, video: str
) -> list[dict[str, Any]]:
    paths = g["path"].tolist()
    n = len(g)
    return [
        dict(
            subject_id=video,
            video=video,
            split=split,
            input_frame=i,
            target_frame=t,
            input_path=paths[i],
            target_path=paths[t],
            densepose_path=dp_rel,
            pose_frames=pose_window_indices(t, n, window),
        )
        for i, t in pairs
    ]


def test_targets(cfg: ManifestConfig, person_found: Sequence[bool]) -> tuple[list[int], str | None]:
    """The protocol's target frames of one test video, or ``([], why)`` when the video cannot serve."""
    n, inp = len(person_found), cfg.test_input_frame
    if inp >= n:
        return [], f"input frame {inp} is beyond its {n} frames"
    if not person_found[inp]:
        return [], f"no person was found in input frame {inp}"
    allowed = [f for f in range(n) if person_found[f] and abs(f - inp) >= max(cfg.test_min_gap, 1)]
    if len(allowed) < cfg.test_num_targets:
        return [], (
            f"{n} frames leave {len(allowed)} targets with a person at least {cfg.test_min_gap} frames from input "
            f"frame {inp}; manifest.test_num_targets is {cfg.test_num_targets}"
        )
    return spread_targets(allowed, cfg.test_num_targets), None


def _quarantined(frames_dir: Path) -> list[dict[str, str]]:
    """The frames stage's unreadable videos (``quarantine.json``), as skipped entries."""
    path = frames_dir / "quarantine.json"
    if not path.is_file():
        return []
    videos = json.loads(path.read_text()).get("videos", [])
    return [dict(split=q["split"], video=q["video"], stage="frames", reason=q["reason"]) for q in videos]


def _write_json_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def build_manifests(
    cfg: ManifestConfig,
    frames_dir: Path,
    densepose_dir: Path,
    out_dir: Path,
    fvd_clip_len: int | None = None,
) -> dict[str, Any]:
    """Write ``train``/``subject``/``test`` ``.parquet`` (and ``fvd.parquet`` when ``fvd_clip_len`` is given) and
    ``skipped.json`` under ``out_dir``; returns counts.

    ``frames_dir`` is ``<root>/data/frames``; densepose paths are written relative to that ``<root>``. Videos
    that cannot serve are skipped (and listed); ``ValueError`` when too few usable ones remain.
    """
    if fvd_clip_len is not None and fvd_clip_len < 2:
        raise ValueError(f"fvd_clip_len must be >= 2, got {fvd_clip_len}")
    frames_dir, densepose_dir, out_dir = Path(frames_dir), Path(densepose_dir), Path(out_dir)
    root = frames_dir.resolve().parents[1]
    df = _load_indexes(frames_dir, densepose_dir)
    names = (*MANIFESTS, FVD) if fvd_clip_len is not None else MANIFESTS
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in names}
    skipped = _quarantined(frames_dir)
    frames_no_person = int((~df["person_found"]).sum())
    for (split, video), g in df.groupby(["split", "video"], sort=True):
        dp_rel = os.path.relpath((densepose_dir / split / f"{video}.npz").resolve(), root)
        person = g["person_found"].tolist()
        ok = np.flatnonzero(person)
        if split == "train":
            if len(ok) == 0:
                skipped.append(dict(split=split, video=video, stage="manifest", reason="no frame with a person"))
                continue
            rng = _video_seed(cfg.seed, video)
            inp = rng.choice(ok, cfg.pairs_per_video)
            tgt = rng.choice(ok, cfg.pairs_per_video)
            pairs = [(int(a), int(b)) for a, b in zip(inp, tgt, strict=True)]
            rows["train"] += _rows(g, pairs, dp_rel, cfg.pose_window, split, video)
        elif split == "test":
            targets, why = test_targets(cfg, person)
            if why:
                skipped.append(dict(split=split, video=video, stage="manifest", reason=why))
                continue
            first = cfg.test_input_frame
            frames = [f for f in range(first, min(first + cfg.subject_frames, len(g))) if person[f]]
            rows["subject"] += _rows(g, [(f, f) for f in frames], dp_rel, cfg.pose_window, split, video)
            rows["test"] += _rows(g, [(first, t) for t in targets], dp_rel, cfg.pose_window, split, video)
            if fvd_clip_len is not None:
                start = fvd_clip_start(person, first + max(cfg.test_min_gap, 1), fvd_clip_len)
                if start is None:
                    log.warning(
                        "manifest: test video %s has no %d consecutive frames with a person at least %d frames "
                        "after its input frame; no FVD clip",
                        video,
                        fvd_clip_len,
                        cfg.test_min_gap,
                    )
                else:
                    clip = [(first, t) for t in range(start, start + fvd_clip_len)]
                    rows[FVD] += _rows(g, clip, dp_rel, cfg.pose_window, split, video)
    usable = {split: len({r["video"] for r in rows[split]}) for split in ("train", "test")}
    minimum = {"train": cfg.min_train_videos, "test": cfg.min_test_videos}
    _write_json_atomic({"usable": usable, "minimum": minimum, "count": len(skipped), "videos": skipped},
                       out_dir / SKIPPED)  # fmt: skip
    for v in skipped:
        log.warning("manifest: skipped %s/%s (%s: %s)", v["split"], v["video"], v["stage"], v["reason"])
    short = [s for s in ("train", "test") if usable[s] < minimum[s]]
    if short:
        listed = "; ".join(f"{v['split']}/{v['video']}: {v['reason']}" for v in skipped if v["split"] in short)
        raise ValueError(
            ", ".join(f"only {usable[s]} usable {s} videos, need {minimum[s]} (manifest.min_{s}_videos)" for s in short)
            + f"; skipped: {listed or 'none'} (also in {out_dir / SKIPPED})"
        )
    counts: dict[str, Any] = {}
    for name in names:
        table = pa.Table.from_pylist(rows[name], schema=SCHEMA)
        write_parquet_atomic(table, out_dir / f"{name}.parquet")
        counts[f"{name}_rows"] = table.num_rows
        counts[f"{name}_videos"] = len({r["video"] for r in rows[name]})
    counts["frames_skipped_no_person"] = frames_no_person
    counts["videos_skipped"] = len(skipped)
    counts["skipped"] = [f"{v['split']}/{v['video']}: {v['reason']}" for v in skipped]
    if frames_no_person:
        log.info("manifest: skipped %d frames without a person", frames_no_person)
    return counts


def select_eval_subjects(test_manifest: pd.DataFrame, num: int | None) -> list[str]:
    """The protocol's evaluation subjects: every usable test video (one with rows in ``test.parquet``), in id
    order, the first ``num`` of them (all when ``num`` is None). Raises when the manifest has no test video."""
    if "subject_id" not in test_manifest.columns:
        raise ValueError("test manifest lacks the subject_id column")
    ids = sorted({str(s) for s in test_manifest["subject_id"]})
    if not ids:
        raise ValueError("the test manifest has no usable test video to evaluate on")
    return ids if num is None else ids[:num]


def overlay_iuv(frame: np.ndarray, iuv: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 frame with the body parts of ``iuv`` blended in: hue by part index, brightness by U."""
    import colorsys

    palette = np.array([(0, 0, 0)] + [colorsys.hsv_to_rgb(i / 24, 0.9, 1.0) for i in range(24)], np.float32) * 255
    part = iuv[..., 0].astype(int).clip(0, 24)
    colour = palette[part] * (0.4 + 0.6 * iuv[..., 1:2] / 255.0)
    body = (part > 0)[..., None]
    out = np.where(body, (1 - alpha) * frame + alpha * colour, frame)
    return out.round().clip(0, 255).astype(np.uint8)


def inspect_manifests(manifests_dir: Path, root: Path, preview_path: Path) -> dict[str, Any]:
    """Row counts and schemas of the manifests, and a PNG of the first target frame with its IUV overlaid."""
    from PIL import Image

    from dreampose.io import load_iuv

    manifests_dir, root = Path(manifests_dir), Path(root)
    info: dict[str, Any] = {}
    first = None
    for name in MANIFESTS:
        path = manifests_dir / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run `dreampose manifest` first)")
        pf = pq.ParquetFile(path)
        info[f"{name}_rows"] = pf.metadata.num_rows
        info[f"{name}_schema"] = {f.name: str(f.type) for f in pf.schema_arrow}
        if first is None and pf.metadata.num_rows:
            first = pf.read_row_group(0).slice(0, 1).to_pylist()[0]
    if first is None:
        raise ValueError(f"{manifests_dir}: every manifest is empty; nothing to preview")
    with Image.open(root / first["target_path"]) as im:
        frame = np.asarray(im.convert("RGB"))
    iuv = load_iuv(root / first["densepose_path"])[first["target_frame"]]
    if iuv.shape[:2] != frame.shape[:2]:
        raise ValueError(f"{first['densepose_path']}: IUV size {iuv.shape[:2]} != frame size {frame.shape[:2]}")
    preview = np.concatenate([frame, overlay_iuv(frame, iuv), overlay_iuv(np.zeros_like(frame), iuv, 1.0)], axis=1)
    preview_path = Path(preview_path)
    atomic_write(preview_path, lambda tmp: Image.fromarray(preview).save(tmp, format="PNG"))
    info["preview"] = str(preview_path)
    info["preview_of"] = f"{first['video']} frame {first['target_frame']}"
    return info
