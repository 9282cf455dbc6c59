"""Procedural "mannequin" fashion videos with ground-truth DensePose IUV (no network needed).

Each video is one subject: a 3-D stick figure of capsule limbs (per-subject proportions)
that turns, steps and swings its arms, projected orthographically onto a tinted background.
Every body pixel has a part index I (DensePose convention, 1..24) and surface coordinates
(u along the part, v around it, fixed to the body), and the garment colour is a function of
(subject, part, u, v) only. A model that sees the IUV of a new pose can therefore predict the
subject's appearance there, which is what DreamPose learns from UBC Fashion.

Layout written under ``out_dir`` (``data/raw``)::

    videos/{train,test}/<id>.mp4     H.264, the rendered RGB frames
    iuv/{train,test}/<id>.npz        key ``iuv``: uint8 (T, H, W, 3) = (I, round(255 u), round(255 v))
    download_report.json             source, per-video sha256 + bytes
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dreampose.fsutil import staging_dir
from dreampose.fsutil import replace_dir, sha256_file
from dreampose.config import SyntheticConfig
from dreampose.io import write_iuv_archive
from dreampose.video import write_video

SPLITS = ("train", "test")
_SPLIT_CODE = {"train": 1, "test": 2}

# Body-frame joints: x = the person's left, y = up, z = the person's forward (towards the camera
# at yaw 0). Units are a fraction of body height.
# (name, from joint, to joint, DensePose I when the surface faces back, I when it faces front, material)
PARTS: tuple[tuple[str, str, str, int, int, str], ...] = (
    ("torso", "pelvis", "neck", 1, 2, "shirt"),
    ("head", "neck_top", "head_top", 23, 24, "head"),
    ("upper_arm_left", "shoulder_l", "elbow_l", 15, 17, "upper_sleeve"),
    ("upper_arm_right", "shoulder_r", "elbow_r", 16, 18, "upper_sleeve"),
    ("lower_arm_left", "elbow_l", "wrist_l", 19, 21, "lower_sleeve"),
    ("lower_arm_right", "elbow_r", "wrist_r", 20, 22, "lower_sleeve"),
    ("hand_left", "wrist_l", "hand_l", 4, 4, "skin"),
    ("hand_right", "wrist_r", "hand_r", 3, 3, "skin"),
    ("upper_leg_right", "hip_r", "knee_r", 7, 9, "upper_pants"),
    ("upper_leg_left", "hip_l", "knee_l", 8, 10, "upper_pants"),
    ("lower_leg_right", "knee_r", "ankle_r", 11, 13, "lower_pants"),
    ("lower_leg_left", "knee_l", "ankle_l", 12, 14, "lower_pants"),
    ("foot_left", "ankle_l", "toe_l", 5, 5, "shoe"),
    ("foot_right", "ankle_r", "toe_r", 6, 6, "shoe"),
)
PATTERNS = ("solid", "hstripes", "vstripes", "checker", "panel")


@dataclass(frozen=True)
class Subject:
    """Per-subject body proportions and wardrobe (all drawn from one seeded generator)."""

    shoulder: float
    hip: float
    upper_arm: float
    lower_arm: float
    upper_leg: float
    lower_leg: float
    arm_r: float
    leg_r: float
    torso_r: tuple[float, float]  # half-width at the pelvis, at the neck
    torso_depth: float  # half-depth / half-width of the torso's cross-section
    head_r: float
    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    shirt2: np.ndarray
    pants: np.ndarray
    pants2: np.ndarray
    shoes: np.ndarray
    background: np.ndarray
    pattern: str
    stripes: float
    sleeves: float  # 0 sleeveless .. 1 short .. 2 long (covers the forearm)
    trousers: float  # fraction of the leg covered: < 0.5 shorts, 1 full length


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def make_subject(rng: np.random.Generator) -> Subject:
    """Draw one subject's body and clothes. Garment hues are spread so subjects look different."""
    hue = rng.random()
    skin_tone = rng.uniform(0.35, 0.9)
    return Subject(
        shoulder=rng.uniform(0.085, 0.11),
        hip=rng.uniform(0.05, 0.065),
        upper_arm=rng.uniform(0.16, 0.19),
        lower_arm=rng.uniform(0.14, 0.17),
        upper_leg=rng.uniform(0.22, 0.25),
        lower_leg=rng.uniform(0.21, 0.24),
        arm_r=rng.uniform(0.028, 0.036),
        leg_r=rng.uniform(0.038, 0.05),
        torso_r=(rng.uniform(0.075, 0.1), rng.uniform(0.085, 0.11)),
        torso_depth=rng.uniform(0.55, 0.7),
        head_r=rng.uniform(0.062, 0.075),
        skin=np.array([0.95, 0.78, 0.62], np.float32) * skin_tone + np.array([0.12, 0.06, 0.03], np.float32),
        hair=_hsv(rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.6)),
        shirt=_hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)),
        shirt2=_hsv((hue + rng.uniform(0.25, 0.75)) % 1, rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0)),
        pants=_hsv((hue + rng.uniform(0.3, 0.7)) % 1, rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.7)),
        pants2=_hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.7, 1.0)),
        shoes=_hsv(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.05, 0.5)),
        background=_hsv(rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95)),
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        stripes=float(rng.integers(3, 7)),
        sleeves=rng.uniform(0.0, 2.0),
        trousers=rng.choice([0.35, 1.0, 1.0]),
    )


