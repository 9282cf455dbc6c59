"""Catalog items end to end at tiny size: validation before any work, registration, reuse, isolation."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from dreampose import catalog, registry, tracking
from dreampose.config import load_params
from tests.flows.conftest import person_photo

MODEL = "catalog-test-model"


@pytest.fixture
def workspace(catalog_workspace) -> Path:
    return catalog_workspace


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


@pytest.fixture(autouse=True)
def _shared_store(store, monkeypatch, tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds); tests check only their own items."""
    from dreampose.catalog.mlflow_model import CACHE_ENV

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "base_cache"))


def _params(ws: Path):
    return load_params(ws / "params.yaml")


def test_bad_photo_writes_and_registers_nothing(workspace, tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 160), (240, 240, 240)).save(blank)
    with pytest.raises(ValueError, match="blank"):
        catalog.run_catalog_item(_params(workspace), workspace, str(blank), "poses", item_id="bad")
    assert not (workspace / "catalog" / "bad").exists()
    tracking.configure("catalog-test", workspace)
    assert registry.search_versions(MODEL, catalog_item="bad") == []


@pytest.mark.parametrize(
    ("poses", "item_id", "match"),
    [
        ("no_such_video", "x", "not a test video id|no .*test.parquet"),
        ("photo.png", "x", "expected a directory of IUV files"),
        ("poses", "../escape", "item id"),
    ],
)
def test_bad_poses_and_item_ids(workspace, poses, item_id, match):
    with pytest.raises(ValueError, match=match):
        catalog.run_catalog_item(_params(workspace), workspace, str(workspace / "photo.png"), poses, item_id=item_id)
    assert not (workspace / "catalog" / item_id).exists()


def test_resolve_poses_directory(workspace):
    seq = catalog.resolve_poses("poses", workspace, _params(workspace))
    assert seq.iuv.shape == (6, 64, 48, 3) and seq.frame_ids == list(range(6)) and seq.truth is None


def test_item_id_from_photo_name():
    assert catalog.item_id_from("https://shop.example/img/Red Dress (1).JPG?x=1", None) == "Red-Dress-1"
    assert catalog.item_id_from("/a/b/sku_42.png", "sku-42") == "sku-42"


def _registered_frames(run_dir: Path, ids) -> np.ndarray:
    return np.stack([catalog.read_rgb(run_dir / "render" / "frames" / f"{f:05d}.png") for f in ids])


def _assert_same_up_to_batching(got: np.ndarray, want: np.ndarray) -> None:
    """Frame 0 rendered alone vs inside a batch of ``frame_batch_size``: the same computation, but CPU kernels sum
    in a batch-size-dependent order (~1e-6 apart before uint8 rounding), so a pixel on a rounding boundary may
    flip by 1."""
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


@pytest.mark.slow
def test_catalog_item_flow_registers_pending_then_reuses(workspace, prefect_harness, tmp_path, chromium):
    import mlflow

    from flows.catalog_item import catalog_item
    from tests.browser import body_data, dump_dom

    out = catalog_item(
        photo=str(workspace / "photo.png"), poses="poses", item_id="sku-1", root=str(workspace), ground_truth="truth"
    )
    assert out["review"] == "pending" and out["model_name"] == MODEL and not out["reused"]
    run_dir = Path(out["run_dir"])
    assert run_dir.parent == workspace / "catalog" / "sku-1"
    assert (run_dir / "render" / "video.mp4").stat().st_size > 0 and (run_dir / "model" / "subject.json").is_file()
    assert {"temporal_l1", "appearance_drift", "l1", "ssim", "psnr"} <= set(out["scores"])
    tracking.configure("catalog-test", workspace)
    v = registry.get_version(MODEL, out["version"])
    assert v.tags["catalog_item"] == "sku-1" and v.review == "pending"
    assert v.links["video"] == f"runs:/{out['run_id']}/render/video.mp4"
    assert all(link.startswith("runs:/") for link in v.links.values())
    assert "quality/temporal_l1" in v.metrics and "temporal_l1" not in v.metrics
    description = mlflow.MlflowClient().get_model_version(MODEL, v.version).description
    assert f"runs/{out['run_id']}/artifacts/review.html" in description and "@approved-sku-1" in description
    run = mlflow.get_run(out["run_id"])
    assert run.info.run_name == "catalog_item@sku-1"
    assert run.data.tags["prefect.flow_run_id"] and run.data.tags["base_model.sha256"] == catalog.model_digest(
        workspace / "models" / "base"
    )
    assert any(k.startswith("train/") for k in run.data.metrics) and "loss" not in run.data.metrics

    # The review page, fetched from the store as `dreampose review show` does, plays in a real browser.
    page = Path(mlflow.artifacts.download_artifacts(v.links["review_page"], dst_path=str(tmp_path)))
    data = body_data(dump_dom(chromium, page))
    assert data["video"] == "playing" and data["images"] == "loaded" and data["item"] == "sku-1"

    # Approved, it is a real MLflow model whose frames equal the registered render.
    registry.approve(MODEL, v.version, by="tester")
    model = mlflow.pyfunc.load_model(registry.approved_uri(MODEL, "sku-1"))
    seq = catalog.resolve_poses("poses", workspace, _params(workspace))
    frames = model.predict(seq.iuv)
    np.testing.assert_array_equal(frames, _registered_frames(run_dir, seq.frame_ids))
    # The MLflow model holds the subject delta and a reference to its base, logged once (by content hash) for all
    # items; the two rebuild the pipeline.
    import json

    from dreampose.catalog.mlflow_model import fetch_base
    from dreampose.models.subject import load_subject_pipeline

    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{out['run_id']}/model", dst_path=str(tmp_path)))
    assert (local / "MLmodel").is_file() and not (local / "artifacts" / "model" / "unet").exists()
    ref = json.loads((local / "artifacts" / "base_ref.json").read_text())
    assert ref["sha256"] == json.loads((run_dir / "model" / "subject.json").read_text())["base"]["sha256"]
    assert load_subject_pipeline(local / "artifacts" / "model", fetch_base(ref)).unet is not None

    again = catalog_item(
        photo=str(workspace / "photo.png"), poses="poses", item_id="sku-1", root=str(workspace), reuse=True
    )
    assert again["reused"] and again["version"] == out["version"]


