"""train/distill.py end to end on tiny models: run folder, accumulation invariance, resume after SIGKILL.
The backends (DDP, ZeRO-2/3, FSDP2) are compared in tests/test_backends.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.data.audio_files import sine, write
from tests.launch import run
from train.config import ConfigError
from train.distill import main, parse_args

ROOT = Path(__file__).resolve().parents[1]


def _manifest(folder: Path, n: int, seconds=lambda i: 0.6 + 0.1 * (i % 5), name="train.jsonl") -> Path:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "fox"]
    rows = []
    for i in range(n):
        write(folder / f"{name}-{i}.wav", sine(150 + 37 * i, seconds(i)))
        rows.append({"audio": f"{name}-{i}.wav", "text": f"{words[i % 6]} {words[(i * 5) % 6]}", "language": "en",
                     "id": f"{name}-{i}", "duration": seconds(i)})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _overrides(tmp_path: Path, train: Path, dev: Path, **extra) -> list[str]:
    base = {"output_dir": str(tmp_path / "run"), "max_steps": 3, "data.train": f"[{{path: {train}}}]",
            "data.dev": f"[{{path: {dev}}}]", "data.num_workers": 0, "data.max_batch_seconds": 4.0,
            "data.max_batch_size": 4, "opd.max_new_tokens": 6, "opd.k": 8, "eval.every": 0,
            "eval.max_new_tokens": 6, "log.wandb_mode": "disabled", "checkpoint.every": 2, "teacher.init_std": 3.0,
            "optim.lr": 1e-3, "optim.warmup_steps": 0, "optim.schedule": "constant"}
    base.update(extra)
    return ["--config", str(ROOT / "configs/distill/tiny_random_teacher.yaml")] + [f"{k}={v}" for k, v in base.items()]


@pytest.fixture()
def data(tmp_path):
    return _manifest(tmp_path / "data", 12), _manifest(tmp_path / "data", 4, name="dev.jsonl")


def test_run_folder_and_final_model(tmp_path, data, tokenizer, capsys):
    result = main(parse_args(_overrides(tmp_path, *data)))
    assert "decode engine: eager (no CUDA device)" in capsys.readouterr().out  # decode.engine=auto, said
    run = tmp_path / "run"
    assert result["step"] == 3
    assert (run / "config.yaml").exists() and (run / "eval" / "step-3.json").exists()
    assert (run / "plots" / "dev_error_rate.png").exists()
    assert _history_steps(run / "eval" / "history.jsonl") == [0, 3]  # the starting model (eval.on_start), the end
    assert (run / "skipped.jsonl").read_text() == ""  # every clip was usable
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(m["loss"] > 0 and m["tokens"] > 0 and 0 <= m["agreement"] <= 1 for m in steps)
    assert {"rollout_length", "eos_rate", "lr", "step_seconds", "skipped_files", "kl"} <= set(steps[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-3"]
    from train.models import load_student

    model, _ = load_student(run / "final")
    assert model.config.text_config.hidden_size == 32


def test_bad_config_fails_before_any_compute(tmp_path, data):
    with pytest.raises(ConfigError, match="opd.n_samples"):
        parse_args(_overrides(tmp_path, *data, **{"opd.n_samples": 0}))
    with pytest.raises(ConfigError, match="opd.k"):
        parse_args(_overrides(tmp_path, *data, **{"opd.k": 0}))
    with pytest.raises(ConfigError, match="opd.lossy"):
        parse_args(_overrides(tmp_path, *data, **{"opd.lossy": 1}))
    with pytest.raises(ConfigError, match="opd.do_sample"):  # reverse KL's estimator needs samples
        parse_args(_overrides(tmp_path, *data, **{"opd.loss": "reverse_kl", "opd.do_sample": False}))
    with pytest.raises(ConfigError, match="data.dev: .*missing-dev.jsonl: no such manifest"):
        main(parse_args(_overrides(tmp_path, data[0], tmp_path / "missing-dev.jsonl")))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_gkd_ramp_starts_off_policy_and_is_logged(tmp_path, data, tokenizer):
    """opd.on_policy_ramp_steps: early steps learn from the transcripts, later ones from rollouts; every step
    logs its lambda and the side it took. Without the ramp, lambda = 1 makes every step on-policy."""
    steps = 6
    main(parse_args(_overrides(tmp_path, *data, max_steps=steps, **{"opd.on_policy_ramp_steps": steps})))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "loss" in m]
    assert [m["gkd_lambda"] for m in logged] == pytest.approx([s / steps for s in range(1, steps)] + [1.0])
    assert logged[-1]["on_policy"] == 1.0 and 0.0 in [m["on_policy"] for m in logged]
    flat = main(parse_args(_overrides(tmp_path / "flat", *data, max_steps=2)))
    assert flat["step"] == 2
    flat_logged = [json.loads(line) for line in (tmp_path / "flat" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["on_policy"] for m in flat_logged if "loss" in m] == [1.0, 1.0]


def test_a_transcript_term_on_an_unlabelled_pool_is_refused_before_any_compute(tmp_path, data):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "text"}) + "\n"
                            for line in data[0].read_text().splitlines()))
    for line in data[0].read_text().splitlines():  # the pool's audio, where its relative paths point
        name = json.loads(line)["audio"]
        (tmp_path / name).write_bytes((data[0].parent / name).read_bytes())
    for key, value in (("opd.ce_weight", 0.1), ("opd.on_policy_fraction", 0.5),
                       ("opd.on_policy_ramp_steps", 4)):
        with pytest.raises(ConfigError, match=f"{key}: no clip of data.train .*pool.jsonl.* has a transcript"):
            main(parse_args(_overrides(tmp_path, pool, data[1], **{key: value})))
        assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _final_params(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


@pytest.mark.parametrize("loss,ce_weight,do_sample", [("union_topk_kl", 0.0, False), ("reverse_kl", 0.0, True),
                                                       ("union_topk_kl", 0.5, False), ("jsd", 0.0, True)])
def test_batch_8_x_accum_1_equals_batch_2_x_accum_4(tmp_path, tokenizer, loss, ce_weight, do_sample):
    # equal audio lengths: the same 8 clips either way; transcripts of 3-7 letter words, so with ce_weight
    # a per-micro-batch mean of the reference cross-entropy would differ from the step's token mean.
    # Sampled rollouts are keyed by clip, so the two layouts sample the same transcripts.
    train = _manifest(tmp_path / "data", 8, seconds=lambda i: 1.0)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    common = {"max_steps": 1, "opd.loss": loss, "data.max_batch_seconds": 100.0, "checkpoint.every": 1,
              "opd.ce_weight": ce_weight, "opd.do_sample": do_sample, "optim.eps": 1e-6}
    main(parse_args(_overrides(tmp_path / "a", train, dev, **common, **{"data.max_batch_size": 8})))
    main(parse_args(_overrides(tmp_path / "b", train, dev, **common, **{"data.max_batch_size": 2,
                                                                         "optim.grad_accum": 4})))
    a, b = _final_params(tmp_path / "a" / "run"), _final_params(tmp_path / "b" / "run")
    for key in a:
        # float32 sums in another order: equal to 1 % of one lr=1e-3 step, which moves every weight by about lr
        # (another sample or a per-micro-batch mean moves them by ~1e-3). optim.eps=1e-6 keeps Adam from turning
        # ~1e-9 gradient noise on near-zero gradients into update noise (g / (|g| + eps) is linear there).
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    # ... and the step did something: the adapter moved away from its (seeded) initial weights
    from tests.conftest import tiny_config
    from train.models import build_student

    torch.manual_seed(0)
    initial, _ = build_student(tiny_config())
    key = "model.multi_modal_projector.linear_2.weight"
    assert not torch.allclose(a[key], initial.state_dict()[key])
    steps = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) == 1 and steps[0]["tokens"] == json.loads(
        (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()[0])["tokens"]
    assert ("kl" in steps[0]) == (loss == "union_topk_kl")  # logged only where the loss scores the union top-k
    if ce_weight:  # the cross-entropy term took part: without it the same step ends elsewhere
        main(parse_args(_overrides(tmp_path / "c", train, dev, **{**common, "opd.ce_weight": 0.0},
                                   **{"data.max_batch_size": 8})))
        assert not torch.allclose(a[key], _final_params(tmp_path / "c" / "run")[key])


def _run(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, str(ROOT / "train" / "distill.py")] + args, env_extra)


@pytest.mark.slow
def test_sigkill_mid_step_then_resume_ends_bitwise_equal(tmp_path, data, tokenizer):
    straight = _run(_overrides(tmp_path / "straight", *data, max_steps=4))
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _run(_overrides(tmp_path / "killed", *data, max_steps=4), {"ARK_OPD_KILL_AT_STEP": "3"})
    assert killed.returncode == -9  # SIGKILL during step 3, after checkpoint step-2
    assert not (tmp_path / "killed" / "run" / "final").exists()
    resumed = _run(_overrides(tmp_path / "killed", *data, max_steps=4))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _final_params(tmp_path / "straight" / "run"), _final_params(tmp_path / "killed" / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero3_with_tied_embeddings_is_refused():
    from types import SimpleNamespace

    from train.distill import refuse_zero3_with_tied_embeddings

    zero3 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    zero2 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)))
    tied = SimpleNamespace(config=SimpleNamespace(tie_word_embeddings=True))
    untied = SimpleNamespace(config=SimpleNamespace(tie_word_embeddings=False))
    with pytest.raises(ValueError, match="zero2.yaml"):
        refuse_zero3_with_tied_embeddings(zero3, tied)
    refuse_zero3_with_tied_embeddings(zero3, untied)
    refuse_zero3_with_tied_embeddings(zero2, tied)


def test_nonfinite_losses_skip_steps_then_stop_with_the_checkpoint_intact(tmp_path, data, tokenizer, monkeypatch):
    main(parse_args(_overrides(tmp_path, *data, max_steps=2, **{"checkpoint.every": 1, "eval.every": 0})))
    saved = load_file(tmp_path / "run" / "checkpoints" / "step-2" / "model.safetensors")
    import train.opd.step as step_module

    real = step_module.distillation_loss
    monkeypatch.setattr(step_module, "distillation_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row at step 5"):
        main(parse_args(_overrides(tmp_path, *data, max_steps=10, max_nonfinite_in_a_row=3,
                                   **{"checkpoint.every": 1})))
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [m["nonfinite"] for m in metrics if m["step"] > 2] == [True, True, True]
    # the skipped steps changed nothing: the newest checkpoint holds the step-2 weights
    from train.checkpoint import complete_checkpoints

    newest = complete_checkpoints(tmp_path / "run")[-1]
    after = load_file(newest / "model.safetensors")
    assert all(torch.equal(after[k], saved[k]) for k in saved)


def test_distill_with_a_qwen3_asr_teacher_checkpoint(tmp_path, data, tokenizer):
    from tests.teachers.qwen3_fixtures import tiny_qwen3_asr

    model, processor = tiny_qwen3_asr()
    model.save_pretrained(tmp_path / "qwen3-asr")
    processor.save_pretrained(tmp_path / "qwen3-asr")
    result = main(parse_args(_overrides(tmp_path, *data, max_steps=2, **{
        "teacher.kind": "qwen3_asr", "teacher.checkpoint": tmp_path / "qwen3-asr"})))
    assert result["step"] == 2
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert all(m["tokens"] > 0 and m["loss"] > 0 for m in steps)


def test_the_static_decode_engine_trains_and_evaluates_as_the_eager_loop(tmp_path, data, tokenizer, capsys):
    """decode.engine reaches the rollouts and the dev evaluation, and the static engine changes nothing
    there (CPU, float32): the same sampled rollouts, hence the same update and the same dev transcripts."""
    common = {"max_steps": 2, "opd.do_sample": True, "checkpoint.every": 2, "eval.every": 2}
    for engine in ("eager", "static"):
        main(parse_args(_overrides(tmp_path / engine, *data, **common, **{"decode.engine": engine})))
        assert f"decode engine: {engine}\n" in capsys.readouterr().out
    runs = {e: tmp_path / e / "run" for e in ("eager", "static")}
    metrics = {e: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
               for e, run in runs.items()}
    for a, b in zip(metrics["eager"], metrics["static"]):
        assert (a["rollout_length"], a["tokens"]) == (b["rollout_length"], b["tokens"])
    eager, static = _final_params(runs["eager"]), _final_params(runs["static"])
    for key in eager:
        torch.testing.assert_close(static[key], eager[key], rtol=1e-5, atol=1e-6)
    dev = {e: json.loads((run / "eval" / "step-2.json").read_text()) for e, run in runs.items()}
    assert dev["static"]["average_rate"] == dev["eager"]["average_rate"]


def _history_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resume_refuses_changed_settings_before_building_anything(tmp_path, data, tokenizer, monkeypatch):
    """A setting that changes what the saved state means (optim.lr) is refused before any model is built,
    with the diff and the ways out; a launch that fails at start leaves the run's config.yaml as it was."""
    main(parse_args(_overrides(tmp_path, *data, max_steps=2)))
    run = tmp_path / "run"
    saved = (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "step-2" / "config.yaml").read_text() == saved
    from train import distill

    built = []

    def fail_at_start(*args, **kwargs):
        built.append(args)
        raise RuntimeError("injected: the launch fails at start")

    monkeypatch.setattr(distill, "build_student_model", fail_at_start)
    with pytest.raises(ConfigError) as refused:
        main(parse_args(_overrides(tmp_path, *data, max_steps=2, **{"optim.lr": 1e-2})))
    message = str(refused.value)
    assert "optim.lr: 0.001 → 0.01" in message and "output_dir" in message and "resume=never" in message
    assert built == []  # refused before any model was built
    with pytest.raises(RuntimeError, match="injected"):  # an allowed change, then a failure at start
        main(parse_args(_overrides(tmp_path, *data, max_steps=3)))
    assert len(built) == 1
    assert (run / "config.yaml").read_text() == saved


