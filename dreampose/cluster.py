"""Where the per-video work of the ``frames`` and ``densepose`` stages runs (``params.yaml: cluster``).

- ``address: null`` (default): in this process (a thread pool for frames, one backend for densepose).
- ``address: local``: a Dask ``LocalCluster`` on this machine, ``local_workers`` worker processes, one video
  at a time each; with ``gpus: N`` it starts one worker per GPU instead, and worker ``i`` runs DensePose on
  ``cuda:i``.
- ``address: tcp://host:port``: an existing Dask scheduler. Every worker must see the workspace at the same
  path (a shared filesystem), since tasks read and write ``data/`` directly. On a multi-GPU node start one
  single-threaded worker per GPU, either pinned by the launcher (``CUDA_VISIBLE_DEVICES=i dask worker ADDR
  --nthreads 1``: set ``gpus: 0`` and each sees its GPU as ``cuda``) or named by index (``dask worker ADDR
  --nthreads 1 --name gpu-<i>``, ``gpus: N``: worker ``gpu-i`` uses ``cuda:i``).

Outputs do not depend on where the work ran: every video is written by the same function, and the results
are gathered in the local order (tests compare the files byte for byte). The address is therefore not a DVC
parameter of the stages: moving the work to a cluster does not make them stale.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dreampose.config import ClusterConfig

_TRAILING_INT = re.compile(r"(\d+)$")


def device_for_worker(worker_name: object, gpus: int, configured: str) -> str:
    """The torch device a worker's DensePose uses.

    ``gpus == 0`` or an explicit device other than ``auto``/``cuda`` (``runtime.device``): ``configured``.
    Otherwise ``cuda:<i mod gpus>`` where ``i`` is the number ending the worker's name (LocalCluster names
    workers 0, 1, ...; ``--name gpu-3`` gives 3). A worker whose name has no index keeps ``configured``.
    """
    if gpus <= 0 or configured not in ("auto", "cuda"):
        return configured
    m = _TRAILING_INT.search(str(worker_name))
    return f"cuda:{int(m.group(1)) % gpus}" if m else configured


def current_worker_name() -> object | None:
    """This task's Dask worker name (``None`` outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().name
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator[Any | None]:
    """A ``distributed.Client`` for ``cfg.address`` (``None`` when the work stays in this process)."""
    if cfg.address is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if cfg.address == "local":
        n = cfg.gpus or cfg.local_workers
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    with Client(cfg.address, timeout=f"{cfg.connect_timeout_s}s") as client:
        yield client


def map_ordered(
    client: Any, fn: Callable[..., Any], jobs: Sequence[tuple], on_done: Callable[[Any], None] | None = None
):
    """``[fn(*job) for job in jobs]`` on the cluster, results in ``jobs`` order; the first failure is raised
    (with its own exception type) after the remaining tasks are cancelled."""
    from distributed import as_completed

    futures = [client.submit(fn, *job, pure=False) for job in jobs]
    try:
        for fut in as_completed(futures):
            fut.result()  # raise early
            if on_done is not None:
                on_done(fut)
        return [f.result() for f in futures]
    finally:
        client.cancel([f for f in futures if not f.done()])
