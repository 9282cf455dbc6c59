from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dreampose.config import TinyModelConfig
from dreampose.models.adapter import (
    DecoupledImageAttention,
    ImagePoseAdapter,
    decouple_cross_attention,
    sincos_position_embedding,
)
from dreampose.models.builders import build_tiny_components
from dreampose.models.pipeline import DreamPosePipeline
from tests.models.conftest import open_vae_tokens


def _inputs(b=2, n=5, h=8, w=6, clip_dim=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, n, clip_dim, generator=g), torch.randn(b, 4, h, w, generator=g)


def test_zero_vae_projection_gives_clip_only_tokens_exactly():
    torch.manual_seed(0)
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24)
    clip, latents = _inputs()
    clip_only = adapter(clip)
    out = adapter(clip, latents)
    assert clip_only.shape == (2, 5, 24)
    assert out.shape == (2, 5 + 4 * 3, 24)
    assert torch.equal(out[:, :5], clip_only)
    assert torch.equal(out[:, 5:], torch.zeros_like(out[:, 5:]))


def test_open_vae_projection_makes_tokens_depend_on_the_latent():
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24)
    open_vae_tokens(adapter, 1.0)
    clip, latents = _inputs()
    a = adapter(clip, latents)
    b = adapter(clip, latents + 1)
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize(("h", "w"), [(8, 6), (16, 12), (80, 64)])
def test_token_count_follows_latent_size(h, w):
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24, patch_size=2)
    clip, latents = _inputs(b=1, h=h, w=w)
    assert adapter(clip, latents).shape == (1, 5 + (h // 2) * (w // 2), 24)


def test_identity_clip_projection_when_widths_match():
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=16)
    clip, _ = _inputs()
    torch.testing.assert_close(adapter(clip), adapter.clip_norm(clip))


def test_projection_dim_prepends_a_global_token():
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24, projection_dim=12)
    clip, latents = _inputs()
    out = adapter(clip, latents, image_embeds=torch.randn(2, 12))
    assert out.shape == (2, 1 + 5 + 12, 24)
    with pytest.raises(ValueError, match="image_embeds is required"):
        adapter(clip, latents)


def test_bad_shapes_are_named():
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24)
    clip, latents = _inputs()
    with pytest.raises(ValueError, match=r"clip_hidden_states has shape \(2, 5, 8\), expected \(B, N, 16\)"):
        adapter(clip[..., :8], latents)
    with pytest.raises(ValueError, match=r"latents has shape \(2, 4, 7, 6\)"):
        adapter(clip, latents[:, :, :7])
    with pytest.raises(ValueError, match="latents batch 1 does not match"):
        adapter(clip, latents[:1])


def test_save_load_round_trip_safetensors(tmp_path):
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24)
    open_vae_tokens(adapter, 0.3)
    adapter.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    again = ImagePoseAdapter.from_pretrained(tmp_path)
    assert again.config.clip_dim == 16 and again.config.cross_attention_dim == 24
    clip, latents = _inputs()
    assert torch.equal(again(clip, latents), adapter(clip, latents))


