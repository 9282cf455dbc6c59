"""The deployment stack on 127.0.0.1: Prefect server, a ``process`` work pool + 2 workers, MLflow.

    python -m flows.serve                  # what `make serve` runs; SIGTERM or Ctrl-C stops everything
    python -m flows.serve --profile prod   # `make serve PROFILE=prod`: PostgreSQL + authenticated servers

What it starts and how it supervises the workers is ``flows.stack``; child processes are ``flows.processes``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from flows.prefect_server import WORK_POOL
from flows.stack import Stack, default_state


class Stop(Exception):
    """SIGTERM/SIGINT/SIGHUP, or the parent (``make``) went away: stop the stack."""


def _raise_stop(signum, _frame) -> None:
    raise Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("local", "prod"), default=os.environ.get("PROFILE") or "local")
    p.add_argument("--host", default=os.environ.get("DREAMPOSE_BIND") or "127.0.0.1", help="bind address")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pool", default=WORK_POOL)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--zombie-after", type=float, default=None, help="seconds without a heartbeat before a run is "
                   "marked Crashed (default: 3 heartbeat intervals, 90 s)")  # fmt: skip
    p.add_argument("--state", type=Path, default=None, help="state directory (default .serve/<profile>)")
    args = p.parse_args(argv)
    state = args.state or default_state(args.profile)
    stack = Stack(state=state.resolve(), profile=args.profile, host=args.host, prefect_port=args.prefect_port,
                  mlflow_port=args.mlflow_port, pg_port=args.pg_port, pool=args.pool, workers=args.workers)  # fmt: skip
    if args.zombie_after:
        stack.zombie_after_s = args.zombie_after
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    parent = os.getppid()
    rc = 0
    try:
        with stack:
            stack.start()
            print(f"Prefect server  {stack.api[: -len('/api')]}  (profile {args.profile})")
            print(f"Work pool       {args.pool}: {args.workers} process workers, logs in {stack.logs}")
            print(f"MLflow          http://{args.host}:{args.mlflow_port}  (tracking URI {stack.mlflow_uri})")
            if args.profile == "prod":
                print(f"Credentials     {stack.state / 'secrets'} (or DREAMPOSE_<NAME> / DREAMPOSE_<NAME>_FILE)")
            print(f"In another shell:  export PREFECT_API_URL={stack.api}")
            print("                   .venv/bin/prefect deploy --all")
            print(f"State           {stack.state} (Prefect database {stack.prefect_home / 'prefect.db'})")
            print("SIGTERM or Ctrl-C stops everything (what is running is settled and retried at the next start).",
                  flush=True)  # fmt: skip
            while True:
                if os.getppid() != parent:
                    raise Stop("parent exited")
                dead = stack.supervise_once(report=lambda m: print(m, file=sys.stderr, flush=True))
                if dead:
                    print(f"stopping: {dead} exited; see {stack.logs}", file=sys.stderr)
                    rc = 1
                    break
                time.sleep(1)
    except (Stop, KeyboardInterrupt) as why:
        print(f"stopping ({why or 'interrupt'})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
