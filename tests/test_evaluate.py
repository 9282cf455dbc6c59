import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dreampose.config import RenderConfig, ScoreConfig
from dreampose.evaluate import score_renders
from dreampose.evaluate.baselines import vae_roundtrip
from dreampose.evaluate.records import metric_values
from dreampose.evaluate.subjects import SubjectData, eye_view, resize_frames, table1_shape
from dreampose.io import read_rgb
from dreampose.metrics.features import Backbones
from dreampose.metrics.frechet import frechet_distance_features
from dreampose.metrics.ghosting import estimate_background, ghosting
from dreampose.metrics.pattern import pattern_error
from dreampose.metrics.pixel import l1, ssim
from dreampose.metrics.temporal import flicker, temporal_error
from tests.metrics._workspace import SUBJECTS, H, W, make_fvd_manifest, make_workspace, tiny_pipeline

RENDER = RenderConfig(num_inference_steps=2, frame_batch_size=4)
NO_BASELINES = ScoreConfig(baselines=False, fvd_clip_len=2)


def _fake_renders(root, manifest, noise=8, seed=0, subdir="frames"):
    """Ground truth plus a little noise, as if a good model had rendered it."""
    rng = np.random.default_rng(seed)
    for _, row in pd.read_parquet(manifest).iterrows():
        gt = read_rgb(root / row["target_path"]).astype(int)
        out = root / "renders" / row["subject_id"] / subdir / f"{row['target_frame']:05d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(gt + rng.integers(-noise, noise + 1, gt.shape), 0, 255).astype(np.uint8)).save(out)


class _Conv(torch.nn.Module):
    def __init__(self, dims: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 6, (2, 3, 3)) if dims == 3 else torch.nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return self.conv(x).flatten(2).mean(-1)


def _backbones():
    net2d, net3d = _Conv(2), _Conv(3)
    pair = lambda a, b: ((net2d(a) - net2d(b)) ** 2).mean(1)  # noqa: E731
    return Backbones(lpips=pair, vgg=pair, inception=net2d, i3d=net3d, reid=net2d), net2d, net3d


def _score(root, manifest, cfg=NO_BASELINES, backbones=None, **kw):
    return score_renders(
        cfg, RENDER, manifest, root / "renders", root, list(SUBJECTS), root / "metrics", root / "plots",
        backbones=backbones, **kw,
    )  # fmt: skip


