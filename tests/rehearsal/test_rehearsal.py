"""The paper preset, rehearsed end to end: every DVC stage through the Prefect pipeline flow, with the paper's
component kinds (UBC download, TorchScript DensePose, Stable Diffusion v1.x + CLIP from disk, every metric
network), only small. The world it runs against is built by ``tests/rehearsal/world.py``; the preset is
``presets/paper.yaml`` with ``tests/rehearsal/paper_small.yaml`` on top (see test_override.py).

Run it alone:  .venv/bin/python -m pytest tests/rehearsal -q -rA
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dreampose import cli
from dreampose.config import load_params
from tests.rehearsal import world

HERE = Path(__file__).parent
OVERRIDE = HERE / "paper_small.yaml"

# UBC-style ids; differing resolutions (portrait, like UBC's 720x940) and frame rates.
TRAIN_OK = [
    world.VideoSpec("91iZ9x8NI0S", 94, 72, 30, 16, (40, 90, 200)),
    world.VideoSpec("A1wPMyUwCpS", 120, 96, 25, 16, (200, 60, 60)),
    world.VideoSpec("81FyMPk-WIS", 100, 80, 24, 16, (60, 160, 80)),
    world.VideoSpec("91bxAN6BjAS", 128, 96, 30, 16, (150, 80, 170)),
]
TEST_OK = [
    world.VideoSpec("A1xQSb-Vk5S", 94, 72, 30, 16, (30, 120, 180)),
    world.VideoSpec("91ZPhzMSP5S", 112, 88, 25, 16, (190, 120, 40)),
]
# A third of the listed videos are unusable, as for the paper (339 of 500 train videos could be fetched).
TRAIN_BAD = {"91-3003CN5S.mp4": "dead", "A1BnnuiOEUS.mp4": "stall"}
TEST_BAD = {"91OgfmDMFDS.mp4": "truncated"}


def _copy_code(repo: Path, ws: Path) -> None:
    """What a fresh clone holds that the stages need: dvc.yaml, its launcher, the presets and the code DVC hashes as
    deps."""
    ws.mkdir(parents=True)
    shutil.copy(repo / "dvc.yaml", ws / "dvc.yaml")
    shutil.copytree(repo / "bin", ws / "bin")
    shutil.copytree(repo / "presets", ws / "presets")
    shutil.copytree(repo / "dreampose", ws / "dreampose", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True)


def build_world(ws: Path, served: Path, server: world.VideoServer, params) -> dict[str, list[str]]:
    """Videos behind the server, the URL lists, the SD/CLIP folders, the DensePose export and the metric nets."""
    world.write_videos(TRAIN_OK + TEST_OK, served)
    bad = {**TRAIN_BAD, **TEST_BAD}
    for name, kind in bad.items():  # the stalled and truncated ones exist; the dead one does not
        if kind != "dead":
            world.write_video(world.person_frames(TEST_OK[0]), served / name, fps=30)
    lists = {
        "train": [server.url("ok", f"{s.name}.mp4") for s in TRAIN_OK]
        + [server.url(k, n) for n, k in TRAIN_BAD.items()],
        "test": [server.url("ok", f"{s.name}.mp4") for s in TEST_OK] + [server.url(k, n) for n, k in TEST_BAD.items()],
    }
    world.write_url_list(ws / params.data.ubc.train_list, lists["train"])
    world.write_url_list(ws / params.data.ubc.test_list, lists["test"])
    world.write_sd_v1(ws / params.model.pretrained.sd_path)
    world.write_clip_vision(ws / params.model.pretrained.clip_path)
    world.write_densepose(ws / params.densepose.weights)
    world.write_metric_backbones(ws, params.score)
    return lists


def stage_params(experiment: str) -> dict[str, dict[str, str]]:
    """Each stage's MLflow params (the config section it ran with), by stage name."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    out: dict[str, dict[str, str]] = {}
    for r in runs:
        stage = r.data.tags.get("dreampose.stage")
        if stage and stage != "pipeline":
            out.setdefault(stage, {}).update(r.data.params)
    return out


