"""Before any work: is everything the configured pipeline reads where ``params.yaml`` says it is?

``dreampose preflight`` (and the pipeline flow, before its first stage) lists each input the stages will
read (the UBC lists, the Stable Diffusion and CLIP folders, the DensePose export, the metric networks,
the device) with what was found. A missing input a stage *needs* is an error; a missing metric network
is a warning (that metric is reported "unavailable"); pretrained Stable Diffusion with ``runtime.device: auto``
on a machine where torch sees no CUDA is an error (unless ``runtime.device: cpu`` says the CPU is meant). The
check never downloads or loads weights.
Paths are relative to the workspace root, as the stages read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dreampose.config import Params

SD_LAYOUT = ("model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
CLIP_LAYOUT = ("config.json", "preprocessor_config.json")
METRIC_KEYS = {
    "lpips_weights": "LPIPS",
    "vgg_weights": "VGG",
    "inception_weights": "FID",
    "i3d_weights": "FVD",
    "aed_weights": "AED",
}


@dataclass(frozen=True)
class Finding:
    """One input: ``level`` is ``ok``, ``warn`` (the run goes on without it) or ``error`` (a stage would stop)."""

    level: str
    key: str
    message: str


def _is_hub_id(root: Path, path: str) -> bool:
    """``org/name`` with no local meaning (not even its ``org`` folder exists under ``root``): diffusers and
    transformers would fetch it from the model hub. ``models/sd`` in a workspace with ``models/`` is local."""
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:
        return False
    return not (root / path.split("/")[0]).exists()


def _folder(root: Path, key: str, path: str, layout: tuple[str, ...], what: str) -> Finding:
    if _is_hub_id(root, path):
        return Finding("warn", key, f"{path!r} is a model-hub id: it is downloaded on first use (needs a network)")
    folder = root / Path(path).expanduser()
    missing = [f for f in layout if not (folder / f).is_file()]
    if not folder.is_dir():
        return Finding("error", key, f"no such directory {folder}: put {what} there")
    if missing:
        return Finding("error", key, f"{folder} is not {what}: missing {', '.join(missing)}")
    return Finding("ok", key, str(folder))


def _url_list(root: Path, key: str, source: str) -> Finding:
    if source.startswith(("http://", "https://")):
        return Finding("ok", key, f"{source} (fetched by the download stage)")
    path = root / source
    if not path.is_file():
        return Finding("error", key, f"no such list file {path} (one video URL per line)")
    n = sum(1 for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return Finding("ok" if n else "error", key, f"{path}: {n} URLs")


def check_inputs(params: Params, root: Path, cuda_available: bool | None = None) -> list[Finding]:
    """Every input the configured stages read, checked on disk (pure apart from file-system reads)."""
    import torch

    root = Path(root)
    out: list[Finding] = []
    if params.data.source == "ubc":
        out.append(_url_list(root, "data.ubc.train_list", params.data.ubc.train_list))
        out.append(_url_list(root, "data.ubc.test_list", params.data.ubc.test_list))
    if params.model.source == "pretrained":
        sd, clip = params.model.pretrained.sd_path, params.model.pretrained.clip_path
        out.append(_folder(root, "model.pretrained.sd_path", sd, SD_LAYOUT, "a diffusers Stable Diffusion v1.x folder"))
        out.append(_folder(root, "model.pretrained.clip_path", clip, CLIP_LAYOUT, "a transformers CLIP vision folder"))
    if params.densepose.backend != "synthetic":
        weights = root / params.densepose.weights
        level = "ok" if weights.is_file() else "error"
        out.append(Finding(level, "densepose.weights", str(weights) if level == "ok" else f"no such file {weights}"))
    if params.densepose.backend == "detectron2":
        cfg = root / params.densepose.detectron2_config
        level = "ok" if cfg.is_file() else "error"
        out.append(Finding(level, "densepose.detectron2_config", str(cfg) if level == "ok" else f"no such file {cfg}"))
    for key, metric in METRIC_KEYS.items():
        path = root / getattr(params.score, key)
        if path.is_file():
            out.append(Finding("ok", f"score.{key}", str(path)))
        else:
            out.append(Finding("warn", f"score.{key}", f"no such file {path}: {metric} will be reported unavailable"))
    out.append(_device(params, torch.cuda.is_available() if cuda_available is None else cuda_available))
    return out


def _device(params: Params, cuda: bool) -> Finding:
    """Where the model stages would run. Pretrained Stable Diffusion with ``auto`` resolving to the CPU is an
    error: it is what an NVIDIA driver too old for the installed torch wheel looks like, and finetuning SD on a
    CPU takes weeks. ``runtime.device: cpu`` (or ``DREAMPOSE_DEVICE=cpu``) says the CPU is meant."""
    import torch

    from dreampose.runtime import resolve_device

    device = params.runtime.device
    try:
        resolved = resolve_device(device, cuda_available=cuda)
    except ValueError as err:
        return Finding("error", "runtime.device", str(err))
    if device == "auto" and resolved.type == "cpu" and params.model.source == "pretrained":
        return Finding(
            "error",
            "runtime.device",
            f"auto resolves to the CPU: CUDA is not available to torch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}); Stable Diffusion would train and render on the CPU. Check nvidia-smi: the "
            "pinned CUDA wheels need a recent NVIDIA driver (README 'Running the paper configuration' says which "
            "and how to install torch for an older one); to run on the CPU anyway set runtime.device: cpu "
            "(or DREAMPOSE_DEVICE=cpu)",
        )
    return Finding("ok", "runtime.device", f"{device} ({resolved})")


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


def format_findings(findings: list[Finding]) -> str:
    mark = {"ok": "ok   ", "warn": "warn ", "error": "ERROR"}
    width = max((len(f.key) for f in findings), default=0)
    return "\n".join(f"{mark[f.level]} {f.key:<{width}}  {f.message}" for f in findings)


class PreflightError(RuntimeError):
    """Inputs a stage needs are missing; the message lists each with where it belongs."""


def require_inputs(params: Params, root: Path) -> list[Finding]:
    """:func:`check_inputs`, raising :class:`PreflightError` (listing every missing input) on any error."""
    findings = check_inputs(params, root)
    bad = errors(findings)
    if bad:
        raise PreflightError(
            "missing inputs or no usable device (see README 'Running the paper configuration'):\n"
            + format_findings(bad)
        )
    return findings
