"""The stack's secrets: from the environment, a file it names, or generated once into the state's ``secrets/``.

``DREAMPOSE_<NAME>`` or ``DREAMPOSE_<NAME>_FILE`` wins; else ``<state>/secrets/<name>`` (mode 0600, its folder
0700) is read, or written with a fresh random value. Secrets never go into ``params.yaml``, command lines, logs or
MLflow tags.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

SECRET_NAMES = (
    "PG_SUPERUSER_PASSWORD",
    "PG_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SECRET_KEY",
    "PREFECT_PASSWORD",
)


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
