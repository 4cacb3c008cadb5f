"""train/sft.py: trains a tiny student, lowers its loss on repeated data, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.test_distill import _manifest
from train.config import ConfigError
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


def _metrics(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("source", ["encoder", "adapter"])
def test_ctc_head_trains_resumes_and_stays_out_of_the_saved_model(tmp_path, tokenizer, source):
    train = _manifest(tmp_path / "data", 8)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    model_cfg = tmp_path / "with_encoder.yaml"
    model_cfg.write_text(open("configs/models/tiny.yaml").read() + "train_encoder: true\n")
    ctc = {"ctc.weight": 0.5, "ctc.source": source, "student.model": model_cfg}
    main(_args(tmp_path / "straight", train, dev, max_steps=12, **ctc))
    steps = _metrics(tmp_path / "straight/run")
    assert all(s["loss"] == pytest.approx(s["nll"] + 0.5 * s["ctc"], rel=1e-6) for s in steps)
    assert sum(s["ctc"] for s in steps[-3:]) < sum(s["ctc"] for s in steps[:3])  # the head learns
    main(_args(tmp_path / "resumed", train, dev, max_steps=6, **ctc, **{"checkpoint.every": 3}))
    main(_args(tmp_path / "resumed", train, dev, max_steps=12, **ctc, **{"checkpoint.every": 3}))
    a = load_file(tmp_path / "straight/run/final/model.safetensors")
    b = load_file(tmp_path / "resumed/run/final/model.safetensors")
    assert not any("ctc" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the head's and its optimiser state resumed too
    from train.models import load_student

    assert load_student(tmp_path / "straight/run/final")[0].config.text_config.vocab_size > 0


def test_ctc_batch_8_x_accum_1_equals_batch_2_x_accum_4(tmp_path, tokenizer):
    train = _manifest(tmp_path / "data", 8, seconds=lambda i: 1.0)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    model_cfg = tmp_path / "with_encoder.yaml"
    model_cfg.write_text(open("configs/models/tiny.yaml").read() + "train_encoder: true\n")
    common = {"max_steps": 1, "ctc.weight": 1.0, "student.model": model_cfg, "data.max_batch_seconds": 100.0,
              "checkpoint.every": 1, "optim.lr": 1e-3}
    main(_args(tmp_path / "a", train, dev, **common, **{"data.max_batch_size": 8}))
    main(_args(tmp_path / "b", train, dev, **common, **{"data.max_batch_size": 2, "optim.grad_accum": 4}))
    ma, mb = _metrics(tmp_path / "a/run")[0], _metrics(tmp_path / "b/run")[0]
    assert ma["ctc"] == pytest.approx(mb["ctc"], rel=1e-5) and ma["nll"] == pytest.approx(mb["nll"], rel=1e-5)
    a = load_file(tmp_path / "a/run/final/model.safetensors")
    b = load_file(tmp_path / "b/run/final/model.safetensors")
    for key in a:  # tolerance as in test_distill's accumulation test (Adam amplifies float32 order noise)
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=5e-6)


def _without_text(path, name: str, text: str | None = None):
    """A copy of the manifest with every transcript removed (or replaced by `text`)."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows = [{**{k: v for k, v in r.items() if k != "text"}, **({} if text is None else {"text": text}),
             "id": f"{name}-{r['id']}"} for r in rows]
    out = path.with_name(name)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_an_unlabelled_clip_costs_the_labelled_clips_of_its_batch_nothing(tmp_path, tokenizer, capsys):
    good = _manifest(tmp_path / "data", 1)
    dev = _manifest(tmp_path / "data", 1, name="dev.jsonl")
    mixed = tmp_path / "data" / "mixed.jsonl"  # the good line, and the same clip with an empty transcript
    mixed.write_text(good.read_text() + _without_text(good, "empty.jsonl", text="").read_text())
    main(_args(tmp_path, mixed, dev, max_steps=1, **{"checkpoint.every": 1}))
    assert f"warning: data.train: {mixed}: 1 of 2 lines have no transcript: dropped from this supervised stage" \
        in capsys.readouterr().out
    step = _metrics(tmp_path / "run")[0]
    text = json.loads(good.read_text())["text"]
    alone = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # the good clip's tokens and EOS
    assert step["tokens"] == alone and step["loss"] > 0  # it was tokens 1, loss 0: nothing trained


def test_sft_on_audio_without_transcripts_fails_before_building_a_model(tmp_path, monkeypatch):
    import train.sft

    pool = _without_text(_manifest(tmp_path / "data", 2), "pool.jsonl")
    dev = _manifest(tmp_path / "data", 1, name="dev.jsonl")
    monkeypatch.setattr(train.sft, "build_student_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(ConfigError, match=f"no line of {pool} has a transcript.*train/transcribe.py.*train/distill.py"):
        main(_args(tmp_path, pool, dev))
    assert not (tmp_path / "run").exists()


def _random_states(checkpoint) -> dict:
    """The random states accelerate saved in a checkpoint (Python, NumPy, torch), comparable with ==."""
    state = torch.load(checkpoint / "random_states_0.pkl", weights_only=False)
    numpy = state["numpy_random_seed"]
    return {"python": state["random_state"], "numpy": (numpy[0], numpy[1].tolist(), *numpy[2:]),
            "torch": state["torch_manual_seed"].tolist()}


def test_the_starting_evaluation_is_step_0_and_draws_no_training_randomness(tmp_path, tokenizer, monkeypatch):
    """eval.on_start (the default) evaluates the starting model at step 0: first in the history and the
    plot. It puts back every random state it drew from, so the run checkpoints and trains exactly as with
    eval.on_start=false, which leaves step 0 out."""
    import random

    import numpy as np

    from train import recipe

    real = recipe.run_dev_eval

    def drawing(*args, **kwargs):  # an evaluation that draws from every generator a checkpoint saves
        random.random(), np.random.rand(), torch.rand(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "run_dev_eval", drawing)
    train = _manifest(tmp_path / "data", 4)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    for name, on_start in (("on", "true"), ("off", "false")):
        main(_args(tmp_path / name, train, dev, max_steps=2, **{"checkpoint.every": 1, "eval.on_start": on_start}))
    on, off = tmp_path / "on/run", tmp_path / "off/run"
    history = {r: [json.loads(x)["step"] for x in (r / "eval/history.jsonl").read_text().splitlines()] for r in (on, off)}
    assert history == {on: [0, 2], off: [2]}
    assert (on / "eval/step-0.json").exists() and not (off / "eval/step-0.json").exists()
    for step in (1, 2):
        assert _random_states(on / f"checkpoints/step-{step}") == _random_states(off / f"checkpoints/step-{step}")
    a, b = load_file(on / "final/model.safetensors"), load_file(off / "final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
