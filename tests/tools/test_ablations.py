import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from dreampose.config import load_params
from dreampose.tools import ablations
from dreampose.tools.ablations import VARIANTS, collect, exp_run_command, format_table, hydra_literal, set_args

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")


@pytest.mark.parametrize("preset", ["params.yaml", "presets/paper.yaml"])
@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: v.name)
def test_every_variant_is_valid_params_as_dvc_writes_them(tmp_path, preset, v):
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / preset, path)
    before = load_params(path)
    overrides = [a for a in set_args(v.params) if a != "-S"]
    apply_overrides(path, overrides)  # DVC's own writer, exactly what `dvc exp run -S` does
    after = load_params(path)
    for key, value in v.params.items():
        node = after
        for part in key.split("."):
            node = getattr(node, part)
        assert node == (tuple(value) if isinstance(value, list) else value), key
    changed = {k for k in v.params if _get(before, k) != _get(after, k)}
    if v.name != "full":
        assert changed, f"{v.name}: sets nothing the preset does not already have"


def _get(params, dotted):
    node = params
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def test_hydra_literals_round_trip_through_dvcs_override_parser(tmp_path):
    values = {
        "i": 12,
        "f": 0.0005,
        "s": "no",
        "t": "it's a\\b",
        "e": "ends\\",
        "n": None,
        "b": False,
        "l": [16, 32],
        "d": {"pose": 0.05},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({k: "x" for k in values}))
    apply_overrides(path, [f"{k}={hydra_literal(v)}" for k, v in values.items()])
    from ruamel.yaml import YAML

    assert YAML(typ="safe", pure=True).load(path.read_text()) == values
    with pytest.raises(ValueError, match="non-finite"):
        hydra_literal(float("nan"))
    with pytest.raises(TypeError):
        hydra_literal(object())


def test_commands_and_table_from_a_dvc_exp_show_document():
    cmd = exp_run_command(ablations.variant("smooth"), "dvc")
    assert cmd[:6] == ["dvc", "exp", "run", "--temp", "-n", "abl-smooth"]
    assert "manifest.pose_window=1" in cmd
    with pytest.raises(ValueError, match="no ablation"):
        ablations.variant("nope")

    def rev(name, l1):
        scores = {"ours": {"l1": l1, "ssim": 0.7}}
        return {"rev": "x", "name": name, "data": {"metrics": {"metrics/scores.json": {"data": scores}}}}

    doc = [
        {"rev": "workspace", "data": rev(None, 9.0)["data"], "experiments": None},
        {
            "rev": "abc",
            "name": "main",
            "data": rev(None, 0.04)["data"],
            "experiments": [
                {"revs": [rev("abl-clip", 0.05)], "name": "abl-clip"},
                {"revs": [rev("other", 0.01)], "name": "other"},
            ],
        },
        {"rev": "older", "data": rev(None, 0.5)["data"], "experiments": [{"revs": [rev("abl-clip", 0.9)]}]},
    ]
    got = collect(doc)
    assert got["clip"]["l1"] == 0.05 and got["full"]["l1"] == 0.04  # newest commit's experiment; HEAD for full
    assert got["clip"]["lpips"] is None and "other" not in got
    table = format_table(got)
    assert "0.0500" in table and "unavailable" in table and "not run" in table and "0.882" in table


def test_variants_run_as_dvc_experiments_and_come_back_in_the_table(tmp_path):
    """A real git + DVC repo whose one stage writes metrics from the params the variants set."""
    ws = tmp_path / "ws"
    ws.mkdir()
    params = {"model": {"image_tokens": "clip_vae"}, "train_subject": {"decoder_steps": 5},
              "manifest": {"pose_window": 5, "subject_frames": 1}, "render": {"temporal_smoothing": 0}}  # fmt: skip
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    script = (
        "import json, os, yaml; p = yaml.safe_load(open('params.yaml')); os.makedirs('metrics', exist_ok=True); "
        "l1 = 0.01 * p['manifest']['pose_window'] + 0.1 * (p['model']['image_tokens'] == 'clip'); "
        "json.dump({'ours': {'l1': l1, 'ssim': 0.5}}, open('metrics/scores.json', 'w'))"
    )
    stage = {
        "cmd": f'{sys.executable} -c "{script}"',
        "params": ["model", "manifest", "render", "train_subject"],
        "metrics": [{"metrics/scores.json": {"cache": False}}],
    }
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"score": stage}}))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "repro", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "base"]):  # fmt: skip
        subprocess.run(cmd, cwd=ws, env=env, check=True, capture_output=True)
    ran = ablations.run_variants(["clip", "one_pose", "full"], ws, dvc=DVC, env=env)
    assert ran == ["clip", "one_pose"]
    ablations.run_variants(["clip"], ws, dvc=DVC, env=env)  # a re-run replaces the experiment of that name
    # a commit after the experiments (e.g. the README gets the table): they hang off the older HEAD, still read
    (ws / "notes.txt").write_text("results\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=ws, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "notes"], cwd=ws, env=env, check=True, capture_output=True)
    got = ablations.read_results(ws, dvc=DVC, env=env)
    assert got["full"]["l1"] == pytest.approx(0.05)
    assert got["clip"]["l1"] == pytest.approx(0.15)
    assert got["one_pose"]["l1"] == pytest.approx(0.01)
    assert yaml.safe_load((ws / "params.yaml").read_text()) == params  # --temp: the workspace is untouched
    names = subprocess.run([DVC, "exp", "ls", "-A", "--name-only"], cwd=ws, env=env, capture_output=True, text=True)
    assert sorted(names.stdout.split()) == ["abl-clip", "abl-one_pose"]