def test_scores_match_the_metric_functions_with_injected_networks(tmp_path):
    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest)
    fvd_manifest = make_fvd_manifest(tmp_path)
    _fake_renders(tmp_path, fvd_manifest, seed=1, subdir="fvd/frames")
    backbones, net2d, net3d = _backbones()
    result = _score(tmp_path, manifest, backbones=backbones)

    df = pd.read_parquet(manifest)
    gen = np.stack(
        [
            read_rgb(tmp_path / "renders" / s / "frames" / f"{t:05d}.png")
            for s, t in df[["subject_id", "target_frame"]].values
        ]
    )
    gt = np.stack([read_rgb(tmp_path / p) for p in df.target_path])
    scores = json.loads((tmp_path / "metrics/scores.json").read_text())
    assert scores["ours"]["l1"] == pytest.approx(l1(gen, gt).mean())
    assert scores["ours"]["ssim"] == pytest.approx(ssim(gen, gt).mean())
    to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    with torch.no_grad():
        fid = frechet_distance_features(net2d(to_t(gen)).double().numpy(), net2d(to_t(gt)).double().numpy())
        aed = torch.linalg.norm(net2d(to_t(gen)) - net2d(to_t(gt)), dim=1).mean().item()
    assert scores["ours"]["fid"] == pytest.approx(fid, rel=1e-5)
    assert scores["ours"]["aed"] == pytest.approx(aed, rel=1e-5)
    # FVD: clips of consecutive frames from fvd.parquet (5..8 = two clips of 2 per subject), not test targets.
    fvd_df = pd.read_parquet(fvd_manifest)
    fvd_gen = np.stack(
        [
            read_rgb(tmp_path / "renders" / s / "fvd/frames" / f"{t:05d}.png")
            for s, t in fvd_df[["subject_id", "target_frame"]].values
        ]
    )
    fvd_gt = np.stack([read_rgb(tmp_path / p) for p in fvd_df.target_path])
    as_clips = lambda x: to_t(x).reshape(4, 2, 3, H, W).permute(0, 2, 1, 3, 4)  # noqa: E731
    with torch.no_grad():
        fvd = frechet_distance_features(
            net3d(as_clips(fvd_gen)).double().numpy(), net3d(as_clips(fvd_gt)).double().numpy()
        )
    assert scores["ours"]["fvd"] == pytest.approx(fvd, rel=1e-5)
    # temporal error: per subject over its consecutive clip, then the mean over subjects
    per_subject = [
        temporal_error(fvd_gen[(fvd_df.subject_id == s).to_numpy()], fvd_gt[(fvd_df.subject_id == s).to_numpy()]).mean()
        for s in SUBJECTS
    ]
    assert scores["ours"]["temporal_error"] == pytest.approx(np.mean(per_subject))
    per_subject = []
    for s in SUBJECTS:
        sel = (fvd_df.subject_id == s).to_numpy()
        excess, deficit = flicker(fvd_gen[sel], fvd_gt[sel])
        per_subject.append((excess.mean(), deficit.mean()))
    excess, deficit = np.mean(per_subject, axis=0)
    assert scores["ours"]["flicker_excess"] == pytest.approx(excess) and excess > 0  # the renders' noise flickers
    assert scores["ours"]["motion_deficit"] == pytest.approx(deficit)
    assert scores["ours"]["flicker"] == pytest.approx(excess + deficit)
    # ghosting and pattern: per frame inside the ground truth's IUV mask, against the video's background
    masks = np.stack(
        [np.load(tmp_path / p)["iuv"][t][..., 0] > 0 for p, t in df[["densepose_path", "target_frame"]].values]
    )
    ghost, missing, pattern = [], [], []
    for s in SUBJECTS:
        sel = (df.subject_id == s).to_numpy()
        bg, known = estimate_background(gt[sel], masks[sel])
        for g, t, m in zip(gen[sel], gt[sel], masks[sel], strict=True):
            ghost.append(ghosting(g, t, m, bg, known)[0])
            missing.append(ghosting(g, t, m, bg, known)[1])
            pattern.append(pattern_error(g, t, m))
    assert scores["ours"]["ghost_fraction"] == pytest.approx(np.mean(ghost))
    assert scores["ours"]["missing_fraction"] == pytest.approx(np.mean(missing))
    assert scores["ours"]["pattern_error"] == pytest.approx(np.mean(pattern)) and 0 < np.mean(pattern) < 1
    assert scores["num_frames"] == 8 and result["table"].startswith("method")

    per_video = pd.read_parquet(tmp_path / "metrics/per_video.parquet")
    assert per_video[["method", "subject_id", "num_frames"]].values.tolist() == [
        ["ours", SUBJECTS[0], 4], ["ours", SUBJECTS[1], 4]
    ]  # fmt: skip
    per_frame = pd.read_csv(tmp_path / "plots/per_frame.csv")
    assert list(per_frame.columns) == ["subject_id", "frame", "l1", "ssim", "psnr"] and len(per_frame) == 8


def test_absent_weights_are_unavailable_with_reasons_not_numbers(tmp_path):
    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest)
    result = _score(tmp_path, manifest)  # loads from the configured (absent) paths under tmp_path
    record = json.loads((tmp_path / "metrics/evaluation.json").read_text())
    ours = record["ours"]
    for name in ("lpips", "vgg", "fid", "fvd", "aed"):
        assert ours[name]["status"] == "unavailable", name
        assert "weights not found" in ours[name]["reason"]
    assert all(isinstance(ours[k], float) for k in ("l1", "ssim", "psnr", "color_dist"))
    # no consecutive-frame clips in this workspace (no fvd.parquet): the temporal metric says so
    for name in ("temporal_error", "flicker", "flicker_excess", "motion_deficit"):
        assert ours[name]["status"] == "unavailable" and "fvd.parquet" in ours[name]["reason"]
    assert record == {k: v for k, v in result.items() if k != "table"}
    # The DVC metrics file: the same numbers, nothing else (no reasons, dataset name or comparison booleans).
    scores = json.loads((tmp_path / "metrics/scores.json").read_text())
    assert scores == metric_values(record)
    frame_metrics = ("l1", "ssim", "psnr", "color_dist", "ghost_fraction", "missing_fraction", "pattern_error")
    assert scores["ours"] == {k: ours[k] for k in frame_metrics}
    assert scores["num_frames"] == record["num_frames"] == 8
    assert set(scores) == {"num_subjects", "num_frames", "ours"}


