"""scripts/make_tiny_checkpoint.py writes both layouts, and load_student reads them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.conftest import make_clips
from train.models import load_student, transcribe

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layout", ["hf", "ark"])
def test_make_tiny_checkpoint(tmp_path, layout, tokenizer):
    out = _script("make_tiny_checkpoint").main(["--out", str(tmp_path / layout), "--layout", layout])
    model, processor = load_student(out)
    assert len(processor.tokenizer) == 151670
    assert processor.tokenizer.convert_tokens_to_ids("<|audio|>") == model.config.audio_token_id == 151663
    text = transcribe(model, processor, make_clips([16000]), max_new_tokens=4)
    assert isinstance(text[0], str)


def test_same_seed_same_weights(tmp_path, tokenizer):
    make = _script("make_tiny_checkpoint").main
    a, _ = load_student(make(["--out", str(tmp_path / "a"), "--seed", "3"]))
    b, _ = load_student(make(["--out", str(tmp_path / "b"), "--seed", "3"]))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
