"""MLflow model registry conventions for catalog items: register, review, approve, reject.

Each catalog item's subject model becomes a new version of one registered model
(``params.yaml: tracking.registered_model``) tagged ``catalog_item=<id>`` and ``review=pending``.
A reviewer approves a version (alias ``approved`` + ``review=approved``) or rejects it
(``review=rejected`` + ``review_reason``). Aliases and tags only: registry stages are deprecated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REVIEW_TAG = "review"
REASON_TAG = "review_reason"
ITEM_TAG = "catalog_item"
INPUT_KEY_TAG = "catalog_input_key"
APPROVED_ALIAS = "approved"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as a reviewer sees it."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: list[str]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def review(self) -> str | None:
        return self.tags.get(REVIEW_TAG)

    @property
    def links(self) -> dict[str, str]:
        """Artifact URIs recorded at registration (video, poster, metrics)."""
        return {k[len("link.") :]: v for k, v in sorted(self.tags.items()) if k.startswith("link.")}


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _info(client, mv) -> VersionInfo:
    metrics: dict[str, float] = {}
    if mv.run_id:
        try:
            metrics = dict(client.get_run(mv.run_id).data.metrics)
        except Exception:  # the run may have been deleted; the version is still reviewable
            metrics = {}
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        source=mv.source,
        tags=dict(mv.tags or {}),
        aliases=list(getattr(mv, "aliases", []) or []),
        metrics=metrics,
    )


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"registry names and tag values may not contain quotes: {value!r}")
    return value


def register_version(
    name: str,
    source: str,
    run_id: str | None,
    item_id: str,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> VersionInfo:
    """Create a new version of ``name`` (creating the registered model if needed), ``review=pending``."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        # A concurrent catalog item may create it first.
        with contextlib.suppress(MlflowException):
            client.create_registered_model(name, description="DreamPose subject models, one version per catalog item")
    all_tags = {**{k: str(v) for k, v in (tags or {}).items()}, ITEM_TAG: item_id, REVIEW_TAG: PENDING}
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=all_tags, description=description)
    return _info(client, client.get_model_version(name, mv.version))


def versions_of_run(name: str, run_id: str) -> list[VersionInfo]:
    """Versions of ``name`` registered from MLflow run ``run_id`` (empty if none or no such model)."""
    client = _client()
    found = client.search_model_versions(f"name = '{_quote(name)}' and run_id = '{_quote(run_id)}'")
    return sorted((_info(client, mv) for mv in found), key=lambda v: int(v.version))


def delete_versions_of_run(name: str, run_id: str) -> list[str]:
    """Delete the versions a failed or abandoned run registered; returns their numbers."""
    client = _client()
    gone = []
    for info in versions_of_run(name, run_id):
        client.delete_model_version(name, info.version)
        gone.append(info.version)
    return gone


def get_version(name: str, version: str | int) -> VersionInfo:
    """One version; a clear ``ValueError`` when the model or version does not exist."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise ValueError(f"no version {version} of registered model {name!r}") from None
    return _info(client, mv)


def search_versions(name: str, **tag_filters: str) -> list[VersionInfo]:
    """Versions of ``name`` whose tags match ``tag_filters``, newest first (empty if no such model)."""
    client = _client()
    query = " and ".join([f"name = '{_quote(name)}'", *(f"tags.{k} = '{_quote(v)}'" for k, v in tag_filters.items())])
    found = client.search_model_versions(query)
    return sorted((_info(client, mv) for mv in found), key=lambda v: int(v.version), reverse=True)


def list_pending(name: str) -> list[VersionInfo]:
    """Versions waiting for review (``review=pending``), newest first."""
    return search_versions(name, **{REVIEW_TAG: PENDING})


def find_by_input_key(name: str, key: str) -> VersionInfo | None:
    """The newest version registered for exactly these inputs (photo + poses + base model), if any."""
    found = search_versions(name, **{INPUT_KEY_TAG: key})
    return found[0] if found else None


def approve(name: str, version: str | int) -> VersionInfo:
    """Point the ``approved`` alias at this version and tag it ``review=approved``."""
    info = get_version(name, version)
    client = _client()
    client.set_registered_model_alias(name, APPROVED_ALIAS, info.version)
    client.set_model_version_tag(name, info.version, REVIEW_TAG, APPROVED)
    if REASON_TAG in info.tags:  # a re-review after a rejection must not keep the old reason
        client.delete_model_version_tag(name, info.version, REASON_TAG)
    return get_version(name, info.version)


def reject(name: str, version: str | int, reason: str) -> VersionInfo:
    """Tag the version ``review=rejected`` with the reason; drops ``approved`` if it pointed here."""
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a rejection needs a reason (--reason '...')")
    info = get_version(name, version)
    client = _client()
    client.set_model_version_tag(name, info.version, REVIEW_TAG, REJECTED)
    client.set_model_version_tag(name, info.version, REASON_TAG, reason)
    if APPROVED_ALIAS in info.aliases:
        client.delete_registered_model_alias(name, APPROVED_ALIAS)
    return get_version(name, info.version)


def approved_version(name: str) -> VersionInfo | None:
    """The version the ``approved`` alias resolves to, or ``None``."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        mv = client.get_model_version_by_alias(name, APPROVED_ALIAS)
    except MlflowException:
        return None
    return _info(client, mv)


def describe(info: VersionInfo) -> dict[str, Any]:
    """A JSON-able view for the CLI."""
    return {
        "name": info.name,
        "version": info.version,
        "review": info.review,
        "catalog_item": info.tags.get(ITEM_TAG),
        "reason": info.tags.get(REASON_TAG),
        "aliases": info.aliases,
        "run_id": info.run_id,
        "model": info.source,
        "links": info.links,
        "metrics": info.metrics,
    }
