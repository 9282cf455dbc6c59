"""Params files: YAML read as DVC reads it (YAML 1.2), written so every reader sees the same values, and a preset
with an override file merged on top; every reader of params files goes through here. The library never reads
them by itself: the CLI loads them and passes the relevant section down as an argument.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from dreampose.config.schema import PARAMS_FILE, ConfigError, Params, parse_params


def parse_yaml(text: str, source: str | Path) -> object:
    """``text`` parsed as YAML 1.2, the way DVC reads and rewrites params files (``dvc exp run -S``, ``dvc params
    diff``): ruamel's safe loader, so ``no``/``on``/``off`` stay strings and a duplicate key is an error.
    Errors name ``source``."""
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None


def read_yaml(path: str | Path) -> object:
    """The parsed params file at ``path`` (``parse_yaml``); every reader of params files goes through here."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    return parse_yaml(path.read_text(), path)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    return parse_params(read_yaml(path), path)


def _reads_back(text: str, value: str) -> bool:
    try:
        return parse_yaml(text, "<scalar>") == value
    except ConfigError:
        return False


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper quotes strings that YAML 1.1 would read as something else (``no``, ``1:20``); this
    one also quotes those that YAML 1.2 would (``0o17``, ``1e5``), so every reader sees the same value."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        node = super().represent_str(data)
        if not _reads_back(data, data):
            node.style = "'"
        return node


_Dumper.add_representer(str, _Dumper.represent_str)


def dump_yaml(data: object, source: str | Path, flow_leaves: bool = False) -> str:
    """``data`` as YAML text that reads back as ``data`` under YAML 1.2 (``parse_yaml``, DVC) and 1.1 (PyYAML);
    checked, so a value that cannot be written faithfully is an error naming ``source``. ``flow_leaves`` writes
    collections of scalars inline (``[a, b]``)."""
    style = None if flow_leaves else False
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=style, width=120)
    if parse_yaml(text, source) != data or yaml.safe_load(text) != data:
        raise ConfigError(f"{source}: would not read back as written")
    return text


def merge_overrides(base: object, override: object) -> object:
    """``override`` laid over ``base``: mappings merge key by key (recursively), anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge_overrides(base[key], value) if key in base else value
        return out
    return override


def layered_params(preset: str | Path, override: str | Path) -> tuple[dict, Params]:
    """A preset with an override file merged on top: the merged mapping and its validated ``Params``.

    Errors name the override file (it is the one that added or changed the offending key).
    """
    preset, override = Path(preset), Path(override)
    base, top = read_yaml(preset) or {}, read_yaml(override) or {}
    for path, raw in ((preset, base), (override, top)):
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    merged = merge_overrides(base, top)
    return merged, parse_params(merged, f"{preset} + {override}")
