"""LoRA variant of the subject finetune's phase 1 (peft).

With ``SubjectConfig.lora_rank > 0`` phase 1 trains rank-``r`` adapters on the UNet attention
projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) while every base UNet weight stays frozen.
The image-to-token adapter (a few linear layers) still trains in full: it is small, and the
paper's subject finetune updates it. The image encoder is frozen in this mode.

The saved subject directory holds the LoRA weights *merged* into the UNet, so the render stage
loads it like any other ``DreamPosePipeline``. Beside it, ``lora/`` keeps the per-subject delta:

- ``unet_lora.safetensors``: the LoRA A/B matrices (peft key names)
- ``adapter.safetensors``: the finetuned adapter
- ``vae_decoder.safetensors``: the finetuned VAE decoder (only when phase 2 ran)
- ``lora_config.json``: rank, alpha, target modules and the byte size of each file

A deployment can keep only the base model directory plus ``lora/`` and rebuild the subject
pipeline with :func:`load_subject_delta`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dreampose.config import DropoutConfig
from dreampose.training.objectives import DiffusionObjective

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
LORA_DIR = "lora"
LORA_FILE = "unet_lora.safetensors"
ADAPTER_FILE = "adapter.safetensors"
DECODER_FILE = "vae_decoder.safetensors"
CONFIG_FILE = "lora_config.json"


def lora_config(rank: int, alpha: float | None = None):
    """A peft ``LoraConfig`` on the attention projections; ``alpha`` defaults to ``rank`` (scale 1)."""
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    return LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha), target_modules=list(TARGET_MODULES))


def inject_lora(unet: nn.Module, rank: int, alpha: float | None = None, seed: int = 0) -> list[str]:
    """Wrap the UNet's attention projections with fresh LoRA layers (B = 0, so the output is unchanged).

    The random A matrices are drawn from ``seed`` alone (not from the global generator's history), so
    two runs with the same settings start alike. Freezes every base weight; returns the names of the
    LoRA parameters (the only trainable ones).
    """
    from peft import inject_adapter_in_model

    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(lora_config(rank, alpha), unet)
    names = [n for n, _ in unet.named_parameters() if ".lora_" in n]
    if not names:
        raise ValueError(f"no attention projection {TARGET_MODULES} found in {type(unet).__name__}")
    for n, p in unet.named_parameters():
        p.requires_grad_(".lora_" in n)
    return names


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA A/B weights only (peft key names), detached copies on the CPU."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    if not state:
        raise ValueError(f"{type(unet).__name__} carries no LoRA layers")
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def merge_lora(unet: nn.Module) -> int:
    """Fold every LoRA layer into its base weight and put the plain base layer back; returns the count.

    Afterwards the UNet has exactly the state-dict keys it had before :func:`inject_lora`.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = [(name, m) for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in targets:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, module.get_base_layer())
    return len(targets)


class LoraParams(nn.Module):
    """The LoRA sub-modules of a UNet gathered under one module: what the loop optimizes and checkpoints."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(
            {name.replace(".", "__"): m for name, m in unet.named_modules() if name.endswith((".lora_A", ".lora_B"))}
        )
        if not self.layers:
            raise ValueError(f"{type(unet).__name__} carries no LoRA layers")


class LoraDiffusionObjective(DiffusionObjective):
    """The diffusion objective with a frozen UNet carrying trainable LoRA layers, plus the full adapter."""

    def __init__(
        self, pipeline: Any, dropout: DropoutConfig, rank: int, alpha: float | None = None, seed: int = 0
    ) -> None:
        super().__init__(pipeline, dropout, train_image_encoder=False)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        inject_lora(self.unet, rank, self.alpha, seed)
        # Off the module tree: the same sub-modules are already registered through ``unet``.
        object.__setattr__(self, "_lora", LoraParams(self.unet))

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"unet_lora": self._lora, "adapter": self.adapter}


def _write(state: dict[str, torch.Tensor], path: Path) -> int:
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, path)
    return path.stat().st_size


def save_subject_delta(
    lora_dir: Path,
    unet_lora: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    adapter: nn.Module,
    decoder: dict[str, torch.Tensor] | None = None,
) -> dict[str, int]:
    """Write the files of ``lora/`` (see the module docstring); returns ``{file: bytes}``."""
    lora_dir = Path(lora_dir)
    lora_dir.mkdir(parents=True, exist_ok=True)
    sizes = {
        LORA_FILE: _write(unet_lora, lora_dir / LORA_FILE),
        ADAPTER_FILE: _write(adapter.state_dict(), lora_dir / ADAPTER_FILE),
    }
    if decoder is not None:
        sizes[DECODER_FILE] = _write(decoder, lora_dir / DECODER_FILE)
    meta = {"rank": rank, "alpha": alpha, "target_modules": list(TARGET_MODULES), "files": sizes}
    (lora_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return sizes


def decoder_state(vae: nn.Module) -> dict[str, torch.Tensor]:
    """What phase 2 trains: the VAE decoder and its ``post_quant_conv``, with ``vae`` key names."""
    return {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}


def load_subject_delta(base_dir: Path, lora_dir: Path):
    """Rebuild a subject's ``DreamPosePipeline`` from the base model directory and its ``lora/`` delta."""
    from peft import set_peft_model_state_dict

    from dreampose.models.pipeline import DreamPosePipeline

    lora_dir = Path(lora_dir)
    cfg_path = lora_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{lora_dir}: no {CONFIG_FILE} (not a subject LoRA delta)")
    meta = json.loads(cfg_path.read_text())
    pipe = DreamPosePipeline.from_pretrained(base_dir)
    inject_lora(pipe.unet, int(meta["rank"]), float(meta["alpha"]))
    result = set_peft_model_state_dict(pipe.unet, load_file(lora_dir / LORA_FILE))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{lora_dir / LORA_FILE}: keys that match no LoRA layer, e.g. {unexpected[:3]}")
    merge_lora(pipe.unet)
    pipe.unet.requires_grad_(False)
    pipe.adapter.load_state_dict(load_file(lora_dir / ADAPTER_FILE), strict=True)
    if (lora_dir / DECODER_FILE).is_file():
        _missing, unexpected = pipe.vae.load_state_dict(load_file(lora_dir / DECODER_FILE), strict=False)
        if unexpected:
            raise ValueError(f"{lora_dir / DECODER_FILE}: keys the VAE does not have, e.g. {unexpected[:3]}")
    return pipe
