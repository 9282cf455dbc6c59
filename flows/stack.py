"""The deployment stack, local or production profile, and its supervisor.

    python -m flows.serve                  # local: Prefect server, 2 process workers, MLflow UI on sqlite
    python -m flows.serve --profile prod   # + PostgreSQL, MLflow server (basic-auth, proxied artifacts)

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
import ctypes
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from flows import REPO, recovery
from flows import serve as sv

PG_SUPERUSER = "postgres"
PG_DB_USER = "mlflow"
PG_DATABASES = ("mlflow", "mlflow_auth")
MLFLOW_ADMIN = "admin"
PREFECT_USER = "dreampose"
HEARTBEAT_S = 30  # Prefect's minimum flow-run heartbeat interval
MAX_ATTEMPTS = 3  # failed attempts (crashes) of one catalog item before the supervisor fails it
LEGACY_AUTOMATIONS = ("dreampose: retry crashed",)  # replaced by the supervisor's retry (flows.recovery)
SECRET_NAMES = (
    "PG_SUPERUSER_PASSWORD",
    "PG_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SECRET_KEY",
    "PREFECT_PASSWORD",
)


# ---------------------------------------------------------------- secrets


def secret(name: str, secrets_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """``DREAMPOSE_<name>``, else the file ``DREAMPOSE_<name>_FILE`` names, else ``secrets_dir/<name>`` (generated
    once, mode 0600)."""
    env = os.environ if env is None else env
    if env.get(f"DREAMPOSE_{name}"):
        return env[f"DREAMPOSE_{name}"]
    if env.get(f"DREAMPOSE_{name}_FILE"):
        value = Path(env[f"DREAMPOSE_{name}_FILE"]).read_text().strip()
        if not value:
            raise ValueError(f"DREAMPOSE_{name}_FILE={env[f'DREAMPOSE_{name}_FILE']} is empty")
        return value
    path = Path(secrets_dir) / name.lower()
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


# ---------------------------------------------------------------- PostgreSQL


def pg_bin_dir() -> Path | None:
    """Where ``initdb``/``pg_ctl``/``postgres`` live: on PATH, else Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "postgres").exists():
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def ensure_postgres_installed() -> Path:
    """The PostgreSQL server binaries' directory; installs Debian's ``postgresql`` when missing and root."""
    found = pg_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (as root), then retry")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = pg_bin_dir()
    if found is None:
        raise RuntimeError("apt-get install postgresql succeeded but no initdb/postgres was found")
    return found


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: run it as ``postgres`` then, else as ourselves."""
    return PG_SUPERUSER if os.geteuid() == 0 else None


def _give_to_pg(path: Path) -> None:
    if _pg_user():
        shutil.chown(path, PG_SUPERUSER, PG_SUPERUSER)


def init_postgres(bin_dir: Path, datadir: Path, su_password: str) -> bool:
    """``initdb`` a password-only (scram) cluster in ``datadir`` unless one is there; True when created."""
    if (datadir / "PG_VERSION").is_file():
        return False
    datadir.mkdir(parents=True, exist_ok=True)
    os.chmod(datadir, 0o700)
    _give_to_pg(datadir)
    pwfile = datadir.parent / f".pw-{os.getpid()}"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(su_password + "\n")
    _give_to_pg(pwfile)
    try:
        res = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(datadir), "-U", PG_SUPERUSER, "-A", "scram-sha-256",
             f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"],
            user=_pg_user(), capture_output=True, text=True, cwd="/",
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if res.returncode != 0:
        raise RuntimeError(f"initdb {datadir} failed: {res.stderr.strip()[-800:]}")
    return True


def start_postgres(bin_dir: Path, datadir: Path, host: str, port: int, log_path: Path) -> subprocess.Popen:
    """The postmaster in the foreground, in its own process group, listening on ``host:port`` only."""
    cmd = [str(bin_dir / "postgres"), "-D", str(datadir), "-h", host, "-p", str(port), "-k", str(datadir)]
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            cmd, cwd="/", stdout=out, stderr=subprocess.STDOUT, start_new_session=True, user=_pg_user(),
            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
        )  # fmt: skip
    finally:
        out.close()


def pg_connect(host: str, port: int, user: str, password: str, dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(host=host, port=port, user=user, password=password, dbname=dbname, connect_timeout=3)


def wait_postgres(host: str, port: int, password: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    import psycopg2

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with code {proc.returncode} before accepting connections")
        try:
            pg_connect(host, port, PG_SUPERUSER, password).close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.3)
    raise TimeoutError(f"PostgreSQL on {host}:{port} did not accept connections within {timeout_s:.0f} s")


def ensure_databases(host: str, port: int, su_password: str, user: str, password: str) -> None:
    """The MLflow role (password login) and its databases; idempotent."""
    from psycopg2 import sql

    conn = pg_connect(host, port, PG_SUPERUSER, su_password)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,))
            for db in PG_DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchone():
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(user)))
    finally:
        conn.close()


# ---------------------------------------------------------------- MLflow server


def write_auth_config(path: Path, host: str, pg_port: int) -> Path:
    """The basic-auth app's config: users in PostgreSQL; no secret in it (passwords come from the env)."""
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = postgresql+psycopg2://{PG_DB_USER}@{host}:{pg_port}/{PG_DATABASES[1]}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # one PBKDF2 check per login a minute, not one per request
    )
    return path


