"""The CLIP-only adapter (``model.image_tokens: clip``, the paper's "Ours_CLIP" ablation)."""

from __future__ import annotations

import pytest
import torch

from dreampose.config import ConfigError, ModelConfig, parse_params
from dreampose.models.adapter import ImagePoseAdapter
from dreampose.models.builders import build_tiny_components
from dreampose.models.pipeline import DreamPosePipeline
from tests.models.conftest import TEST_CFG, H, W, open_conditioning


def _pipe(image_tokens: str) -> DreamPosePipeline:
    # the pose weights and the VAE gate opened, so both would count if used
    comps = build_tiny_components(TEST_CFG, H, W, "v_prediction", seed=0, image_tokens=image_tokens)
    return open_conditioning(DreamPosePipeline(**comps))


def _conditioning_lengths(pipe: DreamPosePipeline) -> list[int]:
    """Records the token count of every UNet call's ``encoder_hidden_states``."""
    seen: list[int] = []
    pipe.unet.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True
    )
    return seen


def _render(pipe: DreamPosePipeline, image: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    out = pipe(
        image, poses, num_inference_steps=2, image_guidance_scale=1.5, pose_guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    )  # fmt: skip
    return out.frames


def _perturb_vae_encoder(pipe: DreamPosePipeline) -> None:
    """Change what the VAE encoder makes of the photo (the render's decoder is untouched)."""
    with torch.no_grad():
        pipe.vae.quant_conv.bias.add_(1.0)


def test_clip_only_conditioning_has_exactly_the_clip_tokens_and_ignores_the_photo_latent(image, poses):
    pipe = _pipe("clip")
    n_clip = pipe.adapter.num_clip_tokens(pipe.image_encoder.config)
    seen = _conditioning_lengths(pipe)
    before = _render(pipe, image, poses[:2])
    assert seen and set(seen) == {n_clip}
    _perturb_vae_encoder(pipe)
    assert torch.equal(_render(pipe, image, poses[:2]), before)


def test_default_adapter_still_reads_the_photo_latent(image, poses):
    pipe = _pipe("clip_vae")
    n_clip = pipe.adapter.num_clip_tokens(pipe.image_encoder.config)
    seen = _conditioning_lengths(pipe)
    before = _render(pipe, image, poses[:2])
    assert seen and set(seen) == {n_clip + (H // 4 // 2) * (W // 4 // 2)}
    _perturb_vae_encoder(pipe)
    assert not torch.allclose(_render(pipe, image, poses[:2]), before)


def test_image_tokens_does_not_change_the_weights_and_survives_save_and_load(tmp_path):
    clip = build_tiny_components(TEST_CFG, H, W, seed=0, image_tokens="clip")
    default = build_tiny_components(TEST_CFG, H, W, seed=0)
    for name in ("unet", "vae", "adapter", "image_encoder"):
        a, b = clip[name].state_dict(), default[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    DreamPosePipeline(**clip).save_pretrained(tmp_path, safe_serialization=True)
    loaded = DreamPosePipeline.from_pretrained(tmp_path)
    assert loaded.adapter.config.image_tokens == "clip" and not loaded.adapter.uses_vae_tokens


def test_clip_only_adapter_refuses_latents_and_bad_values_are_errors():
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=16, image_tokens="clip")
    hidden = torch.zeros(1, 5, 16)
    assert adapter(hidden).shape == (1, 5, 16)
    with pytest.raises(ValueError, match="CLIP-only"):
        adapter(hidden, torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="image_tokens must be one of"):
        ImagePoseAdapter(image_tokens="vae")
    assert ModelConfig().image_tokens == "clip_vae"
    with pytest.raises(ConfigError, match=r"model\.image_tokens"):
        parse_params({"model": {"image_tokens": "vae"}})


def test_clip_only_training_step_updates_the_clip_path_only():
    from dreampose.config import DropoutConfig
    from dreampose.training.objectives import DiffusionObjective

    pipe = _pipe("clip")
    objective = DiffusionObjective(pipe, DropoutConfig(pose=0, image=0, both=0), train_image_encoder=True)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_pixels": torch.rand(2, 3, H, W, generator=g) * 2 - 1,
        "target_pixels": torch.rand(2, 3, H, W, generator=g) * 2 - 1,
        "poses": torch.rand(2, 10, H, W, generator=g),
    }
    objective(batch, torch.Generator().manual_seed(1)).backward()
    assert pipe.adapter.clip_proj.weight.grad is not None
    assert pipe.adapter.vae_out.weight.grad is None and pipe.adapter.vae_proj.weight.grad is None
