"""The params schema: typed, strict pydantic models mirroring ``params.yaml``, and their validation.

One pydantic model per component. Unknown keys and bad values are errors that name the
key and the file. Defaults live here only; ``params.yaml`` (the demo preset) and
``presets/paper.yaml`` override them. Reading and writing the YAML files is ``dreampose.config.files``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SyntheticConfig(_Strict):
    """Procedural mannequin videos that stand in for UBC Fashion (no network needed)."""

    num_train_subjects: int = Field(30, ge=1)
    num_test_subjects: int = Field(4, ge=1)
    frames_per_video: int = Field(48, ge=8)
    fps: int = Field(16, ge=1)
    height: int = Field(64, ge=16)
    width: int = Field(48, ge=16)


class UBCConfig(_Strict):
    """UBC Fashion download: list files hold one video URL per line.

    Dead links are expected: the stage fails only when fewer than ``min_train_videos`` / ``min_test_videos``
    of a split download as valid videos. Defaults are the paper's: it trained on 339 (and reports 323) of the
    500 listed training videos, so 323 is the floor; the test protocol averages over the 100 test videos, and
    90 keeps the averages comparable to Table 1 (the missing ones are named in ``download_report.json``).
    """

    train_list: str = "https://vision.cs.ubc.ca/datasets/fashion/resources/fashion_dataset/fashion_train.txt"
    test_list: str = "https://vision.cs.ubc.ca/datasets/fashion/resources/fashion_dataset/fashion_test.txt"
    workers: int = Field(4, ge=1, le=64)
    retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)
    min_train_videos: int = Field(323, ge=0)
    min_test_videos: int = Field(90, ge=0)
    max_bytes: int = Field(2_000_000_000, gt=0)


class DataConfig(_Strict):
    source: Literal["synthetic", "ubc"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    ubc: UBCConfig = UBCConfig()


class FramesConfig(_Strict):
    """Frame extraction: resize (aspect kept) then center-crop to height x width."""

    height: int = Field(64, ge=16)
    width: int = Field(48, ge=16)
    stride: int = Field(1, ge=1)
    max_frames: int | None = Field(None, ge=1)
    jpeg_quality: int = Field(95, ge=1, le=100)
    workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _multiple_of_8(self) -> FramesConfig:
        for key in ("height", "width"):
            if getattr(self, key) % 8:
                raise ValueError(f"frames.{key} must be a multiple of 8 (the VAE downsamples by 8 at most)")
        return self


class DensePoseConfig(_Strict):
    backend: Literal["synthetic", "torchscript", "detectron2"] = "synthetic"
    weights: str = "models/densepose/densepose_rcnn_R_50_FPN_s1x.pt"
    detectron2_config: str = "configs/densepose_rcnn_R_50_FPN_s1x.yaml"
    batch_size: int = Field(8, ge=1)
    min_score: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _device_moved(cls, data: object) -> object:
        if isinstance(data, dict) and "device" in data:
            raise ValueError("densepose.device moved to runtime.device (one device for every stage that runs a model)")
        return data


class ClusterConfig(_Strict):
    """Where the per-video work of ``frames`` and ``densepose`` runs (``dreampose.cluster``): ``null`` in this
    process, ``local`` a Dask LocalCluster here, ``tcp://host:port`` an existing Dask scheduler whose workers
    share the workspace's filesystem. Outputs are byte-identical wherever they ran."""

    address: str | None = None
    local_workers: int = Field(2, ge=1, le=256)
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node for densepose: one worker per GPU, cuda:i each")
    connect_timeout_s: float = Field(30.0, gt=0)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v == "local":
            return v
        if not re.fullmatch(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}", v):
            raise ValueError(f"{v!r}: expected null, 'local' or a scheduler address 'tcp://host:port'")
        return v


class ManifestConfig(_Strict):
    """Pair sampling. ``test_*`` follow the paper's protocol (50 targets, >= 50 frames away).

    A video that cannot serve (a training video with no person; a test video whose input frame has no person
    or that has too few targets) is skipped and listed in ``data/manifests/skipped.json``; the stage fails only
    when fewer than ``min_train_videos`` / ``min_test_videos`` remain (the paper preset: 323 and 90, as for
    the download).
    """

    pairs_per_video: int = Field(64, ge=1)
    pose_window: int = Field(5, ge=1)
    test_num_targets: int = Field(50, ge=1)
    test_min_gap: int = Field(50, ge=0)
    test_input_frame: int = Field(0, ge=0)
    subject_frames: int = Field(1, ge=1)
    min_train_videos: int = Field(1, ge=0)
    min_test_videos: int = Field(1, ge=0)
    seed: int = 0

    @field_validator("pose_window")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("pose_window must be odd (centered on the target frame)")
        return v


