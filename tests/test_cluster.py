"""``dreampose.cluster``: the frames and densepose stages on a Dask cluster write exactly the bytes of the
in-process run; results come back in job order, a worker's failure with its own type; each worker gets its
device."""

from __future__ import annotations

import filecmp
import shutil
import threading
from pathlib import Path

import pytest

from dreampose.cluster import connect, device_for_worker, map_ordered
from dreampose.config import ClusterConfig, ConfigError, DensePoseConfig, FramesConfig, SyntheticConfig, parse_params
from dreampose.data.densepose import run_densepose
from dreampose.data.frames import extract_frames
from dreampose.data.synthetic import generate_dataset
from tests.data.test_densepose import save_module


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_bytes(a: Path, b: Path) -> int:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [k for k in fa if not filecmp.cmp(fa[k], fb[k], shallow=False)]
    assert differ == []
    return len(fa)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    cfg = SyntheticConfig(num_train_subjects=3, num_test_subjects=1, frames_per_video=8, height=64, width=48)
    generate_dataset(cfg, root / "data/raw", seed=3)
    (root / "data/raw/videos/train/broken.mp4").write_bytes(b"not a video\n")  # quarantined either way
    return root


@pytest.fixture(scope="module")
def client():
    # Real worker processes: tasks and results cross a process boundary, as on a remote cluster.
    with connect(ClusterConfig(address="local", local_workers=2)) as c:
        yield c


def test_frames_and_densepose_on_a_cluster_are_byte_identical(raw, client, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(raw / "data/raw", ws / "data/raw")
    fcfg = FramesConfig(height=32, width=24, workers=2)
    local = extract_frames(fcfg, ws / "data/raw/videos", ws / "data/frames")
    shutil.copytree(ws / "data/frames", tmp_path / "frames_local")
    dist = extract_frames(fcfg, ws / "data/raw/videos", ws / "data/frames", client=client)
    assert (dist["frames"], dist["quarantined"]) == (local["frames"], 1) and local["frames"] == 32
    assert _assert_same_bytes(tmp_path / "frames_local", ws / "data/frames") == 32 + 2

    for cfg in (
        DensePoseConfig(backend="synthetic", batch_size=3),
        DensePoseConfig(backend="torchscript", weights=str(save_module(tmp_path / "m.pt")), batch_size=3),
    ):
        out = ws / f"data/densepose_{cfg.backend}"
        run_densepose(cfg, ws / "data/frames", ws / "data/raw", out)
        shutil.copytree(out, tmp_path / f"dp_local_{cfg.backend}")
        summary = run_densepose(cfg, ws / "data/frames", ws / "data/raw", out, client=client, gpus=0)
        assert summary["backend"] == cfg.backend and summary["devices"] == ["auto"]
        assert _assert_same_bytes(tmp_path / f"dp_local_{cfg.backend}", out) == 4 + 1


def test_a_worker_failure_reaches_the_caller_with_its_type(raw, client, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(raw / "data/raw", ws / "data/raw")
    extract_frames(FramesConfig(height=32, width=24), ws / "data/raw/videos", ws / "data/frames")
    cfg = DensePoseConfig(backend="torchscript", weights=str(tmp_path / "missing.pt"))
    with pytest.raises((ValueError, FileNotFoundError), match=r"missing\.pt"):
        run_densepose(cfg, ws / "data/frames", ws / "data/raw", ws / "data/densepose", client=client)
    assert not (ws / "data/densepose").exists() and not list((ws / "data").glob(".densepose*"))


def test_densepose_npz_bytes_do_not_depend_on_the_clock(raw, tmp_path, monkeypatch):
    import time

    ws = tmp_path / "ws"
    shutil.copytree(raw / "data/raw", ws / "data/raw")
    extract_frames(FramesConfig(height=32, width=24), ws / "data/raw/videos", ws / "data/frames")
    cfg = DensePoseConfig(backend="synthetic")
    run_densepose(cfg, ws / "data/frames", ws / "data/raw", tmp_path / "a")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400 * 400)  # a year later
    run_densepose(cfg, ws / "data/frames", ws / "data/raw", tmp_path / "b")
    _assert_same_bytes(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(
    ("name", "gpus", "configured", "expected"),
    [
        (0, 2, "auto", "cuda:0"),
        (1, 2, "auto", "cuda:1"),
        (3, 2, "cuda", "cuda:1"),  # more workers than GPUs: shared round-robin
        ("gpu-5", 8, "auto", "cuda:5"),  # `dask worker --name gpu-5`
        ("tcp://10.0.0.4:4000", 0, "auto", "auto"),  # no GPU count: the configured device
        (1, 2, "cpu", "cpu"),  # an explicit device wins
        (1, 2, "cuda:3", "cuda:3"),
        ("worker", 2, "auto", "auto"),  # no index in the name
    ],
)
def test_device_for_worker(name, gpus, configured, expected):
    assert device_for_worker(name, gpus, configured) == expected


def test_local_cluster_with_gpus_spreads_workers_over_devices(monkeypatch):
    # The assignment as it happens on a worker: LocalCluster names its workers 0..n-1 (checked here on
    # in-process workers of a real cluster), and each one maps to its own device.
    from distributed import Client, LocalCluster

    from dreampose import cluster

    def which_device(_):
        return cluster.device_for_worker(cluster.current_worker_name(), 2, "auto")

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        workers = sorted(c.scheduler_info()["workers"])
        got = {c.submit(which_device, i, workers=[w], pure=False).result() for i, w in enumerate(workers)}
    assert got == {"cuda:0", "cuda:1"}


@pytest.mark.parametrize("address", ["http://host:8786", "tcp://host", "localhost", "tcp://a b:1"])
def test_cluster_address_is_validated(address):
    with pytest.raises(ConfigError, match=r"cluster\.address"):
        parse_params({"cluster": {"address": address}})
    assert parse_params({"cluster": {"address": "tcp://10.1.2.3:8786"}}).cluster.address == "tcp://10.1.2.3:8786"


_LAST_DONE = threading.Event()


def _square(x: int) -> int:
    """Job 0 finishes only after the client has seen job 3 done (the test's ``on_done`` sets the event; in-process
    workers share it): completion order is not job order. Job 3 setting it itself raced: job 0 could report first."""
    if x == 0:
        assert _LAST_DONE.wait(60)
    if x < 0:
        raise KeyError(f"job {x}")
    return x * x


def test_map_ordered_returns_in_job_order_and_raises_the_first_failure():
    from distributed import Client, LocalCluster

    with connect(ClusterConfig(address=None)) as none:
        assert none is None  # the default: the work stays in this process
    _LAST_DONE.clear()
    with (
        LocalCluster(n_workers=4, threads_per_worker=1, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        done: list[int] = []

        def record(fut) -> None:
            done.append(fut.result())
            if done[-1] == 9:
                _LAST_DONE.set()

        jobs = [(x,) for x in range(4)]
        assert map_ordered(c, _square, jobs, on_done=record) == [0, 1, 4, 9]
        assert sorted(done) == [0, 1, 4, 9] and done.index(9) < done.index(0)
        with pytest.raises(KeyError, match="job -1"):
            map_ordered(c, _square, [(2,), (-1,), (3,)])
