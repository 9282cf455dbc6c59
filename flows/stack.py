"""The deployment stack, local or production profile: what starts in which order, the worker supervisor, and
the stop that settles what is running.

    python -m flows.serve                  # local: Prefect server, 2 process workers, MLflow UI on sqlite
    python -m flows.serve --profile prod   # + PostgreSQL, MLflow server (basic-auth, proxied artifacts)

The pieces it starts are in their own modules: ``flows.prefect_server`` (server, work pool, automations),
``flows.mlflow_server``, ``flows.postgres``, ``flows.credentials`` (secrets) and ``flows.processes`` (child
process groups, waiting for a server to answer).

Production profile: PostgreSQL (started as the ``postgres`` user when run as root, data directory under
``.serve/postgres``, password authentication only), an ``mlflow server --app-name basic-auth`` on it that
proxies artifacts to ``.serve/artifacts``, and a Prefect server whose API needs a basic-auth string.
Every server binds ``127.0.0.1`` unless ``--host`` says otherwise. Secrets come from the environment
(``DREAMPOSE_<NAME>`` or ``DREAMPOSE_<NAME>_FILE``) or are generated once into ``.serve/secrets/`` (mode
0600); they never go into ``params.yaml``, command lines, logs or MLflow tags.

Each profile keeps its state apart: ``.serve/<profile>/`` (``--state``) holds the Prefect server's home and
sqlite database (``prefect/prefect.db``), logs, and for ``prod`` PostgreSQL, artifacts and secrets.

Workers that die: the supervisor restarts a dead worker (up to ``max_restarts`` in ``restart_window_s``, then
keeps serving without it); runs whose heartbeats stop are marked Crashed by a Prefect automation, and the
supervisor retries every settled Crashed ``catalog-item`` run once per crash (``flows.recovery``). A flow-run
process whose worker died ends itself (``flows.catalog_item``).

Stopping (SIGTERM/SIGINT/SIGHUP): stop and settle. Workers and their flow-run processes get SIGTERM (an item
then settles itself: MLflow run FAILED, no directory) and SIGKILL after ``stop_grace_s``; with the servers
still up, whatever is left Running is marked Crashed (``STOP_MESSAGE``), its MLflow run KILLED and its
directory removed; then the servers stop. The next start settles anything a harder stop left and retries the
crashed items (a stop does not count as a failed attempt).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from flows import REPO, recovery
from flows.credentials import secret
from flows.mlflow_server import (
    MLFLOW_ADMIN,
    mlflow_jobs_enabled,
    mlflow_web_workers,
    start_mlflow_server,
    start_mlflow_ui,
    write_auth_config,
)
from flows.postgres import (
    PG_DB_USER,
    ensure_databases,
    ensure_postgres_installed,
    init_postgres,
    pg_user,
    start_postgres,
    wait_postgres,
)
from flows.prefect_server import (
    HEARTBEAT_S,
    PREFECT_USER,
    WORK_POOL,
    api_url,
    ensure_automations,
    ensure_process_pool,
    server_env,
    start_server,
)
from flows.processes import (
    become_subreaper,
    group_alive,
    reap_orphans,
    signals_held,
    start_worker,
    stop,
    stop_all,
    wait_answering,
)

MAX_ATTEMPTS = 3  # failed attempts (crashes) of one catalog item before the supervisor fails it


def default_state(profile: str) -> Path:
    """Where a profile keeps its state by default: ``.serve/<profile>/`` (each profile its own Prefect database)."""
    return REPO / ".serve" / profile


@dataclass
class Stack:
    """Everything ``make serve`` starts, by name; ``stop()`` settles what is running and ends it all."""

    state: Path
    profile: str = "local"
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pg_port: int = 5432
    pool: str = WORK_POOL
    workers: int = 2
    worker_limit: int = 1
    worker_cwd: Path = REPO
    extra_env: dict[str, str] = field(default_factory=dict)
    max_restarts: int = 5
    restart_window_s: float = 300.0
    zombie_after_s: float = 3 * HEARTBEAT_S  # no heartbeat for this long: the run is marked Crashed
    max_attempts: int = MAX_ATTEMPTS
    retry_settle_s: float = 5.0  # a Crashed run waits this long (every report of its exit lands) before its retry
    stop_grace_s: float = 20.0  # SIGTERM → SIGKILL for workers and their flow runs (an item settles itself)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    dead: list[subprocess.Popen] = field(default_factory=list)
    restarts: dict[str, list[float]] = field(default_factory=dict)
    abandoned: set[str] = field(default_factory=set)
    retried: dict[str, int] = field(default_factory=dict)
    _env: dict[str, str] = field(default_factory=dict)
    _last_retry_check: float = 0.0
    _serving: bool = False  # start() finished: the retry check runs
    _dead_since: dict[int, float] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def prefect_home(self) -> Path:
        """This profile's Prefect home; its server's database is ``prefect.db`` in it."""
        return self.state / "prefect"

    @property
    def prefect_db_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}"

    @property
    def api(self) -> str:
        return api_url(self.host, self.prefect_port)

    @property
    def mlflow_url(self) -> str:
        """The MLflow server of either profile (the local profile's UI serves the same store over REST)."""
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def mlflow_uri(self) -> str:
        if self.profile == "prod":
            return self.mlflow_url
        env = {**os.environ, **self.extra_env}
        return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns.db'}"

    @property
    def mlflow_auth(self) -> tuple[str, str] | None:
        return (MLFLOW_ADMIN, self.secret("MLFLOW_ADMIN_PASSWORD")) if self.profile == "prod" else None

    def secret(self, name: str) -> str:
        return secret(name, self.state / "secrets")

    @property
    def prefect_auth(self) -> tuple[str, str] | None:
        return (PREFECT_USER, self.secret("PREFECT_PASSWORD")) if self.profile == "prod" else None

    def client_env(self) -> dict[str, str]:
        """What a worker, the CLI or a test needs to reach this stack (includes credentials)."""
        env = server_env(self.api, base={**os.environ, **self.extra_env})
        env["PREFECT_HOME"] = str(self.prefect_home)  # never another profile's (or the demo's) Prefect state
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_S)
        env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        if self.profile == "prod":
            env["MLFLOW_TRACKING_USERNAME"] = MLFLOW_ADMIN
            env["MLFLOW_TRACKING_PASSWORD"] = self.secret("MLFLOW_ADMIN_PASSWORD")
            env["PREFECT_API_AUTH_STRING"] = ":".join(self.prefect_auth)
        return env

    def server_env(self) -> dict[str, str]:
        """The Prefect server's environment: this profile's own database."""
        env = self.client_env()
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.prefect_db_url
        if self.profile == "prod":
            env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
        return env

    def start(self) -> None:
        """Prefect server (started first: it boots while PostgreSQL and MLflow do), tracking, then the settling
        of anything an earlier run of the stack left unsettled, then workers."""
        if self.profile not in ("local", "prod"):
            raise ValueError(f"profile {self.profile!r}: expected 'local' or 'prod'")
        become_subreaper()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        self.procs["prefect"] = start_server(self.host, self.prefect_port, self.server_env(),
                                                self.logs / "prefect.log")  # fmt: skip
        if self.profile == "prod":
            self._start_tracking_prod()
        else:
            self.procs["mlflow"] = start_mlflow_ui(
                self.host, self.mlflow_port, self.mlflow_uri, self.logs / "mlflow.log",
                workers=mlflow_web_workers(), jobs=mlflow_jobs_enabled(),
            )  # fmt: skip
            wait_answering(f"{self.mlflow_url}/health", self.procs["mlflow"], timeout_s=300, name="MLflow UI")
        wait_answering(f"{self.api}/health", self.procs["prefect"], timeout_s=180, name="Prefect server",
                       codes={200})  # fmt: skip
        ensure_process_pool(self.api, self.pool, self.prefect_auth)
        ensure_automations(self.api, self.prefect_auth, self.zombie_after_s)
        try:  # what an earlier run of the stack left: settled before any worker can pick it up
            self.settle(report=lambda m: print(m, flush=True))
            self.retry(settle_s=0.0)
        except requests.RequestException as err:  # serve anyway: the supervisor's retry check goes on
            print(f"settling what an earlier run left failed: {err}", flush=True)
        for i in range(self.workers):
            self.start_worker(f"worker-{i + 1}")
        self._serving = True

    def settle(self, only: list[str] | None = None, report: Callable[[str], None] = print) -> dict[str, list]:
        """With no worker running: mark the pool's Running/Pending runs Crashed (``recovery.STOP_MESSAGE``; with
        ``only``, also those of these ids that crashed on their own during the stop), their MLflow runs KILLED
        and their run directories removed."""
        runs = recovery.settle_orphans(self.api, self.pool, self.prefect_auth, only)
        killed = recovery.settle_tracking(self.mlflow_url, self.api, self.worker_cwd, self.mlflow_auth,
                                          self.prefect_auth)  # fmt: skip
        if runs or killed:
            report(f"settled {len(runs)} flow run(s) left in flight and {len(killed)} MLflow run(s) left RUNNING")
        return {"flow_runs": [r["id"] for r in runs], "mlflow_runs": killed}

    def retry(self, settle_s: float | None = None) -> dict[str, str]:
        """Retry (or fail, after ``max_attempts``) the settled Crashed catalog items; see ``flows.recovery``."""
        settle_s = self.retry_settle_s if settle_s is None else settle_s
        done = recovery.retry_crashed(self.api, self.pool, self.max_attempts, settle_s, self.prefect_auth)
        failed = [i for i, what in done.items() if what == "failed"]
        if failed:  # no retry will settle these: do it here
            recovery.settle_tracking(self.mlflow_url, self.api, self.worker_cwd, self.mlflow_auth,
                                     self.prefect_auth, only=failed)  # fmt: skip
        for i, what in done.items():
            if what == "retried":
                self.retried[i] = self.retried.get(i, 0) + 1
        return done

    def _start_tracking_prod(self) -> None:
        bin_dir = ensure_postgres_installed()
        self.logs.mkdir(parents=True, exist_ok=True)
        if pg_user():
            os.chmod(self.state, 0o711)  # the postgres user must reach its data directory; secrets/ stays 0700
        su_pw = self.secret("PG_SUPERUSER_PASSWORD")
        init_postgres(bin_dir, self.state / "postgres", su_pw)
        self.procs["postgres"] = start_postgres(bin_dir, self.state / "postgres", self.host, self.pg_port,
                                                self.logs / "postgres.log")  # fmt: skip
        wait_postgres(self.host, self.pg_port, su_pw, self.procs["postgres"])
        pg_pw = self.secret("PG_PASSWORD")
        ensure_databases(self.host, self.pg_port, su_pw, PG_DB_USER, pg_pw)
        (self.state / "artifacts").mkdir(parents=True, exist_ok=True)
        config = write_auth_config(self.state / "mlflow-auth.ini", self.host, self.pg_port)
        secrets_env = {
            "PGPASSWORD": pg_pw,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.secret("MLFLOW_ADMIN_PASSWORD"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("MLFLOW_SECRET_KEY"),
        }
        self.procs["mlflow"] = start_mlflow_server(self.host, self.mlflow_port, self.pg_port, self.state / "artifacts",
                                                   config, secrets_env, self.logs / "mlflow.log")  # fmt: skip
        wait_answering(f"{self.mlflow_uri}/health", self.procs["mlflow"], name="MLflow server")

    @property
    def threads_per_run(self) -> int:
        """OpenMP/MKL threads for each flow run: the cores shared by every run the workers may run at once.

        Oversubscribed torch processes slow each other far more than their share (threads of a parallel
        region wait for a descheduled sibling), so a worker's runs get ``cores // (workers * worker_limit)``.
        ``OMP_NUM_THREADS`` set in the environment wins.
        """
        return max(1, (os.cpu_count() or 1) // max(1, self.workers * self.worker_limit))

    def start_worker(self, name: str) -> subprocess.Popen:
        env = self.client_env()
        threads = env.get("OMP_NUM_THREADS") or str(self.threads_per_run)
        env.setdefault("OMP_NUM_THREADS", threads)
        env.setdefault("MKL_NUM_THREADS", threads)
        self.procs[name] = start_worker(self.pool, name, env, self.logs / f"{name}.log", self.worker_cwd,
                                        self.worker_limit)  # fmt: skip
        return self.procs[name]

    def supervise_once(self, now: float | None = None, report: Callable[[str], None] = print) -> list[str]:
        """Restart dead workers (or give up on one that keeps dying), retry settled crashed items (every 2 s);
        returns the names of dead core services."""
        now = time.monotonic() if now is None else now
        dead_core = []
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            if not name.startswith("worker-"):
                dead_core.append(name)
                continue
            self.dead.append(self.procs.pop(name))  # its group may still hold a flow run that is ending itself
            recent = [t for t in self.restarts.get(name, []) if now - t < self.restart_window_s]
            if len(recent) >= self.max_restarts:
                self.abandoned.add(name)
                log = self.logs / f"{name}.log"
                window = f"{self.restart_window_s:.0f} s"
                report(
                    f"{name} exited ({proc.returncode}) {len(recent) + 1} times in {window}; serving without it ({log})"
                )
                continue
            self.restarts[name] = [*recent, now]
            report(f"{name} exited with code {proc.returncode}; restarting it")
            self.start_worker(name)
        reap_orphans({p.pid for p in [*self.procs.values(), *self.dead]})
        for proc in self.dead:
            proc.poll()
            since = self._dead_since.setdefault(proc.pid, time.monotonic())
            if time.monotonic() - since > self.stop_grace_s:  # a flow run that does not end itself: end it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self.dead = [p for p in self.dead if group_alive(p.pid)]
        # While a dead worker's flow run is still ending itself, its own late Crashed report could land on a retry
        # already scheduled: hold every retry until those processes are gone.
        orphans_ending = bool(self.dead)
        if self._serving and not dead_core and not orphans_ending and time.monotonic() - self._last_retry_check >= 2:
            self._last_retry_check = time.monotonic()
            try:
                for run_id, what in self.retry().items():
                    report(f"flow run {run_id}: crashed, {what}")
            except requests.RequestException as err:  # a busy server: next round
                report(f"retry check failed: {err}")
        return dead_core

    def stop(self, grace_s: float | None = None) -> None:
        """Stop and settle: workers and their flow runs first (SIGTERM, SIGKILL after ``stop_grace_s``), then, with
        the servers still up, settle what they left (``settle``), then the servers, last started first."""
        grace = self.stop_grace_s if grace_s is None else grace_s
        self._serving = False
        with signals_held():
            self._stop(grace)

    def _stop(self, grace: float) -> None:
        workers = [n for n in self.procs if n.startswith("worker-")]
        in_flight: list[str] = []
        if workers and self._alive("prefect"):
            with contextlib.suppress(requests.RequestException):
                in_flight = [r["id"] for r in recovery.flow_runs(self.api, self.pool, recovery.LIVE,
                                                                 self.prefect_auth)]  # fmt: skip
        stop_all([self.procs.pop(n) for n in workers] + self.dead, grace)
        self.dead = []
        if self._alive("prefect") and self._alive("mlflow"):
            try:
                self.settle(only=in_flight, report=lambda m: print(m, flush=True))
            except requests.RequestException as err:  # the next start settles it
                print(f"settling at stop failed ({err}); the next start settles it", flush=True)
        for name in reversed(list(self.procs)):
            sig = 2 if name == "postgres" else 15  # postgres: SIGINT is the fast shutdown
            stop(self.procs[name], min(grace, 10.0), sig=sig)
        reap_orphans({p.pid for p in self.procs.values()})

    def _alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
