from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from dreampose.models.guidance import dual_guidance
from dreampose.models.pipeline import (
    DreamPoseOutput,
    DreamPosePipeline,
    make_scheduler,
    null_image_tokens,
    null_pose,
    poses_to_latent,
)
from tests.models.conftest import H, W


def _run(pipe, image, poses, **kw):
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("image_guidance_scale", 1.5)
    kw.setdefault("pose_guidance_scale", 2.0)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    kw.setdefault("output_type", "np")
    return pipe(image, poses, **kw).frames


def test_sizes(pipe):
    assert pipe.pose_channels == 10
    assert pipe.latent_channels == 4
    assert pipe.vae_scale_factor == 4
    assert pipe.size_multiple == 16


def test_null_conditioning_helpers():
    t = torch.randn(2, 7, 8)
    p = torch.randn(3, 10, 4, 4)
    assert torch.equal(null_image_tokens(t), torch.zeros(2, 7, 8))
    assert torch.equal(null_pose(p), torch.zeros(3, 10, 4, 4))


def test_poses_to_latent_is_average_pooling():
    poses = torch.arange(16.0).view(1, 1, 4, 4)
    assert poses_to_latent(poses, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    with pytest.raises(ValueError, match="multiples of 4"):
        poses_to_latent(torch.zeros(1, 10, 6, 8), 4)


def test_encode_image_tokens(pipe, image):
    tokens = pipe.encode_image(image[None])
    clip_tokens = (32 // 8) ** 2 + 1
    vae_tokens = (H // 4 // 2) * (W // 4 // 2)
    assert tokens.shape == (1, clip_tokens + vae_tokens, 32)


def test_clip_pixels_match_the_feature_extractor(pipe):
    # At the CLIP input size no resize happens, so our torch path must equal the processor's exactly.
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ref = pipe.feature_extractor(images=PIL.Image.fromarray(arr), return_tensors="pt").pixel_values
    ours = pipe.clip_pixels(pipe.prepare_image(arr))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_batched_branches_equal_three_separate_unet_calls(pipe, image, poses):
    pipe.scheduler.set_timesteps(3)
    t = pipe.scheduler.timesteps[0]
    tokens = pipe.encode_image(image[None])
    pose_lat = pipe.prepare_poses(poses[:2], H, W)
    lat = torch.randn(2, 4, H // 4, W // 4, generator=torch.Generator().manual_seed(5))
    batched = pipe.guided_prediction(lat, t, tokens, pose_lat, 1.5, 2.0)

    def one(tok, pose):
        x = torch.cat([lat, pose], 1)
        return pipe.unet(x, t, encoder_hidden_states=tok.expand(2, -1, -1)).sample

    zeros = torch.zeros_like(pose_lat)
    separate = [one(torch.zeros_like(tokens), zeros), one(tokens, zeros), one(tokens, pose_lat)]
    torch.testing.assert_close(batched, dual_guidance(torch.cat(separate), 1.5, 2.0), rtol=1e-4, atol=1e-5)
    # The pose and the image both matter once their weights are open.
    assert not torch.allclose(separate[1], separate[2])
    assert not torch.allclose(separate[0], separate[1])


@torch.no_grad()
@pytest.mark.parametrize(("s_i", "s_p"), [(1.0, 2.0), (2.0, 2.0), (1.0, 1.0)])
def test_skipping_zero_weight_branches_changes_nothing(pipe, image, poses, s_i, s_p):
    pipe.scheduler.set_timesteps(3)
    t = pipe.scheduler.timesteps[1]
    tokens = pipe.encode_image(image[None])
    pose_lat = pipe.prepare_poses(poses[:2], H, W)
    lat = torch.randn(2, 4, H // 4, W // 4, generator=torch.Generator().manual_seed(5))
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: calls.append(a[0].shape[0]), with_kwargs=True)
    try:
        fast = pipe.guided_prediction(lat, t, tokens, pose_lat, s_i, s_p)
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0] < 6
    lat3 = torch.cat([lat] * 3)
    pose3 = torch.cat([torch.zeros_like(pose_lat)] * 2 + [pose_lat])
    tok3 = torch.cat([torch.zeros_like(tokens).expand(2, -1, -1), tokens.expand(4, -1, -1)])
    full = pipe.unet(torch.cat([lat3, pose3], 1), t, encoder_hidden_states=tok3).sample
    torch.testing.assert_close(fast, dual_guidance(full, s_i, s_p), rtol=1e-4, atol=1e-5)


def test_output_types_and_shapes(pipe, image, poses):
    frames = _run(pipe, image, poses[:2], output_type="pil")
    assert len(frames) == 2 and all(isinstance(f, PIL.Image.Image) and f.size == (W, H) for f in frames)
    arr = _run(pipe, image, poses[:2], output_type="np")
    assert arr.shape == (2, H, W, 3) and arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    pt = _run(pipe, image, poses[:2], output_type="pt")
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, H, W)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    lat = _run(pipe, image, poses[:2], output_type="latent")
    assert lat.shape == (2, 4, H // 4, W // 4)
    out = pipe(image, poses[:1], num_inference_steps=1, output_type="np")
    assert isinstance(out, DreamPoseOutput)
    assert isinstance(pipe(image, poses[:1], num_inference_steps=1, output_type="np", return_dict=False), tuple)


def test_image_input_kinds_agree(pipe, image, poses):
    arr = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    from_pil = _run(pipe, PIL.Image.fromarray(arr), poses[:2])
    from_np = _run(pipe, arr, poses[:2])
    from_pt = _run(pipe, torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1, poses[:2])
    np.testing.assert_array_equal(from_pil, from_np)
    np.testing.assert_allclose(from_pt, from_np, atol=1e-5)


def test_pose_sequence_and_tensor_agree(pipe, image, poses):
    a = _run(pipe, image, poses[:2])
    b = _run(pipe, image, [p.numpy() for p in poses[:2]])
    np.testing.assert_array_equal(a, b)


def test_pose_changes_the_output(pipe, image, poses):
    a = _run(pipe, image, poses[:2], same_noise=True)
    assert np.abs(a[0] - a[1]).mean() > 1e-4
    same = _run(pipe, image, torch.stack([poses[0], poses[0]]), same_noise=True)
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)


@pytest.mark.parametrize("name", ["ddim", "pndm", "dpmsolver++"])
def test_frame_batching_does_not_change_frames(pipe, image, poses, name):
    pipe.set_scheduler(name)
    one_batch = _run(pipe, image, poses, frame_batch_size=8)
    split = _run(pipe, image, poses, frame_batch_size=2)
    np.testing.assert_allclose(split, one_batch, atol=1e-5)


def test_schedulers_keep_the_noise_schedule_and_prediction_type(pipe):
    base = pipe.scheduler.config
    kinds = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
    for name, cls in kinds.items():
        s = make_scheduler(name, base)
        assert isinstance(s, cls)
        assert s.config.prediction_type == "v_prediction"
        assert s.config.beta_schedule == base.beta_schedule
    assert make_scheduler("dpmsolver++", base).config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="unknown scheduler 'euler'"):
        make_scheduler("euler", base)


def test_conditioning_encoded_once_and_one_unet_call_per_step(pipe, image, poses):
    counts = {"clip": 0, "vae_encode": 0, "adapter": 0, "unet": 0}
    hooks = [
        pipe.image_encoder.register_forward_hook(lambda *a: counts.__setitem__("clip", counts["clip"] + 1)),
        pipe.adapter.register_forward_hook(lambda *a: counts.__setitem__("adapter", counts["adapter"] + 1)),
        pipe.unet.register_forward_hook(lambda *a: counts.__setitem__("unet", counts["unet"] + 1)),
    ]
    encode = pipe.vae.encode

    def counting_encode(*a, **kw):
        counts["vae_encode"] += 1
        return encode(*a, **kw)

    pipe.vae.encode = counting_encode
    try:
        _run(pipe, image, poses, num_inference_steps=3, frame_batch_size=2)  # 5 frames -> 3 batches
    finally:
        for h in hooks:
            h.remove()
        del pipe.vae.encode
    assert counts == {"clip": 1, "vae_encode": 1, "adapter": 1, "unet": 3 * 3}


def test_same_noise_and_explicit_latents(pipe, image, poses):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, H // 4, W // 4, generator=g)
    a = _run(pipe, image, poses[:2], same_noise=True, output_type="latent")
    b = _run(pipe, image, poses[:2], latents=noise, output_type="latent")
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"latents has shape \(3, 4, 8, 8\), expected \(2, 4, 8, 8\)"):
        _run(pipe, image, poses[:2], latents=torch.zeros(3, 4, 8, 8))


