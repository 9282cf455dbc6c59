"""One JSON line per benchmark: name, config, baseline figure, our figure, ratio, device, versions."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "diffusers", "transformers", "dvc", "prefect", "mlflow", "decord"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # a benchmark that does not need a package still reports
            continue
    return out


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Best wall-clock seconds of ``repeat`` calls (best-of reduces noise from other processes)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def emit(
    name: str,
    config: dict[str, Any],
    baseline: dict[str, Any],
    ours: dict[str, Any],
    ratio: float | None,
    higher_is_better: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Print and return one result line. ``ratio`` is ours/baseline oriented so that > 1 is better."""
    rec = {
        "name": name,
        "config": config,
        "baseline": baseline,
        "ours": ours,
        "ratio": None if ratio is None else round(float(ratio), 4),
        "ratio_meaning": "improvement factor (>1 is better)" if higher_is_better else "ours / baseline",
        "device": device_name(),
        "versions": versions(),
        **extra,
    }
    print(json.dumps(rec, sort_keys=False), flush=True)
    sys.stdout.flush()
    return rec


def stand_in_iuv(seed: int, frames: int, height: int = 640, width: int = 512) -> Any:
    """A DensePose-like uint8 IUV clip ``(frames, height, width, 3)`` at paper size by default: a body region with
    smooth U/V and a part index, moving a little per frame (what the data-path benchmarks read)."""
    import numpy as np

    iuv = np.zeros((frames, height, width, 3), np.uint8)
    u = np.linspace(0, 255, 200, dtype=np.uint8)[None, :]
    v = np.linspace(0, 255, 440, dtype=np.uint8)[:, None]
    for t in range(frames):
        x0 = 120 + (seed * 7 + t * 3) % 80
        iuv[t, 100:540, x0 : x0 + 200, 0] = 1 + (seed + t) % 24
        iuv[t, 100:540, x0 : x0 + 200, 1] = u
        iuv[t, 100:540, x0 : x0 + 200, 2] = v
    return iuv
