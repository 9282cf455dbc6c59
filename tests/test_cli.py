import shutil
import subprocess
import sys

import pytest

from dreampose import cli


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.STAGES:
        assert name in out


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
