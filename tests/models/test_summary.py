"""Parameter counts from the meta device agree with a real model and with ARK-ASR-3B's published size."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import tiny_config
from train.config import ModelConfig, config_from_dict, load_config
from train.models import build_student
from train.models.summary import main, parameter_counts

ROOT = Path(__file__).resolve().parents[2]


def test_ark_asr_3b_is_3_75_billion():
    counts = parameter_counts(load_config(ModelConfig, ROOT / "configs/models/ark_asr_3b.yaml"))
    assert abs(counts["total"] - 3.75e9) / 3.75e9 < 0.01
    assert counts["total"] == counts["encoder"] + counts["adapter"] + counts["decoder"]
    # Independent arithmetic for the adapter: 5120->4096 and 4096->2048 with biases.
    assert counts["adapter"] == 5120 * 4096 + 4096 + 4096 * 2048 + 2048
    # Whisper-large-v3 encoder without its positional table: per layer 4 attn projections (k has no bias),
    # 2 LayerNorms, FFN 1280->5120->1280; two convs; final LayerNorm.
    d, f = 1280, 5120
    layer = 4 * d * d + 3 * d + 2 * 2 * d + d * f + f + f * d + d
    convs = 128 * d * 3 + d + d * d * 3 + d
    assert counts["encoder"] == 32 * layer + convs + 2 * d
    assert counts["trainable"] == counts["adapter"] + counts["decoder"]


def test_tiny_counts_equal_a_built_model(tokenizer):
    cfg = config_from_dict(ModelConfig, tiny_config())
    counts = parameter_counts(cfg)
    model, _ = build_student(cfg)
    unique = {id(p): p for p in model.parameters()}.values()
    assert counts["total"] == sum(p.numel() for p in unique)
    assert counts["trainable"] == sum(p.numel() for p in unique if p.requires_grad)


def test_lora_trainable_count(tokenizer):
    cfg = config_from_dict(ModelConfig, tiny_config(lora={"enabled": True, "r": 4}))
    counts = parameter_counts(cfg)
    model, _ = build_student(cfg)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["trainable"] < counts["decoder"]


def test_cli_prints_json(capsys):
    counts = main([str(ROOT / "configs/models/tiny.yaml"), "train_encoder=true"])
    out = capsys.readouterr().out
    assert '"total"' in out and counts["trainable"] == counts["total"]
    assert isinstance(torch.tensor(counts["encoder"]).item(), int)
