"""The workspace layout object names the same paths dvc.yaml declares as stage outputs."""

from __future__ import annotations

from pathlib import Path

import yaml

from dreampose.layout import Workspace

REPO = Path(__file__).resolve().parents[1]


def _dvc_outs() -> set[str]:
    outs: set[str] = set()
    for st in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        body = st.get("do", st)
        for key in ("outs", "metrics", "plots"):
            for o in body.get(key, []):
                outs.add(next(iter(o)) if isinstance(o, dict) else o)
    return outs


def test_every_dvc_output_is_a_workspace_path():
    ws = Workspace(Path("."))
    named = {
        ws.raw, ws.frames, ws.densepose, ws.manifests, ws.pretrained, ws.base, ws.subject_model("${item}"),
        ws.render_dir("${item}"), ws.per_video, ws.metrics / "baselines", ws.scores, ws.evaluation,
        ws.per_frame_plot,
    }  # fmt: skip
    assert {Path(o) for o in _dvc_outs()} == named


def test_paths_hang_off_the_root(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.test_manifest == tmp_path / "data/manifests/test.parquet"
    assert ws.render_videos("s1") == [tmp_path / "renders/s1/video.mp4", tmp_path / "renders/s1/side_by_side.mp4"]
    assert ws.catalog_item("sku-1") == tmp_path / "catalog/sku-1"
    assert Workspace("rel").root == Path("rel")
