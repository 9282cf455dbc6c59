"""``dreampose <command>``: the user-facing commands, and each DVC stage by its dvc.yaml name.

``dreampose <stage>`` runs ``dreampose.stages.<stage>``'s ``run`` as dvc.yaml's ``bin/python -m
dreampose.stages.<stage>`` does (``dreampose.entry``); the other commands (``config``, ``inspect``, ``report``,
``review``, ...) are not DVC stages. Failures print one line ``dreampose: error: <reason>`` and exit non-zero
(2 for bad configuration or input, 1 for anything else). ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from types import ModuleType

from dreampose.config import PARAMS_FILE, dump_yaml, layered_params, load_params
from dreampose.entry import UserError, add_common_options, add_subject_option, dump_summary, execute, run_stage
from dreampose.layout import Workspace

# The DVC stages, named as in dvc.yaml, each the module dreampose.stages.<name>: name -> (help text, per subject).
STAGES: dict[str, tuple[str, bool]] = {
    "download": ("fetch the raw videos: synthetic (default, no network) or UBC Fashion lists", False),
    "frames": ("decode videos into resized, center-cropped JPEG frames + index.parquet", False),
    "densepose": ("per-frame DensePose IUV aligned with the frames (backend: densepose.backend)", False),
    "manifest": ("train / subject / test pair manifests (Parquet) from frame + DensePose indexes", False),
    "base_model": ("build the base DreamPose model: tiny (VAE pre-trained here) or local SD v1.x", False),
    "finetune_base": ("finetune UNet + adapter on the training pairs -> models/base", False),
    "finetune_subject": ("finetune one subject (UNet + adapter, then VAE decoder) -> models/subjects/<id>", True),
    "render": ("render one subject's test pose windows: frames, mp4, side-by-side, poster", True),
    "score": ("score renders vs ground truth (Table-1 metrics) and baselines; metrics/evaluation.json", False),
}

PRESETS_DIR = Path("presets")


def _config_use(args: argparse.Namespace) -> int:
    src = Path(args.root) / PRESETS_DIR / f"{args.preset}.yaml"
    if not src.is_file():
        choices = sorted(p.stem for p in (Path(args.root) / PRESETS_DIR).glob("*.yaml"))
        raise UserError(f"no preset {args.preset!r}; choose one of {choices}")
    dst = Path(args.root) / PARAMS_FILE
    if args.override is None:
        load_params(src)  # validate before overwriting anything
        shutil.copyfile(src, dst)
        print(f"{dst} <- {src}")
        return 0
    merged, _ = layered_params(src, args.override)  # validated before anything is overwritten
    header = f"# {src} with {args.override} merged on top (dreampose config use --override); edit those instead\n"
    dst.write_text(header + dump_yaml(merged, dst))
    print(f"{dst} <- {src} + {args.override}")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    load_params(Path(args.root) / args.params)
    print(f"{args.params}: ok")
    return 0


def _preflight(args: argparse.Namespace) -> int:
    from dreampose.tools.preflight import check_inputs, errors, format_findings

    findings = check_inputs(load_params(Path(args.root) / args.params), Path(args.root))
    print(format_findings(findings))
    bad = errors(findings)
    if bad:
        print(f"{len(bad)} missing input(s): see README 'Running the paper configuration'", file=sys.stderr)
    return 1 if bad else 0


def _eval_subjects(args: argparse.Namespace) -> int:
    import json

    from dreampose.tools.eval_subjects import protocol_subjects, write_eval_subjects

    subjects = protocol_subjects(args.root, args.params)
    if args.write:
        write_eval_subjects(Path(args.root) / args.params, subjects)
        print(f"{Path(args.root) / args.params}: eval.subjects <- {len(subjects)} test videos", file=sys.stderr)
    print(json.dumps(subjects))
    return 0


def _ablations(args: argparse.Namespace) -> int:
    import os

    from dreampose.tools import ablations

    root = Path(args.root).resolve()
    dvc = str(Path(sys.executable).parent / "dvc")
    # The experiments run in temporary copies of the workspace: this environment's tools first on PATH, and
    # MLflow runs recorded in this workspace's store rather than the copy's.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
    if args.run is not None:
        names = args.run or [v.name for v in ablations.VARIANTS]
        for name in names:
            ablations.variant(name)  # an unknown name fails before any experiment runs
        ablations.run_variants(names, root, dvc=dvc, env=env)
    print(ablations.format_table(ablations.read_results(root, dvc=dvc, env=env)))
    return 0


def _review(args: argparse.Namespace) -> int:
    import json

    from dreampose import registry, tracking

    params = load_params(Path(args.root) / args.params)
    tracking.configure(params.tracking.experiment, Path(args.root))
    if args.review_command == "list":
        found = registry.list_versions(args.model or params.tracking.registered_model, args.status)
        if args.json:
            print(json.dumps([registry.describe(v) for v in found], indent=2))
        else:
            print(registry.review_table(found))
        return 0
    if args.review_command == "show":
        return _review_show(args, args.model or params.tracking.registered_model)
    if args.review_command == "approve":
        info = registry.approve(args.model, args.version, by=args.by)
        print(f"approved {info.name} version {info.version} ({info.tags.get(registry.ITEM_TAG)}) by {args.by}")
        uri = registry.approved_uri(info.name, info.tags[registry.ITEM_TAG])
        print(f'load it: mlflow.pyfunc.load_model("{uri}")')
    else:
        info = registry.reject(args.model, args.version, args.reason, by=args.by)
        print(f"rejected {info.name} version {info.version} by {args.by}: {info.tags.get(registry.REASON_TAG)}")
    return 0


def _review_show(args: argparse.Namespace, model: str) -> int:
    """Download an item's review page from the MLflow store and open it in the default browser."""
    import tempfile
    import webbrowser

    import mlflow

    from dreampose import registry

    if args.version is not None:
        info = registry.get_version(model, args.version)
        if info.tags.get(registry.ITEM_TAG) != args.item:
            raise UserError(f"{model} version {info.version} is not catalog item {args.item!r}")
    else:
        info = registry.latest_for_item(model, args.item)
        if info is None:
            raise UserError(f"no version of {model} is registered for catalog item {args.item!r}")
    page_uri = info.links.get("review_page")
    if not page_uri:
        raise UserError(f"{model} version {info.version} has no review page (registered before pages existed)")
    dst = Path(tempfile.gettempdir()) / "dreampose-review" / f"{model}-v{info.version}"
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=page_uri, dst_path=str(dst)))
    print(local)
    if not args.no_open:
        webbrowser.open(local.resolve().as_uri())
    return 0