def test_sincos_position_embedding_values():
    emb = sincos_position_embedding(2, 3, 8)
    assert emb.shape == (6, 8)
    # Token 0 sits at (0, 0): sin 0 = 0, cos 0 = 1 for every frequency.
    assert emb[0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    # Token 4 is row 1, column 1; the lowest frequency is 1.
    assert emb[4, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert emb[4, 4].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert emb[1, 0].item() == 0.0  # row 0: row code unchanged along a row
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_position_embedding(2, 2, 6)


# ----- decoupled cross-attention: the UNet sees exactly the CLIP-only conditioning with the VAE projection at 0 -------------

# Many VAE tokens beside few CLIP tokens (192 vs 10, the issue's ~25x ratio at 640x512), 2 heads,
# 4 cross-attention layers (down, mid, 2 x up).
MANY_TOKENS = TinyModelConfig(
    vae_channels=(8, 16), unet_channels=(32, 64), cross_attention_dim=32, clip_hidden=32, clip_layers=1, clip_patch=16
)
MH, MW = 64, 48


@pytest.fixture(scope="module")
def many_token_components() -> dict:
    return build_tiny_components(MANY_TOKENS, MH, MW, "v_prediction", seed=0, pose_channels=10)


def _fresh(components: dict) -> tuple[dict, DreamPosePipeline]:
    """A pipeline on deep copies of ``components`` (and the copies, whose UNet is still plain diffusers)."""
    comps = copy.deepcopy(components)
    plain = copy.deepcopy(comps)
    return plain, DreamPosePipeline(**comps)


def _tokens_and_inputs(pipe: DreamPosePipeline):
    """(full adapter tokens, CLIP-only tokens, UNet sample, timesteps) for two seeded photos."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, MH, MW, generator=g) * 2 - 1
    with torch.no_grad():
        full = pipe.encode_image(pixels)
        hidden = pipe.image_encoder(pixel_values=pipe.clip_pixels(pixels)).last_hidden_state
        clip_only = pipe.adapter(hidden)
    f = pipe.vae_scale_factor
    x = torch.randn(2, pipe.unet.config.in_channels, MH // f, MW // f, generator=g)
    return full, clip_only, x, torch.tensor([999, 20])


def _unet(unet, x, t, tokens) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=tokens).sample


def test_unet_output_at_init_is_exactly_the_clip_only_output(many_token_components):
    plain, pipe = _fresh(many_token_components)
    full, clip_only, x, t = _tokens_and_inputs(pipe)
    n_clip = pipe.adapter.num_clip_tokens(pipe.image_encoder.config)
    assert clip_only.shape[1] == n_clip == 10 and full.shape[1] == n_clip + 192
    assert torch.equal(_unet(pipe.unet, x, t, full), _unet(pipe.unet, x, t, clip_only))
    layers = [m for m in pipe.unet.modules() if isinstance(m, DecoupledImageAttention)]
    assert len(layers) == 4 and all(m.num_clip_tokens == n_clip for m in layers)
    # The CLIP-only output is the pretrained UNet's own (no VAE tokens -> plain cross-attention) ...
    reference = _unet(plain["unet"], x, t, clip_only)
    assert torch.equal(_unet(pipe.unet, x, t, clip_only), reference)
    # ... while one softmax over the concatenation (the old behaviour) is diluted by the 192 zero tokens.
    diluted = _unet(plain["unet"], x, t, full)
    assert (diluted - reference).abs().max() > 1e-2 * reference.abs().max()


def test_open_vae_projection_makes_the_vae_tokens_count(many_token_components):
    _, pipe = _fresh(many_token_components)
    open_vae_tokens(pipe.adapter)
    full, clip_only, x, t = _tokens_and_inputs(pipe)
    assert not torch.allclose(_unet(pipe.unet, x, t, full), _unet(pipe.unet, x, t, clip_only), atol=1e-4)


def test_null_tokens_compute_what_they_did_before(many_token_components):
    """The unconditional branch (all-zero tokens) gives to_out's bias in both layouts: guidance is unchanged."""
    plain, pipe = _fresh(many_token_components)
    full, _, x, t = _tokens_and_inputs(pipe)
    null = torch.zeros_like(full)
    torch.testing.assert_close(_unet(pipe.unet, x, t, null), _unet(plain["unet"], x, t, null), rtol=0, atol=1e-6)


def _lora(unet):
    from dreampose.training.lora import inject_lora

    inject_lora(unet, rank=2)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if ".lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))


FEATURES = {
    "attention_slicing": lambda pipe: pipe.enable_attention_slicing(1),
    "fused_qkv": lambda pipe: pipe.unet.fuse_qkv_projections(),
    "default_processor": lambda pipe: pipe.unet.set_default_attn_processor(),
    "lora": lambda pipe: _lora(pipe.unet),
}


def _open_vae_inputs(pipe: DreamPosePipeline):
    open_vae_tokens(pipe.adapter)
    with torch.no_grad():
        return pipe.encode_image(torch.rand(2, 3, MH, MW, generator=torch.Generator().manual_seed(0)) * 2 - 1)


@pytest.fixture(scope="module")
def open_vae_reference(many_token_components):
    """The decoupled UNet's output with the VAE branch open, on the default processors."""
    _, pipe = _fresh(many_token_components)
    _, _, x, t = _tokens_and_inputs(pipe)
    return _unet(pipe.unet, x, t, _open_vae_inputs(pipe))


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_processor_swaps_and_lora_keep_the_decoupling(many_token_components, open_vae_reference, feature):
    """Features that replace the attention processor keep both properties: exact with the VAE projection at 0, decoupled when open."""
    pipe = DreamPosePipeline(**copy.deepcopy(many_token_components))
    full, clip_only, x, t = _tokens_and_inputs(pipe)
    FEATURES[feature](pipe)
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    cross = [m for m in pipe.unet.modules() if getattr(m, "is_cross_attention", False)]
    assert cross and all(isinstance(m, DecoupledImageAttention) for m in cross)
    assert torch.equal(_unet(pipe.unet, x, t, full), _unet(pipe.unet, x, t, clip_only)), processors
    if feature != "lora":  # LoRA changed the weights: no reference to compare with
        got = _unet(pipe.unet, x, t, _open_vae_inputs(pipe))
        torch.testing.assert_close(got, open_vae_reference, rtol=1e-4, atol=1e-5)


def test_vae_projection_gets_a_gradient_at_init():
    from dreampose.config import DropoutConfig
    from dreampose.training.objectives import DiffusionObjective
    from tests.training.test_objectives import _batch
    from tests.training.tiny import tiny_pipeline

    obj = DiffusionObjective(tiny_pipeline(seed=0), DropoutConfig(pose=0, image=0, both=0))
    assert not obj.adapter.vae_out.weight.any()
    obj.train()
    obj(_batch(), torch.Generator().manual_seed(1)).backward()
    grad = obj.adapter.vae_out.weight.grad
    assert grad is not None and grad.abs().max().item() > 1e-8, grad


def test_training_uses_the_same_mechanism_and_one_step_opens_the_vae_branch(monkeypatch):
    """At init the training loss equals the CLIP-only loss exactly; one optimizer step moves the VAE projection off 0."""
    from dreampose.config import DropoutConfig, TrainConfig
    from dreampose.training.loop import make_accelerator, train
    from dreampose.training.objectives import DiffusionObjective, heldout_loss
    from tests.training.tiny import TinyPairs, tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    cfg = TrainConfig(max_steps=1, batch_size=4, lr=1e-3, dropout=DropoutConfig(pose=0, image=0, both=0))
    obj = DiffusionObjective(pipe, cfg.dropout)
    assert any(isinstance(m, DecoupledImageAttention) for m in obj.unet.modules())
    held = TinyPairs(4, seed=9)
    full_loss = heldout_loss(obj, held, num_items=4, timesteps_per_item=2)

    def clip_only(pixels):
        hidden = pipe.image_encoder(pixel_values=pipe.clip_pixels(pixels)).last_hidden_state
        return pipe.adapter(hidden)

    with monkeypatch.context() as m:
        m.setattr(pipe, "encode_image", clip_only)
        assert heldout_loss(obj, held, num_items=4, timesteps_per_item=2) == full_loss
    train(obj, TinyPairs(8), cfg, accelerator=make_accelerator("no"))
    assert obj.adapter.vae_out.weight.any()
    assert heldout_loss(obj, held, num_items=4, timesteps_per_item=2) != full_loss


def test_save_load_round_trip_keeps_the_mechanism(many_token_components, tmp_path):
    _, pipe = _fresh(many_token_components)
    full, clip_only, x, t = _tokens_and_inputs(pipe)
    pipe.save_pretrained(tmp_path)
    again = DreamPosePipeline.from_pretrained(tmp_path)
    layers = [m for m in again.unet.modules() if isinstance(m, DecoupledImageAttention)]
    assert len(layers) == 4 and all(m.num_clip_tokens == 10 for m in layers)
    assert torch.equal(_unet(again.unet, x, t, full), _unet(again.unet, x, t, clip_only))
    open_vae_tokens(pipe.adapter)
    open_vae_tokens(again.adapter)
    tokens = pipe.encode_image(torch.zeros(1, 3, MH, MW))
    assert torch.equal(
        _unet(again.unet, x, t, tokens.expand(2, -1, -1)), _unet(pipe.unet, x, t, tokens.expand(2, -1, -1))
    )


def test_decoupling_refuses_what_it_cannot_keep_exact():
    from diffusers.models.attention_processor import Attention

    with pytest.raises(ValueError, match="to_v has a bias"):
        decouple_cross_attention(nn.ModuleList([Attention(8, cross_attention_dim=8, bias=True)]), 5)
    with pytest.raises(ValueError, match="no cross-attention layer"):
        decouple_cross_attention(nn.ModuleList([Attention(8)]), 5)
    with pytest.raises(ValueError, match="num_clip_tokens must be >= 1"):
        decouple_cross_attention(nn.ModuleList([Attention(8, cross_attention_dim=8)]), 0)
    layer = nn.ModuleList([Attention(8, cross_attention_dim=8)])
    assert decouple_cross_attention(layer, 2) == 1
    with pytest.raises(ValueError, match="encoder attention mask is not supported"):
        layer[0](torch.randn(1, 3, 8), torch.randn(1, 5, 8), attention_mask=torch.ones(1, 5))


def test_the_vae_branch_opens_faster_than_a_scalar_gate_could_at_the_papers_lr():
    """At lr 5e-6 (the paper's base finetune) Adam moves a scalar gate by at most lr per step, so after n steps a
    gated branch passes at most lr * n of its input. The zero-initialised projection's entries move together:
    the VAE tokens' gain (rms out / rms in) after the same steps is several times that bound."""
    from dreampose.config import DropoutConfig, TrainConfig
    from dreampose.training.loop import make_accelerator, train
    from dreampose.training.objectives import DiffusionObjective
    from tests.training.tiny import TinyPairs, tiny_pipeline

    steps, lr = 10, 5e-6
    pipe = tiny_pipeline(seed=0)
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=lr, dropout=DropoutConfig(pose=0, image=0, both=0))
    obj = DiffusionObjective(pipe, cfg.dropout)
    train(obj, TinyPairs(8), cfg, accelerator=make_accelerator("no"))

    seen = {}
    handle = pipe.adapter.vae_out.register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
    with torch.no_grad():
        pipe.encode_image(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    handle.remove()
    gain = (seen["out"].pow(2).mean().sqrt() / seen["x"].pow(2).mean().sqrt()).item()
    scalar_bound = lr * steps
    assert gain > 3 * scalar_bound, (gain, scalar_bound)


def test_an_adapter_saved_with_the_scalar_gate_loads_as_the_equivalent_projection(tmp_path):
    """Models registered before the projection replaced the gate (``vae_gate``, tokens ``g * x``) still load, exactly."""
    from safetensors.torch import load_file, save_file

    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24)
    adapter.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    old = {k: v for k, v in load_file(weights).items() if not k.startswith("vae_out.")}
    old["vae_gate"] = torch.tensor([0.3])
    save_file(old, weights)

    again = ImagePoseAdapter.from_pretrained(tmp_path)
    clip, latents = _inputs()
    seen = {}
    handle = again.vae_out.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    out = again(clip, latents)
    handle.remove()
    assert out.device.type == "cpu" and not again.vae_out.bias.any()
    torch.testing.assert_close(out[:, 5:], seen["x"] * 0.3, rtol=0, atol=1e-7)
    torch.testing.assert_close(out[:, :5], adapter(clip)[:, :5], rtol=0, atol=0)
