"""LoRA layers on the UNet's attention projections (peft): inject, read, merge.

Used by the subject finetune's LoRA phase 1 (``dreampose.training.lora``) and by the subject loader, which rebuilds
a LoRA-stored subject by injecting and merging its delta into the base UNet (``dreampose.models.subject``).
"""

from __future__ import annotations

import torch
from torch import nn

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


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
