"""The workspace layout: every stage's inputs and outputs, relative to the workspace root, written once.

``Workspace(root)`` is used by the stages, the catalog, the flows and the benchmarks wherever they name a
path; ``dvc.yaml`` spells the same paths for DVC (the stage table in docs/architecture.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Relative paths, for code that needs them without a root (and the names DVC sees).
RAW = Path("data/raw")
FRAMES = Path("data/frames")
DENSEPOSE = Path("data/densepose")
MANIFESTS = Path("data/manifests")
INSPECT = Path("data/inspect")
PRETRAINED = Path("models/pretrained")
BASE = Path("models/base")
SUBJECTS = Path("models/subjects")
RENDERS = Path("renders")
METRICS = Path("metrics")
PLOTS = Path("plots")
# The score stage's two records in METRICS: the numbers only (DVC's metrics file, `dvc exp show` columns), and the
# full evaluation (dataset, unavailable metrics with their reasons, comparisons, backbone notes, Table-1 size).
SCORES = "scores.json"
EVALUATION = "evaluation.json"
CATALOG = Path("catalog")

# What a render directory holds besides its frames.
RENDER_VIDEOS = ("video.mp4", "side_by_side.mp4")


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace rooted at ``root`` (not resolved: a relative root stays relative)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------ data
    @property
    def raw(self) -> Path:
        return self.root / RAW

    @property
    def videos(self) -> Path:
        return self.raw / "videos"

    @property
    def frames(self) -> Path:
        return self.root / FRAMES

    @property
    def densepose(self) -> Path:
        return self.root / DENSEPOSE

    @property
    def manifests(self) -> Path:
        return self.root / MANIFESTS

    def manifest(self, name: str) -> Path:
        """``data/manifests/<name>.parquet`` (``train``, ``subject``, ``test``, ``fvd``)."""
        return self.manifests / f"{name}.parquet"

    @property
    def train_manifest(self) -> Path:
        return self.manifest("train")

    @property
    def subject_manifest(self) -> Path:
        return self.manifest("subject")

    @property
    def test_manifest(self) -> Path:
        return self.manifest("test")

    @property
    def fvd_manifest(self) -> Path:
        return self.manifest("fvd")

    @property
    def inspect_preview(self) -> Path:
        return self.root / INSPECT / "preview.png"

    # ------------------------------------------------------------ models
    @property
    def pretrained(self) -> Path:
        return self.root / PRETRAINED

    @property
    def base(self) -> Path:
        return self.root / BASE

    @property
    def subjects(self) -> Path:
        return self.root / SUBJECTS

    def subject_model(self, subject: str) -> Path:
        return self.subjects / subject

    # ------------------------------------------------------------ renders and scores
    @property
    def renders(self) -> Path:
        return self.root / RENDERS

    def render_dir(self, subject: str) -> Path:
        return self.renders / subject

    def render_videos(self, subject: str) -> list[Path]:
        return [self.render_dir(subject) / name for name in RENDER_VIDEOS]

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def scores(self) -> Path:
        """The DVC metrics file: the evaluation's numbers only (``evaluate.metric_values``)."""
        return self.metrics / SCORES

    @property
    def evaluation(self) -> Path:
        """The full evaluation record: ``scores`` plus dataset, unavailable metrics' reasons, comparisons, notes."""
        return self.metrics / EVALUATION

    @property
    def per_video(self) -> Path:
        return self.metrics / "per_video.parquet"

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @property
    def per_frame_plot(self) -> Path:
        return self.plots / "per_frame.csv"

    # ------------------------------------------------------------ catalog items
    def catalog_item(self, item_id: str) -> Path:
        """``catalog/<item_id>``: one directory per run of the item below it."""
        return self.root / CATALOG / item_id
