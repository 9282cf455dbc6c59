"""The stand-in world for the paper-preset rehearsal: everything ``presets/paper.yaml`` reaches for, made small.

- UBC-style URL lists (one URL per line) pointing at a local HTTP server on 127.0.0.1 that serves real H.264
  mp4s of different resolutions and frame rates, plus the failures a real crawl meets: dead links (404), a
  server that stalls past the download timeout, and a body cut short of its ``Content-Length``;
- a Stable Diffusion v1.x diffusers folder written by ``StableDiffusionPipeline.save_pretrained`` (SD v1.x block
  types, small widths, random weights) and a CLIP vision folder written by ``CLIPVisionModelWithProjection`` +
  ``CLIPImageProcessor.save_pretrained``;
- a TorchScript DensePose stand-in with the public export's signature (an ``(H, W, 3)`` BGR image in; boxes, scores
  and chart outputs out) that finds the person as the non-background pixels and refuses an image a CUDA run
  of the export would refuse (uint8, another dtype than the model's);
- every metric backbone at the paths ``ScoreConfig`` names, in each loader's file format, with random weights and
  a ``<file>.note`` beside each saying so (the score stage reports these notes).
"""

from __future__ import annotations

import json
import threading
import unittest.mock
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreampose.video import write_video

RANDOM_NOTE = "random weights (rehearsal stand-in), not the published network: its numbers mean nothing"
BACKGROUND = 245  # UBC Fashion films its models on a near-white background


# ----- videos --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSpec:
    name: str  # file stem, UBC-style id
    height: int
    width: int
    fps: int
    frames: int
    colour: tuple[int, int, int]