@pytest.mark.slow
def test_paper_preset_rehearsal(tmp_path, repo, prefect_harness, rehearsal_report, monkeypatch):
    import flows.pipeline
    from flows.pipeline import pipeline

    # The download task's retries stay; their waits shrink to the rehearsal's scale, like its other durations.
    fast = flows.pipeline.network_stage_task.with_options(retry_delay_seconds=0.5, retry_jitter_factor=None)
    monkeypatch.setattr(flows.pipeline, "network_stage_task", fast)
    t0 = time.perf_counter()
    ws = tmp_path / "ws"
    _copy_code(repo, ws)
    assert cli.main(["--root", str(ws), "config", "use", "paper", "--override", str(OVERRIDE)]) == 0
    params = load_params(ws / "params.yaml")
    paper = load_params(repo / "presets/paper.yaml")
    assert (params.data.source, params.densepose.backend, params.model.source) == ("ubc", "torchscript", "pretrained")
    assert params.eval.subjects == paper.eval.subjects == ()  # nobody hand-picks the subjects

    with world.VideoServer(tmp_path / "served", stall_s=4 * params.data.ubc.timeout_s) as server:
        lists = build_world(ws, tmp_path / "served", server, params)
        t_world = time.perf_counter() - t0
        out = pipeline(root=str(ws), catalog_demo=True)
    seconds = time.perf_counter() - t0

    # Every dvc.yaml stage ran (the foreach ones once per automatically chosen subject), none skipped.
    ran = [r["stage"] for r in out["stages"]]
    declared = list(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])
    assert [s.split("@")[0] for s in ran if s.split("@")[0] not in ("finetune_subject", "render")] == [
        s for s in declared if s not in ("finetune_subject", "render")
    ]
    subjects = [s.split("@")[1] for s in ran if s.startswith("render@")]
    assert subjects and sorted(subjects) == sorted(s.split("@")[1] for s in ran if s.startswith("finetune_subject@"))
    assert set(subjects) <= {s.name for s in TEST_OK}
    assert not any(r["skipped"] for r in out["stages"])

    # download: the dead, stalled and truncated links are reported and skipped; the rest fetched and probed.
    report = json.loads((ws / "data/raw/download_report.json").read_text())
    by_url = {e["url"]: e for e in report["videos"]}
    assert report["source"] == "ubc" and report["downloaded"] == len(TRAIN_OK) + len(TEST_OK)
    for name, kind in {**TRAIN_BAD, **TEST_BAD}.items():
        e = by_url[server.url(kind, name)]
        expected = {"dead": ("dead", "HTTP 404"), "stall": ("failed", "Timeout"), "truncated": ("failed", "truncated")}
        assert e["status"] == expected[kind][0] and expected[kind][1] in e["error"], e
    fetched = [e for e in report["videos"] if e["status"] == "ok"]
    assert len({(e["height"], e["width"], e["fps"]) for e in fetched}) >= 4  # differing resolutions and rates
    frames = pd.read_parquet(ws / "data/frames/index.parquet")
    assert set(frames["video"]) == {s.name for s in TRAIN_OK + TEST_OK}
    assert (frames["height"] == params.frames.height).all() and (frames["width"] == params.frames.width).all()

    # densepose ran the TorchScript export and found the person; base_model loaded the SD and CLIP folders.
    ran_with = stage_params(params.tracking.experiment)
    assert ran_with["densepose"]["backend"] == "torchscript"
    assert pd.read_parquet(ws / "data/densepose/index.parquet")["person_found"].mean() > 0.9
    assert ran_with["download"]["source"] == "ubc"
    build = json.loads((ws / "models/pretrained/build.json").read_text())
    assert build["source"] == "pretrained"
    sd_unet = json.loads((ws / params.model.pretrained.sd_path / "unet/config.json").read_text())
    ours_unet = json.loads((ws / "models/pretrained/unet/config.json").read_text())
    assert ours_unet["block_out_channels"] == sd_unet["block_out_channels"]
    assert ours_unet["down_block_types"] == sd_unet["down_block_types"]
    enc = json.loads((ws / "models/pretrained/image_encoder/config.json").read_text())
    clip = json.loads((ws / params.model.pretrained.clip_path / "config.json").read_text())
    assert (enc["hidden_size"], enc["patch_size"]) == (clip["hidden_size"], clip["patch_size"])

    # score: every metric is a number, and every network it came from is labelled as random weights.
    scores = json.loads((ws / "metrics/evaluation.json").read_text())
    from dreampose.evaluate import METRICS, metric_values

    assert json.loads((ws / "metrics/scores.json").read_text()) == metric_values(scores)  # DVC's: numbers only

    for m in METRICS:
        v = scores["ours"][m]
        assert isinstance(v, (int, float)) and not math.isnan(v), (m, v)
    assert scores["table1"]["size"] == [params.score.table1_size] * 2  # the paper's Table-1 resolution, scaled
    for m in METRICS:
        v = scores["table1"]["ours"][m]
        assert isinstance(v, (int, float)) and not math.isnan(v), ("table1", m, v)
    assert set(scores["backbone_notes"]) == {"lpips", "vgg", "inception", "i3d", "reid"}
    assert all("random weights" in n for n in scores["backbone_notes"].values())
    assert out["catalog"] is not None and Path(out["catalog"]["video"]).is_file()

    # No DVC output holds the checkout's absolute path: a clone elsewhere records the same hashes in dvc.lock.
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    outs = {o["path"] for st in lock["stages"].values() for o in st.get("outs", [])}
    files = [f for o in outs for f in ([ws / o] if (ws / o).is_file() else (ws / o).rglob("*")) if f.is_file()]
    assert len(files) > 20 and not [f for f in files if str(ws).encode() in f.read_bytes()]

    kinds = {
        "download": f"ubc: {report['counts']} of {report['total']} listed (lists: {len(lists['train'])} train, "
        f"{len(lists['test'])} test)",
        "densepose": f"backend {ran_with['densepose']['backend']}",
        "base_model": f"pretrained from {params.model.pretrained.sd_path} + {params.model.pretrained.clip_path}",
        "score": "metrics "
        + ", ".join(f"{m}={scores['ours'][m]:.4g}" for m in METRICS)
        + f"; notes: {sorted(scores['backbone_notes'])} random weights",
    }
    lines = [f"paper-preset rehearsal: {seconds:.0f} s (world {t_world:.0f} s), subjects {subjects}"]
    for r in out["stages"]:
        lines.append(f"  {r['stage']:<28} {r['seconds']:7.1f} s  {kinds.get(r['stage'].split('@')[0], '')}")
    rehearsal_report.extend(lines)
