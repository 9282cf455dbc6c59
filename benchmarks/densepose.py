"""DensePose stage throughput, two lines.

``densepose_frames_per_s``: the TorchScript backend batched (``forward_batch``) vs one frame per call. The
module is a random-weights network with the real export's contract (a float BGR image in; boxes, scores,
coarse/fine segmentation and U, V per box out) at a small size; speed does not depend on weights.

``densepose_stage_overlap``: the whole stage (``run_densepose``: JPEG decoding, the model, the IUV archives and
the index) on paper-size frames (640 x 512), one step after another (``workers=0``, the old path) vs the
overlapped pipeline (decoding threads, a results thread, a background archive writer). The model is the
rehearsal's TorchScript stand-in (which enforces the export's input contract) plus a fixed wait per frame
standing for the GPU's compute: a real CUDA forward leaves the host thread waiting on the device with the GIL
released, as ``time.sleep`` does.
Reported: frames/s and the GPU-idle share (the fraction of the stage's wall time in which the model is not
computing: 1 - time inside the module calls / wall time), and the host time per frame spent turning outputs into
IUV (on CPU the chart pasting runs on the host; with a GPU it runs on the device), in interleaved pairs
(alternating which runs first), ratio = median of the paired ``old s / new s``; the archives of both paths are
compared byte for byte.

Run: ``python -m benchmarks.densepose [--gpu-ms-per-frame 50] [--pairs 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.common import emit, timed
from dreampose.config import DensePoseConfig
from dreampose.data.densepose import run_densepose
from dreampose.data.densepose.torchscript import TorchScriptBackend

HEIGHT, WIDTH, FRAMES, CHART = 128, 96, 32, 56


class Contract(torch.nn.Module):
    """A conv trunk over the frame, one detection (the whole frame), chart outputs at CHART x CHART."""

    def __init__(self, chart: int = CHART):
        super().__init__()
        self.chart = chart
        self.trunk = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, 1, 1), torch.nn.ReLU()
        )
        self.head = torch.nn.Conv2d(32, 2 + 75, 1)

    def _run(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        n, _, h, w = x.shape
        f = self.head(self.trunk(x))
        f = torch.nn.functional.interpolate(f, size=(self.chart, self.chart), mode="bilinear", align_corners=False)
        box = torch.tensor([[0.0, 0.0, float(w), float(h)]])
        return [
            {
                "pred_boxes": box,
                "scores": torch.ones(1),
                "pred_densepose_coarse_segm": f[i : i + 1, :2],
                "pred_densepose_fine_segm": f[i : i + 1, 2:27],
                "pred_densepose_u": torch.sigmoid(f[i : i + 1, 27:52]),
                "pred_densepose_v": torch.sigmoid(f[i : i + 1, 52:77]),
            }
            for i in range(n)
        ]

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(img.permute(2, 0, 1)[None].float() / 255.0)[0]

    @torch.jit.export
    def forward_batch(self, imgs: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self._run(torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0)


class Single(torch.nn.Module):
    def __init__(self, inner: Contract):
        super().__init__()
        self.inner = inner

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner(img)


def batched_vs_single() -> None:
    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    inner = Contract().eval()
    with tempfile.TemporaryDirectory() as d:
        torch.jit.script(inner).save(f"{d}/batched.pt")
        torch.jit.script(Single(inner).eval()).save(f"{d}/single.pt")
        batched = TorchScriptBackend(Path(d) / "batched.pt", min_score=0.5)
        single = TorchScriptBackend(Path(d) / "single.pt", min_score=0.5)
        batch = 8
        same = all(
            np.array_equal(a.iuv, b.iuv)
            for a, b in zip(batched.predict(frames[:batch]), single.predict(frames[:batch]), strict=True)
        )

        def run(backend: TorchScriptBackend) -> None:
            for s in range(0, FRAMES, batch):
                backend.predict(frames[s : s + batch])

        t_single = timed(lambda: run(single), repeat=3)
        t_batched = timed(lambda: run(batched), repeat=3)
    emit(
        "densepose_frames_per_s",
        {"frames": FRAMES, "height": HEIGHT, "width": WIDTH, "chart": CHART, "batch_size": batch},
        {"what": "TorchScript backend, one frame per module call", "frames_per_s": round(FRAMES / t_single, 2)},
        {"what": "TorchScript backend, forward_batch per batch", "frames_per_s": round(FRAMES / t_batched, 2)},
        t_single / t_batched,
        identical_iuv=same,
    )


class ModelClock:
    """Wraps an export: runs it, then waits ``seconds_per_frame`` (the modelled GPU compute); adds up the time
    spent inside its calls (the model computing)."""

    def __init__(self, module, seconds_per_frame: float):
        self.module, self.seconds_per_frame, self.busy_s = module, seconds_per_frame, 0.0

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        out = self.module(image)
        time.sleep(self.seconds_per_frame)
        self.busy_s += time.perf_counter() - t0
        return out


def stage_workspace(root: Path, videos: int, frames: int, height: int, width: int) -> Path:
    """``data/frames`` (JPEG frames of the rehearsal's mannequin + the index) for ``videos`` test videos."""
    from tests.rehearsal.world import VideoSpec, person_frames

    rows = []
    for v in range(videos):
        name = f"v{v:02d}"
        spec = VideoSpec(name, height, width, 30, frames, (40 + 50 * v, 90, 160))
        d = root / "data/frames/test" / name
        d.mkdir(parents=True)
        for t, img in enumerate(person_frames(spec)):
            rel = f"data/frames/test/{name}/{t:05d}.jpg"
            Image.fromarray(img).save(root / rel, format="JPEG", quality=95, subsampling=0)
            rows.append(dict(video=name, split="test", frame=t, source_frame=t, path=rel, width=width, height=height))
    pd.DataFrame(rows).to_parquet(root / "data/frames/index.parquet")
    return root


def stage_overlap(gpu_ms: float, pairs: int, videos: int, frames: int, workers: int) -> None:
    from tests.rehearsal.world import VideoSpec, person_frames, write_densepose

    height, width, batch = 640, 512, 8
    cfg = DensePoseConfig(backend="torchscript", batch_size=batch)
    with tempfile.TemporaryDirectory() as d:
        root = stage_workspace(Path(d), videos, frames, height, width)
        weights = write_densepose(root / "dp.pt")

        backend = TorchScriptBackend(weights, cfg.min_score, "cpu")
        clock = ModelClock(backend.module, gpu_ms / 1000.0)
        backend.module, backend.batched = clock, False
        results_fn, post = backend.results, [0.0]

        def timed_results(raw):  # the host-side part (person choice, chart pasting): on a GPU run, device work
            t0 = time.perf_counter()
            out = results_fn(raw)
            post[0] += time.perf_counter() - t0
            return out

        backend.results = timed_results
        backend.predict(person_frames(VideoSpec("warm", height, width, 30, 3, (0, 0, 0))))  # first-call costs

        def run(n_workers: int, out: Path) -> tuple[float, float, float]:
            shutil.rmtree(out, ignore_errors=True)
            clock.busy_s, post[0] = 0.0, 0.0
            t0 = time.perf_counter()
            run_densepose(cfg, root / "data/frames", root / "raw", out, backend=backend, workers=n_workers)
            wall = time.perf_counter() - t0
            return wall, 1.0 - clock.busy_s / wall, post[0]

        results: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = []
        load = [os.getloadavg()[0]]
        for i in range(pairs):
            if i % 2 == 0:
                old, new = run(0, root / "old"), run(workers, root / "new")
            else:
                new, old = run(workers, root / "new"), run(0, root / "old")
            results.append((old, new))
        load.append(os.getloadavg()[0])
        same = all(
            (root / "old/test" / f"v{v:02d}.npz").read_bytes() == (root / "new/test" / f"v{v:02d}.npz").read_bytes()
            for v in range(videos)
        ) and pd.read_parquet(root / "old/index.parquet").equals(pd.read_parquet(root / "new/index.parquet"))
    n = videos * frames
    old_s = statistics.median(o[0] for o, _ in results)
    new_s = statistics.median(w[0] for _, w in results)
    emit(
        "densepose_stage_overlap",
        {
            "videos": videos,
            "frames_per_video": frames,
            "height": height,
            "width": width,
            "batch_size": batch,
            "modelled_gpu_ms_per_frame": gpu_ms,
            "decode_workers": workers,
            "pairs": pairs,
            "model": "rehearsal TorchScript stand-in + a fixed wait per frame for the GPU's compute",
        },
        {
            "what": "run_densepose workers=0: decode, model, write one after another (the old path)",
            "frames_per_s": round(n / old_s, 2),
            "gpu_idle_share": round(statistics.median(o[1] for o, _ in results), 3),
            "results_ms_per_frame": round(1000 * statistics.median(o[2] for o, _ in results) / n, 1),
        },
        {
            "what": f"run_densepose workers={workers}: decoding threads, a results thread, a background writer",
            "frames_per_s": round(n / new_s, 2),
            "gpu_idle_share": round(statistics.median(w[1] for _, w in results), 3),
            "results_ms_per_frame": round(1000 * statistics.median(w[2] for _, w in results) / n, 1),
        },
        statistics.median(o[0] / w[0] for o, w in results),
        ratio_is="median of paired old_s / new_s",
        identical_outputs=same,
        loadavg_1min_before_after=[round(x, 2) for x in load],
        cpus=os.cpu_count(),
    )


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notice, not a result
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--gpu-ms-per-frame",
        type=float,
        default=50.0,
        help="modelled GPU compute per frame (DensePose model zoo: R_50_FPN_s1x_legacy 0.051 s/image on a V100)",
    )
    ap.add_argument("--pairs", type=int, default=3, help="interleaved (old, new) pairs")
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=16, help="frames per video")
    ap.add_argument("--workers", type=int, default=2, help="decoding threads of the overlapped path")
    ap.add_argument("--only", choices=["batched", "overlap"], default=None)
    args = ap.parse_args()
    if args.only in (None, "batched"):
        batched_vs_single()
    if args.only in (None, "overlap"):
        stage_overlap(args.gpu_ms_per_frame, args.pairs, args.videos, args.frames, args.workers)


if __name__ == "__main__":
    main()
