"""Subject models stored as what the subject finetune changed, on top of the base model they were trained from.

A subject finetune trains the UNet (or LoRA layers on it) and the image-to-token adapter, then the VAE decoder;
the CLIP image encoder, the VAE encoder and the scheduler stay the base model's. A subject directory therefore
holds only those weights, in ``train_subject.save_dtype``, plus ``subject.json`` naming the base model:

- ``subject.json``: format, the base model (path relative to this directory and the SHA-256 of its files, so a
  different base is an error rather than a silently wrong model; no absolute path, so the file's bytes, and the
  hash DVC records for the directory, are the same in every checkout), dtype, how the UNet is stored
  (``full`` weights or a ``lora`` delta with its rank / alpha / target modules) and each file's bytes
- ``unet.safetensors`` (full) or ``unet_lora.safetensors`` (LoRA A/B matrices, peft key names)
- ``adapter.safetensors``; ``vae_decoder.safetensors`` (decoder + ``post_quant_conv``; only when phase 2 ran);
  ``image_encoder.safetensors`` (only when phase 1 trained it)

:func:`load_subject_pipeline` is the one loader of a model directory for rendering: it rebuilds a subject from its
base + delta, and loads a full ``save_pretrained`` folder (the base model, or a subject saved before this format)
as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

SUBJECT_FILE = "subject.json"
FORMAT = "dreampose-subject/1"
UNET_FILE = "unet.safetensors"
LORA_FILE = "unet_lora.safetensors"
ADAPTER_FILE = "adapter.safetensors"
DECODER_FILE = "vae_decoder.safetensors"
IMAGE_ENCODER_FILE = "image_encoder.safetensors"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Files of a base directory that are not the model (training logs): left out of its hash.
_NOT_MODEL = frozenset({"train.json"})
_HASH_CACHE: dict[tuple, str] = {}


def is_subject_dir(path: Path) -> bool:
    return (Path(path) / SUBJECT_FILE).is_file()


def is_model_dir(path: Path) -> bool:
    """A full pipeline folder or a subject delta directory."""
    return (Path(path) / "model_index.json").is_file() or is_subject_dir(path)


def base_sha256(base_dir: Path) -> str:
    """SHA-256 over the relative paths and contents of a pipeline folder's files (``train.json`` left out).

    Cached per process on (path, size, mtime) of every file, so loading many subjects of one base hashes it once.
    """
    base_dir = Path(base_dir).resolve()
    files = sorted(p for p in base_dir.rglob("*") if p.is_file() and p.name not in _NOT_MODEL)
    key = (str(base_dir), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key in _HASH_CACHE:
        return _HASH_CACHE[key]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(base_dir).as_posix()}\0{p.stat().st_size}\0".encode())
        with p.open("rb") as f:
            while chunk := f.read(16 << 20):
                h.update(chunk)
    _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def decoder_state(vae: nn.Module) -> dict[str, torch.Tensor]:
    """What phase 2 trains: the VAE decoder and its ``post_quant_conv``, with ``vae`` key names."""
    return {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}


def _write(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> int:
    from safetensors.torch import save_file

    out = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        out[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous().clone()
    save_file(out, str(path))
    return path.stat().st_size


def save_subject(
    pipe: Any,
    out_dir: Path,
    base_dir: Path,
    *,
    dtype: str = "fp16",
    lora: tuple[dict[str, torch.Tensor], int, float] | None = None,
    decoder: bool = True,
    image_encoder: bool = False,
    final_dir: Path | None = None,
) -> dict[str, int]:
    """Write the subject delta of ``pipe`` (finetuned from ``base_dir``) into ``out_dir``; returns ``{file: bytes}``.

    ``lora``: ``(LoRA state dict, rank, alpha)`` stores the UNet as that delta instead of full weights.
    ``final_dir``: where ``out_dir`` will live once swapped in (for the relative base path; default ``out_dir``).
    """
    from dreampose.models.lora import TARGET_MODULES

    if dtype not in DTYPES:
        raise ValueError(f"save dtype {dtype!r}: choose one of {list(DTYPES)}")
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not (base_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{base_dir}: no base pipeline (no model_index.json) to store the subject against")
    out_dir.mkdir(parents=True, exist_ok=True)
    dt = DTYPES[dtype]
    sizes: dict[str, int] = {}
    if lora is not None:
        sizes[LORA_FILE] = _write(lora[0], out_dir / LORA_FILE, dt)
    else:
        sizes[UNET_FILE] = _write(pipe.unet.state_dict(), out_dir / UNET_FILE, dt)
    sizes[ADAPTER_FILE] = _write(pipe.adapter.state_dict(), out_dir / ADAPTER_FILE, dt)
    if decoder:
        sizes[DECODER_FILE] = _write(decoder_state(pipe.vae), out_dir / DECODER_FILE, dt)
    if image_encoder:
        sizes[IMAGE_ENCODER_FILE] = _write(pipe.image_encoder.state_dict(), out_dir / IMAGE_ENCODER_FILE, dt)
    final = Path(final_dir) if final_dir is not None else out_dir
    meta = {
        "format": FORMAT,
        "base": {
            "path": os.path.relpath(base_dir.resolve(), final.resolve()),
            "sha256": base_sha256(base_dir),
        },
        "dtype": dtype,
        "unet": "lora" if lora is not None else "full",
        "lora": {"rank": lora[1], "alpha": lora[2], "target_modules": list(TARGET_MODULES)} if lora else None,
        "files": sizes,
    }
    (out_dir / SUBJECT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return sizes


def read_subject(subject_dir: Path) -> dict[str, Any]:
    path = Path(subject_dir) / SUBJECT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{subject_dir}: no {SUBJECT_FILE} (not a subject model directory)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this code reads {FORMAT!r}")
    return meta


def check_subject_frame_size(model_dir: Path, height: int, width: int) -> None:
    """``models.sizes.check_saved_model_frame_size`` for any model directory a render loads: a subject delta is
    checked at its base model's sizes."""
    from dreampose.models.sizes import check_saved_model_frame_size

    model_dir = Path(model_dir)
    if is_subject_dir(model_dir):
        model_dir = resolve_base(model_dir, check=False)
    check_saved_model_frame_size(model_dir, height, width)


