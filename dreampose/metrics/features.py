"""Feature networks for the learned metrics, loaded only from configured local files.

Each loader raises ``FileNotFoundError`` when its file is absent; :func:`load_backbones` turns that
into an ``unavailable`` reason for the metric, so no metric is ever reported without its network.
Every network is a plain callable, so tests (and other backbones) can be injected:

- ``lpips`` / ``vgg``: ``(pred, target)`` images ``(B, 3, H, W)`` in [0, 1] -> distances ``(B,)``.
  LPIPS v0.1 of Zhang et al. 2018 via the ``lpips`` package: AlexNet trunk (LPIPS column) and
  VGG-16 trunk (VGG column). The trunk comes from a torchvision ImageNet state dict
  (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``); the calibrated linear layers from the
  file next to it named ``<stem>.lin.pth`` if present, else the ones shipped inside the ``lpips`` wheel.
- ``inception``: images ``(B, 3, H, W)`` in [0, 1] -> ``(B, 2048)`` pool features of the FID
  Inception-v3 (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``).
- ``i3d``: clips ``(B, 3, T, H, W)`` in [0, 1] -> ``(B, 400)`` features of the TorchScript I3D used
  for FVD by StyleGAN-V (``i3d_torchscript.pt``), fed 224x224 clips in [-1, 1].
- ``reid``: images ``(B, 3, H, W)`` in [0, 1] -> ``(B, D)`` identity embeddings for AED: a TorchScript
  re-identification network (e.g. a torchreid ResNet-50 / OSNet exported with ``torch.jit.trace``),
  fed 256x128 ImageNet-normalized person images.
"""

from __future__ import annotations

import re
import unittest.mock
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dreampose.config import ScoreConfig
from dreampose.runtime import place_module

PairNet = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FeatureNet = Callable[[torch.Tensor], torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a network's weights live (inputs are moved there); CPU for a network without tensors."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _require(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}")
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A tensor-only state dict: safetensors, or a torch file loaded with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


class _LpipsDistance(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dev = module_device(self.model)
        return self.model(pred.to(dev), target.to(dev), normalize=True).flatten()


def _trunk_key(name: str) -> str:
    # lpips keeps torchvision's layer indices inside its slices: slice2.3.weight == features.3.weight
    return re.sub(r"^slice\d+\.", "features.", name)


def load_lpips(
    trunk_weights: Path, net: str = "alex", lin_weights: Path | None = None, device: torch.device | None = None
) -> PairNet:
    """LPIPS with the given trunk (torchvision state dict) and linear layers, on ``device``; no download."""
    import lpips

    trunk_weights = _require(trunk_weights, f"LPIPS {net} trunk")
    if lin_weights is None:
        side = trunk_weights.with_name(trunk_weights.stem + ".lin.pth")
        lin_weights = side if side.is_file() else Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    lin_weights = _require(lin_weights, f"LPIPS {net} linear-layer")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=`` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    trunk = load_state_dict(trunk_weights)
    wanted = {name: _trunk_key(name) for name in model.net.state_dict()}
    missing = [k for k in wanted.values() if k not in trunk]
    if missing:
        raise ValueError(f"{trunk_weights}: not a torchvision {net} state dict (missing {missing[0]})")
    model.net.load_state_dict({name: trunk[key] for name, key in wanted.items()})
    lins = load_state_dict(lin_weights)
    # ``lins.N`` aliases ``linN`` in the lpips module; the files hold the ``linN`` names.
    expected = [k for k in model.state_dict() if re.match(r"lin\d", k)]
    absent = [k for k in expected if k not in lins]
    if absent:
        raise ValueError(f"{lin_weights}: not LPIPS linear layers (missing {absent[0]})")
    model.load_state_dict({k: lins[k] for k in expected}, strict=False)
    return place_module(_LpipsDistance(model), device)


class _InceptionFeatures(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(module_device(self.model)))[0].flatten(1)


def load_inception(weights: Path, device: torch.device | None = None) -> FeatureNet:
    """pytorch-fid's FID Inception-v3 with its weights read from ``weights`` instead of the network."""
    from pytorch_fid import inception

    weights = _require(weights, "FID Inception")
    sd = load_state_dict(weights)
    with unittest.mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: sd):
        model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return place_module(_InceptionFeatures(model), device)


class _I3DFeatures(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, size: int = 224) -> None:
        super().__init__()
        self.model = model
        self.size = size

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = clips.shape
        clips = clips.to(module_device(self.model))
        frames = clips.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = F.interpolate(frames, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = frames.reshape(b, t, c, self.size, self.size).permute(0, 2, 1, 3, 4) * 2 - 1
        return self.model(x, rescale=False, resize=False, return_features=True).flatten(1)


def load_i3d(weights: Path, device: torch.device | None = None) -> FeatureNet:
    """The TorchScript I3D (``forward(x, rescale, resize, return_features)``) used for FVD, on ``device``."""
    model = torch.jit.load(str(_require(weights, "I3D")), map_location=device or "cpu").eval()
    return _I3DFeatures(model)


class _ReidFeatures(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, size: tuple[int, int] = (256, 128)) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.to(self.mean.device), size=self.size, mode="bilinear", align_corners=False)
        return self.model((x - self.mean) / self.std).flatten(1)


def load_reid(weights: Path, device: torch.device | None = None) -> FeatureNet:
    """A TorchScript re-identification embedding network for AED, on ``device``."""
    model = torch.jit.load(str(_require(weights, "re-identification")), map_location=device or "cpu").eval()
    return place_module(_ReidFeatures(model), device)


@dataclass
class Backbones:
    """The networks the learned metrics use; ``reasons`` says why any of them is missing."""

    lpips: PairNet | None = None
    vgg: PairNet | None = None
    inception: FeatureNet | None = None
    i3d: FeatureNet | None = None
    reid: FeatureNet | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # network -> its weights' ``<file>.note``, if any

    def reason(self, name: str) -> str:
        return self.reasons.get(name, f"no {name} network configured")


def weights_note(weights: Path) -> str | None:
    """The text of ``<weights>.note`` (e.g. "random weights, stand-in"), reported with the scores it affects."""
    side = Path(weights).with_name(Path(weights).name + ".note")
    return side.read_text().strip() if side.is_file() else None


def load_backbones(cfg: ScoreConfig, root: Path, device: torch.device | None = None) -> Backbones:
    """Load every configured network that exists, on ``device`` (fp32; ``None`` = CPU); absent or unusable
    files become reasons, notes are kept."""
    out = Backbones()
    loaders = {
        "lpips": (root / cfg.lpips_weights, lambda p: load_lpips(p, "alex", device=device)),
        "vgg": (root / cfg.vgg_weights, lambda p: load_lpips(p, "vgg", device=device)),
        "inception": (root / cfg.inception_weights, lambda p: load_inception(p, device)),
        "i3d": (root / cfg.i3d_weights, lambda p: load_i3d(p, device)),
        "reid": (root / cfg.aed_weights, lambda p: load_reid(p, device)),
    }
    for name, (path, load) in loaders.items():
        try:
            setattr(out, name, load(path))
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            out.reasons[name] = str(err)
            continue
        note = weights_note(path)
        if note:
            out.notes[name] = note
    return out
