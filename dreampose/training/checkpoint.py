"""Training checkpoints: safetensors + JSON (no pickle), written atomically, resumed from the newest good one.

Layout of ``<ckpt_dir>/step_000100/``:

- ``model.safetensors``: state dicts of the trainable modules, keys ``<module>.<param>``
- ``optimizer.safetensors``: the optimizer's tensor state, keys ``state.<index>.<name>``
- ``rng.safetensors``: torch CPU (and CUDA) generator states
- ``state.json``: step, run fingerprint, optimizer param groups and scalar state, LR scheduler
  state, python and numpy generator states, and the fp16 loss scaler's state (``scaler``: scale,
  growth tracker and factors; ``null`` when the run has no scaler), and the weight EMA's scalar state
  (``ema``; ``null`` when the run keeps none)
- ``ema.safetensors`` (runs with ``ema_decay > 0``): the EMA's shadow weights, keys ``shadow.<index>`` in the
  order of the trainable parameters

A step directory appears only by ``rename`` of a fully written temporary directory, so a
killed run never leaves a partial checkpoint that looks complete. A checkpoint that fails to
load (e.g. a truncated file) is reported with a warning and the previous one is used.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("dreampose.training")

STEP_PREFIX = "step_"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def _parse_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(STEP_PREFIX) or not name[len(STEP_PREFIX) :].isdigit():
        return None
    return int(name[len(STEP_PREFIX) :])


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete step directories, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(s, p) for p in ckpt_dir.iterdir() if p.is_dir() and (s := _parse_step(p)) is not None]
    return sorted(found)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone makes each tensor its own.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _split_optimizer_state(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt_state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return _tensors(tensors), {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


@dataclass
class Checkpoint:
    """A loaded checkpoint, ready to be applied with :func:`apply_checkpoint`."""

    step: int
    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict[str, Any]
    fingerprint: str
    scaler: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None


def ema_state(ema: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """A diffusers ``EMAModel``'s state split into its shadow tensors and its JSON scalars; ``None`` without one."""
    if ema is None:
        return None
    state = dict(ema.state_dict())
    shadow = state.pop("shadow_params")
    return {f"shadow.{i}": t for i, t in enumerate(shadow)}, state


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    fingerprint: str,
    keep: int = 2,
    scaler: Any = None,
    ema: Any = None,
) -> Path:
    """Write ``<ckpt_dir>/step_<step>/`` atomically, then delete all but the newest ``keep``.

    ``scaler``: the run's ``GradScaler`` (fp16 mixed precision), whose state is saved with the step so a resumed
    run skips and rescales exactly as the uninterrupted one; ``ema``: the run's ``EMAModel`` (its shadow weights
    and step count), likewise. Older checkpoints are deleted only after the new
    one is complete, so a kill mid-write always leaves a usable one."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=ckpt_dir))
    try:
        model_state = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
        save_file(_tensors(model_state), tmp / "model.safetensors")
        opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        rng_tensors, rng_meta = capture_rng()
        save_file(_tensors(rng_tensors), tmp / "rng.safetensors")
        ema_split = ema_state(ema)
        if ema_split is not None:
            save_file(_tensors(ema_split[0]), tmp / "ema.safetensors")
        state = {
            "step": step,
            "fingerprint": fingerprint,
            "optimizer": opt_meta,
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng": rng_meta,
            "scaler": scaler_state(scaler),
            "ema": None if ema_split is None else ema_split[1],
        }
        (tmp / "state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one step directory; raises ``ValueError`` naming the file when anything is unreadable."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        model = load_file(path / "model.safetensors")
        opt_tensors = load_file(path / "optimizer.safetensors")
        rng_tensors = load_file(path / "rng.safetensors")
        ema = state.get("ema")
        if ema is not None:
            shadow = load_file(path / "ema.safetensors")
            ema = {**ema, "shadow_params": [shadow[f"shadow.{i}"] for i in range(len(shadow))]}
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
    return Checkpoint(
        step=int(state["step"]),
        path=path,
        model=model,
        optimizer=_join_optimizer_state(opt_tensors, state["optimizer"]),
        lr_scheduler=state["lr_scheduler"],
        rng_tensors=rng_tensors,
        rng_meta=state["rng"],
        fingerprint=state["fingerprint"],
        scaler=state.get("scaler"),
        ema=ema,
    )


def latest_checkpoint(ckpt_dir: Path, fingerprint: str | None = None) -> Checkpoint | None:
    """The newest checkpoint that loads and matches ``fingerprint``; warns about each one skipped."""
    for step, path in reversed(list_checkpoints(Path(ckpt_dir))):
        try:
            ckpt = load_checkpoint(path)
        except ValueError as err:
            warnings.warn(f"skipping corrupt checkpoint at step {step}: {err}", RuntimeWarning, stacklevel=2)
            continue
        if fingerprint is not None and ckpt.fingerprint != fingerprint:
            warnings.warn(
                f"{path}: written by a run with different settings; starting from scratch", RuntimeWarning, stacklevel=2
            )
            return None
        return ckpt
    return None


def scaler_state(scaler: Any) -> dict[str, Any] | None:
    """A ``GradScaler``'s state as JSON values, ``None`` without an enabled scaler."""
    if scaler is None or not scaler.is_enabled():
        return None
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}


def apply_checkpoint(
    ckpt: Checkpoint,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    scaler: Any = None,
    ema: Any = None,
) -> int:
    """Load weights, optimizer, scheduler, loss-scaler, weight-EMA and generator states; returns the step to
    continue from."""
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix) :]: v for k, v in ckpt.model.items() if k.startswith(prefix)}
        if not sub:
            raise ValueError(f"{ckpt.path}: no weights for module {name!r}")
        module.load_state_dict(sub, strict=True)
    optimizer.load_state_dict(ckpt.optimizer)
    lr_scheduler.load_state_dict(ckpt.lr_scheduler)
    if scaler is not None and scaler.is_enabled():
        if ckpt.scaler is None:
            warnings.warn(
                f"{ckpt.path}: no loss-scaler state (written without fp16 or by an older version); the scale "
                "restarts from its initial value, so this resume is not exact",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            scaler.load_state_dict(ckpt.scaler)
    if ema is not None:
        if ckpt.ema is None:
            raise ValueError(f"{ckpt.path}: no weight-EMA state, but the run keeps an EMA")
        device = ema.shadow_params[0].device if ema.shadow_params else torch.device("cpu")
        ema.load_state_dict({**ckpt.ema, "shadow_params": [t.to(device) for t in ckpt.ema["shadow_params"]]})
    restore_rng(ckpt.rng_tensors, ckpt.rng_meta)
    return ckpt.step
