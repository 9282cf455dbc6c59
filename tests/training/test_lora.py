from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreampose.config import SubjectConfig, TrainConfig
from dreampose.models.subject import (
    ADAPTER_FILE,
    DECODER_FILE,
    LORA_FILE,
    SUBJECT_FILE,
    UNET_FILE,
    load_subject_pipeline,
)
from dreampose.training.finetune import finetune_subject
from dreampose.training.loop import make_accelerator, train
from dreampose.training.lora import LoraDiffusionObjective, inject_lora, lora_state_dict, merge_lora
from tests.training.tiny import H, TinyPairs, W, tiny_pipeline, write_workspace

ATTN = (".to_q.", ".to_k.", ".to_v.", ".to_out.0.")


def _unet_inputs(pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, pipe.unet.config.in_channels, H // 2, W // 2, generator=g)
    tokens = torch.randn(2, 3, pipe.unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 500]), tokens


def test_inject_is_a_no_op_until_trained_and_merge_keeps_the_output():
    pipe = tiny_pipeline(seed=0)
    keys = set(pipe.unet.state_dict())
    x, t, tokens = _unet_inputs(pipe)
    with torch.no_grad():
        ref = pipe.unet(x, t, encoder_hidden_states=tokens).sample
    names = inject_lora(pipe.unet, rank=4)
    assert names and all(p.requires_grad == (".lora_" in n) for n, p in pipe.unet.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=tokens).sample, ref)  # B = 0 at start
        for n, p in pipe.unet.named_parameters():
            if ".lora_B" in n:
                p.normal_(0, 0.05)
        with_lora = pipe.unet(x, t, encoder_hidden_states=tokens).sample
    assert not torch.allclose(with_lora, ref)
    state = lora_state_dict(pipe.unet)
    assert all(k.rsplit(".", 2)[-2] in ("lora_A", "lora_B") for k in state)
    assert merge_lora(pipe.unet) == len(state) // 2
    assert set(pipe.unet.state_dict()) == keys  # a plain UNet again
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=tokens).sample, with_lora)


def test_lora_rank_must_be_positive():
    with pytest.raises(ValueError, match="rank must be > 0"):
        inject_lora(tiny_pipeline().unet, rank=0)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    ws = tmp_path_factory.mktemp("lora_ws")
    write_workspace(ws)
    cfg = SubjectConfig(
        unet=TrainConfig(max_steps=12, batch_size=4, lr=1e-2, checkpoint_every=6, gradient_checkpointing=True),
        decoder_steps=2,
        decoder_batch_size=2,
        lora_rank=4,
    )
    out = ws / "models" / "subjects" / "syn_0"
    manifest = ws / "manifests" / "pairs.parquet"
    summary = finetune_subject(cfg, ws / "pretrained", manifest, "syn_0", ws, out, size=(H, W))
    return ws, out, summary


def test_lora_subject_dir_holds_the_lora_delta_and_loads_as_base_plus_merge(lora_run):
    from dreampose.models.pipeline import DreamPosePipeline

    ws, out, summary = lora_run
    assert summary["lora_rank"] == 4 and summary["unet_steps"] == 12
    assert not (out / "unet").exists() and not (out / UNET_FILE).exists()  # no full UNet stored
    lora_file = out / LORA_FILE
    assert summary["lora_bytes"] == lora_file.stat().st_size
    meta = json.loads((out / SUBJECT_FILE).read_text())
    assert meta["unet"] == "lora" and meta["lora"]["rank"] == 4
    assert set(meta["files"]) == {LORA_FILE, ADAPTER_FILE, DECODER_FILE}

    pipe = load_subject_pipeline(out)
    base = DreamPosePipeline.from_pretrained(ws / "pretrained")
    assert set(pipe.unet.state_dict()) == set(base.unet.state_dict())
    lora = {k: v.float() for k, v in load_file(lora_file).items()}
    changed = 0
    for k, v in pipe.unet.state_dict().items():
        if any(a in f".{k}" for a in ATTN) and k.endswith(".weight"):
            # merged weight = base + B @ A (alpha = rank, scale 1), exactly what the LoRA file holds
            stem = k[: -len(".weight")]
            delta = lora[f"{stem}.lora_B.weight"] @ lora[f"{stem}.lora_A.weight"]
            torch.testing.assert_close(v, base.unet.state_dict()[k] + delta, atol=1e-6, rtol=1e-5)
            changed += int(not torch.equal(v, base.unet.state_dict()[k]))
        else:
            assert torch.equal(v, base.unet.state_dict()[k]), f"{k} changed outside the LoRA merge"
    assert changed > 0
    frames = pipe(torch.zeros(3, H, W), torch.zeros(1, 10, H, W), num_inference_steps=2, output_type="np").frames
    assert frames.shape == (1, H, W, 3) and frames.std() > 0


def test_lora_phase_one_lowers_the_loss(lora_run):
    _ws, _out, summary = lora_run
    assert summary["unet_loss_after"] < summary["unet_loss_before"], summary


def test_lora_checkpoints_hold_only_lora_and_adapter_and_resume_exactly(tmp_path):
    from safetensors import safe_open

    cfg = TrainConfig(max_steps=4, batch_size=4, lr=1e-2, checkpoint_every=2, seed=4)

    def run(ckpt: Path, stop_after: int | None = None):
        obj = LoraDiffusionObjective(tiny_pipeline(seed=0), cfg.dropout, rank=2)
        res = train(obj, TinyPairs(8), cfg, ckpt_dir=ckpt, accelerator=make_accelerator("no"), stop_after=stop_after)
        return res, lora_state_dict(obj.unet)

    _, ref = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=3)
    with safe_open(str(tmp_path / "b" / "step_000002" / "model.safetensors"), "pt") as f:
        prefixes = {k.split(".", 1)[0] for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert prefixes == {"unet_lora", "adapter"}
    resumed, weights = run(tmp_path / "b")
    assert resumed.start_step == 2 and weights.keys() == ref.keys()
    assert any(v.abs().sum() > 0 for k, v in ref.items() if "lora_B" in k)  # trained away from B = 0
    for k in ref:
        assert torch.equal(ref[k], weights[k]), k
