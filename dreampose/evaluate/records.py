"""The score stage's records: ``evaluation.json`` (everything, with reasons and notes), ``scores.json`` (its numbers
only, the DVC metrics file), ``per_video.parquet`` (one row per method and subject) and the per-frame plot data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dreampose.evaluate.scoring import MethodScores
from dreampose.fsutil import atomic_write
from dreampose.io import write_json
from dreampose.layout import EVALUATION, SCORES


def write_records(
    scores: Mapping[str, Any], methods: Mapping[str, MethodScores], out_dir: Path, plots_dir: Path
) -> None:
    """``out_dir/evaluation.json`` (``scores``), ``out_dir/scores.json`` (its numbers), ``out_dir/per_video.parquet``
    (every method) and ``plots_dir/per_frame.csv`` (ours: L1, SSIM, PSNR per subject and frame)."""
    write_json(scores, out_dir / EVALUATION)
    write_json(metric_values(scores), out_dir / SCORES)
    per_video = pd.concat([_per_video(n, m) for n, m in methods.items()], ignore_index=True)
    _write_parquet(per_video, out_dir / "per_video.parquet")
    per_frame = pd.DataFrame(methods["ours"].per_frame)[["subject_id", "frame", "l1", "ssim", "psnr"]]
    _write_parquet(per_frame, plots_dir / "per_frame.csv")


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(
        path, lambda tmp: df.to_parquet(tmp, index=False) if path.suffix == ".parquet" else df.to_csv(tmp, index=False)
    )


def _per_video(method: str, m: MethodScores) -> pd.DataFrame:
    df = pd.DataFrame(m.per_frame)
    agg = df.drop(columns=["frame"]).groupby("subject_id", sort=False).mean(numeric_only=True).reset_index()
    agg.insert(0, "method", method)
    agg.insert(2, "num_frames", df.groupby("subject_id", sort=False).size().to_numpy())
    return agg


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of an evaluation record, nested as they are: finite ints and floats only; strings, bools,
    lists, ``None``, unavailable-metric records and mappings left empty are dropped."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            value = metric_values(value)
            if value:
                out[key] = value
        elif is_finite(value):
            out[key] = value
    return out
