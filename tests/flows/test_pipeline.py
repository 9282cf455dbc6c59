"""The pipeline flow on a small DVC graph: one task per stage, foreach mapping, parent-run id, skips."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from PIL import Image

from dreampose.config import load_params
from flows.pipeline import build_parser, catalog_demo_enabled, format_scores, stage_plan
from tests.conftest import REPO
from tests.flows.conftest import make_dvc_repo

DVC_YAML = """\
stages:
  download:
    cmd: echo raw > raw.txt
    outs: [raw.txt]
  finetune_subject:
    foreach: ${eval.subjects}
    do:
      cmd: printf "%s" "$DREAMPOSE_PARENT_RUN_ID" > parent_${item}.txt
      deps:
        - raw.txt
      outs:
        - parent_${item}.txt
  score:
    cmd: cat parent_a.txt parent_b.txt > metrics.txt
    deps: [parent_a.txt, parent_b.txt]
    outs: [metrics.txt]
"""
PARAMS = "eval:\n  subjects: [a, b]\ntracking:\n  experiment: pipeline-test\n"


def test_stage_plan_expands_foreach(tmp_path):
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    plan = stage_plan(tmp_path / "dvc.yaml", ["a", "b"])
    assert plan == [
        ("download", ["download"]),
        ("finetune_subject", ["finetune_subject@a", "finetune_subject@b"]),
        ("score", ["score"]),
    ]
    (tmp_path / "empty.yaml").write_text("stages: {}\n")
    with pytest.raises(ValueError, match="no stages"):
        stage_plan(tmp_path / "empty.yaml", [])


def test_format_scores_is_a_method_table_with_unavailable_reasons():
    text = format_scores(
        {
            "ours": {"l1": 0.03812, "ssim": 0.85, "fid": {"status": "unavailable", "reason": "no inception"}},
            "baselines": {
                "copy_input": {"l1": 0.12, "ssim": 0.37},
                "vae_ceiling": {"l1": 0.02, "ghost_fraction": 0.01},
            },
            "ours_better_than": {"copy_input": {"l1": True, "ssim": True}},
        }
    )
    lines = text.splitlines()
    cols = ["l1", "ssim", "psnr", "color", "ghost", "missing", "pattern", "flicker", "temporal"]
    assert lines[0].split() == ["method", *cols]
    assert lines[1].split() == ["ours", "0.0381", "0.8500", *["n/a"] * 7]
    assert lines[2].split()[:4] == ["copy_input", "(baseline)", "0.1200", "0.3700"]
    assert lines[3].split() == [
        "vae_ceiling",
        "(upper",
        "bound)",
        "0.0200",
        "n/a",
        "n/a",
        "n/a",
        "0.0100",
        *["n/a"] * 4,
    ]
    assert "ours beats on L1 and SSIM: copy_input" in text
    assert "fid: unavailable (no inception)" in text
    assert format_scores(None) == "(no metrics/evaluation.json)"
    assert "photo use" not in text  # no base-model baselines: nothing to compare


def test_format_scores_reports_how_much_the_base_model_reads_the_photo():
    base = {"base_model": {"l1": 0.06, "ssim": 0.78}, "image_swapped": {"l1": 0.08, "ssim": 0.75}}
    text = format_scores({"ours": {"l1": 0.04}, "baselines": base})
    assert "photo use, base model: own/swapped-photo L1 0.750 (0.0600 / 0.0800), SSIM gap +0.0300" in text
    unavailable = {"status": "unavailable", "reason": "no base model"}
    assert "photo use" not in format_scores({"ours": {}, "baselines": {**base, "image_swapped": unavailable}})


def test_closing_catalog_item_is_on_for_the_demo_and_opt_in_for_the_paper_preset():
    """``make paper`` would end with one more subject finetune (~30 GPU-minutes): the paper preset leaves it off,
    the demo keeps it, and ``--catalog-demo`` / ``--no-catalog-demo`` override either."""
    demo, paper = load_params(REPO / "params.yaml"), load_params(REPO / "presets/paper.yaml")
    assert catalog_demo_enabled(demo, None) and not catalog_demo_enabled(paper, None)
    assert catalog_demo_enabled(paper, True) and not catalog_demo_enabled(demo, False)
    parse = build_parser().parse_args
    assert [parse(a).catalog_demo for a in ([], ["--catalog-demo"], ["--no-catalog-demo"])] == [None, True, False]


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips(tmp_path, prefect_harness):
    from flows.pipeline import pipeline

    repo = make_dvc_repo(tmp_path / "ws", DVC_YAML, PARAMS)
    out = pipeline(root=str(repo), catalog_demo=False)
    stages = [(r["stage"], r["skipped"]) for r in out["stages"]]
    assert stages == [
        ("download", False),
        ("finetune_subject@a", False),
        ("finetune_subject@b", False),
        ("score", False),
    ]
    parent_id = (repo / "parent_a.txt").read_text()
    assert parent_id and parent_id == (repo / "parent_b.txt").read_text()
    parent = mlflow.get_run(parent_id)
    assert parent.data.tags["prefect.flow_run_id"] and parent.data.metrics["stages_run"] == 4
    assert "mlflow ui --backend-store-uri sqlite:///" in out["summary"] and "renders/a/video.mp4" in out["summary"]

    # The paper preset's choice (eval.catalog_demo: false): no closing catalog item, though its photo is there
    (repo / "params.yaml").write_text(PARAMS.replace("subjects: [a, b]\n", "subjects: [a, b]\n  catalog_demo: false\n"))
    photo = repo / "data/frames/test/b/00000.jpg"
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (48, 64), (120, 90, 60)).save(photo)
    again = pipeline(root=str(repo))
    assert all(r["skipped"] for r in again["stages"]), again["stages"]
    assert (repo / "parent_a.txt").read_text() == parent_id  # nothing re-ran
    assert again["catalog"] is None and "Catalog item" not in again["summary"]


@pytest.mark.slow
def test_pipeline_fills_empty_eval_subjects_before_the_foreach_stages(tmp_path, prefect_harness):
    import pandas as pd

    from dreampose.config import load_params
    from flows.pipeline import pipeline

    params = "# paper-like: no hand-written list\neval:\n  subjects: []\n  num_subjects: 2\n"
    params += "tracking:\n  experiment: fill\n"
    repo = make_dvc_repo(tmp_path / "ws", DVC_YAML, params)
    (repo / "data/manifests").mkdir(parents=True)  # what the manifest stage leaves: three usable test videos
    pd.DataFrame({"subject_id": ["c", "b", "a", "a"]}).to_parquet(repo / "data/manifests/test.parquet")
    out = pipeline(root=str(repo), catalog_demo=False, until="finetune_subject")
    assert [r["stage"] for r in out["stages"]] == ["download", "finetune_subject@a", "finetune_subject@b"]
    assert load_params(repo / "params.yaml").eval.subjects == ("a", "b")
    assert (repo / "params.yaml").read_text().startswith("# paper-like: no hand-written list\n")
    assert (repo / "parent_a.txt").is_file() and (repo / "parent_b.txt").is_file()


def test_flows_give_the_ephemeral_server_time_to_start_on_a_busy_machine():
    """Prefect's default 20 s wait for its ephemeral server killed ``make demo`` before its first stage while the
    test suite ran beside it; the flows package raises it, and a user's own value wins."""
    code = (
        "import flows\n"
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s\n"
        "print(s.value())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert int(out.stdout.strip().splitlines()[-1]) >= 300
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "45"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "45"