@pytest.mark.slow
def test_two_items_at_once_keep_separate_outputs(workspace):
    params = _params(workspace)
    photos = {
        "red": person_photo(workspace / "red.png", (200, 30, 30)),
        "green": person_photo(workspace / "green.png", (30, 200, 30)),
    }
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def work(item: str) -> None:
        try:
            results[item] = catalog.run_catalog_item(params, workspace, photos[item], "poses", item_id=item)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in photos]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    dirs = {k: Path(r["run_dir"]) for k, r in results.items()}
    assert dirs["red"].parent.name == "red" and dirs["green"].parent.name == "green"
    assert results["red"]["version"] != results["green"]["version"]
    from PIL import Image

    for item, colour in (("red", 0), ("green", 1)):
        inp = np.asarray(Image.open(dirs[item] / "input" / "photo.png"))
        assert inp[-4, 24].argmax() == colour  # each run holds its own photo, not the other's
        assert (dirs[item] / "render" / "video.mp4").is_file()

    # Both approved, both stay approved, each loads by its own documented URI.
    import mlflow

    tracking.configure("catalog-test", workspace)
    for item in photos:
        registry.approve(MODEL, results[item]["version"], by="tester")
    for item in photos:
        uri = registry.approved_uri(MODEL, item)
        assert uri == results[item]["approved_uri"] == f"models:/{MODEL}@approved-{item}"
        assert registry.approved_version(MODEL, item).version == results[item]["version"]
        model = mlflow.pyfunc.load_model(uri)
        iuv = catalog.resolve_poses("poses", workspace, params).iuv
        frame0 = model.predict(iuv, params={"frame_ids": [0]})
        _assert_same_up_to_batching(frame0, _registered_frames(dirs[item], [0]))


@pytest.mark.parametrize("enabled_before", [True, False])
def test_an_item_process_imports_its_modules_with_the_collector_paused_then_frozen(monkeypatch, enabled_before):
    import gc
    import importlib

    import flows.catalog_item as flow_module

    seen: list[tuple[str, bool]] = []
    real_import = importlib.import_module

    def import_module(name, package=None):
        if name in flow_module.ITEM_MODULES:
            seen.append((name, gc.isenabled()))
        return real_import(name, package)

    monkeypatch.setattr(flow_module.importlib, "import_module", import_module)
    made_before = [[i] for i in range(1000)]  # lists are tracked by the collector
    frozen_before = gc.get_freeze_count()
    (gc.enable if enabled_before else gc.disable)()
    try:
        flow_module.import_item_modules()
        assert gc.isenabled() is enabled_before  # the collector is left as it was
    finally:
        gc.enable()
    assert seen == [(name, False) for name in flow_module.ITEM_MODULES]  # every import with the collector paused
    assert gc.get_freeze_count() >= frozen_before + len(made_before)  # what was alive is frozen