def test_metric_values_keeps_numbers_only():
    record = {
        "dataset": "synthetic demo",
        "num_frames": 8,
        "ours": {"l1": 0.5, "fid": {"status": "unavailable", "reason": "no weights"}, "x": float("nan"), "y": None},
        "baselines": {"b": {"l1": 0.7, "psnr": 12}, "dead": {"status": "unavailable", "reason": "no model"}},
        "ours_better_than": {"b": {"l1": True, "ssim": False}},
        "backbone_notes": {},
        "table1": {"size": [16, 12], "native_size": [32, 24], "ours": {"l1": 0.25}},
    }
    assert metric_values(record) == {
        "num_frames": 8,
        "ours": {"l1": 0.5},
        "baselines": {"b": {"l1": 0.7, "psnr": 12}},
        "table1": {"ours": {"l1": 0.25}},
    }
    assert record["ours"]["fid"]["status"] == "unavailable"  # the input is left alone


@pytest.mark.slow
def test_baselines_are_rendered_scored_and_beaten(tmp_path):
    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest, noise=4)
    pipe = tiny_pipeline()
    for d in [tmp_path / "models/base", *(tmp_path / "models/subjects" / s for s in SUBJECTS)]:
        pipe.save_pretrained(d)
    cfg = ScoreConfig(fvd_clip_len=2)
    result = _score(
        tmp_path, manifest, cfg=cfg, backbones=Backbones(reasons={"lpips": "x"}),
        subjects_model_dir=tmp_path / "models/subjects", base_model_dir=tmp_path / "models/base",
    )  # fmt: skip
    base = result["baselines"]
    assert set(base) == {
        "copy_input", "pose_zeroed", "image_swapped", "base_model", "subject_image_swapped", "vae_ceiling"
    }  # fmt: skip
    assert "vae_ceiling" not in result["ours_better_than"]  # an upper bound, not a baseline to beat
    assert "each subject model's own VAE" in result["vae_ceiling_source"]
    assert all(isinstance(base["vae_ceiling"][k], float) for k in ("l1", "ssim", "ghost_fraction", "pattern_error"))
    df = pd.read_parquet(manifest)
    photo = np.stack([read_rgb(tmp_path / p) for p in df.input_path])
    gt = np.stack([read_rgb(tmp_path / p) for p in df.target_path])
    assert base["copy_input"]["l1"] == pytest.approx(l1(photo, gt).mean())
    for name in ("pose_zeroed", "image_swapped", "base_model", "subject_image_swapped"):
        frames = sorted((tmp_path / "metrics/baselines" / name / SUBJECTS[1] / "frames").glob("*.png"))
        assert [f.name for f in frames] == ["00004.png", "00006.png", "00008.png", "00010.png"]
    assert result["ours_better_than"]["copy_input"] == {"l1": True, "ssim": True}
    assert result["ours_better_than"]["pose_zeroed"] == {"l1": True, "ssim": True}
    assert result["ours_better_than"]["image_swapped"] == {"l1": True, "ssim": True}
    assert set(pd.read_parquet(tmp_path / "metrics/per_video.parquet").method) == {"ours", *base}


