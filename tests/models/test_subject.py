"""Subject models stored as their delta on the base: what is stored, how it renders, and base mismatches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dreampose.config import RenderConfig
from dreampose.models.pipeline import load_pipeline
from dreampose.models.subject import (
    ADAPTER_FILE,
    DECODER_FILE,
    IMAGE_ENCODER_FILE,
    SUBJECT_FILE,
    UNET_FILE,
    load_subject_pipeline,
    save_subject,
)
from dreampose.render import render_frames
from tests.training.tiny import H, W, tiny_pipeline

CFG = RenderConfig(num_inference_steps=3, frame_batch_size=4)
# fp16 storage against the fp32 full folder on these tiny renders (measured: max 1 uint8 level; the demo-size
# figures are in benchmarks/results.jsonl, storage_bytes_per_subject).
FP16_TOLERANCE = 2


def _subject_like(seed: int = 1):
    """A base-shaped pipeline whose UNet, adapter and VAE decoder differ from the base (as after a finetune)."""
    base, subject = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    other = tiny_pipeline(seed=seed)
    subject.unet.load_state_dict(other.unet.state_dict())
    with torch.no_grad():
        for p in subject.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for n, p in subject.vae.named_parameters():
            if n.startswith("decoder."):
                p.add_(0.01 * torch.randn_like(p))
    return base, subject


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("subject")
    base, subject = _subject_like()
    base.save_pretrained(root / "models" / "base", safe_serialization=True)
    subject.save_pretrained(root / "full", safe_serialization=True)  # what a subject directory held before
    for dtype in ("fp32", "fp16"):
        save_subject(subject, root / "models" / "subjects" / dtype, root / "models" / "base", dtype=dtype)
    return root


def _render(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    photo = (torch.rand(H, W, 3, generator=g) * 255).to(torch.uint8).numpy()
    poses = torch.zeros(2, 10, H, W)
    poses[:, :, 4:12, 4:12] = torch.rand(2, 10, 1, 1, generator=g)
    return render_frames(pipe, photo, poses, CFG).astype(np.int16)


def test_the_subject_dir_holds_only_what_the_subject_changed(stored):
    d = stored / "models" / "subjects" / "fp16"
    assert {p.name for p in d.iterdir()} == {SUBJECT_FILE, UNET_FILE, ADAPTER_FILE, DECODER_FILE}
    with safe_open(str(d / DECODER_FILE), "pt") as f:
        keys = list(f.keys())
        assert f.get_tensor(keys[0]).dtype == torch.float16
    assert keys and all(k.startswith(("decoder.", "post_quant_conv.")) for k in keys)  # no VAE encoder
    meta = json.loads((d / SUBJECT_FILE).read_text())
    assert meta["base"]["path"] == "../../base" and meta["dtype"] == "fp16" and meta["unet"] == "full"
    full = sum(p.stat().st_size for p in (stored / "full").rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in d.iterdir()) < 0.6 * full


def test_the_loaded_subject_renders_as_the_full_folder(stored):
    ref = _render(load_pipeline(stored / "full"))
    fp32 = _render(load_subject_pipeline(stored / "models" / "subjects" / "fp32"))
    np.testing.assert_array_equal(fp32, ref)  # fp32 storage: the same weights, the same frames
    fp16 = _render(load_subject_pipeline(stored / "models" / "subjects" / "fp16"))
    assert np.abs(fp16 - ref).max() <= FP16_TOLERANCE
    base = _render(load_pipeline(stored / "models" / "base"))
    assert np.abs(base - ref).max() > FP16_TOLERANCE  # the delta matters: the base alone renders differently


def test_fp16_storage_is_exact_for_an_fp16_runtime(stored):
    """The paper preset renders in fp16: weights stored in fp16 are then exactly the full folder's, cast."""
    from dreampose.runtime import Runtime

    rt = Runtime(device=torch.device("cpu"), dtype=torch.float16, cpu_offload=False)
    a = load_subject_pipeline(stored / "models" / "subjects" / "fp16", runtime=rt)
    b = load_pipeline(stored / "full", rt)
    for name in ("unet", "adapter", "vae", "image_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_a_changed_or_missing_base_is_a_clear_error(stored, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(stored / "models", ws / "models")
    subject = ws / "models" / "subjects" / "fp16"
    moved = tmp_path / "elsewhere" / "base"
    shutil.move(ws / "models" / "base", moved)
    tiny_pipeline(seed=3).save_pretrained(tmp_path / "other", safe_serialization=True)  # another base
    with pytest.raises(ValueError, match=r"SHA-256 .*re-run the subject finetune"):
        load_subject_pipeline(subject, tmp_path / "other")
    assert load_subject_pipeline(subject, moved) is not None  # a moved base, named: fine
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        load_subject_pipeline(subject, tmp_path / "nowhere")


def test_a_subject_dir_finds_its_base_by_the_relative_path(stored, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(stored / "models", ws / "models")
    assert load_subject_pipeline(ws / "models/subjects/fp16") is not None  # the copy's own base, not the original
    (ws / "models" / "base" / "unet" / "config.json").write_text("{}")  # the workspace's base changed
    with pytest.raises(ValueError, match="SHA-256"):
        load_subject_pipeline(ws / "models/subjects/fp16")
    shutil.rmtree(ws / "models" / "base")
    with pytest.raises(FileNotFoundError, match="pass base_dir"):
        load_subject_pipeline(ws / "models/subjects/fp16")


def test_subject_json_is_the_same_in_every_checkout(tmp_path):
    """No absolute path in the DVC-hashed output: two checkouts at different paths write the same bytes (a fresh
    clone's `make demo` left every subject's hash in dvc.lock changed when the checkout's path was recorded)."""
    base, subject = _subject_like()
    for ws in ("a", "deeper/b"):
        base.save_pretrained(tmp_path / ws / "models" / "base", safe_serialization=True)
        save_subject(subject, tmp_path / ws / "models/subjects/s", tmp_path / ws / "models" / "base", dtype="fp32")
    a, b = ((tmp_path / ws / "models/subjects/s" / SUBJECT_FILE).read_bytes() for ws in ("a", "deeper/b"))
    assert a == b and str(tmp_path).encode() not in a


def test_an_older_subject_json_still_finds_its_base_by_its_absolute_path(stored, tmp_path):
    shutil.copytree(stored / "models" / "subjects" / "fp32", tmp_path / "moved")  # relative path now broken
    meta = json.loads((tmp_path / "moved" / SUBJECT_FILE).read_text())
    meta["base"]["abs_path"] = str(stored / "models" / "base")  # as subjects saved before it was dropped
    (tmp_path / "moved" / SUBJECT_FILE).write_text(json.dumps(meta))
    assert load_subject_pipeline(tmp_path / "moved") is not None
    del meta["base"]["abs_path"]
    (tmp_path / "moved" / SUBJECT_FILE).write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="pass base_dir"):
        load_subject_pipeline(tmp_path / "moved")


def test_a_trained_image_encoder_is_stored_and_loaded(stored, tmp_path):
    _base, subject = _subject_like()
    sizes = save_subject(subject, tmp_path / "s", stored / "models" / "base", dtype="fp32", image_encoder=True)
    assert IMAGE_ENCODER_FILE in sizes
    with torch.no_grad():
        for p in subject.image_encoder.parameters():
            p.mul_(1.5)
    save_subject(subject, tmp_path / "t", stored / "models" / "base", dtype="fp32", image_encoder=True)
    got = load_subject_pipeline(tmp_path / "t").image_encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in subject.image_encoder.state_dict().items())


