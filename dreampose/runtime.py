"""The inference runtime: ``runtime.device`` / ``dtype`` / ``cpu_offload`` resolved once, applied to models.

:func:`resolve_runtime` turns the config section into a :class:`Runtime` (a concrete ``torch.device``
and ``torch.dtype``); stages call it once and hand the result to the library functions that load
models (DensePose backends, ``models.subject.load_subject_pipeline``, the score stage's renders and metric networks,
the catalog item's render). :func:`place_pipeline` is the one place a pipeline is moved.

On CPU in fp32 nothing is moved or cast, so the demo's numbers are exactly those of a plain
``from_pretrained`` pipeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dreampose.config import RuntimeConfig

log = logging.getLogger("dreampose.runtime")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Runtime:
    """A resolved runtime: where models run and the diffusion pipeline's precision."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    cpu_offload: bool = False

    def describe(self) -> dict[str, object]:
        """JSON-able, for render.json and run parameters."""
        return {"device": str(self.device), "dtype": DTYPE_NAMES[self.dtype], "cpu_offload": self.cpu_offload}


CPU = Runtime(torch.device("cpu"))


def resolve_device(
    device: str | torch.device,
    key: str = "runtime.device",
    cuda_available: bool | None = None,
    cuda_count: int | None = None,
) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` checked against this machine.

    ``cuda_available`` / ``cuda_count`` default to what torch reports (passed explicitly in tests).
    A CUDA device this machine does not have is a ``ValueError`` naming ``key``.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if cuda_available else 0
    if device == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{key}: {device!r} is not a torch device ({err})") from None
    if dev.type == "cuda":
        if not cuda_available:
            raise ValueError(
                f"{key}: {device!r} requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use auto or cpu"
            )
        if dev.index is not None and dev.index >= cuda_count:
            raise ValueError(f"{key}: {device!r} requested but this machine has {cuda_count} CUDA device(s)")
    return dev


def resolve_dtype(dtype: str, device: torch.device, key: str = "runtime.dtype") -> torch.dtype:
    """``fp32`` | ``fp16`` | ``bf16`` -> a torch dtype; fp16 on CPU falls back to fp32 (with a warning)."""
    if dtype not in DTYPES:
        raise ValueError(f"{key}: {dtype!r} is not one of {sorted(DTYPES)}")
    if dtype == "fp16" and device.type == "cpu":
        log.warning("%s: fp16 on CPU falls back to fp32 (use bf16 for reduced precision on CPU)", key)
        return torch.float32
    return DTYPES[dtype]


def resolve_runtime(cfg: RuntimeConfig, cuda_available: bool | None = None) -> Runtime:
    """The config section -> a concrete :class:`Runtime` for this machine (errors name the key)."""
    device = resolve_device(cfg.device, cuda_available=cuda_available)
    return Runtime(device, resolve_dtype(cfg.dtype, device), bool(cfg.cpu_offload and device.type != "cpu"))


def place_pipeline(pipe, runtime: Runtime | None):
    """Move a diffusers pipeline to ``runtime`` (or set up model CPU offload onto its device); returns it.

    CPU + fp32 leaves the pipeline untouched. Offload casts to the dtype first (in CPU memory), then
    lets diffusers move each model to the device only while it runs.
    """
    if runtime is None or runtime == CPU:
        return pipe
    if pipe.unet.dtype != runtime.dtype:  # (loading with ``dtype=`` makes this a no-op)
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its "modules to keep in float32: []" warning is empty here
        try:
            pipe.to(dtype=runtime.dtype)
        finally:
            diffusers_logging.set_verbosity(level)
    if runtime.cpu_offload:
        pipe.enable_model_cpu_offload(device=runtime.device)
        return pipe
    return pipe.to(runtime.device)


def place_module(module: torch.nn.Module, device: torch.device | None) -> torch.nn.Module:
    """A metric or DensePose network on ``device`` (fp32 always); ``None`` leaves it where it is."""
    return module if device is None else module.to(device)
