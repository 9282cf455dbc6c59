"""Frame extraction throughput vs the bare decode + resize rate of the same videos, at two sizes.

Baseline: decord decodes every frame and PIL resizes + crops it exactly as the stage does (decoding into one
reused buffer, ``frame_image``), nothing is encoded or written. It runs one video at a time (``bare``: the
goal's reference, ≥ 0.8×) and, as the fair reference for a stage that uses ``workers`` threads, ``workers``
videos at once (``bare_parallel``). Ours: ``extract_frames`` (the same decode and resize, plus JPEG encoding
on a thread pool, one file per frame, the parquet index and the atomic directory swap). The CPU seconds per
frame of each side are reported too: ``cpu_ratio`` = bare CPU / ours CPU is what encoding and writing add,
whatever the parallelism.

Sizes: ``small`` is the demo-like 256 × 192 → 128 × 96; ``paper`` is what a paper run decodes: 940 × 720
portrait sources (UBC's size) resized and centre-cropped to 640 × 512. Its stand-in videos are synthetic
mannequins rendered at a quarter of that size, upscaled, with a fixed film grain so the H.264 stream is not
trivially cheap to decode (bitrate recorded). Frames per video only change per-video costs (open, mkdir), so
the paper videos are short.

Sides run in interleaved rounds (the order reversed every round) and each ratio is the median of the per-round
ratios, so load from other processes hits all sides of a round alike. The 1-minute load average before and
after is recorded: on a shared machine read the ratios together with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import emit
from dreampose.config import FramesConfig, SyntheticConfig
from dreampose.data.frames import extract_frames, frame_image, list_videos
from dreampose.data.synthetic import generate_dataset, generate_video
from dreampose.video import iter_video, write_video


def _bare_video(path: Path, height: int, width: int) -> int:
    n = 0
    for _, frame in iter_video(path, reuse=True):
        frame_image(frame, height, width)
        n += 1
    return n


def bare_decode_resize(videos_dir: Path, height: int, width: int, workers: int = 1) -> tuple[int, float]:
    """Frames decoded + resized and the seconds it took; ``workers`` videos at once."""
    start = time.perf_counter()
    paths = [p for _, p in list_videos(videos_dir)]
    if workers == 1:
        n = sum(_bare_video(p, height, width) for p in paths)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            n = sum(pool.map(lambda p: _bare_video(p, height, width), paths))
    return n, time.perf_counter() - start


def paper_stand_in(videos_dir: Path, videos: int, frames: int, height: int = 940, width: int = 720) -> None:
    """``videos`` synthetic mannequin videos at ``height × width`` (rendered at a quarter size, upscaled, plus a
    fixed grain), 30 fps, under ``videos_dir/train``."""
    syn = SyntheticConfig(frames_per_video=frames, height=height // 4, width=width // 4)
    for i in range(videos):
        small, _ = generate_video(syn, "train", i, seed=0)
        grain = np.random.default_rng(i).normal(0, 3, (height, width, 3)).astype(np.int16)
        big = (
            np.clip(
                np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC), np.int16) + grain,
                0,
                255,
            ).astype(np.uint8)
            for f in small
        )
        write_video(big, videos_dir / "train" / f"paper_{i:03d}.mp4", fps=30)


def measure(root: Path, cfg: FramesConfig, repeat: int) -> dict:
    """Interleaved rounds of (bare, bare_parallel, ours) on the videos under ``root/data/raw/videos``."""
    videos = root / "data/raw/videos"
    bare_decode_resize(videos, cfg.height, cfg.width)  # warm the page cache and decoder
    load_before = os.getloadavg()[0]
    sides = ("bare", "bare_parallel", "ours")
    wall: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    counts: dict[str, int] = {}
    for i in range(repeat):
        for side in sides if i % 2 == 0 else sides[::-1]:
            if side == "ours":
                shutil.rmtree(root / "data/frames", ignore_errors=True)  # as after `dvc repro` removed outputs
            c0, t0 = time.process_time(), time.perf_counter()
            if side == "ours":
                counts[side] = extract_frames(cfg, videos, root / "data/frames")["frames"]
            else:
                counts[side] = bare_decode_resize(
                    videos, cfg.height, cfg.width, workers=cfg.workers if side == "bare_parallel" else 1
                )[0]
            wall[side].append(time.perf_counter() - t0)
            cpu[side].append(time.process_time() - c0)
    n = counts["ours"]
    assert set(counts.values()) == {n}, counts
    load_after = os.getloadavg()[0]
    sizes = [p.stat().st_size for _, p in list_videos(videos)]

    def ratios(base: str) -> list[float]:
        return [b / o for b, o in zip(wall[base], wall["ours"], strict=True)]

    def side(s: str) -> dict:
        return {
            "fps": round(n / statistics.median(wall[s]), 1),
            "cpu_ms_per_frame": round(1000 * statistics.median(cpu[s]) / n, 4),
        }

    return {
        "frames": n,
        "videos": len(sizes),
        "source_mbit_per_s": round(8 * sum(sizes) / (n / 30) / 1e6, 2),  # at 30 fps
        "bare": side("bare"),
        "bare_parallel": side("bare_parallel"),
        "ours": side("ours"),
        "ratio": round(statistics.median(ratios("bare")), 4),
        "ratios": [round(r, 3) for r in ratios("bare")],
        "ratio_vs_bare_parallel": round(statistics.median(ratios("bare_parallel")), 4),
        "cpu_ratio": round(statistics.median(b / o for b, o in zip(cpu["bare"], cpu["ours"], strict=True)), 4),
        "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--paper-videos", type=int, default=4)
    ap.add_argument("--paper-frames", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7, help="interleaved rounds at the small size")
    ap.add_argument("--paper-repeat", type=int, default=5, help="interleaved rounds at the paper size")
    ap.add_argument(
        "--workdir",
        default=None,
        help="where the videos and frames go (default: the system temp dir); file creation cost depends on the "
        "filesystem, so pass a directory on the disk that holds the workspace to measure what the stage sees",
    )
    args = ap.parse_args()

    small_cfg = FramesConfig(height=128, width=96, workers=args.workers)
    paper_cfg = FramesConfig(height=640, width=512, workers=args.workers)
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        small_root, paper_root = Path(d) / "small", Path(d) / "paper"
        syn = SyntheticConfig(
            num_train_subjects=args.videos - 1,
            num_test_subjects=1,
            frames_per_video=args.frames,
            height=256,
            width=192,
        )
        generate_dataset(syn, small_root / "data/raw", seed=0)
        paper_stand_in(paper_root / "data/raw/videos", args.paper_videos, args.paper_frames)
        small = measure(small_root, small_cfg, args.repeat)
        paper = measure(paper_root, paper_cfg, args.paper_repeat)
    small |= {"source": "256x192", "target": "128x96", "repeat": args.repeat}
    paper |= {"source": "940x720", "target": "640x512", "repeat": args.paper_repeat}
    emit(
        "frames",
        {
            "headline": "paper size (what a paper run extracts); the small size under by_size",
            "workers": args.workers,
            "jpeg_quality": paper_cfg.jpeg_quality,
            "workdir": args.workdir or tempfile.gettempdir(),
        },
        {"what": "bare decode+resize, one video at a time", **paper["bare"]},
        {"what": "extract_frames (decode+resize+JPEG+files+index)", **paper["ours"]},
        paper["ratio"],
        higher_is_better=False,
        goal=">= 0.8 (both sizes)",
        ratio_is="median of per-round ratios bare_s / ours_s",
        by_size={"paper": paper, "small": small},
        cpus=os.cpu_count(),
    )


if __name__ == "__main__":
    main()
