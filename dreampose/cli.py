"""``dreampose <stage>``: parse, load ``params.yaml``, call one function in ``dreampose.stages``.

Failures print one line ``dreampose: error: <reason>`` and exit non-zero (2 for bad
configuration or input, 1 for anything else). ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dreampose.config import PARAMS_FILE, ConfigError, load_params

# name -> (function in dreampose.stages, help text, takes --subject)
STAGES: dict[str, tuple[str, str, bool]] = {
    "download": ("download", "fetch the raw videos: synthetic (default, no network) or UBC Fashion lists", False),
    "frames": ("frames", "decode videos into resized, center-cropped JPEG frames + index.parquet", False),
    "densepose": ("densepose", "per-frame DensePose IUV aligned with the frames (backend: densepose.backend)", False),
    "manifest": ("manifest", "train / subject / test pair manifests (Parquet) from frame + DensePose indexes", False),
    "base-model": ("base_model", "build the base DreamPose model: tiny (VAE pre-trained here) or local SD v1.x", False),
    "inspect": ("inspect", "print manifest counts and schemas; write data/inspect/preview.png (frame + IUV)", False),
    "render": ("render", "render one subject's test pose windows: frames, mp4, side-by-side, poster", True),
    "score": ("score", "score renders vs ground truth (Table-1 metrics) and baselines; metrics/scores.json", False),
    "report": ("report", "print our scores next to the paper's published Table 1", False),
    "finetune-base": ("finetune_base", "finetune UNet + adapter on the training pairs -> models/base", False),
    "finetune-subject": (
        "finetune_subject",
        "finetune one subject (UNet + adapter, then VAE decoder) -> models/subjects/<id>",
        True,
    ),
}

PRESETS_DIR = Path("presets")


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def _config_use(args: argparse.Namespace) -> int:
    src = Path(args.root) / PRESETS_DIR / f"{args.preset}.yaml"
    if not src.is_file():
        choices = sorted(p.stem for p in (Path(args.root) / PRESETS_DIR).glob("*.yaml"))
        raise UserError(f"no preset {args.preset!r}; choose one of {choices}")
    load_params(src)  # validate before overwriting anything
    dst = Path(args.root) / PARAMS_FILE
    shutil.copyfile(src, dst)
    print(f"{dst} <- {src}")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    load_params(Path(args.root) / args.params)
    print(f"{args.params}: ok")
    return 0


def _eval_subjects(args: argparse.Namespace) -> int:
    import json

    from dreampose.eval_subjects import protocol_subjects, write_eval_subjects

    subjects = protocol_subjects(args.root, args.params)
    if args.write:
        write_eval_subjects(Path(args.root) / args.params, subjects)
        print(f"{Path(args.root) / args.params}: eval.subjects <- {len(subjects)} test videos", file=sys.stderr)
    print(json.dumps(subjects))
    return 0


def _review(args: argparse.Namespace) -> int:
    import json

    from dreampose import registry, tracking

    params = load_params(Path(args.root) / args.params)
    tracking.configure(params.tracking.experiment, Path(args.root))
    if args.review_command == "list":
        found = registry.list_pending(args.model or params.tracking.registered_model)
        print(json.dumps([registry.describe(v) for v in found], indent=2))
        return 0
    if args.review_command == "approve":
        info = registry.approve(args.model, args.version)
    else:
        info = registry.reject(args.model, args.version, args.reason)
    print(json.dumps(registry.describe(info), indent=2))
    return 0


def _catalog_item(args: argparse.Namespace) -> int:
    import json

    from dreampose.catalog import run_catalog_item

    params = load_params(Path(args.root) / args.params)
    result = run_catalog_item(
        params, Path(args.root), args.photo, args.poses, item_id=args.item_id, ground_truth=args.ground_truth
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def _run_stage(args: argparse.Namespace) -> int:
    from dreampose import stages

    fn_name, _, takes_subject = STAGES[args.command]
    params = load_params(Path(args.root) / args.params)
    fn: Callable = getattr(stages, fn_name)
    kwargs = {"subject": args.subject} if takes_subject else {}
    summary = fn(params, Path(args.root), **kwargs)
    if summary is not None:
        print(stages.dump_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dreampose",
        description="DreamPose pipeline: one command per DVC stage, reading params.yaml.",
    )
    p.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    p.add_argument("--root", default=".", help="workspace root holding data/, models/ (default: .)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, (_, help_text, takes_subject) in STAGES.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if takes_subject:
            sp.add_argument("--subject", required=True, help="evaluation subject id (params.yaml: eval.subjects)")
        sp.set_defaults(func=_run_stage)

    cfg = sub.add_parser("config", help="validate params.yaml or switch presets (demo | paper)")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="<action>")
    use = cfg_sub.add_parser("use", help="copy presets/<preset>.yaml over params.yaml (validated first)")
    use.add_argument("preset", help="demo or paper")
    use.set_defaults(func=_config_use)
    chk = cfg_sub.add_parser("check", help="validate the params file")
    chk.set_defaults(func=_config_check)

    ev = sub.add_parser(
        "eval-subjects",
        help="the protocol's evaluation subjects from data/manifests/test.parquet (eval.num_subjects of them)",
        description="Print the usable test videos in id order, at most eval.num_subjects; with --write, set them "
        "as eval.subjects in the params file (its comments and layout kept). Run after the manifest stage.",
    )
    ev.add_argument("--write", action="store_true", help="write the list into the params file's eval.subjects")
    ev.set_defaults(func=_eval_subjects)

    rev = sub.add_parser("review", help="review catalog items' registered models: list | approve | reject")
    rev_sub = rev.add_subparsers(dest="review_command", required=True, metavar="<action>")
    rl = rev_sub.add_parser("list", help="versions waiting for review, with video, poster and metrics links")
    rl.add_argument("--model", help="registered model (default: params.yaml tracking.registered_model)")
    for action, text in (("approve", "set alias 'approved' + tag review=approved"), ("reject", "tag review=rejected")):
        ra = rev_sub.add_parser(action, help=text)
        ra.add_argument("model", help="registered model name")
        ra.add_argument("version", help="model version number")
        if action == "reject":
            ra.add_argument("--reason", required=True, help="why (stored as tag review_reason)")
    rev.set_defaults(func=_review)

    cat = sub.add_parser("catalog-item", help="one photo + poses -> subject model, video, review=pending version")
    cat.add_argument("--photo", required=True, help="product photo: a path or an http(s) URL")
    cat.add_argument("--poses", required=True, help="a test video id, a directory of IUV .npz/.png, or a video")
    cat.add_argument("--item-id", default=None, help="catalog item id (default: from the photo's file name)")
    cat.add_argument("--ground-truth", default=None, help="optional: ground-truth video id or frames for full metrics")
    cat.set_defaults(func=_catalog_item)

    cb = sub.add_parser(
        "catalog-batch",
        help="a CSV or a folder of photos -> one catalog-item flow run each on the running stack (make serve)",
    )
    cb.add_argument("batch_args", nargs=argparse.REMAINDER, help="see python -m flows.batch --help")
    cb.set_defaults(func=_catalog_batch)
    return p


def _catalog_batch(args: argparse.Namespace) -> int:
    from flows.batch import main as batch_main

    return batch_main(["--root", args.root, *args.batch_args])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, FileNotFoundError, ValueError) as err:
        if args.verbose:
            raise
        print(f"dreampose: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreampose: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the contract is one line + non-zero exit
        if args.verbose:
            raise
        print(f"dreampose: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