def person_frames(spec: VideoSpec) -> np.ndarray:
    """A figure (head, coloured dress, legs) swaying on a near-white background: uint8 ``(T, H, W, 3)``."""
    h, w = spec.height, spec.width
    out = np.full((spec.frames, h, w, 3), BACKGROUND, np.uint8)
    for t in range(spec.frames):
        cx = w // 2 + round(0.12 * w * float(np.sin(2 * np.pi * t / spec.frames)))
        hw = w // 6
        out[t, int(0.08 * h) : int(0.22 * h), cx - hw // 2 : cx + hw // 2] = (225, 170, 140)  # head
        out[t, int(0.22 * h) : int(0.60 * h), cx - hw : cx + hw] = spec.colour  # dress
        out[t, int(0.60 * h) : int(0.92 * h), cx - hw + 2 : cx - 2] = (60, 50, 45)  # legs
        out[t, int(0.60 * h) : int(0.92 * h), cx + 2 : cx + hw - 2] = (60, 50, 45)
    return out


def write_videos(specs: list[VideoSpec], out_dir: Path) -> dict[str, Path]:
    """Encode each spec as an H.264 mp4 with the project's writer; returns ``{name: path}``."""
    return {s.name: write_video(person_frames(s), Path(out_dir) / f"{s.name}.mp4", fps=s.fps) for s in specs}


# ----- HTTP server ---------------------------------------------------------------------------------------


@dataclass
class VideoServer:
    """A threaded HTTP server on 127.0.0.1 for ``/ok/<file>``, ``/dead/<file>`` (404), ``/stall/<file>`` (no
    answer for ``stall_s``) and ``/truncated/<file>`` (half the body, then the connection closes)."""

    files_dir: Path
    stall_s: float = 10.0
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        world = self
        self._stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                world.requests.append(self.path)
                kind, _, name = self.path.lstrip("/").partition("/")
                path = world.files_dir / name
                if kind == "dead" or not path.is_file() or "/" in name:
                    self.send_error(404)
                    return
                if kind == "stall":
                    world._stop.wait(world.stall_s)
                    self.close_connection = True
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, kind: str, name: str) -> str:
        return f"{self.base_url}/{kind}/{name}"

    def __enter__(self) -> VideoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def write_url_list(path: Path, urls: list[str]) -> Path:
    """The UBC list format: one video URL per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(u + "\n" for u in urls))
    return path


# ----- DensePose TorchScript stand-in --------------------------------------------------------------------


class DensePoseStandIn(torch.nn.Module):
    """The public DensePose TorchScript export's contract: ``forward(image (H, W, 3) BGR, 0..255)`` -> dict of
    ``pred_boxes (N, 4)`` xyxy, ``scores (N,)``, ``pred_densepose_coarse_segm (N, 2, S, S)`` and
    ``pred_densepose_fine_segm / _u / _v (N, 25, S, S)``. The one "person" is the box around the pixels
    darker than the background; its chart is head (part 23), torso (2) and legs (7, 8) top to bottom, with U
    running left to right and V top to bottom. No such pixels: no detections (N = 0).

    Its input is checked as a CUDA run of the real export would check it, whatever device this runs on (a CPU
    run of the real export accepts uint8, which is how a CUDA-only failure went unseen): the export resizes
    the image with bilinear ``F.interpolate`` first, which on CUDA refuses uint8 with the message raised here;
    an image in another floating dtype than the model's fails its first convolution; and the backend's
    contract (``dreampose/data/densepose/torchscript.py``) puts the image on the model's device already."""

    def __init__(self, chart_size: int = 16, threshold: int = 200) -> None:
        super().__init__()
        self.s = chart_size
        self.threshold = threshold
        s = chart_size
        rel = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        rows = torch.full((s,), 2, dtype=torch.long)
        rows[rel < 0.2] = 23
        part = rows[:, None].repeat(1, s)
        legs = (rel[:, None] >= 0.6) & torch.ones(s, s, dtype=torch.bool)
        part[legs & (rel[None, :] < 0.5)] = 7
        part[legs & (rel[None, :] >= 0.5)] = 8
        self.register_buffer("fine", F.one_hot(part, 25).permute(2, 0, 1).float() * 8.0)
        self.register_buffer("u", rel[None, None, :].repeat(25, s, 1))
        self.register_buffer("v", rel[None, :, None].repeat(25, 1, s))

    def check_input(self, image: torch.Tensor) -> None:
        """Raise what the export on CUDA would raise for ``image`` (and the backend contract's device rule)."""
        if image.dim() != 3 or image.shape[2] != 3:
            raise RuntimeError(f"DensePose export: expected an (H, W, 3) BGR image, got shape {image.shape}")
        if not image.is_floating_point():
            # CUDA's upsample_bilinear2d dispatches on float, double, half and bfloat16 only.
            name = "'Byte'" if image.dtype == torch.uint8 else str(image.dtype)
            raise RuntimeError('"upsample_bilinear2d_out_frame" not implemented for ' + name)
        if image.dtype != self.fine.dtype:
            raise RuntimeError("Input type and weight type should be the same (image dtype is not the model's)")
        if image.device != self.fine.device:
            raise RuntimeError(f"DensePose image on {image.device}, model on {self.fine.device}")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(image)
        s = self.s
        dev, dt = self.fine.device, self.fine.dtype
        mask = image.min(dim=2).values < float(self.threshold)
        if not bool(mask.any()):
            none = torch.zeros(0, 25, s, s, device=dev, dtype=dt)
            return {
                "pred_boxes": torch.zeros(0, 4, device=dev, dtype=dt),
                "scores": torch.zeros(0, device=dev, dtype=dt),
                "pred_densepose_coarse_segm": torch.zeros(0, 2, s, s, device=dev, dtype=dt),
                "pred_densepose_fine_segm": none,
                "pred_densepose_u": none,
                "pred_densepose_v": none,
            }
        ys = torch.nonzero(mask.any(dim=1)).flatten()
        xs = torch.nonzero(mask.any(dim=0)).flatten()
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        crop = mask[y0:y1, x0:x1].to(dt)[None, None]
        fg = F.interpolate(crop, size=[s, s], mode="bilinear", align_corners=False)[0]
        box = torch.tensor([[float(x0), float(y0), float(x1), float(y1)]], device=dev, dtype=dt)
        return {
            "pred_boxes": box,
            "scores": torch.tensor([0.99], device=dev, dtype=dt),
            "pred_densepose_coarse_segm": torch.cat([0.5 - fg, fg - 0.5], dim=0)[None],
            "pred_densepose_fine_segm": self.fine[None],
            "pred_densepose_u": self.u[None],
            "pred_densepose_v": self.v[None],
        }


