"""The same 5 distillation steps on every backend, made once a test session (the `backend_runs` fixture in
tests/conftest.py): one process, DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP2, two CPU processes each, with a NaN
loss on the last rank at step 4 and a checkpoint after every step. tests/test_backends.py compares them with
each other; tests/faults/test_preemption.py stops runs with the same settings by a signal and compares their
resumes with these, so no fault test pays for an uninterrupted run of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.launch import ROOT, launcher, run
from tests.test_distill import _manifest, _overrides

STEPS, NAN_STEP, WARMUP, LR, MIN_LR_RATIO, CLIP = 5, 4, 2, 1e-3, 0.1, 0.01
EVAL_EVERY = 2  # a dev history with points before and after any step a fault test stops at
BACKENDS = ("ddp", "zero2", "zero3", "fsdp2")
FAULT = {"ARK_OPD_NAN_AT_STEP": str(NAN_STEP)}


def untied_tiny(folder: Path) -> Path:
    """ZeRO-3 refuses tied embeddings, so every backend here uses the untied tiny student."""
    path = folder / "tiny_untied.yaml"
    path.write_text((ROOT / "configs/models/tiny.yaml").read_text().replace(
        "  max_position_embeddings: 4096", "  max_position_embeddings: 4096\n  tie_word_embeddings: false"))
    return path


def settings(folder: Path, train: Path, dev: Path, model: Path, **extra) -> list[str]:
    # GKD's lambda = 0.5: on-policy and reference steps both occur, with the same coin on every rank (under
    # ZeRO-3 a rank that ran other forwards than the others would hang). eps 1e-4 makes AdamW's update
    # depend on the gradient's scale, so clipping at 0.01 shows in the weights.
    return _overrides(folder, train, dev, **{
        "max_steps": STEPS, "student.model": model, "data.max_batch_size": 2, "data.max_batch_seconds": 100.0,
        "optim.schedule": "cosine", "optim.warmup_steps": WARMUP, "optim.min_lr_ratio": MIN_LR_RATIO,
        "optim.lr": LR, "optim.grad_clip": CLIP, "optim.eps": 1e-4, "opd.on_policy_fraction": 0.5,
        "checkpoint.every": 1, "checkpoint.keep_last": STEPS, "eval.every": EVAL_EVERY, **extra})


def backend_extra(backend: str) -> dict:
    """DDP decodes its rollouts with the static-cache engine, the others with the eager reference: the
    one-process run (eager) is then the reference for both engines under several processes too."""
    return {"decode.engine": "static"} if backend == "ddp" else {}


def settings_like(run_dir: Path, folder: Path, backend: str, **extra) -> list[str]:
    """The settings of `backend`'s run in `run_dir` (its data and model), writing to `folder` instead."""
    shared = run_dir.parents[1]
    return settings(folder, shared / "data" / "train.jsonl", shared / "data" / "dev.jsonl",
                    shared / "tiny_untied.yaml", **{**backend_extra(backend), **extra})


def make_runs(tmp: Path) -> dict[str, Path]:
    """Every backend's run, one process's (two micro-batches) and one without clipping; {name: run folder}."""
    from train.distill import main, parse_args

    train, dev = _manifest(tmp / "data", 12, seconds=lambda i: 1.0), _manifest(tmp / "data", 2, name="dev.jsonl")
    model = untied_tiny(tmp)
    folders = {}
    for backend in BACKENDS:
        args = settings(tmp / backend, train, dev, model, **backend_extra(backend))
        out = run(launcher(backend) + [str(ROOT / "train" / "distill.py")] + args, env_extra=FAULT)
        assert out.returncode == 0, f"{backend}:\n{out.stderr[-3000:]}"
        assert ("decode engine: static" in out.stdout) == (backend == "ddp"), backend
        folders[backend] = tmp / backend / "run"
    os.environ.update(FAULT)
    try:
        main(parse_args(settings(tmp / "one", train, dev, model, **{"optim.grad_accum": 2})))
        main(parse_args(settings(tmp / "unclipped", train, dev, model, **{"optim.grad_accum": 2,
                                                                           "optim.grad_clip": 0.0})))
    finally:
        del os.environ["ARK_OPD_NAN_AT_STEP"]
    folders.update(one=tmp / "one" / "run", unclipped=tmp / "unclipped" / "run")
    return folders


def step_metrics(run_dir: Path) -> list[dict]:
    return [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


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


def checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Weights and optimizer state of a checkpoint, whatever the backend wrote (the test's own files)."""
    found = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.suffix == ".safetensors":
            found.update({f"{path.name}/{k}": v for k, v in load_file(path).items()})
        elif path.suffix in (".bin", ".pt"):
            found.update({f"{path.name}{k}": v for k, v in _tensors(torch.load(path, weights_only=False))})
    return found