def start_mlflow_server(
    host: str,
    port: int,
    pg_port: int,
    artifacts: Path,
    auth_config: Path,
    secrets_env: Mapping[str, str],
    log_path: Path,
) -> subprocess.Popen:
    """``mlflow server --app-name basic-auth`` on PostgreSQL, proxying artifacts to ``artifacts``."""
    cmd = [
        str(sv.BIN / "mlflow"), "server", "--host", host, "--port", str(port), "--workers", str(mlflow_web_workers()),
        "--backend-store-uri", f"postgresql+psycopg2://{PG_DB_USER}@{host}:{pg_port}/{PG_DATABASES[0]}",
        "--artifacts-destination", artifacts.resolve().as_uri(), "--serve-artifacts", "--app-name", "basic-auth",
    ]  # fmt: skip
    env = sv.server_env(None)
    env.update(secrets_env)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if mlflow_jobs_enabled() else "false"
    return sv.spawn(cmd, env, log_path)


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120.0, name: str = "server") -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before answering {url}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code < 500:
                return time.monotonic() - t0
        time.sleep(0.5)
    raise TimeoutError(f"{name} at {url} did not answer within {timeout_s:.0f} s")


# ---------------------------------------------------------------- Prefect automations


def automation_specs(zombie_after_s: float = 3 * HEARTBEAT_S) -> list[dict]:
    """Zombie detection: a flow run with no heartbeat for ``zombie_after_s`` (3 intervals) is marked Crashed. The
    retry of a crashed catalog item is the supervisor's (``flows.recovery.retry_crashed``), whoever marked it."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    zombie = AutomationCore(
        name="dreampose: crash zombie flow runs",
        description="A flow run whose heartbeats stop (its worker or machine died) is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=zombie_after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="No heartbeat: the flow run's process is gone")],
    )
    return [zombie.model_dump(mode="json")]


def ensure_process_pool(api: str, pool: str, auth: tuple[str, str] | None = None) -> None:
    """Create the ``process`` work pool unless it exists (the REST call: no CLI start-up)."""
    res = requests.post(f"{api}/work_pools/", json={"name": pool, "type": "process"}, auth=auth, timeout=30)
    if res.status_code not in (200, 201, 409):
        res.raise_for_status()


def set_pool_concurrency(api: str, pool: str, limit: int | None, auth: tuple[str, str] | None = None) -> None:
    """How many flow runs of ``pool`` may run at once across all its workers (``None``: no limit)."""
    res = requests.patch(f"{api}/work_pools/{pool}", json={"concurrency_limit": limit}, auth=auth, timeout=30)
    res.raise_for_status()


def ensure_automations(
    api: str, auth: tuple[str, str] | None = None, zombie_after_s: float = 3 * HEARTBEAT_S
) -> list[str]:
    """Create the stack's automations unless automations of the same names exist, and delete the retry automation
    of earlier versions (it raced the worker's crash report); returns their names."""
    have = requests.post(f"{api}/automations/filter", json={}, auth=auth, timeout=10)
    have.raise_for_status()
    names = {a["name"] for a in have.json()}
    for a in have.json():
        if a["name"].startswith(LEGACY_AUTOMATIONS):
            requests.delete(f"{api}/automations/{a['id']}", auth=auth, timeout=10).raise_for_status()
    specs = automation_specs(zombie_after_s)
    for spec in specs:
        if spec["name"] not in names:
            requests.post(f"{api}/automations/", json=spec, auth=auth, timeout=10).raise_for_status()
    return [s["name"] for s in specs]


# ---------------------------------------------------------------- the stack


def default_state(profile: str) -> Path:
    """Where a profile keeps its state by default: ``.serve/<profile>/`` (each profile its own Prefect database)."""
    return REPO / ".serve" / profile


def mlflow_web_workers(cores: int | None = None) -> int:
    """MLflow UI/server web workers: one per two cores, 1 to 4 (``DREAMPOSE_MLFLOW_WORKERS`` overrides)."""
    if os.environ.get("DREAMPOSE_MLFLOW_WORKERS"):
        return max(1, int(os.environ["DREAMPOSE_MLFLOW_WORKERS"]))
    cores = (os.cpu_count() or 1) if cores is None else cores
    return max(1, min(4, cores // 2))


def mlflow_jobs_enabled(cores: int | None = None) -> bool:
    """MLflow's job runner starts one consumer process per job function (7 in MLflow 3.17); the stack uses no
    MLflow jobs, so they run only on machines with 8 or more cores (``DREAMPOSE_MLFLOW_JOBS=1|0`` overrides)."""
    flag = os.environ.get("DREAMPOSE_MLFLOW_JOBS")
    if flag:
        return flag.lower() in ("1", "true", "yes", "on")
    return ((os.cpu_count() or 1) if cores is None else cores) >= 8


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), so a server's grandchildren that outlive
    their parent are reaped here (``reap_orphans``) instead of waiting on a PID 1 that may never reap them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    return False


def reap_orphans(keep: set[int]) -> int:
    """Reap exited children of this process that are not ``keep`` (the Popen objects reap those); returns how
    many."""
    n = 0
    for child in children_of(os.getpid()):
        if child in keep:
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            if os.waitpid(child, os.WNOHANG)[0] == child:
                n += 1
    return n


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.split("/")[2]))
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


