"""PostgreSQL for the production profile: installed (Debian's package, as root) when missing, a password-only
cluster initialised under the state directory, the postmaster started in its own process group (as the
``postgres`` user when run as root), and MLflow's role and databases.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

PG_SUPERUSER = "postgres"
PG_DB_USER = "mlflow"
PG_DATABASES = ("mlflow", "mlflow_auth")


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


def pg_user() -> str | None:
    """PostgreSQL refuses to run as root: run it as ``postgres`` then, else as ourselves."""
    return PG_SUPERUSER if os.geteuid() == 0 else None


def _give_to_pg(path: Path) -> None:
    if pg_user():
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
            user=pg_user(), capture_output=True, text=True, cwd="/",
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
            cmd, cwd="/", stdout=out, stderr=subprocess.STDOUT, start_new_session=True, user=pg_user(),
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
