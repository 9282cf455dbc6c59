"""Catalog items with several photos of the garment (paper supplement, "Multiple Input Frames") and without the
subject finetune (``--no-finetune``), at tiny size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dreampose import catalog, registry, tracking
from dreampose.cli import build_parser
from dreampose.config import load_params
from tests.flows.conftest import person_photo

MODEL = "catalog-test-model"


def _params(ws: Path):
    return load_params(ws / "params.yaml")


def test_input_key_covers_every_photo_and_the_finetune_switch(catalog_workspace):
    params = _params(catalog_workspace)
    seq = catalog.resolve_poses("poses", catalog_workspace, params)
    a = np.zeros((64, 48, 3), np.uint8)
    b, c = a + 1, a + 2
    one = catalog.input_key(a, seq, "base", params)
    assert catalog.input_key(a, seq, "base", params, (), True) == one  # one photo keys as before
    assert catalog.input_key(a, seq, "base", params, (b,)) not in (one, catalog.input_key(a, seq, "base", params, (c,)))
    assert catalog.input_key(a, seq, "base", params, (b,)) != catalog.input_key(b, seq, "base", params, (a,))
    assert catalog.input_key(a, seq, "base", params, finetune=False) != one


def test_several_photos_are_all_finetune_targets_and_the_first_conditions(catalog_workspace, tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.DISABLE_ENV, "1")
    ws = catalog_workspace
    second = tmp_path / "back.png"  # another size: resized and cropped like any single photo
    Image.fromarray(np.asarray(Image.open(person_photo(tmp_path / "p.png", (200, 30, 30)))).repeat(2, 0)).save(second)
    out = catalog.run_catalog_item(_params(ws), ws, [str(ws / "photo.png"), str(second)], "poses", item_id="two")
    run_dir = Path(out["run_dir"])
    assert out["photos"] == [str(ws / "photo.png"), str(second)] and out["subject_finetune"]
    assert out["finetune"]["pairs"] == 2  # the subject finetune trained on both photos
    rows = pd.read_parquet(run_dir / "input" / "subject.parquet")
    assert rows["input_path"].tolist() == rows["target_path"].tolist() == ["input/photo.png", "input/photo_1.png"]
    first = catalog.validate_photo(str(ws / "photo.png"), 64, 48).pixels
    back = np.asarray(Image.open(run_dir / "input" / "photo_1.png"))
    assert back.shape == first.shape and back[-4, 24].argmax() == 0  # the red one, at the model's size
    np.testing.assert_array_equal(np.asarray(Image.open(run_dir / "input" / "photo.png")), first)
    sbs = catalog.read_rgb(run_dir / "render" / "poster.png")
    np.testing.assert_array_equal(sbs[:64, :48], first)  # the render's input column: the first photo


def test_bad_photo_lists_are_clear_errors(catalog_workspace, tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.DISABLE_ENV, "1")
    ws, params = catalog_workspace, _params(catalog_workspace)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 160), (240, 240, 240)).save(blank)
    with pytest.raises(ValueError, match=r"blank\.png.*blank"):
        catalog.run_catalog_item(params, ws, [str(ws / "photo.png"), str(blank)], "poses", item_id="bad-two")
    with pytest.raises(ValueError, match="without the subject finetune"):
        catalog.run_catalog_item(params, ws, [str(ws / "photo.png")] * 2, "poses", item_id="bad-nf", finetune=False)
    with pytest.raises(ValueError, match="one or more paths"):
        catalog.run_catalog_item(params, ws, [], "poses", item_id="bad-none")
    assert not any((ws / "catalog" / i).exists() for i in ("bad-two", "bad-nf", "bad-none"))


def test_cli_takes_repeated_photos_and_no_finetune():
    args = build_parser().parse_args(["catalog-item", "--photo", "a.png", "--photo", "b.png", "--poses", "p"])
    assert args.photo == ["a.png", "b.png"] and not args.no_finetune
    args = build_parser().parse_args(["catalog-item", "--photo", "a.png", "--poses", "p", "--no-finetune"])
    assert args.photo == ["a.png"] and args.no_finetune


def test_no_finetune_renders_with_the_base_model_and_says_so(catalog_workspace, tmp_path, monkeypatch):
    import mlflow

    from dreampose.models.pipeline import load_pipeline
    from dreampose.render import render_sequence

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    ws, params = catalog_workspace, _params(catalog_workspace)
    out = catalog.run_catalog_item(params, ws, str(ws / "photo.png"), "poses", item_id="base-only", finetune=False)
    run_dir = Path(out["run_dir"])
    assert not out["subject_finetune"] and "skipped" in out["finetune"] and not (run_dir / "model").exists()
    seq = catalog.resolve_poses("poses", ws, params)
    photo = catalog.validate_photo(str(ws / "photo.png"), 64, 48).pixels
    direct = render_sequence(load_pipeline(ws / "models" / "base"), photo, seq.iuv, params.render, tmp_path / "r")
    for f in direct["frames"]:  # the very frames the base model renders
        name = f"{f:05d}.png"
        np.testing.assert_array_equal(
            catalog.read_rgb(run_dir / "render/frames" / name), catalog.read_rgb(tmp_path / "r/frames" / name)
        )
    tracking.configure("catalog-test", ws)
    v = registry.get_version(MODEL, out["version"])
    assert v.tags["catalog.subject_finetune"] == "false" and v.tags["catalog.num_photos"] == "1"
    assert mlflow.get_run(out["run_id"]).data.tags["catalog.subject_finetune"] == "false"
