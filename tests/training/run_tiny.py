"""A tiny training run as a separate process, for the resume and multi-process tests.

python -m tests.training.run_tiny OUT_DIR [--steps N] [--every K] [--sleep S] [--cpu]
writes OUT_DIR/final.safetensors (the trained weights) and OUT_DIR/rank<r>.sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from dreampose.config import DropoutConfig, TrainConfig
from dreampose.training.loop import make_accelerator, train
from dreampose.training.objectives import DiffusionObjective
from tests.training.tiny import TinyPairs, tiny_pipeline


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    accelerator = make_accelerator("no", cpu=args.cpu)
    cfg = TrainConfig(
        max_steps=args.steps, batch_size=4, lr=1e-3, lr_warmup_steps=2, checkpoint_every=args.every,
        dropout=DropoutConfig(pose=0.2, image=0.2, both=0.2), train_image_encoder=True, seed=3,
    )  # fmt: skip
    objective = DiffusionObjective(tiny_pipeline(seed=0), cfg.dropout, train_image_encoder=True)
    train(
        objective, TinyPairs(12), cfg, ckpt_dir=args.out / "ckpt", accelerator=accelerator,
        on_step=lambda step, loss: time.sleep(args.sleep),
    )  # fmt: skip
    state = {f"{n}.{k}": v for n, m in objective.trainable_modules().items() for k, v in m.state_dict().items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{accelerator.process_index}.sha256").write_text(weights_digest(state))
    if accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in state.items()}, args.out / "final.safetensors")


if __name__ == "__main__":
    main()