class PretrainedModelConfig(_Strict):
    """Local Stable Diffusion v1.x (diffusers layout) + CLIP vision model, or hub ids."""

    sd_path: str = "CompVis/stable-diffusion-v1-4"
    clip_path: str = "openai/clip-vit-base-patch32"


class TinyModelConfig(_Strict):
    """The embedded stand-in for Stable Diffusion, built and pre-trained here on the demo frames."""

    vae_channels: tuple[int, ...] = (16, 32, 64)
    unet_channels: tuple[int, ...] = (32, 64, 64)
    cross_attention_dim: int = 64
    clip_hidden: int = 64
    clip_layers: int = 2
    clip_patch: int = 8
    vae_pretrain_steps: int = Field(600, ge=0)
    vae_batch_size: int = Field(8, ge=1)
    vae_lr: float = Field(1e-3, gt=0)
    vae_norm_groups: int | None = Field(
        None,
        ge=1,
        description="GroupNorm groups of the VAE (must divide every vae_channels entry); null = the UNet's (the gcd "
        "of all channels and 8)",
    )
    vae_grad_weight: float = Field(
        0.0, ge=0.0, description="weight of the edge term (L1 of neighbour differences) in the VAE pre-training loss"
    )
    vae_latent_channels: int = Field(
        4, ge=1, description="VAE latent channels; the UNet's input/output and the adapter's VAE tokens follow"
    )
    vae_mid_attention: bool = Field(
        True,
        description="self-attention in the VAE's middle blocks (Stable Diffusion's VAE has it); at the demo's size it "
        "is, by a FLOP count, about a third of a pre-training step",
    )
    vae_latent_patch: int = Field(
        1,
        ge=1,
        description="fold every p x p block of the VAE's latent into channels (space-to-depth): the UNet sees "
        "vae_latent_channels * p * p channels on a grid p times coarser than the VAE's own (models/vae.py)",
    )
    vae_logvar_init: float = Field(
        0.0,
        le=0.0,
        description="initial bias of the VAE posterior's log-variance: below 0 the latent starts nearly noise-free "
        "(std exp(init / 2)) instead of at std 1, which drowns the latent's detail early in pre-training",
    )


class ModelConfig(_Strict):
    """The base model the ``base_model`` stage builds.

    ``image_tokens``: what the adapter turns the input photo into: ``clip_vae`` (the paper's adapter, CLIP tokens +
    the photo's VAE-latent tokens) or ``clip`` (CLIP tokens only: the "Ours_CLIP" ablation of the paper's Table 2).
    It is saved in the model's adapter config, so the finetunes, render, score and the catalog all follow it.
    """

    source: Literal["tiny", "pretrained"] = "tiny"
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    pose_channels: int = Field(
        10, ge=2, description="UNet pose input channels: u, v per pose frame; in params files derived as "
        "2 x manifest.pose_window when unset (a different value is an error)"
    )  # fmt: skip
    image_tokens: Literal["clip_vae", "clip"] = "clip_vae"
    pretrained: PretrainedModelConfig = PretrainedModelConfig()
    tiny: TinyModelConfig = TinyModelConfig()


class DropoutConfig(_Strict):
    """Per-sample conditioning dropout (paper: 5 % / 5 % / 5 %)."""

    pose: float = Field(0.05, ge=0, le=1)
    image: float = Field(0.05, ge=0, le=1)
    both: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _sum(self) -> DropoutConfig:
        if self.pose + self.image + self.both > 1:
            raise ValueError("dropout.pose + dropout.image + dropout.both must be <= 1")
        return self


class TrainConfig(_Strict):
    """One training loop, two uses (base finetune, subject phase 1)."""

    max_steps: int = Field(400, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warm-up: constant, or a half cosine down to 0 at max_steps"
    )
    weight_decay: float = Field(0.0, ge=0)
    timestep_sampling: Literal["uniform", "cubic"] = Field(
        "uniform", description="training timesteps: uniform, or cubic (t = (1 - u^3) T: mostly the noisier half)"
    )
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="0 = off; else the saved weights are an exponential moving average of the "
        "trained ones with this decay (diffusers' EMAModel, its (1 + n) / (10 + n) warm-up)"
    )  # fmt: skip
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    train_image_encoder: bool = True
    dropout: DropoutConfig = DropoutConfig()
    max_grad_norm: float | None = Field(
        None, ge=0, description="clip the global gradient norm to this before each optimizer step; null or 0 = off"
    )
    checkpoint_every: int = Field(100, ge=0, description="checkpoint every this many optimizer steps; 0 = not by steps")
    checkpoint_every_s: float = Field(
        0.0, ge=0, description="also checkpoint when this many seconds of training passed since the last one; 0 = off"
    )
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0)
    color_augment: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that a pair's input photo and target get one shared random colour change",
    )
    seed: int = 0


