"""Evaluation subjects from the test manifest, written into params.yaml with its comments kept."""

import json

import pandas as pd
import pytest
import yaml

from dreampose import cli
from dreampose.config import ConfigError, load_params
from dreampose.tools.eval_subjects import fill_eval_subjects, set_eval_subjects_text, write_eval_subjects

PARAMS = """\
# demo params: comments must survive
seed: 0
eval:
  subjects: []  # filled after the manifest stage
  num_subjects: 2
tracking:
  experiment: x  # trailing comment
"""


def _manifest(root, ids):
    (root / "data/manifests").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"subject_id": ids, "video": ids}).to_parquet(root / "data/manifests/test.parquet")


@pytest.mark.parametrize(
    "text",
    [
        PARAMS,
        "eval:\n  num_subjects: 2\n  subjects:\n    - old1\n    - old2\n\ntracking: {experiment: x}\n",
        "eval:\n  subjects:\n  - old1\n  - old2\n  num_subjects: 2\n",
        "seed: 1\neval: {subjects: [], num_subjects: 2}  # flow style\n",
        "seed: 1\n",
        "seed: 1\neval:\n  num_subjects: 2\n",
    ],
)
def test_setting_subjects_round_trips_and_keeps_the_rest(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    subjects = ["b-01", "123", "true", "c.mp4"]  # ids YAML would read as a number/bool stay strings
    write_eval_subjects(path, subjects)
    assert load_params(path).eval.subjects == tuple(subjects)
    new, old = yaml.safe_load(path.read_text()), yaml.safe_load(text)
    new.pop("eval"), old.pop("eval", None)
    assert new == old
    if "# " in text.split("eval")[0] or "trailing comment" in text:
        for line in text.splitlines():
            if "#" in line and "subjects" not in line:
                assert line in path.read_text()
    many = [f"ubc_video_{i:03d}" for i in range(100)]  # too long for one line: a block list
    write_eval_subjects(path, many)
    assert load_params(path).eval.subjects == tuple(many) and max(map(len, path.read_text().splitlines())) <= 120


def test_comments_and_layout_are_kept_verbatim():
    out = set_eval_subjects_text(PARAMS, ["a", "b"])
    assert out == PARAMS.replace("subjects: []  # filled", "subjects: [a, b]  # filled")


def test_a_broken_edit_is_refused_before_writing(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("eval:\n  subjects: [a,\n    b]\n  num_subjects: 2\n")
    write_eval_subjects(path, ["x"])  # a flow list over two lines is replaced as a whole
    assert load_params(path).eval.subjects == ("x",)
    path.write_text("eval: &e\n  subjects: []\nalias: *e\n")  # anchors: editing one place changes two
    before = path.read_text()
    with pytest.raises(ConfigError):
        write_eval_subjects(path, ["x"])
    assert path.read_text() == before


def test_cli_writes_the_protocol_subjects(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(PARAMS)
    assert cli.main(["--root", str(tmp_path), "eval-subjects"]) == 2  # no manifest yet: one-line error
    assert "no test manifest" in capsys.readouterr().err
    _manifest(tmp_path, ["t2", "t0", "t0", "t1"])
    assert cli.main(["--root", str(tmp_path), "eval-subjects"]) == 0
    assert json.loads(capsys.readouterr().out) == ["t0", "t1"]
    assert load_params(tmp_path / "params.yaml").eval.subjects == ()  # printing writes nothing
    assert cli.main(["--root", str(tmp_path), "eval-subjects", "--write"]) == 0
    params = load_params(tmp_path / "params.yaml")
    assert params.eval.subjects == ("t0", "t1") and params.eval.num_subjects == 2
    assert "# demo params: comments must survive" in (tmp_path / "params.yaml").read_text()
    # an explicit list is kept by fill (the flow's call); the selection is deterministic
    (tmp_path / "params.yaml").write_text(PARAMS.replace("subjects: []", "subjects: [t2]"))
    assert fill_eval_subjects(tmp_path) == ["t2"]


def test_score_without_subjects_says_what_to_do(tmp_path):
    from dreampose.stages import score

    (tmp_path / "params.yaml").write_text("eval: {subjects: []}\n")
    with pytest.raises(ConfigError, match=r"eval\.subjects is empty.*dreampose eval-subjects --write"):
        score.run(load_params(tmp_path / "params.yaml"), tmp_path)