def test_bad_inputs_are_named(tmp_path):
    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest)
    (tmp_path / "renders" / SUBJECTS[1] / "frames" / "00008.png").unlink()
    with pytest.raises(ValueError, match=r"syn_test_001/frames: 1 of 4 rendered frames missing \(00008\.png\)"):
        _score(tmp_path, manifest)
    Image.new("RGB", (W, H + 8)).save(tmp_path / "renders" / SUBJECTS[1] / "frames" / "00008.png")
    with pytest.raises(
        ValueError, match=r"00008\.png: rendered frame is \(40, 24\) but the ground truth is \(32, 24\)"
    ):
        _score(tmp_path, manifest)
    other = make_workspace(tmp_path / "other", subjects=(SUBJECTS[0],))
    with pytest.raises(ValueError, match="'syn_test_001' is not in"):
        _score(tmp_path, other)
    empty = tmp_path / "empty.parquet"
    pd.read_parquet(manifest).iloc[:0].to_parquet(empty)
    with pytest.raises(ValueError, match="test manifest is empty"):
        _score(tmp_path, empty)


def test_score_and_report_commands(tmp_path, repo, capsys):
    import mlflow
    import yaml

    from dreampose.cli import main

    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval"]["subjects"] = list(SUBJECTS)
    params["score"]["baselines"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--root", str(tmp_path), "score"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method") and '"ours_better_than"' in out
    runs = mlflow.search_runs(experiment_names=[params["tracking"]["experiment"]])
    assert len(runs) == 1 and runs["metrics.quality/ours.l1"].iloc[0] > 0

    assert main(["--root", str(tmp_path), "report"]) == 0
    report = capsys.readouterr().out
    assert "DreamPose (published)" in report and "ours @ native px (synthetic demo, 8 frames)" in report
    assert "unavailable [1]" in report

    (tmp_path / "renders" / SUBJECTS[0] / "frames" / "00004.png").unlink()
    assert main(["--root", str(tmp_path), "score"]) == 2
    assert "rendered frames missing" in capsys.readouterr().err


def test_fvd_without_a_clip_manifest_is_unavailable_with_the_reason(tmp_path):
    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest)
    backbones, _, _ = _backbones()
    ours = _score(tmp_path, manifest, backbones=backbones)["ours"]
    assert ours["fvd"]["status"] == "unavailable" and "no FVD clip manifest" in ours["fvd"]["reason"]
    assert isinstance(ours["fid"], float)


def test_table1_shape_keeps_the_aspect():
    assert table1_shape(640, 512, 256) == (256, 205)
    assert table1_shape(32, 24, 16) == (16, 12)
    assert table1_shape(32, 24, 32) == (32, 24)
    with pytest.raises(ValueError, match="table1_size 64 is larger than the 32x24 frames"):
        table1_shape(32, 24, 64)


def test_table1_block_scores_downsampled_frames_and_leaves_native_keys_alone(tmp_path):
    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest)
    native = _score(tmp_path, manifest)
    assert "table1" not in native  # table1_size unset (the demo): the record as before
    result = _score(tmp_path, manifest, cfg=NO_BASELINES.model_copy(update={"table1_size": 16}))
    assert {k: result[k] for k in native if k != "table"} == {k: native[k] for k in native if k != "table"}
    t1 = json.loads((tmp_path / "metrics/evaluation.json").read_text())["table1"]
    assert t1["size"] == [16, 12] and t1["native_size"] == [H, W]
    numbers = {k: v for k, v in t1["ours"].items() if isinstance(v, float)}
    assert json.loads((tmp_path / "metrics/scores.json").read_text())["table1"] == {"ours": numbers}
    df = pd.read_parquet(manifest)
    gen = np.stack(
        [
            read_rgb(tmp_path / "renders" / s / "frames" / f"{t:05d}.png")
            for s, t in df[["subject_id", "target_frame"]].values
        ]
    )
    gt = np.stack([read_rgb(tmp_path / p) for p in df.target_path])
    small_gen, small_gt = resize_frames(gen, (16, 12)), resize_frames(gt, (16, 12))
    assert small_gen.shape == (8, 16, 12, 3) and small_gen.dtype == np.uint8
    assert t1["ours"]["l1"] == pytest.approx(l1(small_gen, small_gt).mean())
    assert t1["ours"]["ssim"] == pytest.approx(ssim(small_gen, small_gt).mean())
    assert t1["ours"]["l1"] != pytest.approx(native["ours"]["l1"])  # averaging the noise away lowers L1


