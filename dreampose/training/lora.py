"""LoRA variant of the subject finetune's phase 1 (peft).

With ``SubjectConfig.lora_rank > 0`` phase 1 trains rank-``r`` adapters on the UNet attention
projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``; the layer functions live in ``dreampose.models.lora``)
while every base UNet weight stays frozen. The image-to-token adapter (a few linear layers) still trains in full:
it is small, and the paper's subject finetune updates it. The image encoder is frozen in this mode.

The subject directory then stores the UNet as the LoRA A/B matrices only (``unet_lora.safetensors``) beside the
adapter and the VAE decoder; the loader (``dreampose.models.subject.load_subject_pipeline``) injects and merges
them into the base UNet.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dreampose.config import DropoutConfig
from dreampose.models.lora import TARGET_MODULES, inject_lora, lora_config, lora_state_dict, merge_lora
from dreampose.training.objectives import DiffusionObjective

__all__ = [
    "TARGET_MODULES",
    "LoraDiffusionObjective",
    "LoraParams",
    "inject_lora",
    "lora_config",
    "lora_state_dict",
    "merge_lora",
]


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
        self, pipeline: Any, dropout: DropoutConfig, rank: int, alpha: float | None = None, seed: int = 0,
        timestep_sampling: str = "uniform",
    ) -> None:  # fmt: skip
        super().__init__(pipeline, dropout, train_image_encoder=False, timestep_sampling=timestep_sampling)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        inject_lora(self.unet, rank, self.alpha, seed)
        # Off the module tree: the same sub-modules are already registered through ``unet``.
        object.__setattr__(self, "_lora", LoraParams(self.unet))

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"unet_lora": self._lora, "adapter": self.adapter}
