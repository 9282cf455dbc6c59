"""Our default render recipe vs the paper's, on the trained demo models: speed and quality in one run.

- paper: PNDM 100 steps, three guidance branches as separate UNet calls, the subject's conditioning
  re-encoded for every frame, one frame at a time, fp32 (``benchmarks.render.naive_render``).
- ours: ``params.yaml: render`` (DDIM 10 steps), conditioning encoded once, frames batched, one UNet
  call per step on the stacked branches (zero-weight branches dropped).

Both render the same subjects' test targets with the same guidance scales; quality is L1 / SSIM
against the ground truth. Needs the demo workspace (``make demo``); otherwise it reports why not.
Run: ``python -m benchmarks.recipe``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import emit
from benchmarks.render import naive_render
from dreampose.config import load_params
from dreampose.evaluate.subjects import load_subject, subject_poses
from dreampose.layout import Workspace
from dreampose.metrics.pixel import l1, ssim
from dreampose.models.subject import load_subject_pipeline
from dreampose.render import render_frames, to_uint8

REPO = Path(__file__).resolve().parents[1]
PAPER_STEPS = 100
GOALS = {"speed_ratio": 4.0, "l1_rel": 0.05, "ssim_abs": 0.01}


def main(subjects: int = 2) -> None:
    params = load_params(REPO / "params.yaml")
    cfg = params.render
    manifest = Workspace(REPO).test_manifest
    chosen = [s for s in params.eval.subjects if (Workspace(REPO).subject_model(s) / "model_index.json").is_file()]
    config = {"subjects": chosen[:subjects], "ours": cfg.model_dump(), "paper": {"scheduler": "pndm", "steps": 100}}
    if not manifest.is_file() or not chosen:
        emit("render_recipe", config, {"status": "unavailable"}, {"status": "unavailable"}, None,
             reason="demo workspace not built: run `make demo` first")  # fmt: skip
        return
    df = pd.read_parquet(manifest)
    t_paper = t_ours = 0.0
    q = {"paper": {"l1": [], "ssim": []}, "ours": {"l1": [], "ssim": []}}
    n = 0
    for subject in chosen[:subjects]:
        s = load_subject(df, subject, manifest, REPO)
        poses = subject_poses(df, s, manifest, REPO)
        pipe = load_subject_pipeline(Workspace(REPO).subject_model(subject))
        pipe.set_progress_bar_config(disable=True)
        pixels = torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 127.5 - 1
        h, w = s.image.shape[:2]
        g = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(len(poses), pipe.latent_channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor,
                            generator=g)  # fmt: skip
        pipe.set_scheduler("pndm")
        t0 = time.perf_counter()
        with torch.no_grad():
            paper = naive_render(pipe, pixels, poses, noise, PAPER_STEPS, cfg.image_guidance_scale,
                                 cfg.pose_guidance_scale)  # fmt: skip
        t_paper += time.perf_counter() - t0
        paper = to_uint8(paper.permute(0, 2, 3, 1).numpy())
        t0 = time.perf_counter()
        ours = render_frames(pipe, s.image, poses, cfg, frame_ids=s.frames)
        t_ours += time.perf_counter() - t0
        for name, frames in (("paper", paper), ("ours", ours)):
            q[name]["l1"].append(l1(frames, s.truth))
            q[name]["ssim"].append(ssim(frames, s.truth))
        n += len(poses)
    score = {k: {m: float(np.concatenate(v).mean()) for m, v in d.items()} for k, d in q.items()}
    l1_rel = (score["ours"]["l1"] - score["paper"]["l1"]) / score["paper"]["l1"]
    ssim_abs = score["paper"]["ssim"] - score["ours"]["ssim"]
    paper_what = "paper recipe (PNDM 100, 3 calls/step, per-frame conditioning, fp32)"
    ours_what = f"ours ({cfg.scheduler} {cfg.num_inference_steps}, batched)"
    emit(
        "render_recipe",
        {**config, "goals": GOALS},
        {"what": paper_what, "seconds_per_frame": round(t_paper / n, 4), **score["paper"]},
        {"what": ours_what, "seconds_per_frame": round(t_ours / n, 4), **score["ours"]},
        t_paper / t_ours,
        frames=n,
        l1_relative_change=round(l1_rel, 4),
        ssim_drop=round(ssim_abs, 4),
        within_tolerance=bool(l1_rel <= GOALS["l1_rel"] and ssim_abs <= GOALS["ssim_abs"]),
    )  # fmt: skip


if __name__ == "__main__":
    main()
