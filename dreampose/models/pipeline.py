"""``DreamPosePipeline``: one subject photo + a sequence of DensePose windows -> video frames.

A first-class diffusers pipeline (``save_pretrained`` / ``from_pretrained`` / ``.to()`` /
progress bar / ``generator`` / ``output_type`` / ``callback_on_step_end``). Per call the
subject's conditioning is encoded once; frames are denoised in batches, and each step is a
single UNet call on a batch that stacks the guidance branches (see ``guidance.dual_guidance``
for their order). Branches whose guidance weight is exactly zero are skipped (with the demo's
``s_I = 1`` the unconditional branch drops out), which changes no number.

The null conditionings used for classifier-free guidance are ``null_image_tokens`` (zero
tokens) and ``null_pose`` (zero pose channels); training dropout uses these same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import FrozenDict
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from dreampose.models.adapter import ImagePoseAdapter, install_image_attention
from dreampose.models.guidance import BRANCHES, dual_guidance

SCHEDULERS = ("pndm", "ddim", "dpmsolver++")


def null_image_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The unconditional image: zero cross-attention tokens of the same shape."""
    return torch.zeros_like(tokens)


def null_pose(poses: torch.Tensor) -> torch.Tensor:
    """The unconditional pose: zero pose channels of the same shape."""
    return torch.zeros_like(poses)


def guidance_weights(image_scale: float, pose_scale: float) -> tuple[float, float, float]:
    """Eq. 4 as weights on the ``(uncond, image, full)`` branches: ``(1 - s_I, s_I - s_p, s_p)``."""
    return (1.0 - image_scale, image_scale - pose_scale, pose_scale)


