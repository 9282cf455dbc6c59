"""``DreamPosePipeline``: one subject photo + a sequence of DensePose windows -> video frames.

A first-class diffusers pipeline (``save_pretrained`` / ``from_pretrained`` / ``.to()`` /
progress bar / ``generator`` / ``output_type`` / ``callback_on_step_end``). Per call the
subject's conditioning is encoded once; frames are denoised in batches, and each step is a
single UNet call on a batch that stacks the guidance branches (see ``guidance.dual_guidance``
for their order). Branches whose guidance weight is exactly zero are skipped (with the demo's
``s_I = 1`` the unconditional branch drops out), which changes no number.

The null conditionings used for classifier-free guidance are ``null_image_tokens`` (zero
tokens) and ``null_pose`` (zero pose channels); training dropout uses these same functions.

Diffusers conventions the pipeline follows (checked by diffusers' own common pipeline tests in
``tests/models/test_pipeline_conformance.py``): images as ``VaeImageProcessor`` takes them (PIL,
lists, ``(H, W, 3)`` / ``(B, H, W, 3)`` arrays and ``(3, H, W)`` / ``(B, 3, H, W)`` tensors in
[0, 1]; an array or tensor with any negative value is taken as already in [-1, 1], which is the
range used inside the pipeline and by ``encode_image`` / ``clip_pixels``), several requests per
call, ``num_images_per_prompt``, ``num_timesteps`` / ``interrupt`` for callbacks, the
``StableDiffusionMixin`` helpers (FreeU, fused QKV projections, VAE slicing / tiling), any
diffusers VAE (``AutoencoderKL``, ``AutoencoderTiny``, ...), ``enable_model_cpu_offload``.
``load_pipeline`` beside it is the one loader of a saved pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.configuration_utils import FrozenDict
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from dreampose.models.adapter import ImagePoseAdapter, install_image_attention
from dreampose.models.guidance import BRANCHES, dual_guidance
from dreampose.models.sizes import vae_latent_channels, vae_scale_factor
from dreampose.models.vae import PatchedAutoencoderKL
from dreampose.runtime import Runtime, place_pipeline

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


def retrieve_latents(encoder_output: Any, generator: torch.Generator | None = None, sample: bool = False):
    """Unscaled latents of a VAE's ``encode`` output: the posterior mode (or a sample) where it has a
    ``latent_dist`` (``AutoencoderKL`` and kin), else its deterministic ``latents`` (``AutoencoderTiny``)."""
    if hasattr(encoder_output, "latent_dist"):
        dist = encoder_output.latent_dist
        return dist.sample(generator) if sample else dist.mode()
    if hasattr(encoder_output, "latents"):
        return encoder_output.latents
    raise AttributeError(f"cannot read latents from a {type(encoder_output).__name__}")


@dataclass
class DreamPoseOutput(BaseOutput):
    """``frames``: a list of PIL images, ``np.ndarray (N, H, W, 3)`` in [0, 1], ``torch.Tensor (N, 3, H, W)``
    in [0, 1], or latents ``(N, C, h, w)``, depending on ``output_type``.

    A batched call (several requests, see ``DreamPosePipeline.__call__``) adds a leading request axis, as
    diffusers' video pipelines do: ``(R, N, ...)`` arrays / tensors, or ``R`` lists of PIL images."""

    frames: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class DreamPosePipeline(DiffusionPipeline, StableDiffusionMixin):
    """Pose-and-image conditioned Stable Diffusion (DreamPose).

    Components: ``vae`` (AutoencoderKL, ``models.vae.PatchedAutoencoderKL``, AutoencoderTiny or another diffusers
    VAE; sizes from ``models.sizes.vae_scale_factor`` / ``vae_latent_channels``, which count a fold), ``unet``
    (UNet2DConditionModel with ``in_channels = latent + pose channels``), ``adapter`` (ImagePoseAdapter),
    ``image_encoder`` (CLIPVisionModelWithProjection), ``feature_extractor`` (CLIPImageProcessor, used for
    its size / mean / std only) and ``scheduler``.
    """

    model_cpu_offload_seq = "image_encoder->adapter->unet->vae"
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL | PatchedAutoencoderKL | AutoencoderTiny,
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
        # a zero VAE projection; see models/adapter.py). Not saved with the UNet, so installed on every build and load.
        install_image_attention(unet, adapter, image_encoder)
        self.vae_scale_factor = vae_scale_factor(vae.config)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ----- sizes ---------------------------------------------------------------------------------

    @property
    def latent_channels(self) -> int:
        return vae_latent_channels(self.vae.config)

    @property
    def pose_channels(self) -> int:
        """Extra UNet input channels that carry the pose window (10 = 5 frames x (U, V))."""
        return int(self.unet.config.in_channels) - self.latent_channels

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (VAE x UNet downsampling x adapter patch)."""
        unet_down = 2 ** (len(self.unet.config.block_out_channels) - 1)
        return self.vae_scale_factor * int(np.lcm(unet_down, self.adapter.config.patch_size))

    # ----- state a step callback can read ------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """Sampler steps per frame batch in the current (or last) call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in a step callback to skip the remaining steps (frames are still decoded)."""
        return getattr(self, "_interrupt", False)

    @property
    def image_guidance_scale(self) -> float:
        """``s_I`` of the current call; a step callback may change ``pipe._image_guidance_scale``."""
        return self._image_guidance_scale

    @property
    def pose_guidance_scale(self) -> float:
        """``s_p`` of the current call; a step callback may change ``pipe._pose_guidance_scale``."""
        return self._pose_guidance_scale

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
        """Scaled VAE latents of ``pixels`` (B, 3, H, W) in [-1, 1]: the posterior mode (or a sample); an
        ``AutoencoderTiny`` has no posterior and gives its latents."""
        z = retrieve_latents(self.vae.encode(pixels.to(self.vae.dtype)), generator, sample)
        return z * self.vae.config.scaling_factor

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Cross-attention tokens ``(B, L, D)`` of ``pixels`` (B, 3, H, W) in [-1, 1]: CLIP + VAE latent, adapted
        (CLIP alone when the adapter is CLIP-only: ``adapter.config.image_tokens == "clip"``; the VAE is not run)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels has shape {tuple(pixels.shape)}, expected (B, 3, H, W) in [-1, 1]")
        enc = self.image_encoder(pixel_values=self.clip_pixels(pixels).to(self.image_encoder.dtype))
        embeds = enc.image_embeds if self.adapter.config.projection_dim else None
        if not self.adapter.uses_vae_tokens:
            return self.adapter(enc.last_hidden_state, None, image_embeds=embeds)
        latents = self.encode_latents(pixels)
        return self.adapter(enc.last_hidden_state, latents.to(self.adapter.dtype), image_embeds=embeds)

    @staticmethod
    def _image_to_tensor(image: Any) -> torch.Tensor:
        """One image input as a float tensor in its own range (PIL and uint8 arrays -> [0, 1]): ``(3, H, W)`` for one
        image, ``(k, 3, H, W)`` for a batch. Arrays become views of their ``(H, W, 3)`` data, as they always did
        here (CPU kernels may round differently on another memory layout, and renders must not change by a bit).
        """
        if isinstance(image, PIL.Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim not in (3, 4) or image.shape[-1] != 3:
                raise ValueError(f"image array has shape {image.shape}, expected (H, W, 3) or (B, H, W, 3)")
            arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
            return (
                torch.from_numpy(arr).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr).permute(0, 3, 1, 2)
            )
        if isinstance(image, torch.Tensor):
            if image.ndim not in (3, 4) or image.shape[-3] != 3:
                raise ValueError(f"image has shape {tuple(image.shape)}, expected (3, H, W) or (B, 3, H, W)")
            return image.float()
        raise ValueError(f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}")

    def prepare_images(self, image: Any) -> torch.Tensor:
        """``(B, 3, H, W)`` float in [-1, 1] from any image input ``VaeImageProcessor`` takes.

        PIL images, ``np.uint8`` arrays and float arrays / tensors in [0, 1] are mapped to [-1, 1]; as in
        ``VaeImageProcessor.preprocess``, a float array or tensor with any negative value is taken as already
        in [-1, 1] (the range used inside the pipeline). Lists hold one image (or a batch) per item.
        """
        items = image if isinstance(image, list) else [image]
        if not items:
            raise ValueError("image is an empty list; expected at least one image")
        parts = [self._image_to_tensor(x) for x in items]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(f"images have different sizes {sorted(sizes)} (H, W); a batch needs one size")
        lo, hi = min(float(p.min()) for p in parts), max(float(p.max()) for p in parts)
        if lo < 0:
            if lo < -1.001 or hi > 1.001:
                raise ValueError(f"image tensor values span [{lo:.3f}, {hi:.3f}], expected [-1, 1] (or [0, 1])")
        else:
            if hi > 1.001:
                raise ValueError(f"image values span [{lo:.3f}, {hi:.3f}], expected [0, 1] (or [-1, 1])")
            parts = [p * 2.0 - 1.0 for p in parts]  # VaeImageProcessor.normalize
        parts = [p.unsqueeze(0) if p.ndim == 3 else p for p in parts]
        x = parts[0] if len(parts) == 1 else torch.cat([p.to(parts[0].device) for p in parts])
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"image is {x.shape[-2]}x{x.shape[-1]} (HxW), both must be multiples of {m}")
        return x

    def prepare_image(self, image: PIL.Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(1, 3, H, W)`` float in [-1, 1] from one image: PIL, ``np.uint8 (H, W, 3)`` / float [0, 1] array, or a
        tensor ``(3, H, W)`` / ``(1, 3, H, W)`` in [0, 1] or [-1, 1] (see ``prepare_images``)."""
        pixels = self.prepare_images(image)
        if pixels.shape[0] != 1:
            raise ValueError(f"image holds {pixels.shape[0]} images, expected one")
        return pixels

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

    def prepare_pose_sequences(self, poses: Any, height: int, width: int) -> tuple[list[torch.Tensor], bool]:
        """Pose latents per request and whether they were given per request.

        One request: ``(N, C, H, W)`` or a sequence of ``(C, H, W)`` windows. Several: ``(R, N, C, H, W)`` or a
        sequence of ``(N, C, H, W)``; every request must have the same number of frames.
        """
        listed = isinstance(poses, (list, tuple)) and bool(poses) and all(np.ndim(p) == 4 for p in poses)
        stacked = isinstance(poses, (np.ndarray, torch.Tensor)) and poses.ndim == 5
        if not (listed or stacked):
            return [self.prepare_poses(poses, height, width)], False
        seqs = [self.prepare_poses(p, height, width) for p in poses]
        if not seqs:
            raise ValueError("poses holds no pose sequence")
        lengths = sorted({len(q) for q in seqs})
        if len(lengths) > 1:
            raise ValueError(f"pose sequences have different lengths {lengths}; a batched call needs one length")
        return seqs, True

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

    def _initial_latents(
        self,
        requests: int,
        frames: int,
        chw: tuple[int, int, int],
        batched: bool,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        same_noise: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Initial noise ``(requests * frames, C, h, w)``, not yet scaled by the sampler's ``init_noise_sigma``.

        One request: ``generator`` may be a list with one generator per frame. Batched: a list holds one
        generator per request (diffusers' convention), each drawing that request's frames.
        """
        shape = (frames, *chw)
        per = 1 if same_noise else frames
        if latents is None:
            if not batched:
                return randn_tensor((per, *chw), generator=generator, device=device, dtype=dtype).expand(shape)
            if isinstance(generator, list):
                if len(generator) != requests:
                    raise ValueError(f"{len(generator)} generators for {requests} requests; pass one per request")
                noise = torch.stack(
                    [randn_tensor((per, *chw), generator=g, device=device, dtype=dtype) for g in generator]
                )
            else:
                noise = randn_tensor((requests, per, *chw), generator=generator, device=device, dtype=dtype)
            return noise.expand(requests, *shape).reshape(requests * frames, *chw)
        latents = latents.to(device=device, dtype=dtype)
        if latents.ndim == 3:
            latents = latents.unsqueeze(0)
        if batched and latents.ndim == 5:
            if tuple(latents.shape[2:]) != chw or latents.shape[0] != requests or latents.shape[1] not in (1, frames):
                raise ValueError(
                    f"latents has shape {tuple(latents.shape)}, expected ({requests}, {frames} or 1, *{chw})"
                )
            return latents.expand(requests, *shape).reshape(requests * frames, *chw)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != chw or latents.shape[0] not in (1, frames):
            raise ValueError(f"latents has shape {tuple(latents.shape)}, expected {shape} or (1, *{chw})")
        return latents.expand(shape).repeat(requests, 1, 1, 1)

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list,
        poses: torch.Tensor | np.ndarray | Sequence,
        num_inference_steps: int = 10,
        image_guidance_scale: float = 1.0,
        pose_guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        frame_batch_size: int = 8,
        same_noise: bool = False,
        callback_on_step_end: Callable[[DiffusionPipeline, int, Any, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
        num_images_per_prompt: int = 1,
    ) -> DreamPoseOutput | tuple:
        """Render one frame per pose window, for one request or several.

        Args:
            image: the subject photo: PIL, ``np.uint8 (H, W, 3)``, a float array ``(H, W, 3)`` or tensor
                ``(3, H, W)`` in [0, 1] (or [-1, 1] when it holds a negative value, see ``prepare_images``).
                Several requests: a list of those, or ``(B, H, W, 3)`` / ``(B, 3, H, W)``.
            poses: ``(N, pose_channels, H, W)`` pose windows at the image's resolution, or a sequence of
                ``(pose_channels, H, W)``. Several requests: ``(B, N, pose_channels, H, W)`` or a sequence of
                ``(N, pose_channels, H, W)``. One image with several pose sequences (or one pose sequence with
                several images) is used for every request.
            num_inference_steps: sampler steps per frame.
            image_guidance_scale, pose_guidance_scale: ``s_I`` and ``s_p`` of eq. 4.
            generator: seeds the initial noise (drawn for all frames at once, so results do not depend on
                ``frame_batch_size``). A list: one generator per frame for one request, one per output request
                (``B * num_images_per_prompt``) for a batched call.
            latents: initial noise ``(N, C, h, w)`` (or one ``(1, C, h, w)`` shared by every frame); for a batched
                call also ``(R, N or 1, C, h, w)``.
            output_type: ``pil`` | ``np`` | ``pt`` | ``latent``.
            frame_batch_size: frames denoised together (frames of different requests share batches).
            same_noise: start every frame of a request from the same noise (steadier videos).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict``, called per frame
                batch; a returned ``latents`` replaces the current batch's latents. ``pipe.num_timesteps``,
                ``pipe._interrupt`` and the guidance scales are available to it.
            num_images_per_prompt: renders per request, each from its own noise.

        Returns ``DreamPoseOutput(frames)`` (see there). A call is batched, and ``frames`` gets a leading axis of
        ``R = B * num_images_per_prompt`` requests, when ``image`` is a list or holds several images, when
        ``poses`` is given per request, or when ``num_images_per_prompt > 1``.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type {output_type!r} must be one of 'pil', 'np', 'pt', 'latent'")
        if num_inference_steps < 1 or frame_batch_size < 1 or num_images_per_prompt < 1:
            raise ValueError(
                f"num_inference_steps ({num_inference_steps}), frame_batch_size ({frame_batch_size}) and "
                f"num_images_per_prompt ({num_images_per_prompt}) must be >= 1"
            )
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(bad)} not in {self._callback_tensor_inputs}")
        device = self._execution_device
        dtype = self.unet.dtype
        self._image_guidance_scale = image_guidance_scale
        self._pose_guidance_scale = pose_guidance_scale
        self._interrupt = False

        # 1. Inputs, checked before any model runs.
        pixels = self.prepare_images(image)
        height, width = pixels.shape[-2:]
        seqs, per_request = self.prepare_pose_sequences(poses, height, width)
        n_img, n_seq = pixels.shape[0], len(seqs)
        b = max(n_img, n_seq)
        if n_img not in (1, b) or n_seq not in (1, b):
            raise ValueError(f"{n_img} images for {n_seq} pose sequences; give one of each per request, or one image")
        batched = isinstance(image, list) or n_img > 1 or per_request or num_images_per_prompt > 1
        requests = b * num_images_per_prompt
        n = seqs[0].shape[0]
        # Request r renders image / pose sequence r // num_images_per_prompt (or the only one).
        owner = [r // num_images_per_prompt for r in range(requests)]
        pose_latents = torch.cat([seqs[o if n_seq > 1 else 0] for o in owner]).to(device=device, dtype=dtype)
        chw = (self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 2. The subjects' conditioning: once per image; (1, L, D) when every frame shares it, else one per frame.
        tokens = self.encode_image(pixels.to(device=device, dtype=self.vae.dtype)).to(dtype)
        if n_img > 1:
            tokens = tokens[torch.tensor([o for o in owner for _ in range(n)], device=tokens.device)]

        # 3. Initial noise for every frame.
        latents = (
            self._initial_latents(requests, n, chw, batched, generator, latents, same_noise, device, dtype).clone()
            * self.scheduler.init_noise_sigma
        )
        total = latents.shape[0]

        # 4. Denoise frame batches.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        starts = range(0, total, frame_batch_size)
        out = []
        with self.progress_bar(total=len(starts) * len(self.scheduler.timesteps)) as progress:
            for s in starts:
                e = min(s + frame_batch_size, total)
                lat = latents[s:e]
                tok = tokens if tokens.shape[0] == 1 else tokens[s:e]
                # Multistep samplers keep history; restart them for every batch.
                self.scheduler.set_timesteps(num_inference_steps, device=device)
                for i, t in enumerate(self.scheduler.timesteps):
                    if self.interrupt:
                        continue
                    pred = self.guided_prediction(
                        lat, t, tok, pose_latents[s:e], self._image_guidance_scale, self._pose_guidance_scale
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
        if batched:
            frames = (
                [frames[r * n : (r + 1) * n] for r in range(requests)]
                if isinstance(frames, list)
                else frames.reshape(requests, n, *frames.shape[1:])
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return DreamPoseOutput(frames=frames)


def load_pipeline(model_dir: Path, runtime: Runtime | None = None):
    """A ``DreamPosePipeline`` from a ``save_pretrained`` directory, eval mode, placed by ``runtime``
    (device, dtype, CPU offload; ``None`` = CPU fp32, exactly as saved)."""
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a DreamPose pipeline directory (no model_index.json)")
    if runtime is None or runtime.dtype == torch.float32:
        pipe = DreamPosePipeline.from_pretrained(model_dir)
    else:
        pipe = DreamPosePipeline.from_pretrained(model_dir, dtype=runtime.dtype)
    return place_pipeline(pipe, runtime)