def test_the_registered_model_loads_a_subject_stand_alone(stored, tmp_path):
    """The pyfunc model of a subject delta carries its base (no tracking store) and renders as the loader does."""
    import mlflow

    from dreampose.io import write_png
    from dreampose.catalog.mlflow_model import save_subject_model

    ws = tmp_path / "ws"
    shutil.copytree(stored / "models", ws / "models")
    subject = ws / "models" / "subjects" / "fp16"
    photo = np.full((H, W, 3), 90, np.uint8)
    write_png(photo, tmp_path / "photo.png")
    iuv = np.zeros((3, H, W, 3), np.uint8)
    iuv[:, 4:12, 4:12] = (3, 100, 150)
    cfg = CFG.model_dump()
    save_subject_model(tmp_path / "pyfunc", subject, tmp_path / "photo.png", cfg, 5, example=iuv[:1])
    shutil.rmtree(ws)  # the workspace is gone: the model must not need it
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    frames = model.predict(iuv, params={"frame_ids": [0, 1]})
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    assert (tmp_path / "pyfunc" / "artifacts" / "base" / "model_index.json").is_file()


def test_the_base_is_logged_once_per_content_and_fetched_checked(stored, tmp_path, monkeypatch):
    import mlflow

    from dreampose.catalog.mlflow_model import CACHE_ENV, fetch_base, log_base

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    mlflow.set_experiment("base-ref")
    with mlflow.start_run():
        first = log_base(stored / "models" / "base")
    with mlflow.start_run():
        again = log_base(stored / "models" / "base")
    assert again == first  # one copy in the store for every item built on this base
    local = fetch_base(first)
    assert local == tmp_path / "cache" / first["sha256"]
    assert load_subject_pipeline(stored / "models" / "subjects" / "fp16", local) is not None
    with pytest.raises(ValueError, match="SHA-256"):
        fetch_base({**first, "sha256": "0" * 64})