def poses_to_latent(poses: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool pixel-resolution pose channels ``(N, C, H, W)`` by the VAE factor to ``(N, C, H/f, W/f)``.

    Used in training and inference alike, so the UNet always sees poses made the same way.
    """
    if poses.ndim != 4 or poses.shape[-2] % factor or poses.shape[-1] % factor:
        raise ValueError(f"poses has shape {tuple(poses.shape)}, expected (N, C, H, W) with H, W multiples of {factor}")
    return F.avg_pool2d(poses, factor) if factor > 1 else poses


def make_scheduler(name: str, config: dict | FrozenDict):
    """A sampler by name (``pndm`` as in the paper, ``ddim``, ``dpmsolver++``) on the noise schedule in ``config``."""
    if name == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {list(SCHEDULERS)}")


@dataclass
class DreamPoseOutput(BaseOutput):
    """``frames``: a list of PIL images, ``np.ndarray (N, H, W, 3)`` in [0, 1], ``torch.Tensor (N, 3, H, W)``
    in [0, 1], or latents ``(N, C, h, w)``, depending on ``output_type``."""

    frames: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class DreamPosePipeline(DiffusionPipeline):
    """Pose-and-image conditioned Stable Diffusion (DreamPose).

    Components: ``vae`` (AutoencoderKL), ``unet`` (UNet2DConditionModel with ``in_channels =
    latent + pose channels``), ``adapter`` (ImagePoseAdapter), ``image_encoder``
    (CLIPVisionModelWithProjection), ``feature_extractor`` (CLIPImageProcessor, used for its
    size / mean / std only) and ``scheduler``.
    """

    model_cpu_offload_seq = "image_encoder->adapter->unet->vae"
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        adapter: ImagePoseAdapter,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor: CLIPImageProcessor,
        scheduler: DDIMScheduler | PNDMScheduler | DPMSolverMultistepScheduler,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            unet=unet,
            adapter=adapter,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            scheduler=scheduler,
        )
        # The adapter's VAE tokens get their own softmax in every cross-attention layer (exactly CLIP-only at
        # gate 0; see models/adapter.py). Not saved with the UNet, so installed on every build and load.
        install_image_attention(unet, adapter, image_encoder)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ----- sizes ---------------------------------------------------------------------------------

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def pose_channels(self) -> int:
        """Extra UNet input channels that carry the pose window (10 = 5 frames x (U, V))."""
        return int(self.unet.config.in_channels) - self.latent_channels

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (VAE x UNet downsampling x adapter patch)."""
        unet_down = 2 ** (len(self.unet.config.block_out_channels) - 1)
        return self.vae_scale_factor * int(np.lcm(unet_down, self.adapter.config.patch_size))

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler (``pndm`` | ``ddim`` | ``dpmsolver++``), keeping the noise schedule and prediction type."""
        self.scheduler = make_scheduler(name, self.scheduler.config)

    # ----- conditioning --------------------------------------------------------------------------

    def clip_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP input made in torch from ``pixels`` in [-1, 1]: resize the short side, center-crop, normalise.

        Differentiable, so the image encoder can be trained through it; the one normalisation path
        for training and inference.
        """
        fe = self.feature_extractor
        size = fe.size or {}
        crop = fe.crop_size or {}
        crop_h = int(crop.get("height", size.get("shortest_edge", 224)))
        crop_w = int(crop.get("width", crop_h))
        short = int(size.get("shortest_edge", min(crop_h, crop_w)))
        x = (pixels + 1.0) / 2.0
        h, w = x.shape[-2:]
        scale = short / min(h, w)
        new_h, new_w = max(crop_h, round(h * scale)), max(crop_w, round(w * scale))
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        x = x[..., top : top + crop_h, left : left + crop_w]
        mean = torch.tensor(fe.image_mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(fe.image_std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def encode_latents(
        self, pixels: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled VAE latents of ``pixels`` (B, 3, H, W) in [-1, 1]: the posterior mode (or a sample)."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.vae.config.scaling_factor

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Cross-attention tokens ``(B, L, D)`` of ``pixels`` (B, 3, H, W) in [-1, 1]: CLIP + VAE latent, adapted."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels has shape {tuple(pixels.shape)}, expected (B, 3, H, W) in [-1, 1]")
        enc = self.image_encoder(pixel_values=self.clip_pixels(pixels).to(self.image_encoder.dtype))
        embeds = enc.image_embeds if self.adapter.config.projection_dim else None
        latents = self.encode_latents(pixels)
        return self.adapter(enc.last_hidden_state, latents.to(self.adapter.dtype), image_embeds=embeds)

    def prepare_image(self, image: PIL.Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(1, 3, H, W)`` float in [-1, 1] from a PIL image, an ``np.uint8 (H, W, 3)`` / float [0, 1] array,
        or a tensor ``(3, H, W)`` / ``(1, 3, H, W)`` already in [-1, 1]."""
        if isinstance(image, PIL.Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"image array has shape {image.shape}, expected (H, W, 3)")
            arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
            image = torch.from_numpy(arr).permute(2, 0, 1) * 2.0 - 1.0
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}")
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image has shape {tuple(image.shape)}, expected (1, 3, H, W) or (3, H, W)")
        lo, hi = float(image.min()), float(image.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"image tensor values span [{lo:.3f}, {hi:.3f}], expected [-1, 1]")
        m = self.size_multiple
        if image.shape[-2] % m or image.shape[-1] % m:
            raise ValueError(f"image is {image.shape[-2]}x{image.shape[-1]} (HxW), both must be multiples of {m}")
        return image.float()

    def prepare_poses(self, poses: torch.Tensor | np.ndarray | Sequence, height: int, width: int) -> torch.Tensor:
        """Validate pixel-resolution pose windows ``(N, C, H, W)`` (or a sequence of ``(C, H, W)``) and pool them
        to the latent grid: ``(N, C, H / f, W / f)``."""
        if isinstance(poses, (list, tuple)):
            if not poses:
                raise ValueError("poses is an empty sequence; expected at least one (C, H, W) pose window")
            poses = torch.stack(
                [torch.as_tensor(np.asarray(p) if not isinstance(p, torch.Tensor) else p) for p in poses]
            )
        elif isinstance(poses, np.ndarray):
            poses = torch.from_numpy(poses)
        if not isinstance(poses, torch.Tensor):
            raise ValueError(f"poses must be a tensor, array or sequence, got {type(poses).__name__}")
        c = self.pose_channels
        if poses.ndim != 4 or poses.shape[1] != c:
            raise ValueError(f"poses has shape {tuple(poses.shape)}, expected (N, {c}, {height}, {width})")
        if poses.shape[0] == 0:
            raise ValueError(f"poses has shape {tuple(poses.shape)}: no frames to render")
        if tuple(poses.shape[-2:]) != (height, width):
            raise ValueError(
                f"poses has shape {tuple(poses.shape)} but the image is {height}x{width}; "
                f"expected (N, {c}, {height}, {width})"
            )
        return poses_to_latent(poses.float(), self.vae_scale_factor)

    # ----- denoising -----------------------------------------------------------------------------

    def guided_prediction(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        tokens: torch.Tensor,
        pose_latents: torch.Tensor,
        image_guidance_scale: float,
        pose_guidance_scale: float,
    ) -> torch.Tensor:
        """One UNet call on the stacked guidance branches for ``latents`` (n, C, h, w); returns the guided output.

        ``tokens`` is the subject's ``(1, L, D)``; ``pose_latents`` are ``(n, P, h, w)``.
        """
        n = latents.shape[0]
        weights = dict(zip(BRANCHES, guidance_weights(image_guidance_scale, pose_guidance_scale), strict=True))
        branches = [b for b in BRANCHES if weights[b] != 0.0]
        null_tok = null_image_tokens(tokens)
        zero_pose = null_pose(pose_latents)
        tok_of = {"uncond": null_tok, "image": tokens, "full": tokens}
        pose_of = {"uncond": zero_pose, "image": zero_pose, "full": pose_latents}
        k = len(branches)
        lat_in = self.scheduler.scale_model_input(torch.cat([latents] * k), t)
        model_in = torch.cat([lat_in, torch.cat([pose_of[b] for b in branches])], dim=1)
        tok_in = torch.cat([tok_of[b].expand(n, -1, -1) for b in branches])
        pred = self.unet(model_in, t, encoder_hidden_states=tok_in, return_dict=False)[0]
        if k == 3:
            return dual_guidance(pred, image_guidance_scale, pose_guidance_scale)
        chunks = pred.chunk(k)
        out = weights[branches[0]] * chunks[0]
        for b, chunk in zip(branches[1:], chunks[1:], strict=True):
            out = out + weights[b] * chunk
        return out

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] from scaled latents."""
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor,
        poses: torch.Tensor | np.ndarray | Sequence,
        num_inference_steps: int = 10,
        image_guidance_scale: float = 1.0,
        pose_guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        frame_batch_size: int = 8,
        same_noise: bool = False,
        callback_on_step_end: Callable[[DiffusionPipeline, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ) -> DreamPoseOutput | tuple:
        """Render one frame per pose window.

        Args:
            image: the subject photo (PIL, ``np.uint8 (H, W, 3)``, or a tensor in [-1, 1]).
            poses: ``(N, pose_channels, H, W)`` pose windows at the image's resolution, or a sequence of
                ``(pose_channels, H, W)``.
            num_inference_steps: sampler steps per frame.
            image_guidance_scale, pose_guidance_scale: ``s_I`` and ``s_p`` of eq. 4.
            generator: seeds the initial noise (drawn for all N frames at once, so results do not depend
                on ``frame_batch_size``).
            latents: initial noise ``(N, C, h, w)`` (or one ``(1, C, h, w)`` shared by every frame).
            output_type: ``pil`` | ``np`` | ``pt`` | ``latent``.
            frame_batch_size: frames denoised together.
            same_noise: start every frame from the same noise (steadier videos).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict``; a returned
                ``latents`` replaces the current batch's latents.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type {output_type!r} must be one of 'pil', 'np', 'pt', 'latent'")
        if num_inference_steps < 1 or frame_batch_size < 1:
            raise ValueError(
                f"num_inference_steps ({num_inference_steps}) and frame_batch_size ({frame_batch_size}) must be >= 1"
            )
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(bad)} not in {self._callback_tensor_inputs}")
        device = self._execution_device
        dtype = self.unet.dtype

        # 1. Inputs, checked before any model runs.
        pixels = self.prepare_image(image)
        height, width = pixels.shape[-2:]
        pose_latents = self.prepare_poses(poses, height, width).to(device=device, dtype=dtype)
        n = pose_latents.shape[0]
        shape = (n, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 2. The subject's conditioning: once per call.
        tokens = self.encode_image(pixels.to(device=device, dtype=self.vae.dtype)).to(dtype)

        # 3. Initial noise for every frame.
        if latents is None:
            noise_shape = (1, *shape[1:]) if same_noise else shape
            latents = randn_tensor(noise_shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
            if latents.ndim == 3:
                latents = latents.unsqueeze(0)
            if tuple(latents.shape[1:]) != shape[1:] or latents.shape[0] not in (1, n):
                raise ValueError(f"latents has shape {tuple(latents.shape)}, expected {shape} or (1, *{shape[1:]})")
        latents = latents.expand(shape).clone() * self.scheduler.init_noise_sigma

        # 4. Denoise frame batches.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        starts = range(0, n, frame_batch_size)
        out = []
        with self.progress_bar(total=len(starts) * len(self.scheduler.timesteps)) as progress:
            for s in starts:
                e = min(s + frame_batch_size, n)
                lat = latents[s:e]
                # Multistep samplers keep history; restart them for every batch.
                self.scheduler.set_timesteps(num_inference_steps, device=device)
                for i, t in enumerate(self.scheduler.timesteps):
                    pred = self.guided_prediction(
                        lat, t, tokens, pose_latents[s:e], image_guidance_scale, pose_guidance_scale
                    )
                    lat = self.scheduler.step(pred, t, lat, return_dict=False)[0]
                    if callback_on_step_end is not None:
                        local = {"latents": lat}
                        res = callback_on_step_end(
                            self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs}
                        )
                        lat = (res or {}).get("latents", lat)
                    progress.update()
                out.append(lat)
        latents = torch.cat(out)

        # 5. Decode.
        if output_type == "latent":
            frames: Any = latents
        else:
            images = torch.cat([self.decode_latents(latents[s : s + frame_batch_size]) for s in starts])
            frames = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return DreamPoseOutput(frames=frames)
