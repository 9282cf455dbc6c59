"""``dreampose report``: our scores next to the paper's Table 1.

The published rows are Karras et al. 2023 (DreamPose), Table 1: the UBC Fashion test set at 256 px
(100 videos, 50 targets each). They are quoted for orientation only; our row is measured on the
dataset named beside it (the synthetic demo unless ``data.source`` is ``ubc``), so the numbers are
comparable only when that dataset is UBC Fashion at the same protocol.

Resolution: when evaluation.json has a ``table1`` block (``score.table1_size`` set; the paper preset
uses 256), the row set against the paper is ours at that size, with our native-resolution row
beside it; otherwise only the native row is shown, labelled as such.

Below it, "what the eye sees" (docs/metrics.md): ghosting, missing body, pattern error and flicker for ours, every
baseline and the VAE ceiling (the test targets through the model's own VAE: the best the latent space allows),
with L1 / SSIM beside them so every score can be read against that ceiling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = ("L1", "SSIM", "VGG", "LPIPS", "FID", "FVD-16", "AED")
OUR_KEYS = {"L1": "l1", "SSIM": "ssim", "VGG": "vgg", "LPIPS": "lpips", "FID": "fid", "FVD-16": "fvd", "AED": "aed"}
PAPER_SOURCE = "Karras et al. 2023, DreamPose, Table 1 (UBC Fashion test set, 256 px)"
PAPER_TABLE1: dict[str, tuple[float, ...]] = {
    "MRAA": (0.0857, 0.749, 0.534, 0.212, 23.42, 253.65, 0.0139),
    "TPSMM": (0.0858, 0.746, 0.547, 0.213, 22.87, 247.55, 0.0137),
    "PIDM": (0.1098, 0.713, 0.629, 0.288, 30.279, 1197.39, 0.0155),
    "DreamPose": (0.0256, 0.885, 0.235, 0.068, 13.04, 238.75, 0.0110),
}


def load_scores(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scores yet (run `dreampose score` first)")
    try:
        scores = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(scores, dict) or not isinstance(scores.get("ours"), dict):
        raise ValueError(f"{path}: no 'ours' section; not an evaluation.json written by `dreampose score`")
    return scores


def _cell(value: Any) -> tuple[str, str | None]:
    """Display text and, for an unavailable metric, its reason."""
    if isinstance(value, dict) and value.get("status") == "unavailable":
        return "unavailable", str(value.get("reason", "unknown reason"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4f}", None
    if value is None:
        return "unavailable", "not computed"
    return str(value), None


def _size(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, list) else "?"


def report_rows(scores: dict[str, Any]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Table rows (label, cells) and numbered footnotes for unavailable metrics.

    Ours at the paper's resolution (the ``table1`` block) comes first when present, then ours at native size.
    """
    rows = [(f"{name} (published)", [f"{v:g}" for v in vals]) for name, vals in PAPER_TABLE1.items()]
    notes: list[str] = []
    reasons: dict[str, int] = {}

    def cells(ours: dict[str, Any]) -> list[str]:
        out = []
        for col in COLUMNS:
            text, reason = _cell(ours.get(OUR_KEYS[col]))
            if reason is not None:
                if reason not in reasons:
                    notes.append(reason)
                    reasons[reason] = len(notes)
                text = f"unavailable [{reasons[reason]}]"
            out.append(text)
        return out

    what = f"({scores.get('dataset', 'unknown dataset')}, {scores.get('num_frames', '?')} frames)"
    t1 = scores.get("table1")
    if isinstance(t1, dict) and isinstance(t1.get("ours"), dict):
        rows.append((f"ours @ {_size(t1.get('size'))} px {what}", cells(t1["ours"])))
        rows.append((f"ours @ native {_size(t1.get('native_size'))} px", cells(scores["ours"])))
    else:
        rows.append((f"ours @ native px {what}", cells(scores["ours"])))
    return rows, notes


EYE_COLUMNS = {
    "L1": "l1", "SSIM": "ssim", "ghost": "ghost_fraction", "missing": "missing_fraction",
    "pattern": "pattern_error", "flicker": "flicker", "excess": "flicker_excess", "deficit": "motion_deficit",
}  # fmt: skip


def eye_rows(scores: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Rows (label, cells) of the what-the-eye-sees table: ours, each scored baseline, the VAE ceiling last;
    ``n/a`` where a metric or row is unavailable (its reason is in evaluation.json)."""
    baselines = {k: v for k, v in (scores.get("baselines") or {}).items() if isinstance(v, dict)}
    ordered = [("ours", scores["ours"])]
    ordered += [(k, v) for k, v in baselines.items() if k != "vae_ceiling"]
    if "vae_ceiling" in baselines:
        ordered.append(("vae_ceiling (upper bound)", baselines["vae_ceiling"]))
    rows = []
    for label, m in ordered:
        cells = []
        for key in EYE_COLUMNS.values():
            v = m.get(key)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"{v:.4f}" if ok else "n/a")
        rows.append((label, cells))
    return rows


def format_eye_table(scores: dict[str, Any]) -> str:
    rows = eye_rows(scores)
    label_w = max(len("method"), *(len(r[0]) for r in rows))
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(EYE_COLUMNS)]

    def line(label: str, cells: list[str]) -> str:
        return "  ".join([label.ljust(label_w), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))])

    out = ["What the eye sees (docs/metrics.md; lower is better except SSIM):", line("method", list(EYE_COLUMNS))]
    out += [line(label, cells) for label, cells in rows]
    source = scores.get("vae_ceiling_source")
    if source:
        out.append(f"vae_ceiling: the test targets encoded and decoded by {source}")
    return "\n".join(out)


def format_report(scores: dict[str, Any]) -> str:
    rows, notes = report_rows(scores)
    label_w = max(len(r[0]) for r in rows)
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(COLUMNS)]

    def line(label: str, cells: list[str]) -> str:
        return "  ".join([label.ljust(label_w), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))])

    out = [
        "Table 1 — published rows: " + PAPER_SOURCE + "; a different dataset from ours unless ours says UBC.",
        line("method", list(COLUMNS)),
        line("-" * label_w, ["-" * w for w in widths]),
    ]
    out += [line(label, cells) for label, cells in rows]
    if "table1" not in scores:
        out.append("Table 1 is at 256 px; ours is at its native size (score.table1_size: 256 adds a 256 px row).")
    extra = {k: scores["ours"].get(k) for k in ("psnr", "color_dist")}
    out.append("ours, not in Table 1: " + ", ".join(f"{k} {_cell(v)[0]}" for k, v in extra.items()))
    out += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    out += ["", format_eye_table(scores)]
    return "\n".join(out)


def report(scores_path: Path) -> str:
    """The printable Table-1 comparison for ``metrics/evaluation.json`` (it names unavailable metrics' reasons)."""
    return format_report(load_scores(scores_path))
