import json
import shutil
import subprocess
import sys

import pytest

from dreampose import cli, layout


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in [*cli.STAGES, "inspect", "report", "config"]:
        assert name in out
    assert "base_model" in out and "base-model" not in out  # the dvc.yaml names, one per stage


def test_unknown_key_is_one_line_and_exit_2(tmp_path, repo):
    (tmp_path / "params.yaml").write_text("frames: {bogus: 1}\n")
    res = subprocess.run(
        [sys.executable, "-m", "dreampose", "--root", str(tmp_path), "config", "check"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "frames.bogus" in lines[0] and lines[0].startswith("dreampose: error:")


def test_config_use_switches_preset_and_validates(tmp_path, repo):
    shutil.copytree(repo / "presets", tmp_path / "presets")
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    assert cli.main(["--root", str(tmp_path), "config", "use", "paper"]) == 0
    assert (tmp_path / "params.yaml").read_text() == (repo / "presets" / "paper.yaml").read_text()
    (tmp_path / "presets" / "broken.yaml").write_text("nope: 1\n")
    before = (tmp_path / "params.yaml").read_text()
    assert cli.main(["--root", str(tmp_path), "config", "use", "broken"]) == 2
    assert (tmp_path / "params.yaml").read_text() == before  # nothing overwritten
    assert cli.main(["--root", str(tmp_path), "config", "use", "nosuch"]) == 2


def test_report_reads_the_scores_file(tmp_path, capsys):
    assert cli.main(["--root", str(tmp_path), "report"]) == 2  # no scores yet: one line, exit 2
    assert "no scores yet" in capsys.readouterr().err
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
    assert cli.main(["--root", str(tmp_path), "report"]) == 0
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if line.startswith("ours"))
    assert "0.0432" in ours and "0.7654" in ours
    # VGG is absent (footnote 1, "not computed"); FID is unavailable with the record's own reason (footnote 2)
    assert "unavailable [1]" in ours and "unavailable [2]" in ours
    assert "[1] not computed" in out and "[2] no weights" in out
