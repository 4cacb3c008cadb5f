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

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import ROOT, launcher, run
from tests.test_distill import _manifest, _overrides
from train.distill import main, parse_args

STEPS, NAN_STEP, WARMUP, LR, MIN_LR_RATIO, CLIP = 5, 4, 2, 1e-3, 0.1, 0.01
BACKENDS = ("ddp", "zero2", "zero3", "fsdp2")


def _untied_tiny(folder: Path) -> Path:
    """ZeRO-3 refuses tied embeddings, so every backend here uses the untied tiny student."""
    path = folder / "tiny_untied.yaml"
    path.write_text((ROOT / "configs/models/tiny.yaml").read_text().replace(
        "  max_position_embeddings: 4096", "  max_position_embeddings: 4096\n  tie_word_embeddings: false"))
    return path


def _settings(folder: Path, train: Path, dev: Path, model: Path, **extra) -> list[str]:
    # GKD's lambda = 0.5: on-policy and reference steps both occur, with the same coin on every rank (under
    # ZeRO-3 a rank that ran other forwards than the others would hang). eps 1e-4 makes AdamW's update
    # depend on the gradient's scale, so clipping at 0.01 shows in the weights.
    return _overrides(folder, train, dev, **{
        "max_steps": STEPS, "student.model": model, "data.max_batch_size": 2, "data.max_batch_seconds": 100.0,
        "optim.schedule": "cosine", "optim.warmup_steps": WARMUP, "optim.min_lr_ratio": MIN_LR_RATIO,
        "optim.lr": LR, "optim.grad_clip": CLIP, "optim.eps": 1e-4, "opd.on_policy_fraction": 0.5,
        "checkpoint.every": 1, "checkpoint.keep_last": STEPS, **extra})


def _metrics(run_dir: Path) -> list[dict]:
    return [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 5 steps on every backend (step 4: a NaN loss on the last rank), and one process without
    clipping; returns {name: run folder}."""
    tmp = tmp_path_factory.mktemp("backends")
    train, dev = _manifest(tmp / "data", 12, seconds=lambda i: 1.0), _manifest(tmp / "data", 2, name="dev.jsonl")
    model = _untied_tiny(tmp)
    fault = {"ARK_OPD_NAN_AT_STEP": str(NAN_STEP)}
    folders = {}
    for backend in BACKENDS:
        # DDP decodes its rollouts with the static-cache engine, the others with the eager reference: the
        # one-process run (eager) is then the reference for both engines under several processes too.
        args = _settings(tmp / backend, train, dev, model, **({"decode.engine": "static"} if backend == "ddp" else {}))
        out = run(launcher(backend) + [str(ROOT / "train" / "distill.py")] + args, env_extra=fault)
        assert out.returncode == 0, f"{backend}:\n{out.stderr[-3000:]}"
        assert ("decode engine: static" in out.stdout) == (backend == "ddp"), backend
        folders[backend] = tmp / backend / "run"
    os.environ.update(fault)
    try:
        main(parse_args(_settings(tmp / "one", train, dev, model, **{"optim.grad_accum": 2})))
        main(parse_args(_settings(tmp / "unclipped", train, dev, model, **{"optim.grad_accum": 2,
                                                                            "optim.grad_clip": 0.0})))
    finally:
        del os.environ["ARK_OPD_NAN_AT_STEP"]
    folders.update(one=tmp / "one" / "run", unclipped=tmp / "unclipped" / "run")
    return folders


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
        lrs = [m["lr"] for m in _metrics(runs[name])]
        assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15), name


@pytest.mark.slow
def test_every_backend_takes_the_same_updates(runs):
    one = _metrics(runs["one"])
    assert [m["nonfinite"] for m in one] == [False, False, False, True, False]
    assert [m["on_policy"] for m in one] != [1.0] * STEPS and 1.0 in [m["on_policy"] for m in one]
    assert all(m["grad_norm"] > 10 * CLIP for m in one if not m["nonfinite"])  # the clip binds every update
    final_one = load_file(runs["one"] / "final" / "model.safetensors")
    for backend in BACKENDS:
        metrics = _metrics(runs[backend])
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


def _tensors(obj, prefix=""):
    """Every tensor in a nested state (dicts, lists), by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def _checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Weights and optimizer state of a checkpoint, whatever the backend wrote (the test's own files)."""
    found = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.suffix == ".safetensors":
            found.update({f"{path.name}/{k}": v for k, v in load_file(path).items()})
        elif path.suffix in (".bin", ".pt"):
            found.update({f"{path.name}{k}": v for k, v in _tensors(torch.load(path, weights_only=False))})
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", ["one", "ddp", "zero2"])
def test_a_nonfinite_step_changes_nothing(runs, name):
    before = _checkpoint_tensors(runs[name] / "checkpoints" / f"step-{NAN_STEP - 1}")
    after = _checkpoint_tensors(runs[name] / "checkpoints" / f"step-{NAN_STEP}")
    optimizer_state = [k for k in before if "optim" in k and before[k].numel() > 1]
    assert optimizer_state, f"{name}: no optimizer state found in {sorted(before)[:5]}"
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"{name}: the skipped step changed {changed[:5]}"
    # ...while an applied step changes them
    earlier = _checkpoint_tensors(runs[name] / "checkpoints" / f"step-{NAN_STEP - 2}")
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
    shared = source.parents[1]  # the data and model config of the runs above
    args = _settings(tmp_path, shared / "data" / "train.jsonl", shared / "data" / "dev.jsonl",
                     shared / "tiny_untied.yaml", resume=source / "checkpoints" / "step-3")
    out = run(launcher(backend) + [str(ROOT / "train" / "distill.py")] + args,
              env_extra={"ARK_OPD_NAN_AT_STEP": str(NAN_STEP)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout + out.stderr
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [4, 5]
    a = load_file(source / "final" / "model.safetensors")
    b = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
