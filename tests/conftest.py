"""Shared fixtures: the real Qwen2.5 vocabulary with ARK specials, tiny students, synthetic clips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = {
    "encoder": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 128, "num_mel_bins": 80},
    "adapter": {"merge_factor": 4, "hidden_size": 64},
    "decoder": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                "max_position_embeddings": 4096},
}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    from train.models.tokenizer import build_qwen25_ark_tokenizer

    return build_qwen25_ark_tokenizer()


def tiny_config(**overrides):
    """The tiny model config as a dict, with nested overrides merged in."""
    import copy

    cfg = copy.deepcopy(TINY)
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def sharpen(model, std: float = 0.3, seed: int = 0):
    """Re-draw weights with a large std so the random model's distributions are peaked and varied
    (at the default 0.02 every next-token distribution is near-uniform and greedy decoding repeats)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std / max(1.0, p.shape[-1] ** 0.5 / 4))
    return model


@pytest.fixture(scope="session")
def tiny_student(tokenizer):
    """(model, processor): a tiny random student in eval mode, sharpened."""
    from train.models import build_student

    torch.manual_seed(0)
    model, processor = build_student(tiny_config())
    return sharpen(model).eval(), processor


def make_clips(lengths, seed: int = 0):
    """Noise-plus-tone clips of the given sample counts at 16 kHz (float32)."""
    rng = np.random.default_rng(seed)
    clips = []
    for n in lengths:
        t = np.arange(n) / 16000
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t)
        clips.append((tone + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return clips


@pytest.fixture(scope="session")
def backend_runs(tmp_path_factory):
    """The same 5 steps on every backend, once a session (tests/backend_runs.py); {name: run folder}."""
    from tests.backend_runs import make_runs

    return make_runs(tmp_path_factory.mktemp("backends"))
