"""Host memory of training data loading: peak RSS while iterating ``PairDataset`` over N = 4, 16, 64 stand-in
videos at the paper's 640x512 poses. Baseline: the old per-video dict of decoded IUV arrays (grows with N);
ours: the bounded ``IUVFrames`` (a video above the per-entry limit is read window by window through the archive's
frame index, never kept). Archives are written by ``dreampose.io.write_iuv_archive``, as the stages write them.

Each (method, N) runs in its own process so one's high-water mark does not hide another's. Videos are short
(``FRAMES`` frames, ~18 MB decoded each, above the 16 MiB per-entry limit as a 360-frame UBC video is).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, stand_in_iuv

H, W, FRAMES, PAIRS = 640, 512, 18, 4
COUNTS = (4, 16, 64)


def _iuv(seed: int) -> np.ndarray:
    return stand_in_iuv(seed, FRAMES, H, W)


def make_workspace(root: Path, n: int) -> Path:
    import pandas as pd
    from PIL import Image

    from dreampose.data.densepose.iuv import pose_window_indices
    from dreampose.io import write_iuv_archive

    (root / "data/densepose/train").mkdir(parents=True, exist_ok=True)
    (root / "data/manifests").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(root / "frame.jpg")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rel = f"data/densepose/train/v{i:03d}.npz"
        if not (root / rel).is_file():
            write_iuv_archive(root / rel, _iuv(i))  # the stages' writer
        for t in rng.integers(0, FRAMES, PAIRS):
            rows.append(
                dict(
                    subject_id=f"v{i:03d}",
                    input_path="frame.jpg",
                    target_path="frame.jpg",
                    densepose_path=rel,
                    pose_frames=pose_window_indices(int(t), FRAMES, 5),
                )
            )
    path = root / "data/manifests" / f"train_{n}.parquet"
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_parquet(path)  # shuffled, as a DataLoader reads
    return path


def measure(method: str, manifest: str, root: str) -> dict[str, float]:
    """In a fresh process: RSS high-water growth while reading every item once."""
    import resource

    from dreampose.data.dataset import PairDataset
    from dreampose.io import load_iuv

    class OldPairDataset(PairDataset):
        """The previous behaviour: every video's decoded array kept for the dataset's lifetime."""

        def pose_frames(self, rel, frames):
            cache = self.__dict__.setdefault("_old_cache", {})
            if rel not in cache:
                cache[rel] = load_iuv(self.root / rel)
            return cache[rel][list(frames)]

    cls = OldPairDataset if method == "baseline" else PairDataset
    ds = cls(manifest, root, 64, 48)  # small model-side size: the IUV archives are what is measured
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_growth_mb": round((peak - before) / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
            "ms_per_item": round(1000 * seconds / len(ds), 2)}  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dataset-memory-") as tmp:
        root = Path(tmp)
        results: dict[str, dict[int, dict[str, float]]] = {"baseline": {}, "ours": {}}
        for n in COUNTS:
            manifest = make_workspace(root, n)
            for method in results:
                code = (
                    "import json; from benchmarks.dataset_memory import measure; "
                    f"print(json.dumps(measure({method!r}, {str(manifest)!r}, {str(root)!r})))"
                )
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                results[method][n] = json.loads(out.stdout.strip().splitlines()[-1])
    base, ours = results["baseline"], results["ours"]
    last = COUNTS[-1]
    emit(
        "dataset_host_memory_vs_videos",
        {"videos": list(COUNTS), "frames_per_video": FRAMES, "iuv_height": H, "iuv_width": W,
         "items_per_video": PAIRS, "decoded_mb_per_video": round(FRAMES * H * W * 3 / 2**20, 1)},
        {"rss_growth_mb": {n: base[n]["rss_growth_mb"] for n in COUNTS},
         "ms_per_item": {n: base[n]["ms_per_item"] for n in COUNTS}},
        {"rss_growth_mb": {n: ours[n]["rss_growth_mb"] for n in COUNTS},
         "ms_per_item": {n: ours[n]["ms_per_item"] for n in COUNTS}},
        base[last]["rss_growth_mb"] / max(ours[last]["rss_growth_mb"], 1.0),
        memory_measure="RSS high-water growth while reading every item once (fresh process per point)",
        ours_growth_ratio_64_over_4=round(ours[last]["rss_growth_mb"] / max(ours[COUNTS[0]]["rss_growth_mb"], 1.0), 2),
    )  # fmt: skip


if __name__ == "__main__":
    main()
