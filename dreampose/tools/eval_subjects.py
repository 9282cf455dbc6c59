"""Evaluation subjects without a hand-written list: pick the protocol's subjects from the test manifest and
write them into the params file's ``eval.subjects``.

DVC expands the ``finetune_subject`` / ``render`` ``foreach`` stages from ``params.yaml`` when it parses
``dvc.yaml``, so the list has to be in the file before those stages run; the manifest stage does not depend on
it (``subject.parquet`` covers every usable test video), so writing it re-runs nothing upstream. The edit is
textual (comments and layout of the rest of the file stay as they are) and checked: the new file must parse
to the old one with only ``eval.subjects`` changed, and validate, before it replaces the old one.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from dreampose.config import PARAMS_FILE, ConfigError, dump_yaml, load_params, parse_params, parse_yaml
from dreampose.data.manifest import select_eval_subjects
from dreampose.fsutil import atomic_write
from dreampose.layout import Workspace

TEST_MANIFEST = Workspace(Path(".")).test_manifest
MAX_FLOW_LINE = 120
_TOP_KEY = re.compile(r"^[^\s#]")


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar that reads back as the same string under YAML 1.2 (DVC, ``parse_yaml``) and 1.1
    (PyYAML) (quoted when it would not, e.g. ``123``, ``no``)."""
    plain_ok = value.strip() == value and not value.startswith(("[", "{"))
    try:
        plain_ok = plain_ok and yaml.safe_load(value) == value and parse_yaml(value, "<scalar>") == value
    except (yaml.YAMLError, ConfigError):
        plain_ok = False
    return value if plain_ok else json.dumps(value)


def _subjects_lines(indent: str, subjects: Sequence[str], comment: str = "") -> list[str]:
    flow = f"{indent}subjects: [{', '.join(_scalar(s) for s in subjects)}]{comment}\n"
    if len(flow) <= MAX_FLOW_LINE:
        return [flow]
    return [f"{indent}subjects:{comment}\n"] + [f"{indent}  - {_scalar(s)}\n" for s in subjects]


def set_eval_subjects_text(text: str, subjects: Sequence[str]) -> str:
    """``text`` (a params YAML file) with ``eval.subjects`` set to ``subjects``; everything else kept verbatim."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, ln in enumerate(lines) if re.match(r"^eval\s*:", ln)), None)
    if start is None:
        return "".join(lines) + "eval:\n" + "".join(_subjects_lines("  ", subjects))
    end = next((j for j in range(start + 1, len(lines)) if _TOP_KEY.match(lines[j])), len(lines))
    head = lines[start]
    if re.sub(r"#.*", "", head.split(":", 1)[1]).strip():  # a flow mapping on the key's line: rewrite as a block
        raw = parse_yaml(head, "eval") or {}
        block = dict(raw.get("eval") or {}, subjects=list(subjects))
        body = dump_yaml(block, "eval", flow_leaves=True)
        new = ["eval:\n"] + [f"  {ln}\n" for ln in body.splitlines()]
        return "".join(lines[:start] + new + lines[end:])
    children = [j for j in range(start + 1, end) if lines[j].strip() and not lines[j].lstrip().startswith("#")]
    indent = re.match(r"^(\s*)", lines[children[0]]).group(1) if children else "  "
    key = next((j for j in children if re.match(rf"^{indent}subjects\s*:", lines[j])), None)
    if key is None:
        return "".join(lines[: start + 1] + _subjects_lines(indent, subjects) + lines[start + 1 :])
    # The value runs on over lines indented deeper than the key, or block items ("- x") at the key's indent.
    stop = key + 1
    while stop < end:
        ln = lines[stop]
        deeper = ln.strip() and len(ln) - len(ln.lstrip()) > len(indent)
        if not (deeper or re.match(rf"^{indent}-(\s|$)", ln) or not ln.strip()):
            break
        stop += 1
    while stop > key + 1 and not lines[stop - 1].strip():  # blank lines after the value stay
        stop -= 1
    comment = ""
    if stop == key + 1:
        m = re.match(r"^[^#]*?(\s+#.*)$", lines[key].rstrip("\n"))
        comment = m.group(1) if m else ""
    return "".join(lines[:key] + _subjects_lines(indent, subjects, comment) + lines[stop:])


def write_eval_subjects(params_path: str | Path, subjects: Sequence[str]) -> None:
    """Set ``eval.subjects`` in ``params_path`` in place, after checking the edited file says exactly that."""
    path = Path(params_path)
    load_params(path)  # a broken file is reported as such, not as a failed edit
    text = path.read_text()
    subjects = [str(s) for s in subjects]
    new_text = set_eval_subjects_text(text, subjects)
    expected = copy.deepcopy(parse_yaml(text, path) or {})
    if not isinstance(expected.get("eval"), dict):
        expected["eval"] = {}
    expected["eval"]["subjects"] = subjects
    try:
        got = parse_yaml(new_text, path)
    except ConfigError as err:
        got = err
    if got != expected:
        raise ConfigError(
            f"{path}: could not set eval.subjects without changing anything else; list them by hand: {subjects}"
        )
    parse_params(got, path)
    atomic_write(path, lambda tmp: tmp.write_text(new_text))


def protocol_subjects(root: str | Path, params_file: str | Path = PARAMS_FILE) -> list[str]:
    """The subjects ``eval.num_subjects`` asks for, from the workspace's test manifest."""
    root = Path(root)
    params = load_params(root / params_file)
    manifest = root / TEST_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest}: no test manifest to pick evaluation subjects from (run the manifest stage)"
        )
    return select_eval_subjects(pd.read_parquet(manifest, columns=["subject_id"]), params.eval.num_subjects)


def fill_eval_subjects(root: str | Path, params_file: str | Path = PARAMS_FILE) -> list[str]:
    """Write the protocol's subjects into an empty ``eval.subjects``; returns the list in force afterwards."""
    root = Path(root)
    params = load_params(root / params_file)
    if params.eval.subjects:
        return list(params.eval.subjects)
    subjects = protocol_subjects(root, params_file)
    write_eval_subjects(root / params_file, subjects)
    return subjects