def make_motion(rng: np.random.Generator, num_frames: int) -> dict[str, np.ndarray]:
    """Smooth per-frame angles (radians) and offsets: a turn, a stepping gait and arm swings.

    Periods are drawn so that frames 8 or more apart are in visibly different poses.
    """
    t = np.arange(num_frames, dtype=np.float32)
    step = 2 * np.pi / rng.uniform(14, 24)
    turn = 2 * np.pi / rng.uniform(28, 56)
    raise_f = 2 * np.pi / rng.uniform(20, 40)
    ph = rng.uniform(0, 2 * np.pi, size=6)
    gait = np.sin(step * t + ph[0])
    amp_gait = rng.uniform(0.35, 0.6)
    amp_raise = rng.uniform(0.6, 1.3)
    raise_ = 0.5 + 0.5 * np.sin(raise_f * t + ph[2])
    return {
        "yaw": (rng.uniform(-0.6, 0.6) + rng.uniform(0.8, 1.4) * np.sin(turn * t + ph[1])).astype(np.float32),
        "hip_l": amp_gait * gait,
        "hip_r": -amp_gait * gait,
        "knee_l": 0.8 * amp_gait * np.clip(-np.cos(step * t + ph[0]), 0, None),
        "knee_r": 0.8 * amp_gait * np.clip(np.cos(step * t + ph[0]), 0, None),
        "arm_swing_l": -0.9 * amp_gait * gait,
        "arm_swing_r": 0.9 * amp_gait * gait,
        "abduct_l": 0.15 + amp_raise * raise_,
        "abduct_r": 0.15 + amp_raise * (0.5 + 0.5 * np.sin(raise_f * t + ph[3])),
        "elbow_l": 0.2 + 0.9 * (0.5 + 0.5 * np.sin(step * t + ph[4])),
        "elbow_r": 0.2 + 0.9 * (0.5 + 0.5 * np.sin(step * t + ph[5])),
        "shift_x": 0.12 * np.sin(turn * 0.7 * t + ph[2]),
        "bob": 0.01 * np.abs(gait),
    }