def test_extending_a_finished_run_keeps_its_final_evaluation(tmp_path, data, tokenizer, capsys):
    """Run 3 steps (dev evaluation every 2, and at the end), then extend to 4: the final evaluation of
    step 3 came after the step-3 checkpoint, and must still be in the history the extension writes."""
    main(parse_args(_overrides(tmp_path, *data, max_steps=3, **{"eval.every": 2})))
    run = tmp_path / "run"
    assert _history_steps(run / "eval" / "history.jsonl") == [0, 2, 3]
    capsys.readouterr()
    result = main(parse_args(_overrides(tmp_path, *data, max_steps=4, **{"eval.every": 2})))
    out = capsys.readouterr().out
    assert "resuming with changed settings: max_steps 3 → 4" in out and "resumed from" in out
    assert result["step"] == 4
    assert _history_steps(run / "eval" / "history.jsonl") == [0, 2, 3, 4]  # step 0 not redone by the resume
    state = json.loads((run / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["evaluator"]["history"]] == [0, 2, 3, 4]
    assert "max_steps: 4" in (run / "checkpoints" / "step-4" / "config.yaml").read_text()
    assert "max_steps: 4" in (run / "config.yaml").read_text()
    main(parse_args(_overrides(tmp_path, *data, max_steps=4, **{"eval.every": 2})))  # again: nothing to add
    assert "resuming with changed settings" not in capsys.readouterr().out
    assert _history_steps(run / "eval" / "history.jsonl") == [0, 2, 3, 4]