def _catalog_item(args: argparse.Namespace) -> int:
    import json

    from dreampose.catalog import run_catalog_item

    params = load_params(Path(args.root) / args.params)
    result = run_catalog_item(
        params,
        Path(args.root),
        args.photo if len(args.photo) > 1 else args.photo[0],
        args.poses,
        item_id=args.item_id,
        ground_truth=args.ground_truth,
        allow_private_urls=args.allow_private_urls,
        finetune=not args.no_finetune,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def _remote_add(args: argparse.Namespace) -> int:
    from dreampose.tools.remote import add_remote

    url = add_remote(Path(args.root), args.url, name=args.name, default=not args.not_default)
    print(f"DVC remote {args.name!r} -> {url}{'' if args.not_default else ' (default)'}; now `dvc push`")
    return 0


def stage_module(name: str) -> ModuleType:
    """The module of DVC stage ``name``: ``dreampose.stages.<name>``."""
    if name not in STAGES:
        raise KeyError(f"no DVC stage {name!r}; the stages are {list(STAGES)}")
    return import_module(f"dreampose.stages.{name}")


def _run_stage(args: argparse.Namespace) -> int:
    return run_stage(stage_module(args.command).run, args.params, args.root, getattr(args, "subject", None))


def _inspect(args: argparse.Namespace) -> int:
    """Manifest counts and schemas, and ``data/inspect/preview.png`` (a frame with its IUV overlaid); the preview
    lives outside the stage outputs, so looking never makes them stale."""
    from dreampose.data.manifest import inspect_manifests

    ws = Workspace(Path(args.root))
    print(dump_summary(inspect_manifests(ws.manifests, Path(args.root), ws.inspect_preview)))
    return 0


def _report(args: argparse.Namespace) -> int:
    """Our scores beside the paper's Table 1 (published figures, UBC Fashion)."""
    from dreampose.tools.report import report

    print(report(Workspace(Path(args.root)).evaluation))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dreampose",
        description="DreamPose pipeline: one command per DVC stage (named as in dvc.yaml), reading params.yaml.",
    )
    add_common_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, (help_text, per_subject) in STAGES.items():
        sp = sub.add_parser(name, help=help_text, description=f"{help_text} (the {name!r} stage of dvc.yaml)")
        if per_subject:
            add_subject_option(sp)
        sp.set_defaults(func=_run_stage)

    ins = sub.add_parser(
        "inspect", help="print manifest counts and schemas; write data/inspect/preview.png (frame + IUV)"
    )
    ins.set_defaults(func=_inspect)
    rep = sub.add_parser("report", help="print our scores next to the paper's published Table 1")
    rep.set_defaults(func=_report)

    cfg = sub.add_parser("config", help="validate params.yaml or switch presets (demo | paper)")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="<action>")
    use = cfg_sub.add_parser("use", help="copy presets/<preset>.yaml over params.yaml (validated first)")
    use.add_argument("preset", help="demo or paper")
    use.add_argument(
        "--override", default=None, help="a YAML file merged over the preset (mappings key by key), validated first"
    )
    use.set_defaults(func=_config_use)
    chk = cfg_sub.add_parser("check", help="validate the params file")
    chk.set_defaults(func=_config_check)

    pre = sub.add_parser(
        "preflight", help="check that every input the configured stages read is in place (no downloads, no weights)"
    )
    pre.set_defaults(func=_preflight)
    ev = sub.add_parser(
        "eval-subjects",
        help="the protocol's evaluation subjects from data/manifests/test.parquet (eval.num_subjects of them)",
        description="Print the usable test videos in id order, at most eval.num_subjects; with --write, set them "
        "as eval.subjects in the params file (its comments and layout kept). Run after the manifest stage.",
    )
    ev.add_argument("--write", action="store_true", help="write the list into the params file's eval.subjects")
    ev.set_defaults(func=_eval_subjects)

    abl = sub.add_parser(
        "ablations",
        help="the paper's Table 2 ablations as DVC experiments: print ours beside the paper (--run runs them first)",
        description="Each variant is a set of params run as `dvc exp run --temp -n abl-<name> -S ...`; DVC re-runs "
        "only the stages a variant changes. Without --run, print the table of the experiments already run.",
    )
    abl.add_argument(
        "--run", nargs="*", metavar="VARIANT", default=None,
        help="run these variants (all when none are named) before printing: "
             "clip no_vae_ft one_pose smooth full photos_3",
    )  # fmt: skip
    abl.set_defaults(func=_ablations)

    from dreampose.registry import STATUSES, default_reviewer

    model_help = "registered model (default: params.yaml tracking.registered_model)"
    rev = sub.add_parser("review", help="review catalog items' registered models: list | show | approve | reject")
    rev_sub = rev.add_subparsers(dest="review_command", required=True, metavar="<action>")
    rl = rev_sub.add_parser("list", help="versions by review status: a table with each item's review page")
    rl.add_argument("--model", help=model_help)
    rl.add_argument("--status", choices=STATUSES, default="pending", help="which versions (default: pending)")
    rl.add_argument("--json", action="store_true", help="JSON for machines instead of the table")
    rs = rev_sub.add_parser("show", help="open a catalog item's review page (newest version, or --version)")
    rs.add_argument("item", help="catalog item id")
    rs.add_argument("--version", default=None, help="model version (default: the item's newest)")
    rs.add_argument("--model", help=model_help)
    rs.add_argument("--no-open", action="store_true", help="only download the page and print its path")
    actions = (
        ("approve", "approve one item's version: alias approved-<item> + tag review=approved (others stay)"),
        ("reject", "tag review=rejected with a reason; drops the item's approved alias if it pointed here"),
    )
    for action, text in actions:
        ra = rev_sub.add_parser(action, help=text)
        ra.add_argument("model", help="registered model name")
        ra.add_argument("version", help="model version number")
        ra.add_argument("--by", default=default_reviewer(), help="who decides (default: the OS user)")
        if action == "reject":
            ra.add_argument("--reason", required=True, help="why (stored as tag review_reason)")
    rev.set_defaults(func=_review)

    rem = sub.add_parser("remote", help="DVC remote for the pipeline's outputs: add (then `dvc push`)")
    rem_sub = rem.add_subparsers(dest="remote_command", required=True, metavar="<action>")
    ra = rem_sub.add_parser(
        "add",
        help="set the default DVC remote: a path, ssh://, s3://, gs://, ... (then `dvc push`; clones `dvc pull`)",
    )
    ra.add_argument("url", help="a local/mounted path or a URL such as s3://bucket/dreampose")
    ra.add_argument("--name", default="store", help="remote name (default: store)")
    ra.add_argument("--not-default", action="store_true", help="add it without making it the default remote")
    ra.set_defaults(func=_remote_add)

    cat = sub.add_parser("catalog-item", help="one photo + poses -> subject model, video, review=pending version")
    cat.add_argument(
        "--photo",
        required=True,
        action="append",
        help="product photo: a path or an http(s) URL; repeat it for several photos of the same garment (the first "
        "conditions the render, all are subject-finetune targets)",
    )
    cat.add_argument("--poses", required=True, help="a test video id, a directory of IUV .npz/.png, or a video")
    cat.add_argument("--item-id", default=None, help="catalog item id (default: from the photo's file name)")
    cat.add_argument("--ground-truth", default=None, help="optional: ground-truth video id or frames for full metrics")
    cat.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let a photo URL reach loopback/private/link-local hosts (an intranet; refused by default)",
    )
    cat.add_argument(
        "--no-finetune",
        action="store_true",
        help="skip the subject finetune: render with the base model (tagged catalog.subject_finetune=false)",
    )
    cat.set_defaults(func=_catalog_item)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return execute(lambda: args.func(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
