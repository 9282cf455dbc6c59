"""Frame extraction throughput vs the bare decode + resize rate of the same videos.

Baseline: decord decodes every frame and PIL resizes + crops it, nothing is written.
Ours: ``extract_frames`` (the same decode and resize, plus JPEG encoding on a thread pool,
the parquet index and the atomic directory swap). A ratio near 1 means encoding is hidden
behind decoding. Source videos are synthetic mannequins at 256 × 192, so decoding is not trivial.

The two run in interleaved pairs (alternating which goes first) and the reported ratio is the median of
the per-pair ratios, so load from other processes hits both sides of a pair alike. The 1-minute load
average before and after, and the CPU seconds per frame of each side, are recorded: on a shared machine
read the ratio together with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit
from dreampose.config import FramesConfig, SyntheticConfig
from dreampose.data.frames import extract_frames, list_videos, resize_center_crop
from dreampose.data.synthetic import generate_dataset
from dreampose.video import iter_video


def bare_decode_resize(videos_dir: Path, height: int, width: int) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    for _, path in list_videos(videos_dir):
        for _, frame in iter_video(path):
            resize_center_crop(frame, height, width)
            n += 1
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--src-height", type=int, default=256)
    ap.add_argument("--src-width", type=int, default=192)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7, help="interleaved (bare, ours) pairs; reports the median ratio")
    ap.add_argument(
        "--workdir",
        default=None,
        help="where the videos and frames go (default: the system temp dir); file creation cost depends on the "
        "filesystem, so pass a directory on the disk that holds the workspace to measure what the stage sees",
    )
    args = ap.parse_args()

    syn = SyntheticConfig(
        num_train_subjects=args.videos - 1,
        num_test_subjects=1,
        frames_per_video=args.frames,
        height=args.src_height,
        width=args.src_width,
    )
    cfg = FramesConfig(height=args.height, width=args.width, workers=args.workers)
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        root = Path(d)
        generate_dataset(syn, root / "data/raw", seed=0)
        videos = root / "data/raw/videos"
        bare_decode_resize(videos, cfg.height, cfg.width)  # warm the page cache and decoder
        load_before = os.getloadavg()[0]
        pairs: list[tuple[float, float, float, float]] = []  # (bare s, ours s, bare CPU s, ours CPU s)
        n_frames = 0
        for i in range(args.repeat):  # interleaved pairs, alternating which runs first: both see the same load
            for side in ("bare", "ours") if i % 2 == 0 else ("ours", "bare"):
                if side == "bare":
                    c0 = time.process_time()
                    n, base_s = bare_decode_resize(videos, cfg.height, cfg.width)
                    base_cpu = time.process_time() - c0
                else:
                    shutil.rmtree(root / "data/frames", ignore_errors=True)  # as after `dvc repro` removed outputs
                    c0, t0 = time.process_time(), time.perf_counter()
                    n_frames = extract_frames(cfg, videos, root / "data/frames")["frames"]
                    ours_s = time.perf_counter() - t0
                    ours_cpu = time.process_time() - c0
            pairs.append((base_s, ours_s, base_cpu, ours_cpu))
        assert n == n_frames, (n, n_frames)
        load_after = os.getloadavg()[0]
    ratios = [b / o for b, o, _, _ in pairs]
    base_fps = n / statistics.median(p[0] for p in pairs)
    ours_fps = n / statistics.median(p[1] for p in pairs)
    emit(
        "frames",
        {
            "videos": args.videos,
            "frames_per_video": args.frames,
            "source": f"{args.src_height}x{args.src_width}",
            "target": f"{cfg.height}x{cfg.width}",
            "workers": cfg.workers,
            "jpeg_quality": cfg.jpeg_quality,
            "repeat": args.repeat,
            "workdir": args.workdir or tempfile.gettempdir(),
        },
        {"what": "bare decode+resize", "fps": round(base_fps, 1), "cpu_s_per_frame": _median_per(pairs, 2, n)},
        {
            "what": "extract_frames (decode+resize+JPEG+index)",
            "fps": round(ours_fps, 1),
            "cpu_s_per_frame": _median_per(pairs, 3, n),
        },
        statistics.median(ratios),
        higher_is_better=False,
        goal=">= 0.8",
        ratio_is="median of paired ratios bare_s / ours_s",
        ratios=[round(r, 3) for r in ratios],
        cpus=os.cpu_count(),
        load_average_1min={"before": round(load_before, 2), "after": round(load_after, 2)},
    )


def _median_per(pairs: list[tuple[float, ...]], col: int, n: int) -> float:
    return round(statistics.median(p[col] for p in pairs) / n, 7)


if __name__ == "__main__":
    main()
