"""benchmarks/gpu_check.sh end to end on the CPU with tiny stand-ins: the paper preset's settings in each line,
every line on disk as soon as its figure exists (a part that times out keeps the earlier lines), one clear line
without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu
from dreampose.config import load_params

PAPER = load_params(gpu.PAPER)


def _script(repo, out, *args, **env):
    return subprocess.run(
        [str(repo / "benchmarks/gpu_check.sh"), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, **env},
        timeout=600,
    )


def _lines(out) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_gpu_check_without_cuda_fails_with_one_line(repo, tmp_path):
    out = tmp_path / "r.jsonl"
    res = _script(repo, out)
    assert res.returncode == 1 and not out.exists()
    assert res.stderr.strip().splitlines() == [gpu.no_cuda_line()]


def test_dry_run_writes_the_render_line_before_a_later_part_times_out(repo, tmp_path):
    """The train part gets 1 s: the render line measured before it stays, and the lines the train part never
    wrote are recorded as timed out (the old script wrote everything at the very end, so it kept nothing)."""
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"name": "gpu_train_paper_preset", "earlier": "run"}) + "\n")  # an older line
    res = _script(repo, out, "--dry-run", GPU_CHECK_TRAIN_S="1")
    assert res.returncode == 1, res.stderr
    assert "train timed out after 1 s" in res.stderr
    old, render, *timed_out = _lines(out)
    assert old == {"name": "gpu_train_paper_preset", "earlier": "run"}  # appended to, never rewritten
    assert [r["name"] for r in timed_out] == ["gpu_train_paper_preset", "gpu_train_no_checkpointing"]
    assert all(r["ours"]["status"] == "timed out" for r in timed_out)

    assert render["name"] == "gpu_render_paper_preset" and render["config"]["dry_run"]
    cfg, base, ours = render["config"], render["baseline"], render["ours"]
    preset = PAPER.render
    assert (cfg["scheduler"], cfg["image_guidance_scale"], cfg["pose_guidance_scale"]) == ("pndm", 8.0, 3.0)
    assert (preset.scheduler, preset.image_guidance_scale, preset.pose_guidance_scale) == ("pndm", 8.0, 3.0)
    assert cfg["steps"] == gpu.DRY.steps and gpu.FULL.steps is None  # the GPU run uses the preset's 100 steps
    assert ours["branches"] == 3 and ours["frames_per_call"] == preset.frame_batch_size
    assert base["frames_per_call"] == 1 and base["dtype"] == "fp32"
    assert ours["unet_evals_per_frame"] == base["unet_evals_per_frame"] == 3 * gpu.DRY.steps
    assert ours["dtype"] == "float32"  # the preset's fp16 falls back to fp32 on the CPU, as runtime.dtype does
    assert base["seconds_per_frame"] > 0 and ours["seconds_per_frame"] > 0 and render["ratio"] > 0
    assert render["measured_at"] <= timed_out[0]["measured_at"]


def test_train_part_writes_the_preset_line_then_the_comparison(tmp_path):
    out = tmp_path / "r.jsonl"
    assert gpu.main(["--part", "train", "--dry-run", "--out", str(out)]) == 0
    preset, other = _lines(out)
    assert [preset["name"], other["name"]] == ["gpu_train_paper_preset", "gpu_train_no_checkpointing"]
    tb = PAPER.train_base
    assert (tb.batch_size, tb.mixed_precision, tb.gradient_checkpointing) == (4, "fp16", True)
    cfg = preset["config"]
    assert (cfg["mixed_precision"], cfg["gradient_checkpointing"]) == ("fp16", True)
    assert (cfg["batch_size"], cfg["grad_accum"]) == gpu.DRY.train and gpu.FULL.train is None  # GPU: 4 x 4
    assert preset["ours"]["gradient_checkpointing"] and not other["baseline"]["gradient_checkpointing"]
    assert other["ours"] == preset["ours"]  # the comparison line repeats the preset's figure beside the other
    assert (preset["ours"]["batch_size"], preset["ours"]["grad_accum"]) == gpu.DRY.train
    assert preset["ours"]["step_s"] > 0 and preset["ours"]["peak_mb"] is None  # no CUDA counters on a CPU
    assert preset["measured_at"] <= other["measured_at"]
