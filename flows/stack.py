"""The deployment stack, local or production profile, and its supervisor.

    python -m flows.serve                  # local: Prefect server, 2 process workers, MLflow UI on sqlite
    python -m flows.serve --profile prod   # + PostgreSQL, MLflow server (basic-auth, proxied artifacts)

Production profile: PostgreSQL (started as the ``postgres`` user when run as root, data directory under
``.serve/postgres``, password authentication only), an ``mlflow server --app-name basic-auth`` on it that
proxies artifacts to ``.serve/artifacts``, and a Prefect server whose API needs a basic-auth string.
Every server binds ``127.0.0.1`` unless ``--host`` says otherwise. Secrets come from the environment
(``DREAMPOSE_<NAME>`` or ``DREAMPOSE_<NAME>_FILE``) or are generated once into ``.serve/secrets/`` (mode
0600); they never go into ``params.yaml``, command lines, logs or MLflow tags.

Workers that die: the supervisor restarts a dead worker (up to ``max_restarts`` in ``restart_window_s``, then
keeps serving without it); two Prefect automations end and retry what a dead worker was running: runs whose
heartbeats stop are marked Crashed, and a crashed ``catalog-item`` run is rescheduled (the flow itself gives
up after ``MAX_ATTEMPTS`` runs). A flow-run process whose worker died ends itself (``flows.catalog_item``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from flows import REPO
from flows import serve as sv

PG_SUPERUSER = "postgres"
PG_DB_USER = "mlflow"
PG_DATABASES = ("mlflow", "mlflow_auth")
MLFLOW_ADMIN = "admin"
PREFECT_USER = "dreampose"
HEARTBEAT_S = 30  # Prefect's minimum flow-run heartbeat interval
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
        str(sv.BIN / "mlflow"), "server", "--host", host, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"postgresql+psycopg2://{PG_DB_USER}@{host}:{pg_port}/{PG_DATABASES[0]}",
        "--artifacts-destination", artifacts.resolve().as_uri(), "--serve-artifacts", "--app-name", "basic-auth",
    ]  # fmt: skip
    env = sv.server_env(None)
    env.update(secrets_env)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
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


def automation_specs(flow_name: str = "catalog-item", heartbeat_s: int = HEARTBEAT_S) -> list[dict]:
    """Zombie detection (no heartbeat for 3 intervals → Crashed) and retry of crashed catalog items."""
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
            within=timedelta(seconds=3 * heartbeat_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="No heartbeat: the flow run's process is gone")],
    )
    retry = AutomationCore(
        name=f"dreampose: retry crashed {flow_name} runs",
        description="A crashed catalog item (dead worker or process) is scheduled again; the flow caps attempts.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": flow_name}),
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED, name="AwaitingRetry", force=True, message="Retrying a crashed catalog item"
            )
        ],
    )
    return [a.model_dump(mode="json") for a in (zombie, retry)]


def ensure_process_pool(api: str, pool: str, auth: tuple[str, str] | None = None) -> None:
    """Create the ``process`` work pool unless it exists (the REST call: no CLI start-up)."""
    res = requests.post(f"{api}/work_pools/", json={"name": pool, "type": "process"}, auth=auth, timeout=30)
    if res.status_code not in (200, 201, 409):
        res.raise_for_status()


def set_pool_concurrency(api: str, pool: str, limit: int | None, auth: tuple[str, str] | None = None) -> None:
    """How many flow runs of ``pool`` may run at once across all its workers (``None``: no limit)."""
    res = requests.patch(f"{api}/work_pools/{pool}", json={"concurrency_limit": limit}, auth=auth, timeout=30)
    res.raise_for_status()


def ensure_automations(api: str, auth: tuple[str, str] | None = None, flow_name: str = "catalog-item") -> list[str]:
    """Create the stack's automations unless automations of the same names exist; returns their names."""
    have = requests.post(f"{api}/automations/filter", json={}, auth=auth, timeout=10)
    have.raise_for_status()
    names = {a["name"] for a in have.json()}
    specs = automation_specs(flow_name)
    for spec in specs:
        if spec["name"] not in names:
            requests.post(f"{api}/automations/", json=spec, auth=auth, timeout=10).raise_for_status()
    return [s["name"] for s in specs]


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    """Everything ``make serve`` starts, by name; ``stop()`` ends it all (last started first)."""

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
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    dead: list[subprocess.Popen] = field(default_factory=list)
    restarts: dict[str, list[float]] = field(default_factory=dict)
    abandoned: set[str] = field(default_factory=set)
    _env: dict[str, str] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def api(self) -> str:
        return sv.api_url(self.host, self.prefect_port)

    @property
    def mlflow_uri(self) -> str:
        if self.profile == "prod":
            return f"http://{self.host}:{self.mlflow_port}"
        env = {**os.environ, **self.extra_env}
        return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns.db'}"

    def secret(self, name: str) -> str:
        return secret(name, self.state / "secrets")

    @property
    def prefect_auth(self) -> tuple[str, str] | None:
        return (PREFECT_USER, self.secret("PREFECT_PASSWORD")) if self.profile == "prod" else None

    def client_env(self) -> dict[str, str]:
        """What a worker, the CLI or a test needs to reach this stack (includes credentials)."""
        env = sv.server_env(self.api, base={**os.environ, **self.extra_env})
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_S)
        env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        if self.profile == "prod":
            env["MLFLOW_TRACKING_USERNAME"] = MLFLOW_ADMIN
            env["MLFLOW_TRACKING_PASSWORD"] = self.secret("MLFLOW_ADMIN_PASSWORD")
            env["PREFECT_API_AUTH_STRING"] = ":".join(self.prefect_auth)
        return env

    def start(self) -> None:
        """Prefect server (started first: it boots while PostgreSQL and MLflow do), tracking, then workers."""
        if self.profile not in ("local", "prod"):
            raise ValueError(f"profile {self.profile!r}: expected 'local' or 'prod'")
        self.logs.mkdir(parents=True, exist_ok=True)
        env = self.client_env()
        server_env = dict(env)
        if self.profile == "prod":
            server_env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
        self.procs["prefect"] = sv.start_server(self.host, self.prefect_port, server_env, self.logs / "prefect.log")
        if self.profile == "prod":
            self._start_tracking_prod()
        else:
            self.procs["mlflow"] = sv.start_mlflow_ui(
                self.host, self.mlflow_port, self.mlflow_uri, self.logs / "mlflow.log"
            )
        sv.wait_healthy(self.api, timeout_s=180, proc=self.procs["prefect"])
        ensure_process_pool(self.api, self.pool, self.prefect_auth)
        ensure_automations(self.api, self.prefect_auth)
        for i in range(self.workers):
            self.start_worker(f"worker-{i + 1}")

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
        cmd = [str(sv.BIN / "prefect"), "worker", "start", "--pool", self.pool, "--type", "process",
               "--name", name, "--limit", str(self.worker_limit)]  # fmt: skip
        self.procs[name] = sv.spawn(cmd, env, self.logs / f"{name}.log", cwd=self.worker_cwd)
        return self.procs[name]

    def supervise_once(self, now: float | None = None, report: Callable[[str], None] = print) -> list[str]:
        """Restart dead workers (or give up on one that keeps dying); returns the names of dead core services."""
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
        return dead_core

    def stop(self, grace_s: float = 10.0) -> None:
        for name in reversed(list(self.procs)):
            sig = 2 if name == "postgres" else 15  # postgres: SIGINT is the fast shutdown
            sv.stop(self.procs[name], grace_s, sig=sig)
        for proc in self.dead:
            sv.stop(proc, grace_s)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
