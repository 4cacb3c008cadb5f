"""Every backend takes the same updates: one process, DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP2 (two CPU
processes each) on the same data give the same lr column, gradient norms and weights; a non-finite
step on one rank changes no weight, no optimizer state and no schedule position anywhere; and a
bfloat16 model trains through float32 masters on one process and under DDP. The DDP run decodes with
the static-cache engine (train/decode/static.py), every other run with the eager loop.

Two processes with one micro-batch each see, step by step, the same two batches as one process with
two micro-batches (the sampler deals its batches round-robin), and the loss is normalised by the
step's global token count: so all backends must agree with the one-process run to float noise.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.backend_runs import (BACKENDS, CLIP, FAULT, LR, MIN_LR_RATIO, NAN_STEP, STEPS, WARMUP, checkpoint_tensors,
                                settings_like, step_metrics)
from tests.launch import ROOT, launcher, run
from tests.test_distill import _manifest, _overrides


@pytest.fixture()
def runs(backend_runs):
    """{name: run folder} of the same 5 steps on every backend (tests/backend_runs.py, made once a session)."""
    return backend_runs


def expected_lr(update: int) -> float:
    """Linear warm-up, then a cosine from LR to MIN_LR_RATIO x LR over the remaining updates (0-based)."""
    if update < WARMUP:
        return LR * update / WARMUP
    progress = (update - WARMUP) / (STEPS - WARMUP)
    return LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.slow
def test_lr_column_is_the_schedule_on_every_backend(runs):
    # The skipped step 4 does not advance the schedule: step 5 uses the lr step 4 would have used.
    updates = [0, 1, 2, 3, 3]
    expected = [expected_lr(u) for u in updates]
    for name in ("one", *BACKENDS):
        lrs = [m["lr"] for m in step_metrics(runs[name])]
        assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15), name


@pytest.mark.slow
def test_every_backend_takes_the_same_updates(runs):
    one = step_metrics(runs["one"])
    assert [m["nonfinite"] for m in one] == [False, False, False, True, False]
    assert [m["on_policy"] for m in one] != [1.0] * STEPS and 1.0 in [m["on_policy"] for m in one]
    assert all(m["grad_norm"] > 10 * CLIP for m in one if not m["nonfinite"])  # the clip binds every update
    final_one = load_file(runs["one"] / "final" / "model.safetensors")
    for backend in BACKENDS:
        metrics = step_metrics(runs[backend])
        assert [m["nonfinite"] for m in metrics] == [m["nonfinite"] for m in one], backend
        assert [m["on_policy"] for m in metrics] == [m["on_policy"] for m in one], backend
        for a, b in zip(metrics, one):
            assert a["tokens"] == b["tokens"], backend
            if not b["nonfinite"]:
                assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), backend
                assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), backend
        final = load_file(runs[backend] / "final" / "model.safetensors")
        assert final.keys() == final_one.keys(), backend
        for key in final_one:
            torch.testing.assert_close(final[key], final_one[key], rtol=1e-4, atol=2e-5, msg=f"{backend} {key}")
    # DeepSpeed's engine clips inside its own step: ZeRO-2/3 equal the clipped one-process run above, and
    # that run differs from the unclipped one, so they did clip at optim.grad_clip.
    unclipped = load_file(runs["unclipped"] / "final" / "model.safetensors")
    key = "model.multi_modal_projector.linear_2.weight"
    assert (unclipped[key] - final_one[key]).abs().max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["one", "ddp", "zero2"])
def test_a_nonfinite_step_changes_nothing(runs, name):
    before = checkpoint_tensors(runs[name] / "checkpoints" / f"step-{NAN_STEP - 1}")
    after = checkpoint_tensors(runs[name] / "checkpoints" / f"step-{NAN_STEP}")
    optimizer_state = [k for k in before if "optim" in k and before[k].numel() > 1]
    assert optimizer_state, f"{name}: no optimizer state found in {sorted(before)[:5]}"
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"{name}: the skipped step changed {changed[:5]}"
    # ...while an applied step changes them
    earlier = checkpoint_tensors(runs[name] / "checkpoints" / f"step-{NAN_STEP - 2}")
    assert any(not torch.equal(earlier[k], before[k]) for k in optimizer_state)


def _moved_shares(initial: dict, checkpoint: Path, keys: list[str], eps: float = 1e-8,
                  beta1: float = 0.9) -> tuple[float, float]:
    """Of the trained elements whose first AdamW step is at least lr/2 (|gradient| > eps; the embedding
    rows of tokens the batch never comes near get ~1e-14 and move by ~1e-11, in float32 too), the share
    whose float32 master moved, and the share that would have moved had it been stored in bfloat16."""
    saved = load_file(checkpoint / "model.safetensors")
    state = torch.load(checkpoint / "optimizer.bin", weights_only=True)["state"]  # the test's own file
    moved = in_bf16 = touched = 0
    for index, key in enumerate(keys):  # AdamW's parameter order is the trained parameters' order
        if key not in saved:  # a tied head is saved once, as the embedding
            continue
        got_gradient = state[index]["exp_avg"].abs() / (1 - beta1) > eps  # the bias-corrected first step
        before, after = initial[key].float(), saved[key]
        touched += int(got_gradient.sum())
        moved += int(((after != before) & got_gradient).sum())
        in_bf16 += int(((after.to(torch.bfloat16).float() != before) & got_gradient).sum())
    return moved / touched, in_bf16 / touched


@pytest.mark.slow
def test_a_bfloat16_model_trains_float32_masters(tmp_path, tokenizer):
    """At lr 1e-5 an AdamW step moves a weight of ~0.02-0.3 by ~1e-5: below bfloat16's spacing there,
    so without float32 masters most of it would round away (15 % of elements moved, measured)."""
    train = _manifest(tmp_path / "data", 8, seconds=lambda i: 1.0)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    model = tmp_path / "tiny_bf16.yaml"
    model.write_text((ROOT / "configs/models/tiny.yaml").read_text().replace("dtype: float32", "dtype: bfloat16"))
    common = {"max_steps": 1, "student.model": model, "optim.lr": 1e-5, "checkpoint.every": 1,
              "data.max_batch_size": 2, "data.max_batch_seconds": 100.0}
    # Each in its own process: accelerate keeps one precision per process.
    distill = str(ROOT / "train" / "distill.py")
    for name, cmd in (("one", [sys.executable, distill] + _overrides(tmp_path / "one", train, dev, **common)),
                      ("ddp", launcher("ddp") + [distill] + _overrides(tmp_path / "ddp", train, dev, **common))):
        out = run(cmd)
        assert out.returncode == 0, f"{name}:\n{out.stderr[-3000:]}"

    from tests.conftest import tiny_config
    from train.models import build_student

    torch.manual_seed(0)  # the recipe's seed: the student's initial (bfloat16) weights
    initial, _ = build_student(tiny_config(dtype="bfloat16"))
    initial_sd = initial.state_dict()
    trained_keys = [k for k, p in initial.named_parameters() if p.requires_grad]
    for name in ("one", "ddp"):
        checkpoint = tmp_path / name / "run" / "checkpoints" / "step-1"
        saved = load_file(checkpoint / "model.safetensors")
        assert all(saved[k].dtype == torch.float32 for k in trained_keys if k in saved), name  # the masters
        assert saved["model.audio_tower.conv1.weight"].dtype == torch.bfloat16  # frozen: the config's dtype
        moved, would_have_moved_in_bf16 = _moved_shares(initial_sd, checkpoint, trained_keys)
        assert moved >= 0.99, f"{name}: only {moved:.1%} of the trained elements moved"
        assert would_have_moved_in_bf16 < 0.5, name  # what the masters are for
        final = load_file(tmp_path / name / "run" / "final" / "model.safetensors")
        assert {v.dtype for v in final.values()} == {torch.bfloat16}, name  # deployed in the config's dtype


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["zero3", "fsdp2"])
def test_a_sharded_run_resumes_to_the_same_weights(runs, backend, tmp_path):
    """Resume from the step-3 checkpoint of the run above (sharded weights and optimizer state) into a
    new folder: the last two steps (one skipped, one applied) end bitwise where the run itself ended."""
    source = runs[backend]
    args = settings_like(source, tmp_path, backend, resume=source / "checkpoints" / "step-3")
    out = run(launcher(backend) + [str(ROOT / "train" / "distill.py")] + args, env_extra=FAULT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout + out.stderr
    assert [m["step"] for m in step_metrics(tmp_path / "run")] == [4, 5]
    a = load_file(source / "final" / "model.safetensors")
    b = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
