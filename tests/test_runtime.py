"""The inference runtime: resolution (device, dtype, offload), placement, and that stages run where it says."""

from __future__ import annotations

import json
import logging
from importlib import import_module

import numpy as np
import pytest
import torch

from dreampose.config import Params, RenderConfig, RuntimeConfig, ScoreConfig
from dreampose.data.densepose.iuv import uv_to_model
from dreampose.models.pipeline import load_pipeline
from dreampose.render import read_rgb, render_frames, render_subject
from dreampose.runtime import CPU, Runtime, place_pipeline, resolve_device, resolve_dtype, resolve_runtime
from dreampose.stages import render, score
from tests.metrics._workspace import SUBJECTS, H, W, make_fvd_manifest, make_iuv, make_workspace, tiny_pipeline

CFG = RenderConfig(num_inference_steps=2, frame_batch_size=2)
BF16 = Runtime(torch.device("cpu"), torch.bfloat16)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("DREAMPOSE_NO_MLFLOW", "1")


def _inputs(n: int = 2):
    image = np.full((H, W, 3), 128, np.uint8)
    image[8:24, 6:18] = (200, 40, 40)
    return image, uv_to_model(np.stack([make_iuv(t) for t in range(n)])).repeat(1, 5, 1, 1)


# ---------------------------------------------------------------- resolution (pure)


def test_auto_resolves_to_cuda_when_available_else_cpu():
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("auto", cuda_available=True, cuda_count=1) == torch.device("cuda")
    assert resolve_device("cuda:1", cuda_available=True, cuda_count=2) == torch.device("cuda:1")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_runtime(RuntimeConfig()) == CPU  # auto -> cpu here


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_an_error_naming_the_key(device):
    with pytest.raises(ValueError, match=rf"runtime.device: '{device}' requested but CUDA is not available"):
        resolve_device(device, cuda_available=False)
    with pytest.raises(ValueError, match=r"runtime.device: 'cuda:2' requested but this machine has 2 CUDA"):
        resolve_device("cuda:2", cuda_available=True, cuda_count=2)
    with pytest.raises(ValueError, match=r"densepose\.weights: 'nope' is not a torch device"):
        resolve_device("nope", key="densepose.weights")


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning(caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with caplog.at_level(logging.WARNING, logger="dreampose.runtime"):
        assert resolve_dtype("fp16", cpu) == torch.float32
    assert "fp16 on CPU falls back to fp32" in caplog.text
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("fp16", cuda) == torch.float16 and resolve_dtype("fp32", cuda) == torch.float32
    got = resolve_runtime(RuntimeConfig(device="auto", dtype="fp16", cpu_offload=True), cuda_available=False)
    assert got == CPU  # offload means nothing when the device is the CPU
    assert resolve_runtime(RuntimeConfig(device="cpu", dtype="bf16")).describe() == {
        "device": "cpu",
        "dtype": "bf16",
        "cpu_offload": False,
    }


# ---------------------------------------------------------------- placement


def test_fp32_cpu_is_untouched_and_bf16_differs_slightly(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "m")
    image, poses = _inputs(1)
    plain = render_frames(load_pipeline(tmp_path / "m"), image, poses, CFG)
    fp32 = render_frames(load_pipeline(tmp_path / "m", resolve_runtime(RuntimeConfig(device="cpu"))), image, poses, CFG)
    np.testing.assert_array_equal(plain, fp32)  # the demo's numbers: bit-identical
    pipe = load_pipeline(tmp_path / "m", BF16)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.adapter.dtype, pipe.image_encoder.dtype} == {torch.bfloat16}
    bf16 = render_frames(pipe, image, poses, CFG)
    diff = np.abs(bf16.astype(int) - plain.astype(int))
    assert bf16.shape == plain.shape and bf16.dtype == np.uint8
    assert 0 < diff.max() <= 16 and diff.mean() < 2.0  # reduced precision, same picture


