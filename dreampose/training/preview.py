"""Sample renders during training: a small grid of held-out pairs, logged to MLflow as a PNG.

Each grid row is ``input photo | target frame | render`` for one fixed pair, rendered with a few
DDIM steps from fixed noise, so grids of successive steps compare the model, not the draw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("dreampose.training")


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [-1, 1] -> ``uint8 (H, W, 3)`` (rounded, clipped)."""
    arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return arr.permute(1, 2, 0).numpy().astype(np.uint8)


def tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Equal-size ``uint8 (H, W, 3)`` images laid out as a grid, one list per row."""
    if not rows or not rows[0]:
        raise ValueError("cannot tile an empty grid")
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


@torch.no_grad()
def sample_grid(
    pipe: Any, dataset: Any, indices: list[int], num_inference_steps: int = 4, seed: int = 0
) -> Image.Image:
    """Render the pairs ``indices`` of ``dataset`` with ``pipe`` (DDIM) and lay them out as a grid.

    The pipeline's scheduler is restored afterwards, so the saved model keeps its own.
    """
    if not indices:
        raise ValueError("no pairs to sample")
    scheduler = pipe.scheduler
    modules = [m for m in (pipe.unet, pipe.adapter, pipe.image_encoder, pipe.vae) if m is not None]
    modes = [m.training for m in modules]
    try:
        pipe.set_scheduler("ddim")
        for m in modules:
            m.eval()
        rows = []
        for k, i in enumerate(indices):
            item = dataset[i]
            device = next(pipe.unet.parameters()).device
            out = pipe(
                ((item["input_pixels"] + 1.0) / 2.0).to(device),  # [0, 1]: unambiguous for bright photos
                item["poses"][None].to(device),
                num_inference_steps=num_inference_steps,
                generator=torch.Generator(device).manual_seed(seed + k),
                output_type="pt",
            ).frames
            rows.append([to_uint8(item["input_pixels"]), to_uint8(item["target_pixels"]), to_uint8(out[0] * 2 - 1)])
    finally:
        pipe.scheduler = scheduler
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    return Image.fromarray(tile(rows))


def mlflow_sampler(
    pipe: Any, dataset: Any, name: str, num_pairs: int = 2, num_inference_steps: int = 4, seed: int = 0
) -> Callable[[int], None]:
    """A ``sample_fn(step)`` for the training loop: renders the first ``num_pairs`` pairs of ``dataset`` and
    logs ``samples/<name>_step_NNNNNN.png`` to the active MLflow run (nothing is rendered without one)."""
    indices = list(range(min(num_pairs, len(dataset))))

    def sample(step: int) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        grid = sample_grid(pipe, dataset, indices, num_inference_steps, seed)
        mlflow.log_image(grid, artifact_file=f"samples/{name}_step_{step:06d}.png")
        log.info("%s: logged a sample grid at step %d", name, step)

    return sample
