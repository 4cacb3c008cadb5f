"""train/sft.py: trains a tiny student, lowers its loss on repeated data, and resumes exactly."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.test_distill import _manifest
from train.sft import main, parse_args


def _args(tmp_path, train, dev, **extra):
    base = {"output_dir": str(tmp_path / "run"), "max_steps": 4, "data.train": f"[{{path: {train}}}]",
            "data.dev": f"[{{path: {dev}}}]", "data.num_workers": 0, "data.max_batch_seconds": 4.0,
            "data.max_batch_size": 4, "eval.every": 0, "eval.max_new_tokens": 4, "log.wandb_mode": "disabled",
            "checkpoint.every": 2, "optim.lr": 3e-3, "optim.warmup_steps": 0,
            "optim.schedule": "constant"}  # a cosine schedule follows max_steps, which the resume test changes
    base.update(extra)
    return parse_args(["--config", "configs/sft/toy.yaml"] + [f"{k}={v}" for k, v in base.items()])


def test_sft_trains_and_resumes_exactly(tmp_path, tokenizer):
    train = _manifest(tmp_path / "data", 8)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    main(_args(tmp_path / "straight", train, dev, max_steps=12))
    losses = [json.loads(x)["loss"] for x in (tmp_path / "straight/run/metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])  # 8 clips seen over and over: it learns
    main(_args(tmp_path / "resumed", train, dev, max_steps=6, **{"checkpoint.every": 3}))
    main(_args(tmp_path / "resumed", train, dev, max_steps=12, **{"checkpoint.every": 3}))
    a = load_file(tmp_path / "straight/run/final/model.safetensors")
    b = load_file(tmp_path / "resumed/run/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "resumed/run/eval/step-12.json").exists()


def test_adapter_only_alignment_trains_only_the_adapter(tmp_path, tokenizer):
    train = _manifest(tmp_path / "data", 4)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    model_cfg = tmp_path / "adapter_only.yaml"
    model_cfg.write_text(open("configs/models/tiny.yaml").read() + "train_decoder: false\ntrain_encoder: false\n")
    main(_args(tmp_path, train, dev, max_steps=2, **{"student.model": model_cfg}))
    from tests.conftest import tiny_config
    from train.models import build_student

    torch.manual_seed(0)
    initial = build_student(tiny_config())[0].state_dict()
    final = load_file(tmp_path / "run/final/model.safetensors")
    changed = {k for k in final if not torch.equal(final[k], initial[k])}
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)
