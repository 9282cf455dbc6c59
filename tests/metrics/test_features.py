import re
import unittest.mock
from pathlib import Path

import lpips
import pytest
import torch

from dreampose.config import ScoreConfig
from dreampose.metrics.features import load_backbones, load_i3d, load_inception, load_lpips, load_reid


def _torchvision_trunk(model: lpips.LPIPS) -> dict[str, torch.Tensor]:
    return {re.sub(r"^slice\d+\.", "features.", k): v for k, v in model.net.state_dict().items()}


def test_lpips_loaded_from_files_equals_lpips_with_same_weights(tmp_path):
    ref = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False).eval()
    trunk = tmp_path / "alexnet.pth"
    torch.save(_torchvision_trunk(ref), trunk)
    torch.save({k: v for k, v in ref.state_dict().items() if k.startswith("lin")}, tmp_path / "alexnet.lin.pth")
    ours = load_lpips(trunk, "alex")
    a, b = torch.rand(3, 3, 64, 48), torch.rand(3, 3, 64, 48)
    with torch.no_grad():
        expected = ref(a, b, normalize=True).flatten()
    torch.testing.assert_close(ours(a, b), expected)
    assert ours(a, a).abs().max() == 0


def test_lpips_defaults_to_the_linear_layers_shipped_with_lpips(tmp_path):
    ref = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    torch.save(_torchvision_trunk(ref), tmp_path / "alexnet.pth")
    ours = load_lpips(tmp_path / "alexnet.pth", "alex")
    shipped = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    torch.testing.assert_close(ours.model.lin0.model[-1].weight, shipped["lin0.model.1.weight"])


def test_lpips_rejects_a_wrong_state_dict(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision alex state dict"):
        load_lpips(tmp_path / "bad.pth", "alex")


@pytest.mark.slow
def test_inception_loaded_from_a_local_file(tmp_path):
    from pytorch_fid import inception

    # Random weights in the exact FID Inception layout: build it with loading disabled, then save.
    with (
        unittest.mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: {}),
        unittest.mock.patch("torch.nn.Module.load_state_dict", lambda *a, **k: None),
    ):
        net = inception.fid_inception_v3()
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    feats = load_inception(tmp_path / "inception.pth")
    out = feats(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 2048)
    assert torch.isfinite(out).all()
    # The loaded trunk carries the saved weights, not a fresh random init.
    torch.testing.assert_close(feats.model.blocks[0][0].conv.weight, net.Conv2d_1a_3x3.conv.weight)


class _TinyI3D(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 5, 3)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True):
        assert x.shape[-2:] == (224, 224)
        return self.conv(x).mean(dim=(2, 3, 4))


class _TinyReid(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_torchscript_i3d_and_reid_load_and_preprocess(tmp_path):
    i3d = _TinyI3D()
    torch.jit.script(i3d).save(str(tmp_path / "i3d.pt"))
    feats = load_i3d(tmp_path / "i3d.pt")
    clip = torch.rand(2, 3, 4, 16, 12)
    up = torch.nn.functional.interpolate(
        clip.permute(0, 2, 1, 3, 4).reshape(8, 3, 16, 12), size=(224, 224), mode="bilinear", align_corners=False
    )
    expected = i3d(up.reshape(2, 4, 3, 224, 224).permute(0, 2, 1, 3, 4) * 2 - 1)
    torch.testing.assert_close(feats(clip), expected.detach())

    reid = _TinyReid()
    torch.jit.script(reid).save(str(tmp_path / "reid.pt"))
    emb = load_reid(tmp_path / "reid.pt")(torch.rand(3, 3, 64, 48))
    assert emb.shape == (3, 6)


def test_absent_weights_become_reasons(tmp_path):
    b = load_backbones(ScoreConfig(), tmp_path)
    assert (b.lpips, b.vgg, b.inception, b.i3d, b.reid) == (None,) * 5
    assert set(b.reasons) == {"lpips", "vgg", "inception", "i3d", "reid"}
    assert "models/metrics/i3d_torchscript.pt" in b.reasons["i3d"]
    assert b.reasons["reid"].startswith("re-identification weights not found")


def test_metric_networks_take_inputs_to_their_own_device():
    """Networks placed on another device (``meta`` here, CUDA in a run) receive their inputs there."""
    from dreampose.metrics.features import _InceptionFeatures, _ReidFeatures, module_device

    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return [self.conv(x).mean((2, 3), keepdim=True)]

    x = torch.rand(2, 3, 32, 24)
    inc = _InceptionFeatures(Pool()).to("meta")
    assert module_device(inc) == torch.device("meta") and inc(x).device == torch.device("meta")
    reid = _ReidFeatures(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten())).to("meta")
    assert reid(x).device == torch.device("meta")
    assert _InceptionFeatures(Pool())(x).shape == (2, 4)  # and on CPU, as before


def test_backbone_notes_come_from_sidecar_files(tmp_path):
    cfg = ScoreConfig(i3d_weights="i3d.pt", aed_weights="reid.pt")
    torch.jit.script(_TinyI3D()).save(str(tmp_path / "i3d.pt"))
    torch.jit.script(_TinyReid()).save(str(tmp_path / "reid.pt"))
    (tmp_path / "i3d.pt.note").write_text("random weights\n")
    (tmp_path / "absent.pt.note").write_text("a note without weights is not reported\n")
    b = load_backbones(cfg, tmp_path)
    assert b.notes == {"i3d": "random weights"}
    assert b.i3d is not None and b.reid is not None and b.lpips is None
