"""MLflow model registry conventions for catalog items: register, review, approve, reject.

Each catalog item's subject model becomes a new version of one registered model
(``params.yaml: tracking.registered_model``) tagged ``catalog_item=<id>`` and ``review=pending``.
A reviewer approves a version (alias ``approved-<item>`` + ``review=approved``) or rejects it
(``review=rejected`` + ``review_reason``); both record ``review_by`` and ``review_at`` (UTC).
One alias per item, so any number of items are approved at once and each loads as
``models:/<registered_model>@approved-<item>``. One registered model for the whole catalog (not one per
item) keeps the review queue, the input-key reuse lookup and the MLflow model list in one place.
Aliases and tags only: registry stages are deprecated.
"""

from __future__ import annotations

import contextlib
import getpass
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

REVIEW_TAG = "review"
REASON_TAG = "review_reason"
ITEM_TAG = "catalog_item"
INPUT_KEY_TAG = "catalog_input_key"
BY_TAG = "review_by"
AT_TAG = "review_at"
SUPERSEDED_TAG = "review_superseded_by"
APPROVED_PREFIX = "approved-"
PENDING, APPROVED, REJECTED, SUPERSEDED = "pending", "approved", "rejected", "superseded"
STATUSES = (PENDING, APPROVED, REJECTED, SUPERSEDED, "all")


def default_reviewer() -> str:
    """The OS user name (``--by`` default)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def now_utc() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


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
    return list_versions(name, PENDING)


def find_by_input_key(name: str, key: str) -> VersionInfo | None:
    """The newest version registered for exactly these inputs (photo + poses + base model), if any."""
    found = search_versions(name, **{INPUT_KEY_TAG: key})
    return found[0] if found else None


def approved_alias(item_id: str) -> str:
    """The per-item alias ``approved-<item>``: MLflow aliases allow only letters, digits, ``_`` and ``-``,
    so each ``.`` of an item id becomes ``_`` (``approve`` refuses when that maps two items to one alias)."""
    if not item_id:
        raise ValueError("a catalog item id is needed for its approval alias")
    return f"{APPROVED_PREFIX}{re.sub(r'[^A-Za-z0-9_-]', '_', item_id)}"


def approved_uri(name: str, item_id: str) -> str:
    """The documented address of an item's approved model: ``models:/<name>@approved-<item>``."""
    return f"models:/{name}@{approved_alias(item_id)}"


def _decision_tags(client, name: str, version: str, status: str, by: str | None) -> None:
    client.set_model_version_tag(name, version, REVIEW_TAG, status)
    client.set_model_version_tag(name, version, BY_TAG, (by or default_reviewer()).strip() or default_reviewer())
    client.set_model_version_tag(name, version, AT_TAG, now_utc())


def approve(name: str, version: str | int, by: str | None = None) -> VersionInfo:
    """Approve one version for its catalog item: alias ``approved-<item>`` + ``review=approved``, who and when.

    Other items' approvals are untouched. A newer approval of the same item moves that item's alias and marks
    the version it pointed at ``review=superseded``.
    """
    info = get_version(name, version)
    item = info.tags.get(ITEM_TAG)
    if not item:
        raise ValueError(f"{name} version {info.version} has no {ITEM_TAG} tag; only catalog items are reviewed")
    alias = approved_alias(item)
    client = _client()
    previous = _alias_version(client, name, alias)
    if previous is not None and previous.tags.get(ITEM_TAG) != item:
        raise ValueError(
            f"items {item!r} and {previous.tags.get(ITEM_TAG)!r} share the alias {alias!r}; rename one of them"
        )
    client.set_registered_model_alias(name, alias, info.version)
    _decision_tags(client, name, info.version, APPROVED, by)
    if REASON_TAG in info.tags:  # a re-review after a rejection must not keep the old reason
        client.delete_model_version_tag(name, info.version, REASON_TAG)
    if previous is not None and previous.version != info.version:
        client.set_model_version_tag(name, previous.version, REVIEW_TAG, SUPERSEDED)
        client.set_model_version_tag(name, previous.version, SUPERSEDED_TAG, info.version)
    return get_version(name, info.version)


def reject(name: str, version: str | int, reason: str, by: str | None = None) -> VersionInfo:
    """Tag the version ``review=rejected`` with the reason, who and when; drops its item's alias if it pointed here."""
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a rejection needs a reason (--reason '...')")
    info = get_version(name, version)
    client = _client()
    _decision_tags(client, name, info.version, REJECTED, by)
    client.set_model_version_tag(name, info.version, REASON_TAG, reason)
    for alias in info.aliases:
        if alias.startswith(APPROVED_PREFIX):
            client.delete_registered_model_alias(name, alias)
    return get_version(name, info.version)


def _alias_version(client, name: str, alias: str) -> VersionInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return _info(client, mv)


def approved_version(name: str, item_id: str) -> VersionInfo | None:
    """The version the item's ``approved-<item>`` alias resolves to, or ``None``."""
    return _alias_version(_client(), name, approved_alias(item_id))


def list_versions(name: str, status: str = PENDING) -> list[VersionInfo]:
    """Versions by review status (``pending``, ``approved``, ``rejected``, ``superseded`` or ``all``), newest first."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: choose one of {', '.join(STATUSES)}")
    return search_versions(name) if status == "all" else search_versions(name, **{REVIEW_TAG: status})


def latest_for_item(name: str, item_id: str) -> VersionInfo | None:
    """The newest version registered for a catalog item, if any."""
    found = search_versions(name, **{ITEM_TAG: item_id})
    return found[0] if found else None


def describe(info: VersionInfo) -> dict[str, Any]:
    """A JSON-able view for the CLI."""
    item = info.tags.get(ITEM_TAG)
    return {
        "name": info.name,
        "version": info.version,
        "review": info.review,
        "catalog_item": item,
        "reason": info.tags.get(REASON_TAG),
        "by": info.tags.get(BY_TAG),
        "at": info.tags.get(AT_TAG),
        "aliases": info.aliases,
        "approved_uri": approved_uri(info.name, item) if item and info.review == APPROVED else None,
        "page": info.links.get("review_page"),
        "run_id": info.run_id,
        "model": info.source,
        "links": info.links,
        "metrics": info.metrics,
    }


TABLE_METRICS = ("l1", "ssim", "psnr", "temporal_l1")


def _metric(info: VersionInfo, key: str) -> str:
    value = info.metrics.get(f"quality/{key}", info.metrics.get(key))
    return "-" if value is None else f"{value:.4g}"


def review_table(versions: list[VersionInfo]) -> str:
    """A plain-text table for ``dreampose review list``: one row per version, its page address below it."""
    if not versions:
        return "(no versions)"
    header = ["version", "item", "status", "decided by", "decided at", *TABLE_METRICS]
    rows = [
        [
            v.version,
            v.tags.get(ITEM_TAG, "-"),
            v.review or "-",
            v.tags.get(BY_TAG, "-"),
            v.tags.get(AT_TAG, "-"),
            *(_metric(v, k) for k in TABLE_METRICS),
        ]
        for v in versions
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    for v, r in zip(versions, rows, strict=True):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        extra = []
        if v.tags.get(REASON_TAG):
            extra.append(f"reason: {v.tags[REASON_TAG]}")
        if v.links.get("review_page"):
            extra.append(f"page: {v.links['review_page']}")
        if v.review == APPROVED and v.tags.get(ITEM_TAG):
            extra.append(f"load: {approved_uri(v.name, v.tags[ITEM_TAG])}")
        lines += [f"    {e}" for e in extra]
    return "\n".join(lines)