def resolve_base(subject_dir: Path, base_dir: Path | None = None, *, check: bool = True) -> Path:
    """The base directory of a subject: ``base_dir`` when given, else the recorded relative path (then the absolute
    path that subjects saved before it was dropped recorded).

    With ``check``, its SHA-256 must equal the recorded one (``ValueError`` naming both otherwise)."""
    subject_dir = Path(subject_dir)
    meta = read_subject(subject_dir)["base"]
    if base_dir is None:
        candidates = [subject_dir / meta["path"]] + ([Path(meta["abs_path"])] if meta.get("abs_path") else [])
        found = next((c for c in candidates if (c / "model_index.json").is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"{subject_dir}: its base model is not at {' or '.join(map(str, candidates))}; pass base_dir"
            )
        base_dir = found
    base_dir = Path(base_dir)
    if not (base_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{base_dir}: not a DreamPose pipeline directory (no model_index.json)")
    if check:
        got = base_sha256(base_dir)
        if got != meta["sha256"]:
            raise ValueError(
                f"{subject_dir} was finetuned from a base model with SHA-256 {meta['sha256'][:16]}..., but "
                f"{base_dir} has {got[:16]}...: the base changed since (re-run the subject finetune) or is the wrong one"
            )
    return base_dir


def _load(module: nn.Module, path: Path, *, strict: bool = True) -> None:
    from safetensors.torch import load_file

    ref = module.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in load_file(str(path)).items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or (strict and missing):
        raise ValueError(f"{path}: does not fit the base's {type(module).__name__} (unexpected {unexpected[:3]}, "
                         f"missing {missing[:3]})")  # fmt: skip


def apply_subject(pipe: Any, subject_dir: Path) -> Any:
    """Load a subject's stored delta into ``pipe`` (the base pipeline, fp32) in place; returns it."""
    from safetensors.torch import load_file

    subject_dir = Path(subject_dir)
    meta = read_subject(subject_dir)
    if meta["unet"] == "lora":
        from peft import set_peft_model_state_dict

        from dreampose.models.lora import inject_lora, merge_lora

        lora = meta["lora"]
        inject_lora(pipe.unet, int(lora["rank"]), float(lora["alpha"]))
        state = {k: v.float() for k, v in load_file(str(subject_dir / LORA_FILE)).items()}
        result = set_peft_model_state_dict(pipe.unet, state)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{subject_dir / LORA_FILE}: keys that match no LoRA layer, e.g. {unexpected[:3]}")
        merge_lora(pipe.unet)
        pipe.unet.requires_grad_(False)
    else:
        _load(pipe.unet, subject_dir / UNET_FILE)
    _load(pipe.adapter, subject_dir / ADAPTER_FILE)
    if DECODER_FILE in meta["files"]:
        ref = decoder_state(pipe.vae)
        _load(pipe.vae, subject_dir / DECODER_FILE, strict=False)
        got = set(load_file(str(subject_dir / DECODER_FILE)).keys())
        if got != set(ref):
            raise ValueError(f"{subject_dir / DECODER_FILE}: decoder keys differ from the base VAE's")
    if IMAGE_ENCODER_FILE in meta["files"]:
        _load(pipe.image_encoder, subject_dir / IMAGE_ENCODER_FILE)
    return pipe


def load_subject_pipeline(model_dir: Path, base_dir: Path | None = None, runtime: Any = None) -> Any:
    """A ready-to-render ``DreamPosePipeline`` from any model directory, placed by ``runtime`` (``None``: CPU fp32).

    A subject directory (``subject.json``) is rebuilt from its base (``base_dir``, else the recorded path; the
    base's hash must match) + its stored delta; a full ``save_pretrained`` folder loads as it is."""
    from dreampose.models.pipeline import DreamPosePipeline, load_pipeline
    from dreampose.runtime import place_pipeline

    model_dir = Path(model_dir)
    if not is_subject_dir(model_dir):
        return load_pipeline(model_dir, runtime)  # a full folder, or its clear error
    base = resolve_base(model_dir, base_dir)
    pipe = DreamPosePipeline.from_pretrained(base)
    apply_subject(pipe, model_dir)
    return place_pipeline(pipe, runtime)


def subject_bytes(model_dir: Path) -> int:
    """Bytes on disk of a model directory (every file)."""
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file())
