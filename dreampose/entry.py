"""The command line of one DVC stage, and the error contract of every dreampose command.

``bin/python -m dreampose.stages.<stage> [--params FILE] [--root DIR] [--subject ID] [-v]`` (dvc.yaml's ``cmd``)
reaches ``stage_main``: it loads the params file, calls the stage module's ``run`` and prints the summary it
returns as JSON. ``dreampose <stage>`` (``dreampose.cli``) does the same through ``run_stage``.

Failures print one line ``dreampose: error: <reason>`` and exit non-zero (2 for bad configuration or input, 1 for
anything else); ``-v`` shows the traceback.

An observer (docs/architecture.md, "Code deps"): it parses arguments, reads the params file the stage is given and
prints; nothing here can change a stage's outputs, so it is no stage's DVC dep although every stage's ``main``
imports it. It imports no stage module.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dreampose.config import PARAMS_FILE, ConfigError, load_params


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--params``, ``--root`` and ``-v``: the options every command takes."""
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("--root", default=".", help="workspace root holding data/, models/ (default: .)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")


def add_subject_option(parser: argparse.ArgumentParser) -> None:
    """``--subject``, for a ``foreach`` stage (one run per ``eval.subjects`` entry)."""
    parser.add_argument("--subject", required=True, help="evaluation subject id (params.yaml: eval.subjects)")


def takes_subject(run: Callable[..., Any]) -> bool:
    """Whether a stage's ``run`` is per subject (a ``foreach`` stage in dvc.yaml)."""
    return "subject" in inspect.signature(run).parameters


def dump_summary(summary: dict[str, Any]) -> str:
    """A stage's summary as sorted JSON (paths and other objects as strings)."""
    return json.dumps(summary, indent=2, sort_keys=True, default=str)


def run_stage(run: Callable[..., Any], params_file: str | Path, root: str | Path, subject: str | None = None) -> int:
    """Load ``root/params_file``, call ``run(params, root[, subject])``, print the summary it returns."""
    params = load_params(Path(root) / params_file)
    kwargs = {"subject": subject} if subject is not None else {}
    summary = run(params, Path(root), **kwargs)
    if summary is not None:
        print(dump_summary(summary))
    return 0


def execute(action: Callable[[], int | None], verbose: bool = False) -> int:
    """Run ``action`` under the contract: its exit code, or one error line and 2 (bad input) / 1 (anything else);
    ``verbose`` logs at debug level and lets the traceback through."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return int(action() or 0)
    except (ConfigError, UserError, FileNotFoundError, ValueError) as err:
        if verbose:
            raise
        print(f"dreampose: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreampose: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the contract is one line + non-zero exit
        if verbose:
            raise
        print(f"dreampose: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def stage_main(name: str, run: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """The command line of stage ``name`` (``dreampose.stages.<name>``, whose ``run`` is given)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m dreampose.stages.{name}",
        description=f"The {name!r} stage of dvc.yaml: reads the params file, writes the stage's outputs under --root.",
    )
    add_common_options(parser)
    if takes_subject(run):
        add_subject_option(parser)
    args = parser.parse_args(argv)
    return execute(lambda: run_stage(run, args.params, args.root, getattr(args, "subject", None)), args.verbose)
