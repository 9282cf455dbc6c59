"""The rehearsal's override changes only sizes, step counts, durations, paths (and the run's precision), so the
rehearsal runs every component the paper preset names; and the ``config use --override`` layering it relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dreampose import cli
from dreampose.config import ConfigError, layered_params, load_params, merge_overrides

HERE = Path(__file__).parent
OVERRIDE = HERE / "paper_small.yaml"

# What the override may change, by leaf key name: the categories the rehearsal is allowed to shrink.
SIZES = {"height", "width", "max_frames", "pairs_per_video", "test_num_targets", "test_min_gap", "subject_frames"}
SIZES |= {"batch_size", "grad_accum", "decoder_batch_size", "frame_batch_size", "fvd_clip_len"}
SIZES |= {"min_train_videos", "min_test_videos", "table1_size"}  # the protocol's floors, scaled to the stand-in lists
STEP_COUNTS = {"max_steps", "decoder_steps", "num_inference_steps", "checkpoint_every", "log_every", "sample_every"}
DURATIONS = {"timeout_s", "backoff_s"}
PATHS = {"train_list", "test_list", "sd_path", "clip_path", "weights", "detectron2_config"}
PATHS |= {"lpips_weights", "vgg_weights", "inception_weights", "i3d_weights", "aed_weights"}
# The machine, not the method: the paper trains in fp16 on a GPU; this CPU run computes in fp32, and loads its
# batches with as many worker processes as this machine has cores.
MACHINE = {"runtime.dtype", "runtime.device", "train_base.num_workers"}

# The paper's component kinds: the rehearsal must run exactly these.
KINDS = (
    "data.source",
    "densepose.backend",
    "model.source",
    "model.prediction_type",
    "render.scheduler",
    "render.image_guidance_scale",
    "render.pose_guidance_scale",
    "train_base.train_image_encoder",
    "train_base.gradient_checkpointing",
    "train_base.dropout",
    "train_subject.lora_rank",
    "train_subject.crop_scale",
    "manifest.pose_window",
    "score.baselines",
    "eval.subjects",
    "eval.num_subjects",
    "data.ubc.retries",
)


def leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def get(d: dict, dotted: str) -> object:
    for part in dotted.split("."):
        d = d[part]
    return d


def test_override_changes_only_sizes_step_counts_durations_and_paths(repo):
    override = leaves(yaml.safe_load(OVERRIDE.read_text()))
    allowed = SIZES | STEP_COUNTS | DURATIONS | PATHS
    outside = sorted(k for k in override if k not in MACHINE and k.rsplit(".", 1)[-1] not in allowed)
    assert not outside, f"{OVERRIDE.name} changes keys that are not sizes, step counts, durations or paths: {outside}"
    paper = leaves(yaml.safe_load((repo / "presets/paper.yaml").read_text()))
    new = sorted(k for k in override if k not in paper and k not in MACHINE)
    # New keys are only those the paper preset leaves at their defaults (e.g. frames.max_frames).
    assert all(k.rsplit(".", 1)[-1] in allowed for k in new), new


def test_override_keeps_every_paper_component_kind(repo):
    paper = yaml.safe_load((repo / "presets/paper.yaml").read_text())
    merged = merge_overrides(paper, yaml.safe_load(OVERRIDE.read_text()))
    for key in KINDS:
        assert get(merged, key) == get(paper, key), key
    assert get(merged, "data.source") == "ubc" and get(merged, "densepose.backend") == "torchscript"
    assert get(merged, "model.source") == "pretrained" and get(merged, "eval.subjects") == []


def test_merge_overrides_is_deep_and_leaves_its_inputs_alone():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    top = {"a": {"c": [3]}, "e": {"f": 2}}
    assert merge_overrides(base, top) == {"a": {"b": 1, "c": [3]}, "d": "x", "e": {"f": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert merge_overrides({"a": {"b": 1}}, {"a": 5}) == {"a": 5}


def test_config_use_with_override_writes_the_merged_validated_params(tmp_path, repo, capsys):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets/paper.yaml").write_text((repo / "presets/paper.yaml").read_text())
    small = tmp_path / "small.yaml"
    small.write_text("frames: {height: 64, width: 64}\ntrain_base: {max_steps: 2}\n")
    assert cli.main(["--root", str(tmp_path), "config", "use", "paper", "--override", str(small)]) == 0
    params = load_params(tmp_path / "params.yaml")
    paper = load_params(repo / "presets/paper.yaml")
    assert (params.frames.height, params.frames.width, params.train_base.max_steps) == (64, 64, 2)
    assert params.train_base.lr == paper.train_base.lr and params.model == paper.model
    assert params.frames.jpeg_quality == paper.frames.jpeg_quality  # untouched keys keep the preset's values
    assert "small.yaml" in (tmp_path / "params.yaml").read_text().splitlines()[0]

    bad = tmp_path / "bad.yaml"
    bad.write_text("frames: {heigth: 64}\n")
    before = (tmp_path / "params.yaml").read_text()
    assert cli.main(["--root", str(tmp_path), "config", "use", "paper", "--override", str(bad)]) == 2
    assert "bad.yaml: frames.heigth: unknown key" in capsys.readouterr().err
    assert (tmp_path / "params.yaml").read_text() == before  # nothing overwritten
    with pytest.raises(ConfigError, match="no such params file"):
        layered_params(tmp_path / "presets/paper.yaml", tmp_path / "absent.yaml")
