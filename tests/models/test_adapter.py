from __future__ import annotations

import pytest
import torch

from dreampose.models.adapter import ImagePoseAdapter, sincos_position_embedding


def _inputs(b=2, n=5, h=8, w=6, clip_dim=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, n, clip_dim, generator=g), torch.randn(b, 4, h, w, generator=g)


def test_zero_gate_gives_clip_only_tokens_exactly():
    torch.manual_seed(0)
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24)
    clip, latents = _inputs()
    clip_only = adapter(clip)
    out = adapter(clip, latents)
    assert clip_only.shape == (2, 5, 24)
    assert out.shape == (2, 5 + 4 * 3, 24)
    assert torch.equal(out[:, :5], clip_only)
    assert torch.equal(out[:, 5:], torch.zeros_like(out[:, 5:]))


def test_open_gate_makes_tokens_depend_on_the_latent():
    adapter = ImagePoseAdapter(clip_dim=16, cross_attention_dim=24)
    with torch.no_grad():
        adapter.vae_gate.fill_(1.0)
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
    with torch.no_grad():
        adapter.vae_gate.fill_(0.3)
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
