"""benchmarks/gpu_check.sh: one clear line without CUDA; the dry run exercises the python parts at tiny size."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from benchmarks import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_gpu_check_without_cuda_fails_with_one_line(repo, tmp_path):
    out = tmp_path / "r.jsonl"
    res = subprocess.run([str(repo / "benchmarks/gpu_check.sh"), "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 1 and not out.exists()
    assert res.stderr.strip().splitlines() == [gpu.no_cuda_line()]
    assert gpu.main(["--require-cuda"]) == 1


def test_gpu_check_dry_run_writes_json_lines(tmp_path):
    out = tmp_path / "r.jsonl"
    assert gpu.main(["--dry-run", "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in recs] == ["render_gpu_paper_vs_ours", "train_step_gpu_peak_memory"]
    render, train = recs
    assert render["config"]["dry_run"] and render["device"].startswith("cpu")
    assert render["baseline"]["scheduler"] == "pndm" and render["ours"]["scheduler"] == "ddim"
    assert render["ratio"] > 0 and len(render["ratios"]) == gpu.DRY.pairs
    assert [train["baseline"]["gradient_checkpointing"], train["ours"]["gradient_checkpointing"]] == [False, True]
    assert train["ours"]["step_s"] > 0