def test_vae_ceiling_is_the_truth_through_the_models_vae(tmp_path):
    pipe = tiny_pipeline()
    frames = np.random.default_rng(0).integers(0, 256, size=(3, H, W, 3), dtype=np.uint8)
    out = vae_roundtrip(pipe, frames, batch_size=2)
    assert out.shape == frames.shape and out.dtype == np.uint8
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        want = pipe.decode_latents(pipe.encode_latents(x))
    np.testing.assert_allclose(out, ((want + 1) / 2).permute(0, 2, 3, 1).numpy() * 255, atol=1)
    with pytest.raises(ValueError, match="multiple of the VAE's factor"):
        vae_roundtrip(pipe, frames[:, :-1])


def test_vae_ceiling_without_a_model_is_unavailable_with_the_reason(tmp_path):
    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest)
    result = _score(tmp_path, manifest, cfg=ScoreConfig(fvd_clip_len=2), base_model_dir=tmp_path / "absent")
    ceiling = result["baselines"]["vae_ceiling"]
    assert ceiling["status"] == "unavailable" and "no VAE to round-trip through" in ceiling["reason"]
    assert "vae_ceiling_source" not in result
    copy = result["baselines"]["copy_input"]  # the photo as every frame: a body in the wrong place
    assert copy["ghost_fraction"] > result["ours"]["ghost_fraction"]
    assert copy["missing_fraction"] > result["ours"]["missing_fraction"]


def test_eye_metrics_are_measured_at_most_at_the_table1_size():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, size=(2, 320, 256, 3), dtype=np.uint8)
    masks = np.zeros((2, 320, 256), bool)
    masks[:, 40:280, 60:200] = True
    s = SubjectData("a", [0, 1], truth, masks, truth[0], fvd_frames=[0, 1], fvd_truth=truth)
    e, gen, clip = eye_view(s, truth, truth)
    assert e.truth.shape == gen.shape == clip.shape == (2, 256, 205, 3) and e.masks.shape == (2, 256, 205)
    assert eye_view(s, truth, None)[0] is e and eye_view(s, truth, None)[2] is None  # resized once, kept
    small = SubjectData("b", [0], truth[:1, :64, :48], masks[:1, :64, :48], truth[0, :64, :48])
    assert eye_view(small, small.truth, None)[0] is small


def test_the_truth_goes_through_each_network_once_for_all_methods(tmp_path):
    """Scoring several methods against the same subjects runs Inception and the re-ID net on the ground truth once
    per subject (the truth's features are cached), and every score equals the uncached one."""
    from dreampose.evaluate.scoring import MethodScores, score_frames, summarize
    from dreampose.evaluate.subjects import load_renders, load_subject
    from dreampose.render import read_test_manifest

    manifest = make_workspace(tmp_path)
    _fake_renders(tmp_path, manifest, noise=4)
    df = read_test_manifest(manifest)
    data = [load_subject(df, s, manifest, tmp_path) for s in SUBJECTS]
    ours = {s.subject: load_renders(tmp_path / "renders" / s.subject, s.frames, s.truth) for s in data}
    methods = {"ours": ours, "darker": {k: (v * 0.8).astype(v.dtype) for k, v in ours.items()}}
    seen: list[int] = []

    class _Counting(_Conv):
        def forward(self, x):
            seen.append(len(x))
            return super().forward(x)

    net = _Counting(2)
    backbones = Backbones(inception=net, reid=net, reasons={"lpips": "x", "vgg": "x", "i3d": "x"})

    def run(cache):
        seen.clear()
        out = {}
        for name, renders in methods.items():
            m = MethodScores()
            for s in data:
                score_frames(m, s, renders[s.subject], backbones, 2, None, cache)
            out[name] = ({k: v.to_json() for k, v in summarize(m, backbones, 2).items()}, m.per_frame)
        return out, sum(seen)

    uncached, frames_uncached = run(None)
    cached, frames_cached = run({})
    assert json.dumps(cached, sort_keys=True) == json.dumps(uncached, sort_keys=True)  # NaN-safe equality
    n_truth = sum(len(s.truth) for s in data)
    assert frames_uncached == 2 * len(methods) * 2 * n_truth  # two networks, each on the render and the truth
    assert frames_cached == 2 * (len(methods) + 1) * n_truth  # the truth once per network