def test_callback_on_step_end(pipe, image, poses):
    seen = []

    def cb(p, i, t, kw):
        seen.append(i)
        return {"latents": torch.zeros_like(kw["latents"])} if i == 2 else {}

    lat = _run(pipe, image, poses[:2], num_inference_steps=3, output_type="latent", callback_on_step_end=cb)
    assert seen == [0, 1, 2]
    assert torch.equal(lat, torch.zeros_like(lat))


def test_save_load_round_trip_is_bit_exact(pipe, image, poses, tmp_path):
    pipe.save_pretrained(tmp_path)
    for sub in ("vae", "unet", "adapter", "image_encoder", "feature_extractor", "scheduler"):
        assert (tmp_path / sub).is_dir()
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    again = DreamPosePipeline.from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert again.unet.config.in_channels == 14
    assert torch.equal(again.adapter.vae_out.weight, pipe.adapter.vae_out.weight)
    assert pipe.adapter.vae_out.weight.abs().sum() > 0  # the fixture opened it
    np.testing.assert_array_equal(_run(again, image, poses[:2]), _run(pipe, image, poses[:2]))


def test_bad_inputs_name_the_tensor_and_the_expected_shape(pipe, image, poses):
    with pytest.raises(ValueError, match=r"poses has shape \(2, 6, 32, 32\), expected \(N, 10, 32, 32\)"):
        _run(pipe, image, poses[:2, :6])
    with pytest.raises(ValueError, match=r"poses has shape \(2, 10, 16, 32\) but the image is 32x32"):
        _run(pipe, image, poses[:2, :, :16])
    with pytest.raises(ValueError, match="empty sequence"):
        _run(pipe, image, [])
    with pytest.raises(ValueError, match="no frames"):
        _run(pipe, image, poses[:0])
    with pytest.raises(ValueError, match=r"expected \[-1, 1\]"):
        _run(pipe, image * 3, poses[:1])
    with pytest.raises(ValueError, match="multiples of 16"):
        _run(pipe, torch.zeros(3, 40, 32), torch.zeros(1, 10, 40, 32))
    with pytest.raises(ValueError, match="output_type 'gif'"):
        _run(pipe, image, poses[:1], output_type="gif")