@contextlib.contextmanager
def _signals_held():
    """A second SIGTERM/SIGINT/SIGHUP during a stop does not cut its settling short (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@dataclass
class Stack:
    """Everything ``make serve`` starts, by name; ``stop()`` settles what is running and ends it all."""

    state: Path
    profile: str = "local"
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pg_port: int = 5432
    pool: str = sv.WORK_POOL
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
        return sv.api_url(self.host, self.prefect_port)

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
        env = sv.server_env(self.api, base={**os.environ, **self.extra_env})
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
        self.procs["prefect"] = sv.start_server(self.host, self.prefect_port, self.server_env(),
                                                self.logs / "prefect.log")  # fmt: skip
        if self.profile == "prod":
            self._start_tracking_prod()
        else:
            self.procs["mlflow"] = sv.start_mlflow_ui(
                self.host, self.mlflow_port, self.mlflow_uri, self.logs / "mlflow.log",
                workers=mlflow_web_workers(), jobs=mlflow_jobs_enabled(),
            )  # fmt: skip
            wait_http(f"{self.mlflow_url}/health", self.procs["mlflow"], timeout_s=300, name="MLflow UI")
        sv.wait_healthy(self.api, timeout_s=180, proc=self.procs["prefect"])
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
        if _pg_user():
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
        wait_http(f"{self.mlflow_uri}/health", self.procs["mlflow"], name="MLflow server")

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
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        # Prefect's process worker with an idempotent crash report (flows/worker.py)
        cmd = [sys.executable, "-m", "flows.worker", "--pool", self.pool, "--name", name,
               "--limit", str(self.worker_limit)]  # fmt: skip
        self.procs[name] = sv.spawn(cmd, env, self.logs / f"{name}.log", cwd=self.worker_cwd)
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
        self.dead = [p for p in self.dead if sv._group_alive(p.pid)]
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
        with _signals_held():
            self._stop(grace)

    def _stop(self, grace: float) -> None:
        workers = [n for n in self.procs if n.startswith("worker-")]
        in_flight: list[str] = []
        if workers and self._alive("prefect"):
            with contextlib.suppress(requests.RequestException):
                in_flight = [r["id"] for r in recovery.flow_runs(self.api, self.pool, recovery.LIVE,
                                                                 self.prefect_auth)]  # fmt: skip
        sv.stop_all([self.procs.pop(n) for n in workers] + self.dead, grace)
        self.dead = []
        if self._alive("prefect") and self._alive("mlflow"):
            try:
                self.settle(only=in_flight, report=lambda m: print(m, flush=True))
            except requests.RequestException as err:  # the next start settles it
                print(f"settling at stop failed ({err}); the next start settles it", flush=True)
        for name in reversed(list(self.procs)):
            sig = 2 if name == "postgres" else 15  # postgres: SIGINT is the fast shutdown
            sv.stop(self.procs[name], min(grace, 10.0), sig=sig)
        reap_orphans({p.pid for p in self.procs.values()})

    def _alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
