"""MLflow for the stack: the local profile's ``mlflow ui`` on the tracking store, the production profile's
``mlflow server --app-name basic-auth`` on PostgreSQL that proxies artifacts, and how many web workers either gets.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from flows.postgres import PG_DATABASES, PG_DB_USER
from flows.prefect_server import server_env
from flows.processes import BIN, spawn

MLFLOW_ADMIN = "admin"


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


def start_mlflow_ui(
    host: str, port: int, backend_uri: str, log_path: Path | None = None, workers: int = 1, jobs: bool = False
) -> subprocess.Popen:
    """``mlflow ui`` with ``workers`` web workers; MLflow's job runner (a consumer process per job function) only
    with ``jobs``."""
    cmd = [str(BIN / "mlflow"), "ui", "--host", host, "--port", str(port), "--backend-store-uri", backend_uri,
           "--workers", str(workers)]  # fmt: skip
    env = server_env(None)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if jobs else "false"
    return spawn(cmd, env, log_path)


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
        str(BIN / "mlflow"), "server", "--host", host, "--port", str(port), "--workers", str(mlflow_web_workers()),
        "--backend-store-uri", f"postgresql+psycopg2://{PG_DB_USER}@{host}:{pg_port}/{PG_DATABASES[0]}",
        "--artifacts-destination", artifacts.resolve().as_uri(), "--serve-artifacts", "--app-name", "basic-auth",
    ]  # fmt: skip
    env = server_env(None)
    env.update(secrets_env)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if mlflow_jobs_enabled() else "false"
    return spawn(cmd, env, log_path)
