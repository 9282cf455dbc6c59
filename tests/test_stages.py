"""The stage modules (``dreampose.stages.<stage>``): each stage reads its own config section, writes the workspace
layout under ``root`` and records an MLflow run named as the stage, with its params and input hashes; its ``main``
is the command dvc.yaml runs. Run on a tiny synthetic workspace."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import yaml

from dreampose import layout
from dreampose.config import Params
from dreampose.entry import dump_summary
from dreampose.stages import densepose, download, frames, render


@pytest.fixture
def params() -> Params:
    return Params.model_validate(
        {
            "data": {"synthetic": {"num_train_subjects": 2, "num_test_subjects": 1, "frames_per_video": 8}},
            "frames": {"height": 32, "width": 24},
            "tracking": {"experiment": "stages-test"},
        }
    )


def test_data_stages_write_the_layout_and_log_runs(params, tmp_path):
    root = tmp_path / "ws"
    download.run(params, root)
    assert sorted(p.name for p in (root / layout.RAW / "videos").rglob("*.mp4"))
    frames.run(params, root)
    index = pd.read_parquet(root / layout.FRAMES / "index.parquet")
    assert set(index["split"]) == {"train", "test"}
    densepose.run(params, root)
    assert (root / layout.DENSEPOSE / "index.parquet").is_file()

    runs = mlflow.search_runs(experiment_names=["stages-test"])
    by_stage = {r["tags.dreampose.stage"]: r for _, r in runs.iterrows()}
    assert set(by_stage) == {"download", "frames", "densepose"}
    assert {r["tags.mlflow.runName"] for _, r in runs.iterrows()} == set(by_stage)  # run names are the dvc.yaml names
    assert by_stage["frames"]["params.height"] == "32"
    # the frames run names the videos it consumed by content hash
    assert len(by_stage["frames"]["tags.input.videos.md5"]) == 32


def test_a_stage_command_runs_the_stage_and_prints_its_summary(params, tmp_path, capsys):
    """``bin/python -m dreampose.stages.download --params P --root R`` is the module's ``main``: it reads the params
    file under the root and writes the same outputs as ``run``."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "custom.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    assert download.main(["--params", "custom.yaml", "--root", str(root)]) == 0
    printed = capsys.readouterr().out
    direct = tmp_path / "direct"
    summary = download.run(params, direct)
    expected = json.loads(dump_summary(summary).replace(str(direct), str(root)))
    assert json.loads(printed) | {"seconds": 0} == expected | {"seconds": 0}  # wall clock aside

    def files(ws):
        return {p.relative_to(ws): p.read_bytes() for p in (ws / layout.RAW).rglob("*") if p.is_file()}

    assert files(root) == files(direct) and files(root)


def test_a_stage_command_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("frames: {bogus: 1}\n")
    assert download.main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dreampose: error:") and "frames.bogus" in err[0]
    with pytest.raises(SystemExit) as exc:
        render.main(["--root", str(tmp_path)])  # a foreach stage needs its subject
    assert exc.value.code == 2 and "--subject" in capsys.readouterr().err


def test_dump_summary_is_sorted_json():
    text = dump_summary({"b": 1, "a": tmp_path_like()})
    assert json.loads(text) == {"a": "x", "b": 1} and text.index('"a"') < text.index('"b"')


def tmp_path_like():
    class X:
        def __str__(self) -> str:
            return "x"

    return X()
