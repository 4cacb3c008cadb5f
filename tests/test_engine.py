"""train/engine.py on one process: the precision policy, float32 masters, the schedule and its floor,
clipping, the non-finite skip, and what DeepSpeed's config is made to say. (Every backend against
every other: tests/test_backends.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import tiny_config
from train.config import ConfigError, DistillConfig, ModelConfig, config_from_dict, load_config
from train.engine import (
    Engine,
    _configure_deepspeed,
    build_optimizer,
    keep_float32_masters,
    resolve_mixed_precision,
    storage_dtype,
)
from train.models import build_student

TINY_RUN = "configs/distill/tiny_random_teacher.yaml"


def _run_config(*overrides: str) -> DistillConfig:
    return load_config(DistillConfig, TINY_RUN, list(overrides))


def test_the_precision_follows_the_model_unless_told():
    bf16, fp32 = config_from_dict(ModelConfig, {"dtype": "bfloat16"}), config_from_dict(ModelConfig, {})
    assert resolve_mixed_precision(_run_config(), bf16) == "bf16"
    assert resolve_mixed_precision(_run_config(), fp32) == "no"
    assert resolve_mixed_precision(_run_config("mixed_precision=bf16"), fp32) == "bf16"  # AMP over float32 weights
    assert resolve_mixed_precision(_run_config("mixed_precision=no"), bf16) == "no"
    # Stored as the config says under bf16 compute (frozen parts stay bfloat16), float32 without it.
    assert storage_dtype("bf16", bf16) == "bfloat16" and storage_dtype("no", bf16) == "float32"
    with pytest.raises(ConfigError, match="dtype float16 cannot be trained"):
        resolve_mixed_precision(_run_config(), config_from_dict(ModelConfig, {"dtype": "float16"}))
    with pytest.raises(ConfigError, match="mixed_precision.*fp16 training needs dynamic loss scaling"):
        _run_config("mixed_precision=fp16")


def test_trained_parameters_become_float32_masters(tokenizer):
    model, _ = build_student(tiny_config(dtype="bfloat16"))
    assert keep_float32_masters(model) > 0
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # still tied


def test_cosine_ends_at_its_floor_and_the_floor_needs_a_cosine(tokenizer):
    model, _ = build_student(tiny_config())
    for ratio in (0.0, 0.25):
        cfg = _run_config("max_steps=10", "optim.schedule=cosine", "optim.warmup_steps=2", f"optim.min_lr_ratio={ratio}",
                          "optim.lr=1e-3")
        optimizer, scheduler = build_optimizer(cfg, model)
        lrs = []
        for _ in range(10):
            lrs.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        assert lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])
        assert scheduler.get_last_lr()[0] == pytest.approx(ratio * 1e-3, abs=1e-12)
        assert min(lrs[2:]) >= ratio * 1e-3 - 1e-12
    with pytest.raises(ConfigError, match="optim.min_lr_ratio.*cosine"):
        _run_config("optim.min_lr_ratio=0.1", "optim.schedule=constant")


def test_keys_that_did_nothing_are_gone():
    with pytest.raises(ConfigError, match="log.every"):
        _run_config("log.every=10")


def test_deepspeed_is_told_what_the_run_config_says():
    def plugin(**ds):
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds)))

    accelerator = plugin(gradient_clipping="auto", bf16={"enabled": True})
    _configure_deepspeed(accelerator, _run_config("optim.grad_clip=0.01"))
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    assert ds["gradient_clipping"] == 0.01 and ds["gradient_accumulation_steps"] == 1
    assert ds["bf16"]["check_grad_overflow"] is True  # the non-finite skip relies on DeepSpeed's check
    with pytest.raises(ConfigError, match="gradient_clipping=1.0.*optim.grad_clip"):
        _configure_deepspeed(plugin(gradient_clipping=1.0), _run_config("optim.grad_clip=0.5"))
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=4.*optim.grad_accum"):
        _configure_deepspeed(plugin(gradient_accumulation_steps=4), _run_config())


def _engine(tokenizer, **optim) -> Engine:
    torch.manual_seed(0)
    model, _ = build_student(tiny_config())
    cfg = _run_config("max_steps=4", "optim.schedule=constant", "optim.lr=1e-2", "optim.warmup_steps=0",
                      *[f"optim.{k}={v}" for k, v in optim.items()])
    return Engine(Accelerator(cpu=True), cfg, model.train())


def _loss(engine, scale: float = 1.0):
    def compute():
        ids = torch.tensor([[9707, 1879, 220, 108386]])
        return engine.model(input_ids=ids).logits.float().logsumexp(-1).mean() * scale
    return compute


def test_a_nonfinite_step_changes_nothing_and_does_not_advance_the_schedule(tokenizer):
    engine = _engine(tokenizer, warmup_steps=3)
    engine.step([_loss(engine)])
    weights = {k: v.clone() for k, v in engine.model.state_dict().items()}
    moments = [{k: v.clone() for k, v in s.items()} for s in engine.optimizer.optimizer.state.values()]
    position = engine.state_dict()
    out = engine.step([_loss(engine), _loss(engine, float("nan"))])  # the second micro-batch is not finite
    assert out["nonfinite"] is True
    assert all(torch.equal(v, weights[k]) for k, v in engine.model.state_dict().items())
    for before, after in zip(moments, engine.optimizer.optimizer.state.values()):
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert engine.state_dict() == position
    assert all(p.grad is None or not p.grad.any() for p in engine.model.parameters())  # nothing carried over
    out = engine.step([_loss(engine)])
    assert out["nonfinite"] is False and engine.state_dict()["last_epoch"] == position["last_epoch"] + 1


def test_a_schedule_that_cannot_leave_its_warm_up_is_said_at_start(tokenizer, capsys):
    _engine(tokenizer, warmup_steps=4)  # max_steps=4: the lr never reaches optim.lr
    assert "optim.warmup_steps=4 >= max_steps=4: the schedule never leaves its warm-up" in capsys.readouterr().out
    _engine(tokenizer, warmup_steps=3)
    assert "warm-up" not in capsys.readouterr().out


def test_clipping_bounds_the_update(tokenizer):
    updates = {}
    for clip in (0.0, 1e-3):
        engine = _engine(tokenizer, grad_clip=clip, eps=1.0, betas="[0.0,0.0]")  # plain scaled SGD: g / (|g|+1)
        before = {k: v.clone() for k, v in engine.model.named_parameters() if v.requires_grad}
        out = engine.step([_loss(engine, 100.0)])
        assert out["grad_norm"] > 1.0
        updates[clip] = torch.cat([(p - before[k]).flatten() for k, p in engine.model.named_parameters()
                                   if p.requires_grad])
    assert updates[1e-3].norm() < 0.01 * updates[0.0].norm()


def test_the_memory_keys_reach_the_model(tmp_path, tokenizer, monkeypatch):
    """optim.logits_chunk sizes the head's chunks in the update, student.gradient_checkpointing turns on
    activation checkpointing, teacher.rows_per_forward reaches the teacher: one step of distill."""
    import train.models.student as student_module
    from tests.test_distill import _manifest, _overrides
    from train import distill

    chunks = []
    score_hidden = student_module.score_hidden
    monkeypatch.setattr(student_module, "score_hidden",
                        lambda hidden, head, scored: chunks.append(scored.chunk) or score_hidden(hidden, head, scored))
    built = {}
    build_teacher = distill.build_teacher
    monkeypatch.setattr(distill, "build_teacher", lambda *a: built.setdefault("teacher", build_teacher(*a)))
    train, dev = _manifest(tmp_path / "data", 4), _manifest(tmp_path / "data", 2, name="dev.jsonl")
    cfg = distill.parse_args(_overrides(tmp_path, train, dev, max_steps=1, **{
        "optim.logits_chunk": 7, "student.gradient_checkpointing": True, "teacher.rows_per_forward": 3,
        "eval.listening_clips": 0}))
    result = distill.main(cfg)
    assert result["step"] == 1 and chunks and set(chunks) == {7}
    assert built["teacher"].rows_per_forward == 3
    from train.recipe import build_student_model, student_model_config

    model, _ = build_student_model(cfg, student_model_config(cfg),
                                   SimpleNamespace(mixed_precision="no", device=torch.device("cpu")))
    assert model.is_gradient_checkpointing