def test_cpu_offload_constructs_and_renders():
    """On CPU diffusers' model offload only adds hooks (models are already in CPU memory): same frames."""
    image, poses = _inputs(1)
    ref = render_frames(tiny_pipeline(), image, poses, CFG)
    pipe = place_pipeline(tiny_pipeline(), Runtime(torch.device("cpu"), torch.float32, cpu_offload=True))
    assert pipe._offload_device == torch.device("cpu:0")
    np.testing.assert_array_equal(render_frames(pipe, image, poses, CFG), ref)


# ---------------------------------------------------------------- the choice reaches each stage


def _render_workspace(root):
    make_workspace(root, targets=(4, 6))
    make_fvd_manifest(root, start=5, length=2)
    tiny_pipeline().save_pretrained(root / "models/subjects" / SUBJECTS[0])
    tiny_pipeline().save_pretrained(root / "models/base")


def _params(**runtime) -> Params:
    return Params(
        render=CFG,
        score=ScoreConfig(fvd_clip_len=2),
        runtime=RuntimeConfig(**runtime),
        eval={"subjects": [SUBJECTS[0]]},
    )


def test_render_stage_renders_in_the_runtime_dtype(tmp_path):
    _render_workspace(tmp_path)
    out = tmp_path / "renders" / SUBJECTS[0]
    frames = {}
    for dtype in ("fp32", "bf16"):
        summary = render.run(_params(device="cpu", dtype=dtype), tmp_path, SUBJECTS[0])
        meta = json.loads((out / "render.json").read_text())
        assert summary["runtime"] == meta["runtime"] == {"device": "cpu", "dtype": dtype, "cpu_offload": False}
        frames[dtype] = np.stack([read_rgb(p) for p in sorted((out / "frames").glob("*.png"))])
        for p in (out / "frames").glob("*.png"):
            p.unlink()
    # fp32 through the stage is exactly a plain render of the same model
    plain = tmp_path / "plain"
    render_subject(CFG, tmp_path / "models/subjects" / SUBJECTS[0], tmp_path / "data/manifests/test.parquet",
                   SUBJECTS[0], tmp_path, plain)  # fmt: skip
    np.testing.assert_array_equal(frames["fp32"], np.stack([read_rgb(p) for p in sorted(plain.glob("frames/*.png"))]))
    assert (frames["fp32"] != frames["bf16"]).any()


def test_score_stage_renders_baselines_in_the_runtime_dtype(tmp_path):
    _render_workspace(tmp_path)
    render.run(_params(device="cpu"), tmp_path, SUBJECTS[0])
    base = tmp_path / "metrics/baselines/base_model" / SUBJECTS[0] / "frames"
    frames = {}
    for dtype in ("fp32", "bf16"):
        result = score.run(_params(device="cpu", dtype=dtype), tmp_path)
        assert isinstance(result["baselines"]["base_model"]["l1"], float)
        frames[dtype] = np.stack([read_rgb(p) for p in sorted(base.glob("*.png"))])
        for p in base.glob("*.png"):
            p.unlink()
    assert frames["fp32"].shape == frames["bf16"].shape == (2, H, W, 3)
    assert (frames["fp32"] != frames["bf16"]).any()


@NO_CUDA
@pytest.mark.parametrize("stage", ["densepose", "render", "score"])
def test_cuda_on_a_cpu_machine_stops_each_stage_before_any_work(tmp_path, stage):
    _render_workspace(tmp_path)
    args = (SUBJECTS[0],) if stage == "render" else ()
    with pytest.raises(ValueError, match=r"runtime\.device: 'cuda' requested but CUDA is not available"):
        import_module(f"dreampose.stages.{stage}").run(_params(device="cuda"), tmp_path, *args)
    assert not (tmp_path / "renders").exists() and not (tmp_path / "metrics").exists()


@NO_CUDA
def test_catalog_item_checks_the_device_before_any_work(tmp_path):
    from dreampose import catalog

    with pytest.raises(ValueError, match=r"runtime\.device: 'cuda:0' requested"):
        catalog.run_catalog_item(_params(device="cuda:0"), tmp_path, str(tmp_path / "photo.png"), "poses")
    assert not (tmp_path / "catalog").exists()
