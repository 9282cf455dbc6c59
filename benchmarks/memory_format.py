"""Training step of the demo's tiny model on the CPU: UNet weights in channels-last (NHWC) memory format against
the default (NCHW).

Baseline and ours are two copies of the same model (same seed, same batch of the demo's shape: 32 pairs at
64 x 48, AdamW, the image encoder trained as in ``train_base``), stepped alternately in one process for
``ROUNDS`` rounds after a warm-up, so load from other processes hits both alike; the ratio is the median of the
per-round ratios baseline / ours. ``loss_gap`` is the largest difference between the two copies' losses over the
rounds (the same maths, another summation order). Run: ``python -m benchmarks.memory_format``.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import emit
from benchmarks.train import build_pipeline, random_batch

ROUNDS, WARMUP = 12, 2
H, W, BATCH = 64, 48, 32


def _objective(channels_last: bool):
    from dreampose.config import DropoutConfig
    from dreampose.training.objectives import DiffusionObjective

    torch.manual_seed(0)
    obj = DiffusionObjective(build_pipeline("tiny", H, W), DropoutConfig(), train_image_encoder=True)
    if channels_last:
        obj.unet.to(memory_format=torch.channels_last)
    obj.train()
    params = [p for m in obj.trainable_modules().values() for p in m.parameters() if p.requires_grad]
    return obj, torch.optim.AdamW(params, lr=1e-3)


def main() -> None:
    models = {"nchw": _objective(False), "nhwc": _objective(True)}
    batch = random_batch(models["nchw"][0]._pipeline, BATCH, H, W)

    def step(name: str, seed: int) -> tuple[float, float]:
        obj, opt = models[name]
        t0 = time.perf_counter()
        loss = obj(batch, torch.Generator().manual_seed(seed))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, float(loss.detach())

    times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
    gap = 0.0
    for r in range(WARMUP + ROUNDS):
        order = ("nchw", "nhwc") if r % 2 == 0 else ("nhwc", "nchw")
        res = {name: step(name, r) for name in order}
        if r >= WARMUP:
            for name in res:
                times[name].append(round(res[name][0], 4))
        gap = max(gap, abs(res["nchw"][1] - res["nhwc"][1]))
    ratios = [a / b for a, b in zip(times["nchw"], times["nhwc"], strict=True)]
    emit(
        "train_step_channels_last_tiny_cpu",
        {
            "height": H,
            "width": W,
            "batch_size": BATCH,
            "rounds": ROUNDS,
            "warmup": WARMUP,
            "threads": torch.get_num_threads(),
        },
        {
            "memory_format": "contiguous (NCHW)",
            "step_s_median": statistics.median(times["nchw"]),
            "step_s_all": times["nchw"],
        },
        {
            "memory_format": "channels_last (NHWC)",
            "step_s_median": statistics.median(times["nhwc"]),
            "step_s_all": times["nhwc"],
        },
        statistics.median(ratios),
        paired_ratios=[round(x, 3) for x in ratios],
        loss_gap=gap,
    )


if __name__ == "__main__":
    main()
