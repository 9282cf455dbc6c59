"""The training data path at paper size: items/s of the base-finetune feed over 360-frame 640x512 stand-in videos.

Baseline (the old path): pose windows from ``np.savez_compressed`` archives (frame ``t`` is reached by inflating
frames ``0..t``), pixels and poses through the old float passes (:func:`old_dataset`), items loaded in the
training process, as the loop did before its DataLoader. Ours: the frame-indexed archives of
``dreampose.io.write_iuv_archive`` through ``dreampose.training.data.train_batches`` with 0 and with
``--workers`` DataLoader workers. Every item decodes both JPEGs (input photo, target frame) and its 5-frame pose
window at 640x512, exactly as ``PairDataset`` does in ``finetune_base``. Ours ships items compact (uint8 pixels
and IUV window, as ``train_batches`` yields them, pinned for the copy to a GPU); their expansion to float32 runs
on the training device (``training.data.to_device``), so it is not in the rate; its cost when that device is
this CPU is measured on its own (``expand_on_cpu_ms_per_item``).

The three run in interleaved rounds (order alternating); the ratio is the median of the per-round ratios
(ours with workers / old). CPU seconds per item (all processes, workers included) are recorded beside the
rates: on a shared machine they say what the rates would be with the cores free
(``items_per_s_if_cpus_were_free``). Also measured: the cost of one item whose pose window is at frame 0 and
one at frame 359 (median over interleaved reads), the startup of the workers, peak RSS of this process and of
the largest worker (which counts the pages it shares with this process), and the disk size of both archive
layouts. The stand-in videos (frames + both archives) are generated once into ``--workdir`` and reused.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, stand_in_iuv

H, W, WINDOW = 640, 512, 5


def _iuv(seed: int, frames: int) -> np.ndarray:
    return stand_in_iuv(seed, frames, H, W)


def prepare(root: Path, videos: int, frames: int, pairs: int) -> dict[str, Path]:
    """Frames (JPEG, as the frames stage writes them), both archive layouts and the manifests, once."""
    import pandas as pd
    from PIL import Image

    from dreampose.data.densepose.iuv import pose_window_indices
    from dreampose.io import write_iuv_archive

    done = root / f"complete_{videos}x{frames}x{pairs}"
    manifests = {k: root / f"{k}.parquet" for k in ("old", "ours", "edge_old", "edge_ours")}
    if done.is_file():
        return manifests
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    for i in range(videos):
        vid = f"v{i:02d}"
        iuv = _iuv(i, frames)
        (root / "frames" / vid).mkdir(parents=True, exist_ok=True)
        background = rng.integers(90, 160, (H, W, 3), dtype=np.uint8)  # texture: JPEG decode is not trivial
        colour = rng.integers(0, 255, 3, dtype=np.uint8)
        for t in range(frames):
            img = background.copy()
            body = iuv[t, ..., 0] > 0
            img[body] = (colour.astype(np.int32) + iuv[t, body, 1:2] // 4).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "frames" / vid / f"{t:05d}.jpg", format="JPEG", quality=95, subsampling=0)
        write_iuv_archive(root / "ours" / f"{vid}.npz", iuv)
        (root / "old").mkdir(exist_ok=True)
        np.savez_compressed(root / "old" / f"{vid}.npz", iuv=iuv)
        targets = [(int(t), False) for t in rng.integers(0, frames, pairs)] + [(0, True), (frames - 1, True)]
        for t, edge in targets:  # edge: the frame-0 / last-frame items, in a manifest of their own
            rows.append(
                dict(subject_id=vid, input_path=f"frames/{vid}/00000.jpg", target_path=f"frames/{vid}/{t:05d}.jpg",
                     densepose_path=f"{{layout}}/{vid}.npz", pose_frames=pose_window_indices(t, frames, WINDOW),
                     edge=edge, target=t)
            )  # fmt: skip
    df = pd.DataFrame(rows)
    for layout in ("old", "ours"):
        d = df.assign(densepose_path=df.densepose_path.str.replace("{layout}", layout, regex=False))
        d[~d.edge].drop(columns=["edge"]).to_parquet(manifests[layout])
        d[d.edge].drop(columns=["edge"]).to_parquet(manifests[f"edge_{layout}"])
    done.write_text("ok\n")
    return manifests


def old_dataset(manifest: Path, root: Path):
    """``PairDataset`` as it was before this path was reworked, for the paper's base finetune (no crop or colour
    augmentation): windows inflated from the start of a deflated npz, pixels and poses through float passes."""
    import torch

    from dreampose.data.dataset import PairDataset
    from dreampose.data.densepose.iuv import _uv_formula

    class OldPairDataset(PairDataset):
        def _item(self, index, make_rng):
            row = self.rows.iloc[index]
            iuv = self.pose_frames(row["densepose_path"], [int(f) for f in row["pose_frames"]])
            target = _old_image(self.root / row["target_path"])
            image = _old_image(self.root / row["input_path"])
            poses = _uv_formula(torch.from_numpy(iuv)).flatten(0, 1)
            return {"input_pixels": image, "target_pixels": target.clamp(-1, 1), "poses": poses,
                    "subject_id": str(row["subject_id"])}  # fmt: skip

    def _old_image(path: Path):
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0

    return OldPairDataset(manifest, root, H, W)


def _old_items_per_s(ds, n: int, first_step: int, batch: int) -> float:
    """The old feed: items loaded in the training process, batch by batch (``load_batch``)."""
    from dreampose.training.loop import load_batch
    from dreampose.training.sampling import batch_indices

    c0, t0 = _cpu_s(), time.perf_counter()
    for s in range(first_step, first_step + n // batch):
        load_batch(ds, batch_indices(len(ds), s, batch, 0))
    items = n // batch * batch
    return items / (time.perf_counter() - t0), (_cpu_s() - c0) / items


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (DataLoader workers, once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _ours_items_per_s(ds, n: int, first_step: int, batch: int, workers: int) -> tuple[float, float, float]:
    """(items/s after the first batch, CPU seconds per item in all processes, seconds to the first batch)
    through the training DataLoader."""
    import torch

    from dreampose.config import TrainConfig
    from dreampose.training.data import train_batches

    cfg = TrainConfig(batch_size=batch, num_workers=workers, seed=0)
    steps = n // batch
    c0, t0 = _cpu_s(), time.perf_counter()
    it = train_batches(ds, cfg, first_step, first_step + steps + 1, 0, 1, torch.device("cpu"))
    next(it)
    t1 = time.perf_counter()
    for _ in range(steps):
        next(it)
    t2 = time.perf_counter()
    del it  # ends (and joins) the workers
    return steps * batch / (t2 - t1), (_cpu_s() - c0) / ((steps + 1) * batch), t1 - t0


def _item_ms(ds, index: int, compact: bool) -> float:
    """One item as the training feed makes it (ours: the compact item a worker ships; old: the float item)."""
    t0 = time.perf_counter()
    ds.compact_item(index, 0, 0) if compact else ds[index]
    return 1000 * (time.perf_counter() - t0)


def _expand_ms_per_item(ds, batch: int, reps: int = 5) -> float:
    """Milliseconds per item of ``to_device`` (the float32 expansion) on the CPU, median of ``reps`` batches."""
    import torch
    from torch.utils.data import default_collate

    from dreampose.training.data import to_device

    host = default_collate([ds.compact_item(i, 0, 0) for i in range(batch)])
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        to_device(host, torch.device("cpu"))
        times.append(1000 * (time.perf_counter() - t0) / batch)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=360)
    ap.add_argument("--pairs", type=int, default=64, help="random training pairs per video")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--old-items", type=int, default=8, help="items per round on the old path (~1 s each)")
    ap.add_argument("--items", type=int, default=64, help="items per round on ours")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "dreampose-bench-loader"))
    args = ap.parse_args()

    import pandas as pd
    import torch

    from dreampose.data.dataset import PairDataset

    root = Path(args.workdir)
    t_prep = time.perf_counter()
    manifests = prepare(root, args.videos, args.frames, args.pairs)
    prep_s = time.perf_counter() - t_prep
    ds = {k: old_dataset(m, root) if "old" in k else PairDataset(m, root, H, W) for k, m in manifests.items()}
    for d in ds.values():  # layouts read once (as a training run does), pages warm
        d[0]
    load_before = os.getloadavg()[0]
    t_run = time.perf_counter()

    old, ours0, oursw, startup, ratios = [], [], [], [], []
    cpu: dict[str, list[float]] = {"old": [], "ours0": [], "oursw": []}
    for r in range(args.rounds):
        step = 1 + r * 1000  # a different stretch of the data each round
        got: dict[str, float] = {}
        for side in ("old", "ours0", "oursw") if r % 2 == 0 else ("oursw", "ours0", "old"):
            if side == "old":
                got[side], c = _old_items_per_s(ds["old"], args.old_items, step, args.batch)
            elif side == "ours0":
                got[side], c, _ = _ours_items_per_s(ds["ours"], args.items // 2, step, args.batch, 0)
            else:
                got[side], c, first = _ours_items_per_s(ds["ours"], args.items, step, args.batch, args.workers)
                startup.append(first)
            cpu[side].append(1000 * c)
        old.append(got["old"])
        ours0.append(got["ours0"])
        oursw.append(got["oursw"])
        ratios.append(got["oursw"] / got["old"])

    # One item whose pose window sits at frame 0, one at the last frame, read alternately.
    edge_rows = pd.read_parquet(manifests["edge_ours"])
    at0 = [i for i, t in enumerate(edge_rows.target) if t == 0]
    atn = [i for i, t in enumerate(edge_rows.target) if t == args.frames - 1]
    edge = {("ours", 0): [], ("ours", 1): [], ("old", 0): [], ("old", 1): []}
    for rep in range(3):
        for i0, i1 in zip(at0, atn, strict=True):
            for last in (0, 1) if rep % 2 == 0 else (1, 0):
                edge[("ours", last)].append(_item_ms(ds["edge_ours"], i1 if last else i0, True))
    for i0, i1 in zip(at0, atn, strict=True):  # the old path once (~2 s an item at the last frame)
        for last in (0, 1):
            edge[("old", last)].append(_item_ms(ds["edge_old"], i1 if last else i0, False))
    med = {k: statistics.median(v) for k, v in edge.items()}
    expand_ms = _expand_ms_per_item(ds["ours"], args.batch)
    run_s = time.perf_counter() - t_run

    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    old_bytes = sum(p.stat().st_size for p in (root / "old").glob("*.npz")) / args.videos
    new_bytes = sum(p.stat().st_size for p in (root / "ours").glob("*.npz")) / args.videos
    r2 = lambda x: round(float(x), 2)  # noqa: E731
    emit(
        "loader_paper_size_items_per_s",
        {"videos": args.videos, "frames_per_video": args.frames, "height": H, "width": W, "pose_window": WINDOW,
         "batch_size": args.batch, "workers": args.workers, "rounds": args.rounds,
         "items_per_round": {"old": args.old_items, "ours_0_workers": args.items // 2, "ours_workers": args.items},
         "item": "both JPEGs decoded + 5-frame IUV window at 640x512 (PairDataset); old: float32 (uv_to_model "
                 "in the loader), ours: uint8 as the workers ship it, float32 on the training device",
         "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        {"items_per_s": r2(statistics.median(old)), "items_per_s_all": [r2(x) for x in old],
         "item_ms_frame_0": r2(med[("old", 0)]), "item_ms_last_frame": r2(med[("old", 1)]),
         "last_over_first_frame": r2(med[("old", 1)] / med[("old", 0)]), "archive_mb_per_video": r2(old_bytes / 2**20),
         "cpu_ms_per_item": r2(statistics.median(cpu["old"]))},
        {"items_per_s": r2(statistics.median(oursw)), "items_per_s_all": [r2(x) for x in oursw],
         "items_per_s_0_workers": r2(statistics.median(ours0)), "items_per_s_0_workers_all": [r2(x) for x in ours0],
         "worker_startup_s": r2(statistics.median(startup)),
         "item_ms_frame_0": r2(med[("ours", 0)]), "item_ms_last_frame": r2(med[("ours", 1)]),
         "last_over_first_frame": r2(med[("ours", 1)] / med[("ours", 0)]),
         "archive_mb_per_video": r2(new_bytes / 2**20),
         "cpu_ms_per_item": r2(statistics.median(cpu["oursw"])),
         "cpu_ms_per_item_0_workers": r2(statistics.median(cpu["ours0"])),
         "expand_on_cpu_ms_per_item": r2(expand_ms)},
        statistics.median(ratios),
        paired_ratios=[r2(x) for x in ratios],
        cpu_ratio_old_over_ours=r2(statistics.median(cpu["old"]) / statistics.median(cpu["oursw"])),
        items_per_s_if_cpus_were_free=r2((os.cpu_count() or 1) * 1000 / statistics.median(cpu["oursw"])),
        peak_rss_mb={"trainer_process": r2(self_rss), "largest_worker": r2(child_rss)},
        targets={"items_per_s_workers": 30, "ratio_vs_old": 20, "last_over_first_frame": 1.5},
        load_average={"before": r2(load_before), "after": r2(os.getloadavg()[0])},
        prepare_s=r2(prep_s),
        measure_s=r2(run_s),
    )  # fmt: skip


if __name__ == "__main__":
    main()