class SubjectConfig(_Strict):
    """Per-subject finetune: phase 1 UNet + adapter, phase 2 VAE decoder.

    A subject keeps at most one checkpoint on disk (phase 1's are removed when it ends); ``unet.checkpoint_every_s``
    (wall time) applies to both phases, ``unet.checkpoint_every`` to phase 1 and ``decoder_checkpoint_every`` to
    phase 2. ``unet.gradient_checkpointing`` and ``unet.max_grad_norm`` apply to both phases; ``unet.lr_schedule``,
    ``unet.ema_decay`` and ``unet.timestep_sampling`` to phase 1 only.
    """

    unet: TrainConfig = TrainConfig(max_steps=50, batch_size=8, lr=3e-4, checkpoint_every=25)
    decoder_steps: int = Field(50, ge=0)
    decoder_checkpoint_every: int = Field(
        0, ge=0, description="phase-2 checkpoint interval in steps (0 = by unet.checkpoint_every_s only); "
        "the decoder phase does not take the UNet phase's step interval"
    )  # fmt: skip
    decoder_lr: float = Field(5e-4, gt=0)
    decoder_batch_size: int = Field(4, ge=1)
    crop_scale: tuple[float, float] = (0.8, 1.0)
    lora_rank: int = Field(0, ge=0, description="0 = full phase-1 finetune; >0 = LoRA of that rank (peft)")
    save_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        "fp16", description="dtype of the stored subject weights (UNet or LoRA delta, adapter, VAE decoder)"
    )


class RenderConfig(_Strict):
    """Sampling for renders: dual classifier-free guidance with s_I (image) and s_p (pose), paper eq. 4.

    Frame noise is seeded per (seed, frame), so resumed and batched renders are reproducible.
    """

    scheduler: Literal["pndm", "ddim", "dpmsolver++"] = "ddim"
    num_inference_steps: int = Field(10, ge=1)
    image_guidance_scale: float = Field(1.0, ge=0)
    pose_guidance_scale: float = Field(2.0, ge=0)
    frame_batch_size: int = Field(8, ge=1)
    fps: int = Field(16, ge=1)
    seed: int = 0
    temporal_smoothing: int = Field(
        0, ge=0, description="0 = off; an odd k >= 3: each output frame is the mean of the raw renders of the k "
        "video frames centred on it (paper Table 2 Ours_smooth; see dreampose.render.temporal_smooth)"
    )  # fmt: skip

    @field_validator("temporal_smoothing")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        if v > 1 and v % 2 == 0:
            raise ValueError("temporal_smoothing must be 0 (off) or an odd window (centred on the frame)")
        return v


class ScoreConfig(_Strict):
    """Metric backbones come from local paths; an absent file makes that metric 'unavailable'."""

    lpips_weights: str = "models/metrics/lpips_alex.pth"
    vgg_weights: str = "models/metrics/vgg16.pth"
    inception_weights: str = "models/metrics/pt_inception-2015-12-05.pth"
    i3d_weights: str = "models/metrics/i3d_torchscript.pt"
    aed_weights: str = "models/metrics/reid.pt"
    fvd_clip_len: int = Field(16, ge=2, description="FVD clips: this many consecutive test frames (fvd.parquet)")
    table1_size: int | None = Field(
        None,
        ge=16,
        description="also score with frames resized (aspect kept) so their longer side is this many pixels, "
        "the resolution of the paper's Table 1 (256); None: native resolution only",
    )
    baselines: bool = Field(True, description="also render and score copy-input, pose-zeroed, image-swapped, base")


DEVICE_ENV = "DREAMPOSE_DEVICE"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class RuntimeConfig(_Strict):
    """Where and how every stage that runs a model at inference runs: DensePose, render, score
    (baseline renders and metric backbones) and the catalog item's render. Training keeps its own
    ``mixed_precision`` and lets accelerate place it.

    ``device``: ``auto`` (CUDA when available, else CPU) | ``cpu`` | ``cuda`` | ``cuda:N``; asking for CUDA on a
    machine without it is an error when a stage starts, not when the file is read. The environment
    variable ``DREAMPOSE_DEVICE`` overrides it for every params file read (a job or test run can move
    everything to the GPU without editing the preset).
    ``dtype``: the diffusion pipeline's inference precision. ``fp16`` on CPU falls back to ``fp32`` with a
    warning (CPU half kernels are slow and incomplete); ``bf16`` runs on CPU. DensePose and the metric
    backbones always run in fp32 (their published numbers are fp32).
    ``cpu_offload``: keep the pipeline's models in CPU memory and move each to the device only while it
    runs (diffusers' model CPU offload; less GPU memory, somewhat slower). Ignored when the device is the CPU.
    """

    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    cpu_offload: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError(f"{v!r} is not a device: use auto, cpu, cuda or cuda:N")
        return v