def write_densepose(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(DensePoseStandIn().eval()).save(str(path))
    path.with_name(path.name + ".note").write_text("stand-in: the person is the non-background pixels\n")
    return path


# ----- Stable Diffusion v1.x and CLIP folders -----------------------------------------------------------


def _tokenizer(tmp: Path):
    from transformers import CLIPTokenizer

    tmp.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a</w>": 3, "person</w>": 4}
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))


def write_sd_v1(path: Path, seed: int = 0) -> Path:
    """A Stable Diffusion v1.x folder as ``StableDiffusionPipeline.save_pretrained`` writes it: SD v1.x's block
    types (4 levels, 2 layers per block, VAE factor 8, UNet factor 8) at small widths, random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )
    text = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=8,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=32)
    safety = StableDiffusionSafetyChecker(
        CLIPConfig(text_config=text.to_dict(), vision_config={**vision, "image_size": 224}, projection_dim=32)
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=_tokenizer(path.parent / ".tokenizer-src"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
        requires_safety_checker=True,
    )
    pipe.save_pretrained(path)
    return path


def write_clip_vision(path: Path, seed: int = 0) -> Path:
    """A CLIP ViT-B/32-shaped vision folder (224 px, 32 px patches) at small width, random weights."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
        )
    ).save_pretrained(path)
    CLIPImageProcessor(crop_size=224, size=224).save_pretrained(path)
    return path


# ----- metric backbones ---------------------------------------------------------------------------------


def _note(path: Path) -> Path:
    path.with_name(path.name + ".note").write_text(RANDOM_NOTE + "\n")
    return path


def write_lpips_trunk(path: Path, net: str, seed: int = 0) -> Path:
    """A torchvision ``features.*`` state dict of AlexNet / VGG-16 (the classifier LPIPS never reads is left out)."""
    import re
    import warnings

    import lpips

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    trunk = {re.sub(r"^slice\d+\.", "features.", k): v for k, v in model.net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trunk, path)
    return _note(path)


def write_fid_inception(path: Path, seed: int = 0) -> Path:
    """pytorch-fid's FID Inception-v3 state dict, random weights (built with the download disabled)."""
    from pytorch_fid import inception

    torch.manual_seed(seed)
    with (
        unittest.mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: {}),
        unittest.mock.patch("torch.nn.Module.load_state_dict", lambda *a, **k: None),
    ):
        net = inception.fid_inception_v3()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return _note(path)


class I3DStandIn(torch.nn.Module):
    """StyleGAN-V's TorchScript I3D signature: ``forward(x, rescale, resize, return_features)`` -> ``(B, 400)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 16, kernel_size=(2, 16, 16), stride=(1, 16, 16))
        self.fc = torch.nn.Linear(16, 400)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True
    ) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


class ReidStandIn(torch.nn.Module):
    """A re-identification embedding network: ImageNet-normalised ``(B, 3, 256, 128)`` -> ``(B, 128)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 8, stride=8)
        self.fc = torch.nn.Linear(32, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def write_torchscript(module: torch.nn.Module, path: Path, seed: int = 0, trace_input: torch.Tensor | None = None):
    torch.manual_seed(seed)
    module = module.eval()
    for p in module.parameters():  # re-draw under the seed
        torch.nn.init.normal_(p, std=0.05)
    scripted = torch.jit.trace(module, trace_input) if trace_input is not None else torch.jit.script(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return _note(path)


def write_metric_backbones(root: Path, score_cfg) -> dict[str, Path]:
    """Every network ``score_cfg`` names, written under ``root`` at its configured path."""
    return {
        "lpips": write_lpips_trunk(root / score_cfg.lpips_weights, "alex"),
        "vgg": write_lpips_trunk(root / score_cfg.vgg_weights, "vgg"),
        "inception": write_fid_inception(root / score_cfg.inception_weights),
        "i3d": write_torchscript(I3DStandIn(), root / score_cfg.i3d_weights),
        "reid": write_torchscript(ReidStandIn(), root / score_cfg.aed_weights, trace_input=torch.rand(1, 3, 256, 128)),
    }
