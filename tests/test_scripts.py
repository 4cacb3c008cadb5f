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


def test_shipped_toy_checkpoints_are_what_the_demo_starts_from(tokenizer):
    """checkpoints/toy/ holds the teacher, the base student and the distilled students, each with how it was made."""
    import json

    from train.config import DistillConfig, load_config

    cfg = load_config(DistillConfig, ROOT / "configs/distill/toy.yaml")
    assert (cfg.student.checkpoint, cfg.teacher.checkpoint) == ("checkpoints/toy/base", "checkpoints/toy/teacher")
    loaded = {}
    for name in ("teacher", "base", "td", "opd", "td_opd"):
        folder = ROOT / "checkpoints/toy" / name
        made_by = json.loads((folder / "MADE_BY.json").read_text())
        assert made_by["command"].startswith(("bash scripts/reproduce_toy.sh", "python train/")), name
        config = "configs/toy/opd.yaml" if name == "td_opd" else f"configs/toy/{name}.yaml"  # OPD from the TD student
        assert made_by["config"] == config and len(made_by["commit"]) == 40
        assert made_by["wall_seconds"] > 0
        assert not (folder / "rank_digests.json").exists()
        loaded[name] = load_student(folder)
    (teacher, t_proc), (base, b_proc) = loaded["teacher"], loaded["base"]
    assert t_proc.tokenizer.get_vocab() == b_proc.tokenizer.get_vocab()  # same characters: no token mapping
    def size(model):
        return sum(p.numel() for p in model.parameters())

    assert size(teacher) > 2 * size(base)
    for name in ("td", "opd", "td_opd"):  # the base student's shape, prompted with the language as in training
        model, processor = loaded[name]
        assert size(model) == size(base) and processor.language_prompt is True
    text = transcribe(base, b_proc, make_clips([16000]), languages=["de"], max_new_tokens=8)
    assert isinstance(text[0], str)