def apply_env_overrides(raw: dict) -> dict:
    """``DREAMPOSE_DEVICE`` (when set and non-empty) replaces ``runtime.device`` of a parsed params mapping."""
    device = os.environ.get(DEVICE_ENV, "").strip()
    if not device:
        return raw
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"{DEVICE_ENV}={device!r}: not a device (use auto, cpu, cuda or cuda:N)")
    runtime = raw.get("runtime") or {}
    if not isinstance(runtime, dict):
        return raw  # the validation error names runtime
    return {**raw, "runtime": {**runtime, "device": device}}


class EvalConfig(_Strict):
    """Evaluation subjects (test video ids): ``subjects`` lists them; when it is empty,
    ``dreampose eval-subjects --write`` (which the pipeline flow runs after the manifest stage) fills it with the
    protocol's subjects: the usable test videos of ``data/manifests/test.parquet`` in id order, the first
    ``num_subjects`` of them (all when ``null``; the paper evaluates on the 100 UBC test videos)."""

    subjects: tuple[str, ...] = ()
    num_subjects: int | None = Field(None, ge=1)
    catalog_demo: bool = Field(
        True,
        description="the pipeline flow ends with one catalog item (the last eval subject's first frame driven by "
        "its test poses; a subject finetune + render); the flow's --catalog-demo / --no-catalog-demo override it",
    )


class PhotoUrlConfig(_Strict):
    """Catalog photos given as http(s) URLs. Internal addresses (loopback, private, link-local, ...) and
    redirects to them are refused unless ``allow_private`` (an intranet catalog) or the exact ``host:port``
    is listed in ``allow_hosts``."""

    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    max_redirects: int = Field(5, ge=0, le=20)

    @field_validator("allow_hosts")
    @classmethod
    def _host_port(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            host, sep, port = entry.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"allow_hosts entry {entry!r}: expected host:port (e.g. intranet.example:8080)")
        return tuple(e.lower() for e in v)


class TrackingConfig(_Strict):
    experiment: str = "dreampose"
    registered_model: str = "dreampose-subject"


class Params(_Strict):
    seed: int = 0
    data: DataConfig = DataConfig()
    frames: FramesConfig = FramesConfig()
    densepose: DensePoseConfig = DensePoseConfig()
    cluster: ClusterConfig = ClusterConfig()
    manifest: ManifestConfig = ManifestConfig()
    model: ModelConfig = ModelConfig()
    train_base: TrainConfig = TrainConfig()
    train_subject: SubjectConfig = SubjectConfig()
    render: RenderConfig = RenderConfig()
    score: ScoreConfig = ScoreConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    photo_url: PhotoUrlConfig = PhotoUrlConfig()

    @model_validator(mode="before")
    @classmethod
    def _derive_pose_channels(cls, data: object) -> object:
        """``model.pose_channels`` follows ``manifest.pose_window`` (u and v per frame) unless set: one switch,
        ``manifest.pose_window: 1``, makes the 1-pose model (paper Table 2 "Ours_1-pose")."""
        if not isinstance(data, dict):
            return data
        model, manifest = data.get("model", {}), data.get("manifest", {})
        if not isinstance(model, dict) or not isinstance(manifest, dict) or "pose_channels" in model:
            return data
        window = manifest.get("pose_window", ManifestConfig.model_fields["pose_window"].default)
        if not isinstance(window, int) or isinstance(window, bool):
            return data  # the field's own validation names it
        return {**data, "model": {**model, "pose_channels": 2 * window}}

    @model_validator(mode="after")
    def _pose_channels_match_window(self) -> Params:
        channels, window = self.model.pose_channels, self.manifest.pose_window
        if channels != 2 * window:
            raise ValueError(
                f"model.pose_channels is {channels} but manifest.pose_window {window} gives {2 * window} pose "
                "channels (u, v per frame); leave model.pose_channels unset"
            )
        return self


def _format_errors(err: ValidationError, path: Path) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{path}: {key}: {msg}")
    return "; ".join(parts)


def parse_params(raw: object, path: str | Path = PARAMS_FILE) -> Params:
    """Validate a parsed YAML mapping; errors name the file and the dotted key."""
    path = Path(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = apply_env_overrides(raw)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, path)) from None