def _joints(s: Subject, m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """3-D joints in the body frame, each ``(T, 3)``."""
    n = m["yaw"].shape[0]

    def point(x: float, y: float, z: float = 0.0) -> np.ndarray:
        return np.broadcast_to(np.array([x, y, z], np.float32), (n, 3))

    def limb(start: np.ndarray, length: float, side: float, abduct: np.ndarray, flex: np.ndarray) -> np.ndarray:
        # abduct: away from the body in the frontal plane; flex: forward (+z)
        d = np.stack([side * np.sin(abduct) * np.cos(flex), -np.cos(abduct) * np.cos(flex), np.sin(flex)], axis=-1)
        return start + length * d

    j: dict[str, np.ndarray] = {}
    torso_len = 0.29
    j["pelvis"] = point(0, 0.02)
    j["neck"] = point(0, torso_len)
    j["neck_top"] = point(0, torso_len + 0.05)
    j["head_top"] = point(0, torso_len + 0.05 + 0.07)
    for side, sign in (("l", 1.0), ("r", -1.0)):
        sh = point(sign * s.shoulder, torso_len - 0.02)
        j[f"shoulder_{side}"] = sh
        el = limb(sh, s.upper_arm, sign, m[f"abduct_{side}"], m[f"arm_swing_{side}"])
        j[f"elbow_{side}"] = el
        wr = limb(el, s.lower_arm, sign, m[f"abduct_{side}"] * 0.8, m[f"arm_swing_{side}"] + m[f"elbow_{side}"])
        j[f"wrist_{side}"] = wr
        j[f"hand_{side}"] = wr + 0.35 * (wr - el)
        hip = point(sign * s.hip, 0.0)
        j[f"hip_{side}"] = hip
        zero = np.zeros_like(m["yaw"])
        kn = limb(hip, s.upper_leg, sign, zero + 0.04, m[f"hip_{side}"])
        j[f"knee_{side}"] = kn
        an = limb(kn, s.lower_leg, sign, zero + 0.02, m[f"hip_{side}"] - m[f"knee_{side}"])
        j[f"ankle_{side}"] = an
        j[f"toe_{side}"] = an + np.stack([zero, zero - 0.02, zero + 0.08], axis=-1)
    bob = m["bob"][:, None] * np.array([0, 1, 0], np.float32)
    return {k: v + bob for k, v in j.items()}


def _radii(s: Subject, yaw: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Projected radius at each end of each part, ``(T,)`` each; the torso is an ellipse in section."""
    ones = np.ones_like(yaw)

    def ellipse(half_width: float) -> np.ndarray:
        return half_width * np.sqrt(np.cos(yaw) ** 2 + (s.torso_depth * np.sin(yaw)) ** 2)

    r = {
        "torso": (ellipse(s.torso_r[0]), ellipse(s.torso_r[1])),
        "head": (ones * s.head_r * 0.8, ones * s.head_r),
        "hand": (ones * s.arm_r * 0.9, ones * s.arm_r * 1.1),
        "foot": (ones * s.leg_r * 0.8, ones * s.leg_r * 0.8),
    }
    for name, *_ in PARTS:
        if "arm" in name:
            r[name] = (ones * s.arm_r * 1.1, ones * s.arm_r * 0.9)
        elif "leg" in name:
            r[name] = (ones * s.leg_r * 1.1, ones * s.leg_r * 0.85)
    for name, *_ in PARTS:
        if name.startswith(("hand", "foot")):
            r[name] = r[name.split("_")[0]]
    return r


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, freq: float) -> np.ndarray:
    """0/1 mask of the second garment colour, a function of surface coordinates only."""
    if kind == "hstripes":
        return (np.floor(u * freq * 2) % 2).astype(bool)
    if kind == "vstripes":
        return (np.floor(v * freq * 4) % 2).astype(bool)
    if kind == "checker":
        return ((np.floor(u * freq * 1.5) + np.floor(v * freq * 3)) % 2).astype(bool)
    if kind == "panel":  # a front panel of the second colour
        return np.abs(v - 0.5) < 0.15
    return np.zeros(u.shape, bool)


def _shade(s: Subject, material: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Albedo ``(N, 3)`` for pixels of one material at surface coords ``u`` (along), ``v`` (around)."""
    out = np.broadcast_to(s.skin, (*u.shape, 3)).copy()

    def paint(mask: np.ndarray, base: np.ndarray, second: np.ndarray, pattern: str) -> None:
        second_mask = _pattern(pattern, u, v, s.stripes) & mask
        out[mask] = base
        out[second_mask] = second

    if material == "shirt":
        paint(np.ones(u.shape, bool), s.shirt, s.shirt2, s.pattern)
    elif material == "upper_sleeve":
        paint(u < s.sleeves, s.shirt, s.shirt2, s.pattern if s.pattern != "panel" else "solid")
        cuff = (u < s.sleeves) & (u > s.sleeves - 0.12) & (s.sleeves < 1)
        out[cuff] = s.shirt2
    elif material == "lower_sleeve":
        paint(u < s.sleeves - 1, s.shirt, s.shirt2, s.pattern if s.pattern != "panel" else "solid")
    elif material == "upper_pants":
        covered = u < s.trousers * 2
        out[covered] = s.pants
        out[covered & (np.abs(v - 0.25) < 0.06)] = s.pants2  # side seam stripe
    elif material == "lower_pants":
        covered = u < s.trousers * 2 - 1
        out[covered] = s.pants
        out[covered & (np.abs(v - 0.25) < 0.06)] = s.pants2
    elif material == "shoe":
        out[:] = s.shoes
    elif material == "head":
        # hair on the top and the back of the head, so the facing direction is visible
        hair = (u > 0.75) | (np.cos(2 * np.pi * (v - 0.5)) < -0.1)
        out[hair] = s.hair
    return out


def render_video(
    subject: Subject, motion: dict[str, np.ndarray], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize one video: RGB uint8 ``(T, H, W, 3)`` and IUV uint8 ``(T, H, W, 3)``.

    Parts are capsules (tapered cylinders under orthographic projection); each pixel takes the
    part nearest the camera. ``u`` runs from the proximal to the distal joint, ``v`` is the angle
    around the part in the body frame (0.5 = the part's front), so it stays fixed to the body
    as the figure turns.
    """
    yaw = motion["yaw"]
    n = yaw.shape[0]
    joints = _joints(subject, motion)
    radii = _radii(subject, yaw)
    scale = 0.9 * height / 0.95  # pixels per body unit: head to toe fills ~90 % of the height
    cx = width / 2 + motion["shift_x"] * width
    cy = 0.5 * height

    cos, sin = np.cos(yaw), np.sin(yaw)

    def project(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = p[:, 0] * cos + p[:, 2] * sin
        z = -p[:, 0] * sin + p[:, 2] * cos
        return cx + scale * x, cy - scale * p[:, 1], z  # image x, image y, depth towards camera

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    px, py = xs[None], ys[None]
    best_depth = np.full((n, height, width), -np.inf, np.float32)
    part_map = np.full((n, height, width), -1, np.int16)
    u_map = np.zeros((n, height, width), np.float32)
    v_map = np.zeros((n, height, width), np.float32)
    phi_map = np.zeros((n, height, width), np.float32)
    for k, (name, ja, jb, *_rest) in enumerate(PARTS):
        ax, ay, az = project(joints[ja])
        bx, by, bz = project(joints[jb])
        ra, rb = (r * scale for r in radii[name])
        dx, dy = (bx - ax)[:, None, None], (by - ay)[:, None, None]
        length2 = np.maximum(dx * dx + dy * dy, 1e-6)
        rel_x, rel_y = px - ax[:, None, None], py - ay[:, None, None]
        t = np.clip((rel_x * dx + rel_y * dy) / length2, 0.0, 1.0)
        ox, oy = rel_x - t * dx, rel_y - t * dy
        dist = np.sqrt(ox * ox + oy * oy)
        radius = ra[:, None, None] + t * (rb - ra)[:, None, None]
        inside = dist <= radius
        # signed offset across the axis (+ = image right for a limb pointing down)
        inv_len = 1.0 / np.sqrt(length2)
        across = (rel_x * dy - rel_y * dx) * inv_len
        phi = np.arcsin(np.clip(across / np.maximum(radius, 1e-6), -1.0, 1.0))
        bulge = np.sqrt(np.clip(radius * radius - dist * dist, 0, None)) / scale
        depth = az[:, None, None] + t * (bz - az)[:, None, None] + bulge
        win = inside & (depth > best_depth)
        best_depth = np.where(win, depth, best_depth)
        part_map = np.where(win, k, part_map)
        u_map = np.where(win, t, u_map)
        phi_map = np.where(win, phi, phi_map)
        # body-frame angle around the part: the camera-facing angle minus the body's yaw
        v_map = np.where(win, np.mod((phi - yaw[:, None, None]) / (2 * np.pi) + 0.5, 1.0), v_map)

    rgb = np.empty((n, height, width, 3), np.float32)
    gy = (ys / height)[None, :, :, None]
    floor = (ys > 0.93 * height)[None, :, :, None]
    rgb[:] = subject.background * (1.05 - 0.2 * gy) * np.where(floor, 0.8, 1.0)
    iuv = np.zeros((n, height, width, 3), np.uint8)
    for k, (_name, _ja, _jb, i_back, i_front, material) in enumerate(PARTS):
        sel = part_map == k
        if not sel.any():
            continue
        u, v, phi = u_map[sel], v_map[sel], phi_map[sel]
        light = 0.72 + 0.28 * np.cos(phi)  # soft Lambertian falloff towards the silhouette
        rgb[sel] = _shade(subject, material, u, v) * light[:, None]
        front = np.cos(2 * np.pi * (v - 0.5)) > 0
        if material == "head":  # DensePose splits the head left/right, not front/back
            front = np.sin(2 * np.pi * (v - 0.5)) > 0
        iuv[..., 0][sel] = np.where(front, i_front, i_back)
        iuv[..., 1][sel] = np.round(u * 255).astype(np.uint8)
        iuv[..., 2][sel] = np.round(v * 255).astype(np.uint8)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), iuv


def video_ids(cfg: SyntheticConfig) -> dict[str, list[str]]:
    return {
        "train": [f"syn_train_{i:03d}" for i in range(cfg.num_train_subjects)],
        "test": [f"syn_test_{i:03d}" for i in range(cfg.num_test_subjects)],
    }


def generate_video(cfg: SyntheticConfig, split: str, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One subject's RGB and IUV arrays; depends only on (seed, split, index), not on the counts."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    subject = make_subject(rng)
    motion = make_motion(rng, cfg.frames_per_video)
    return render_video(subject, motion, cfg.height, cfg.width)


def generate_dataset(cfg: SyntheticConfig, out_dir: Path, seed: int) -> dict[str, Any]:
    """Write the synthetic videos, their IUV and ``download_report.json`` under ``out_dir``.

    Generated into a temporary sibling directory and swapped in on success. Returns a summary.
    """
    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)
    start = time.perf_counter()
    entries = []
    ids = video_ids(cfg)
    try:
        jobs = [(split, i, vid) for split in SPLITS for i, vid in enumerate(ids[split])]
        for split, i, vid in tqdm(jobs, desc="synthetic videos", unit="video", leave=False):
            rgb, iuv = generate_video(cfg, split, i, seed)
            video_path = tmp / "videos" / split / f"{vid}.mp4"
            write_video(rgb, video_path, fps=cfg.fps)
            iuv_path = tmp / "iuv" / split / f"{vid}.npz"
            iuv_path.parent.mkdir(parents=True, exist_ok=True)
            write_iuv_archive(iuv_path, iuv)
            entries.append(
                {
                    "id": vid,
                    "split": split,
                    "status": "ok",
                    "path": f"videos/{split}/{vid}.mp4",
                    "bytes": video_path.stat().st_size,
                    "sha256": sha256_file(video_path),
                    "frames": int(rgb.shape[0]),
                    "iuv": f"iuv/{split}/{vid}.npz",
                }
            )
        report = {
            "source": "synthetic",
            "seed": seed,
            "config": cfg.model_dump(),
            "total": len(entries),
            "downloaded": len(entries),
            "videos": entries,
        }
        (tmp / "download_report.json").write_text(json.dumps(report, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    seconds = time.perf_counter() - start
    return {
        "source": "synthetic",
        "videos": len(entries),
        "train": len(ids["train"]),
        "test": len(ids["test"]),
        "frames": sum(e["frames"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "seconds": round(seconds, 3),
    }
