"""Regenerate ``docs/review_page.png``: a tiny catalog item end to end, its review page shot in headless Chromium.

    .venv/bin/python -m tests.review_screenshot docs/review_page.png

The same functions back ``tests/flows/test_catalog_item.py``'s browser check, so the picture in the docs is
what the test opened.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def run_item(ws: Path, item_id: str = "sku-demo") -> dict:
    """One catalog item in a tiny workspace (photo, poses and ground truth from ``tests/flows/conftest.py``)."""
    from dreampose.catalog import run_catalog_item
    from dreampose.config import load_params

    params = load_params(ws / "params.yaml")
    return run_catalog_item(params, ws, str(ws / "photo.png"), "poses", item_id=item_id, ground_truth="truth")


def main(argv: list[str] | None = None) -> int:
    from tests.browser import ensure_chromium, screenshot
    from tests.flows.conftest import make_catalog_workspace

    out = Path((argv or sys.argv[1:] or ["docs/review_page.png"])[0])
    with tempfile.TemporaryDirectory(prefix="dreampose-review-shot-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlruns.db'}"
        ws = make_catalog_workspace(Path(tmp) / "ws")
        scores = Path(__file__).resolve().parents[1] / "metrics" / "scores.json"
        if scores.is_file():  # the demo's own evaluation, shown as the reference column
            (ws / "metrics").mkdir(exist_ok=True)
            shutil.copyfile(scores, ws / "metrics" / "scores.json")
        result = run_item(ws)
        page = Path(result["run_dir"]) / "review.html"
        screenshot(ensure_chromium(), page, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
