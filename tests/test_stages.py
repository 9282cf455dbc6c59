"""The stages module: each stage reads its own config section, writes the workspace layout under ``root`` and
records an MLflow run with its params and input hashes. Run on a tiny synthetic workspace."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from dreampose import layout, stages
from dreampose.config import Params


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
    stages.download(params, root)
    assert sorted(p.name for p in (root / layout.RAW / "videos").rglob("*.mp4"))
    stages.frames(params, root)
    index = pd.read_parquet(root / layout.FRAMES / "index.parquet")
    assert set(index["split"]) == {"train", "test"}
    stages.densepose(params, root)
    assert (root / layout.DENSEPOSE / "index.parquet").is_file()

    runs = mlflow.search_runs(experiment_names=["stages-test"])
    by_stage = {r["tags.dreampose.stage"]: r for _, r in runs.iterrows()}
    assert set(by_stage) == {"download", "frames", "densepose"}
    assert by_stage["frames"]["params.height"] == "32"
    # the frames run names the videos it consumed by content hash
    assert len(by_stage["frames"]["tags.input.videos.md5"]) == 32


def test_report_reads_the_scores_file(params, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no scores yet"):
        stages.report(params, tmp_path)
    evaluation = layout.Workspace(tmp_path).evaluation
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text(
        json.dumps(
            {
                "dataset": "synthetic",
                "num_frames": 8,
                "ours": {"l1": 0.04321, "ssim": 0.7654, "fid": {"status": "unavailable", "reason": "no weights"}},
            }
        )
    )
    stages.report(params, tmp_path)
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if line.startswith("ours"))
    assert "0.0432" in ours and "0.7654" in ours
    # VGG is absent (footnote 1, "not computed"); FID is unavailable with the record's own reason (footnote 2)
    assert "unavailable [1]" in ours and "unavailable [2]" in ours
    assert "[1] not computed" in out and "[2] no weights" in out


def test_dump_summary_is_sorted_json():
    text = stages.dump_summary({"b": 1, "a": tmp_path_like()})
    assert json.loads(text) == {"a": "x", "b": 1} and text.index('"a"') < text.index('"b"')


def tmp_path_like():
    class X:
        def __str__(self) -> str:
            return "x"

    return X()
