import json

import pytest

from dreampose.tools.report import PAPER_TABLE1, eye_rows, format_report, report


def test_report_puts_published_rows_beside_ours(tmp_path):
    scores = {
        "dataset": "synthetic demo",
        "num_frames": 32,
        "ours": {
            "l1": 0.038,
            "ssim": 0.856,
            "psnr": 21.5,
            "color_dist": 0.05,
            "vgg": {"status": "unavailable", "reason": "LPIPS vgg trunk weights not found at a.pth"},
            "lpips": {"status": "unavailable", "reason": "LPIPS alex trunk weights not found at b.pth"},
            "fid": 12.5,
            "fvd": {"status": "unavailable", "reason": "I3D weights not found at c.pt"},
            "aed": {"status": "unavailable", "reason": "I3D weights not found at c.pt"},
        },
    }
    text = format_report(scores)
    lines = text.splitlines()
    assert "published" in lines[0] and "UBC Fashion" in lines[0]
    dp = next(line for line in lines if line.startswith("DreamPose (published)"))
    assert dp.split()[2:] == ["0.0256", "0.885", "0.235", "0.068", "13.04", "238.75", "0.011"]
    ours = next(line for line in lines if line.startswith("ours @ native px (synthetic demo, 32 frames)"))
    assert "0.0380" in ours and "0.8560" in ours and "12.5000" in ours
    assert ours.count("unavailable [3]") == 2  # the same reason is one footnote
    assert "[3] I3D weights not found at c.pt" in lines
    assert len(PAPER_TABLE1) == 4


def test_report_needs_scores(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dreampose score` first"):
        report(tmp_path / "evaluation.json")
    (tmp_path / "evaluation.json").write_text(json.dumps({"l1": 1}))
    with pytest.raises(ValueError, match="no 'ours' section"):
        report(tmp_path / "evaluation.json")


def test_report_compares_the_paper_with_ours_at_its_resolution_and_shows_native_beside(tmp_path):
    native = {"l1": 0.05, "ssim": 0.7, "fid": {"status": "unavailable", "reason": "no inception"}}
    small = {"l1": 0.03, "ssim": 0.8, "fid": {"status": "unavailable", "reason": "no inception"}}
    scores = {
        "dataset": "UBC Fashion test",
        "num_frames": 5000,
        "ours": native,
        "table1": {"size": [256, 205], "native_size": [640, 512], "ours": small},
    }
    (tmp_path / "evaluation.json").write_text(json.dumps(scores))
    lines = report(tmp_path / "evaluation.json").splitlines()
    labels = [line.split("  ")[0].strip() for line in lines]
    i = labels.index("ours @ 256x205 px (UBC Fashion test, 5000 frames)")
    assert labels[i + 1] == "ours @ native 640x512 px"
    assert lines[i].split()[9:11] == ["0.0300", "0.8000"] and lines[i + 1].split()[5:7] == ["0.0500", "0.7000"]
    assert any(line.endswith("] no inception") for line in lines) and not any(
        "ours is at its native size" in line for line in lines
    )
    assert "ours is at its native size" in format_report({"ours": native})


def test_report_shows_what_the_eye_sees_with_the_vae_ceiling_last():
    unavailable = {"status": "unavailable", "reason": "no base model"}
    scores = {
        "ours": {"l1": 0.04, "ssim": 0.8, "ghost_fraction": 0.05, "pattern_error": 0.9, "flicker": 0.01},
        "baselines": {
            "vae_ceiling": {"l1": 0.02, "ssim": 0.9, "ghost_fraction": 0.001, "pattern_error": 0.4, "flicker": 0.002},
            "copy_input": {"l1": 0.1, "ssim": 0.5, "ghost_fraction": 0.2, "missing_fraction": 0.6, "flicker": 0.03},
            "base_model": unavailable,
        },
        "vae_ceiling_source": "the base model's VAE (models/base/vae)",
    }
    rows = eye_rows(scores)
    assert [r[0] for r in rows] == ["ours", "copy_input", "base_model", "vae_ceiling (upper bound)"]
    assert rows[0][1] == ["0.0400", "0.8000", "0.0500", "n/a", "0.9000", "0.0100", "n/a", "n/a"]
    assert rows[2][1] == ["n/a"] * 8  # unavailable baseline: no made-up numbers
    text = format_report(scores)
    assert "What the eye sees" in text and "encoded and decoded by the base model's VAE" in text
    line = next(x for x in text.splitlines() if x.startswith("vae_ceiling (upper bound)"))
    assert line.split()[3:6] == ["0.0200", "0.9000", "0.0010"]
