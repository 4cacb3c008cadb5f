"""Evaluation faults (issue #18): dev clips that vanish or stop decoding mid-run are skipped and counted;
an error inside a dev evaluation is said with its traceback and recorded, and training goes on unless
eval.fail_fast; a failing rank keeps its part in every collective, so the others never wait for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_distill import _manifest
from train.checkpoint import STATE_FILE, validate_checkpoint
from train.eval import periodic
from train.eval.periodic import EvaluationError, PeriodicEvaluator


def _sft_args(tmp_path: Path, train: Path, dev: Path, **extra):
    from tests.test_sft import _args

    return _args(tmp_path, train, dev, **extra)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _history(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "eval" / "history.jsonl").read_text().splitlines()]


def test_dev_clips_that_vanish_or_break_mid_run_are_skipped_and_counted(tmp_path, tokenizer, monkeypatch):
    from train import recipe
    from train.sft import main

    train = _manifest(tmp_path / "data", 4)
    dev = _manifest(tmp_path / "data", 4, name="dev.jsonl")
    real = recipe.run_dev_eval

    def harmed_at_step_1(evaluator, step, *args, **kwargs):
        if step == 1:  # after the step-0 evaluation read and scored every clip
            dev.unlink()  # the evaluator holds the utterances it read at start
            (dev.parent / "dev.jsonl-0.wav").unlink()
            (dev.parent / "dev.jsonl-1.wav").write_bytes(b"RIFF\x00\x00not a wave file")
        return real(evaluator, step, *args, **kwargs)

    monkeypatch.setattr(recipe, "run_dev_eval", harmed_at_step_1)
    result = main(_sft_args(tmp_path, train, dev, max_steps=1, **{"eval.every": 1, "checkpoint.every": 1}))
    run = tmp_path / "run"
    assert result["step"] == 1 and (run / "final" / "model.safetensors").is_file()
    reports = {step: json.loads((run / "eval" / f"step-{step}.json").read_text())["manifests"][str(dev)]
               for step in (0, 1)}
    assert reports[0]["utterances"] == 4 and reports[0]["languages"]["en"]["skipped"] == {}
    assert reports[1]["utterances"] == 2
    assert reports[1]["languages"]["en"]["skipped"] == {"missing": 1, "unreadable": 1}
    skipped = [json.loads(x) for x in (run / "skipped.jsonl").read_text().splitlines()]
    assert [(r["step"], r["id"], r["reason"], r["split"]) for r in skipped] == [
        (1, "dev.jsonl-0", "missing", "dev"), (1, "dev.jsonl-1", "unreadable", "dev")]
    assert str(dev.parent / "dev.jsonl-0.wav") in skipped[0]["detail"] + skipped[0]["audio"]
    assert _history(run) == [0, 1]
    state = json.loads((run / "checkpoints" / "step-1" / STATE_FILE).read_text())
    assert state["skipped_lines"] == 2 and validate_checkpoint(run / "checkpoints" / "step-1") is None
    assert not any("eval_error" in m for m in _metrics(run))


def _failing_evaluation(monkeypatch, at_call: int) -> None:
    """The `at_call`-th dev evaluation (the first is step 0's) raises inside the evaluator."""
    real, calls = periodic.timed_transcription, []

    def timed_transcription(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise ValueError("injected dev failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(periodic, "timed_transcription", timed_transcription)


def test_an_error_inside_a_dev_evaluation_is_said_recorded_and_training_goes_on(tmp_path, tokenizer, monkeypatch,
                                                                              capsys):
    from train.sft import main

    train = _manifest(tmp_path / "data", 4)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    _failing_evaluation(monkeypatch, at_call=2)  # step 2's (eval.every=2)
    result = main(_sft_args(tmp_path, train, dev, max_steps=3, **{"eval.every": 2, "checkpoint.every": 1}))
    err = capsys.readouterr().err
    assert "error: dev evaluation at step 2 failed (training goes on; eval.fail_fast=true would stop the run):\n" \
           "rank 0, Traceback (most recent call last):" in err
    assert "in timed_transcription" in err and "ValueError: injected dev failure" in err
    run = tmp_path / "run"
    assert result["step"] == 3 and (run / "final" / "model.safetensors").is_file()
    metrics = _metrics(run)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert [m for m in metrics if "eval_error" in m] == [{"step": 2, "eval_error": "rank 0: ValueError: injected dev "
                                                                                  "failure"}]
    assert _history(run) == [0, 3] and not (run / "eval" / "step-2.json").exists()  # the final evaluation ran
    for step in (2, 3):
        assert validate_checkpoint(run / "checkpoints" / f"step-{step}") is None
    state = json.loads((run / "checkpoints" / "step-2" / STATE_FILE).read_text())
    assert [h["step"] for h in state["evaluator"]["history"]] == [0]


def test_eval_fail_fast_stops_the_run_with_what_was_saved_intact(tmp_path, tokenizer, monkeypatch, capsys):
    from train.sft import main

    train = _manifest(tmp_path / "data", 4)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    _failing_evaluation(monkeypatch, at_call=2)
    args = {"eval.every": 2, "checkpoint.every": 1, "eval.fail_fast": "true"}
    with pytest.raises(EvaluationError, match="dev evaluation at step 2 failed on rank 0: ValueError: injected dev "
                                              "failure") as failed:
        main(_sft_args(tmp_path, train, dev, max_steps=3, **args))
    assert isinstance(failed.value.__cause__, ValueError)  # with the evaluator's own traceback
    assert "error: dev evaluation at step 2 failed (eval.fail_fast=true: the run stops)" in capsys.readouterr().err
    run = tmp_path / "run"
    assert [m for m in _metrics(run) if "eval_error" in m] == [{"step": 2, "eval_error": "rank 0: ValueError: "
                                                                                          "injected dev failure"}]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]  # step 2's comes after its eval
    assert validate_checkpoint(run / "checkpoints" / "step-1") is None
    monkeypatch.undo()
    main(_sft_args(tmp_path, train, dev, max_steps=3, **args))
    assert f"resumed from {run / 'checkpoints' / 'step-1'} at step 1" in capsys.readouterr().out
    assert _history(run) == [0, 2, 3]


class _Rank1Of2:
    """What PeriodicEvaluator sees of rank 1 in a 2-process run; its reduces are counted."""

    process_index, num_processes, device = 1, 2, torch.device("cpu")

    def __init__(self):
        self.reduces = []

    def reduce(self, tensor, reduction):
        self.reduces.append(int(tensor))
        return tensor


class _Transcriber:
    name, device = "fake", torch.device("cpu")

    def __init__(self, fail: bool = False):
        self.fail = fail

    def transcribe(self, audios, languages):
        if self.fail:
            raise ValueError("boom")
        return ["alpha"] * len(audios)


@pytest.mark.parametrize("where", ["none", "transcribing", "reading audio"])
def test_a_rank_that_fails_still_makes_every_collective_the_others_make(tmp_path, monkeypatch, where):
    """Two manifests: one batch-count reduce each, then the gather (accelerate's gather_object, here on one
    process, returns this rank's rows). A failure on this rank, wherever it comes, makes the same reduces."""
    specs = [str(_manifest(tmp_path / "data", 4, name=f"dev_{k}.jsonl")) for k in "ab"]
    accelerator = _Rank1Of2()
    evaluator = PeriodicEvaluator(specs, tmp_path / "run", 2, accelerator, batch_size=1)
    if where == "reading audio":
        monkeypatch.setattr("train.eval.timed.load_audio", lambda *a: (_ for _ in ()).throw(MemoryError("no room")))
    transcriber = _Transcriber(fail=where == "transcribing")
    if where == "none":
        assert evaluator.evaluate(4, transcriber) is None  # rank 1: rank 0 reports
        assert evaluator.last_step == 4
    else:
        error = "ValueError: boom" if where == "transcribing" else "MemoryError: no room"
        with pytest.raises(EvaluationError, match=f"dev evaluation at step 4 failed on rank 1: {error}") as failed:
            evaluator.evaluate(4, transcriber)
        assert failed.value.failures[0]["rank"] == 1 and "Traceback" in failed.value.failures[0]["traceback"]
        assert evaluator.last_step is None  # not evaluated: the run's final evaluation will try again
    assert len(accelerator.reduces) == len(specs)
    assert all(isinstance(n, int) for n in accelerator.reduces) and np.all(np.array(accelerator.reduces) >= 0)
