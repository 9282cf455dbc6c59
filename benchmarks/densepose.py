"""DensePose frames/s: the TorchScript backend batched (``forward_batch``) vs one frame per call.

The module is a random-weights network with the real export's input/output contract (uint8 BGR image in;
boxes, scores, coarse/fine segmentation and U, V per box out) at a small size; speed does not depend on weights.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit, timed
from dreampose.data.densepose.torchscript import TorchScriptBackend

HEIGHT, WIDTH, FRAMES, CHART = 128, 96, 32, 56


class Contract(torch.nn.Module):
    """A conv trunk over the frame, one detection (the whole frame), chart outputs at CHART x CHART."""

    def __init__(self, chart: int = CHART):
        super().__init__()
        self.chart = chart
        self.trunk = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, 1, 1), torch.nn.ReLU()
        )
        self.head = torch.nn.Conv2d(32, 2 + 75, 1)

    def _run(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        n, _, h, w = x.shape
        f = self.head(self.trunk(x))
        f = torch.nn.functional.interpolate(f, size=(self.chart, self.chart), mode="bilinear", align_corners=False)
        box = torch.tensor([[0.0, 0.0, float(w), float(h)]])
        return [
            {
                "pred_boxes": box,
                "scores": torch.ones(1),
                "pred_densepose_coarse_segm": f[i : i + 1, :2],
                "pred_densepose_fine_segm": f[i : i + 1, 2:27],
                "pred_densepose_u": torch.sigmoid(f[i : i + 1, 27:52]),
                "pred_densepose_v": torch.sigmoid(f[i : i + 1, 52:77]),
            }
            for i in range(n)
        ]

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(img.permute(2, 0, 1)[None].float() / 255.0)[0]

    @torch.jit.export
    def forward_batch(self, imgs: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self._run(torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0)


class Single(torch.nn.Module):
    def __init__(self, inner: Contract):
        super().__init__()
        self.inner = inner

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner(img)


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notice, not a result
    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    inner = Contract().eval()
    with tempfile.TemporaryDirectory() as d:
        torch.jit.script(inner).save(f"{d}/batched.pt")
        torch.jit.script(Single(inner).eval()).save(f"{d}/single.pt")
        batched = TorchScriptBackend(Path(d) / "batched.pt", min_score=0.5)
        single = TorchScriptBackend(Path(d) / "single.pt", min_score=0.5)
        batch = 8
        same = all(
            np.array_equal(a.iuv, b.iuv)
            for a, b in zip(batched.predict(frames[:batch]), single.predict(frames[:batch]), strict=True)
        )

        def run(backend: TorchScriptBackend) -> None:
            for s in range(0, FRAMES, batch):
                backend.predict(frames[s : s + batch])

        t_single = timed(lambda: run(single), repeat=3)
        t_batched = timed(lambda: run(batched), repeat=3)
    emit(
        "densepose_frames_per_s",
        {"frames": FRAMES, "height": HEIGHT, "width": WIDTH, "chart": CHART, "batch_size": batch},
        {"what": "TorchScript backend, one frame per module call", "frames_per_s": round(FRAMES / t_single, 2)},
        {"what": "TorchScript backend, forward_batch per batch", "frames_per_s": round(FRAMES / t_batched, 2)},
        t_single / t_batched,
        identical_iuv=same,
    )


if __name__ == "__main__":
    main()
