"""Torn checkpoints (issue #18): a file damaged after the fact, a disk that fills up during a write, and
what survives each (weights, optimizer state, sampler position, evaluation history). Unit tests of
train/checkpoint.py with a real one-process Accelerator and a tiny model; tiny SFT runs where the behaviour
needs the whole recipe (a resume that replays the lost steps and ends bitwise equal)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path

import accelerate.checkpointing
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tests.launch import ROOT, launcher, run
from tests.test_distill import _manifest
from train import checkpoint as checkpoint_module
from train.checkpoint import (
    CHECKSUMS_FILE,
    STATE_FILE,
    CheckpointWriteError,
    complete_checkpoints,
    file_digest,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    update_trainer_state,
    validate_checkpoint,
)
from train.config import ConfigError

# ---- unit tests: train/checkpoint.py on one process ----


@pytest.fixture(scope="module")
def trained(tokenizer):
    """A one-process Accelerator with a tiny student and its AdamW after one step (the optimizer has state)."""
    from train.models import build_student

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model, _ = build_student(tiny_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    _step(model, optimizer)
    return accelerator, model, optimizer


def _step(model, optimizer) -> None:
    sum(p.square().sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    optimizer.zero_grad()


def _snapshot(model, optimizer) -> dict[str, torch.Tensor]:
    found = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        found.update({f"optim.{i}.{k}": torch.as_tensor(v).clone() for k, v in state.items()})
    return found


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_checkpoint_records_every_file_it_holds_and_validates(tmp_path, trained):
    accelerator, _, _ = trained
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "checkpoints" / ".tmp-step-7").mkdir(parents=True)  # an interrupted write's leftovers
    path = save_checkpoint(accelerator, tmp_path, 1, {"sampler": {"position": 3}})
    record = json.loads((path / CHECKSUMS_FILE).read_text())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "config.yaml"} <= set(record)
    assert STATE_FILE not in record  # written after the record, and rewritten by update_trainer_state
    assert all(entry == file_digest(path / name) for name, entry in record.items())
    assert validate_checkpoint(path) is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["step-1"]  # no partial checkpoint left
    update_trainer_state(path, evaluator={"history": [{"step": 1}]})  # the final evaluation, added later
    assert validate_checkpoint(path) is None


DAMAGE = {  # what happens to a file after the fact -> what validation says
    "truncated": ("optimizer.bin", _truncate, r"optimizer\.bin is \d+ bytes, \d+ when saved \(truncated or torn\)"),
    "flipped": ("model.safetensors", _flip_a_byte,
                r"model\.safetensors has other contents than when saved \(same size, another sha256\)"),
    "missing": ("random_states_0.pkl", Path.unlink, r"random_states_0\.pkl is missing"),
    "torn state": (STATE_FILE, _truncate, r"trainer_state\.json cannot be read \(.*\): truncated or torn"),
    "torn record": (CHECKSUMS_FILE, _truncate, r"checksums\.json cannot be read \(.*\): truncated or torn"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_validation_names_the_damaged_file(tmp_path, trained, damage):
    name, harm, said = DAMAGE[damage]
    path = save_checkpoint(trained[0], tmp_path, 1, {})
    harm(path / name)
    problem = validate_checkpoint(path)
    assert problem is not None and str(path / name) in problem and re.search(said, problem), problem


def test_resume_auto_takes_the_newest_checkpoint_that_validates(tmp_path, trained):
    accelerator = trained[0]
    first, second = (save_checkpoint(accelerator, tmp_path, step, {}, keep_last=3) for step in (1, 2))
    _truncate(second / "model.safetensors")
    said = []
    assert resolve_resume("auto", tmp_path, say=said.append) == first
    assert len(said) == 1 and f"passes over {second}" in said[0] and str(second / "model.safetensors") in said[0]
    # resume=DIR of the damaged one: refused, with the same words
    refused = f"resume={second}: damaged checkpoint: {second}/model.safetensors is"
    with pytest.raises(ConfigError, match=re.escape(refused)):
        resolve_resume(str(second), tmp_path)
    # none validates: refused, rather than training from step 0 over them
    _flip_a_byte(first / "optimizer.bin")
    with pytest.raises(ConfigError, match="no checkpoint in .* validates") as refused:
        resolve_resume("auto", tmp_path, say=said.append)
    assert "step-1: " in str(refused.value) and "optimizer.bin" in str(refused.value) and "resume=never" in str(
        refused.value)
    # a checkpoint saved before checkpoints recorded their files: taken, with a warning
    legacy = save_checkpoint(accelerator, tmp_path, 3, {}, keep_last=3)
    (legacy / CHECKSUMS_FILE).unlink()
    said.clear()
    assert resolve_resume("auto", tmp_path, say=said.append) == legacy
    assert said == [(f"warning: {legacy} has no {CHECKSUMS_FILE} (saved before checkpoints recorded their files): "
                     "its files cannot be checked")]


def _full_disk(monkeypatch, where: str, error: Exception) -> None:
    """accelerate's writer fails for a file whose path contains `where`, leaving part of it behind."""
    real = accelerate.checkpointing.save

    def save(obj, f, *args, **kwargs):
        if where in str(f):
            Path(f).write_bytes(b"\0" * 1000)
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", save)


# a full disk, as each writer says it: OSError from Python, RuntimeError from torch.save (measured on a full tmpfs)
WRITE_ERRORS = {"ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
                "torch.save": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")}


@pytest.mark.parametrize("kind", WRITE_ERRORS)
def test_a_full_disk_removes_the_partial_checkpoint_and_keeps_the_last_good_one(tmp_path, trained, monkeypatch,
                                                                                kind):
    accelerator, model, optimizer = trained
    folder = tmp_path / "checkpoints"
    save_checkpoint(accelerator, tmp_path, 1, {"sampler": {"position": 3}}, keep_last=1)
    saved = _snapshot(model, optimizer)
    _step(model, optimizer)  # the run moves on
    _full_disk(monkeypatch, ".tmp-step-2/optimizer.bin", WRITE_ERRORS[kind])
    with pytest.raises(CheckpointWriteError) as failed:
        save_checkpoint(accelerator, tmp_path, 2, {"sampler": {"position": 6}}, keep_last=1)
    message = str(failed.value)
    assert message.startswith(f"checkpoint step-2 could not be written in {folder}: rank 0, writing the state "
                              f"(accelerate save_state): {type(WRITE_ERRORS[kind]).__name__}: ")
    assert re.search(r"\(the files written last: model\.safetensors [\d.]+ MB, optimizer\.bin 1\.0 KB\)", message)
    assert re.search(r"It needs about [\d.]+ MB \(the size of step-1\); [\d.]+ [KMGT]?B was free on that "
                     r"filesystem when it failed, [\d.]+ [KMGT]?B now that the partial checkpoint .tmp-step-2 is "
                     r"removed; step-1 and the older checkpoints are intact", message), message
    assert ("(the disk or quota is full)" in message) == (kind == "ENOSPC")
    assert failed.value.__cause__ is WRITE_ERRORS[kind]  # the writer's own traceback stays attached
    # keep_last=1 did not prune step-1 before a new checkpoint was whole; the partial one is gone
    assert sorted(p.name for p in folder.iterdir()) == ["step-1"]
    assert validate_checkpoint(folder / "step-1") is None
    assert load_checkpoint(accelerator, folder / "step-1")["sampler"] == {"position": 3}
    assert _same(_snapshot(model, optimizer), saved)  # weights and optimizer state as they were saved


def test_older_checkpoints_are_pruned_only_after_a_new_one_is_sealed(tmp_path, trained, monkeypatch):
    accelerator = trained[0]
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(accelerator, tmp_path, step, {}, keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-2", "step-3"]
    real = checkpoint_module._write_synced

    def full_at_the_state_file(path, text):
        if path.name == STATE_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(checkpoint_module, "_write_synced", full_at_the_state_file)
    with pytest.raises(CheckpointWriteError, match=r"rank 0, writing checksums\.json, trainer_state\.json and "
                                                   r"renaming: OSError: \[Errno 28\] No space left on device: '.*"
                                                   r"\.tmp-step-4/trainer_state\.json' \(the disk or quota is full\)"):
        save_checkpoint(accelerator, tmp_path, 4, {}, keep_last=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step-2", "step-3"]
    # a newer checkpoint than the one written (passed over as damaged, or from before a resume=DIR) is left alone
    monkeypatch.setattr(checkpoint_module, "_write_synced", real)
    shutil.copytree(folder / "step-3", folder / "step-9")
    json_state = folder / "step-9" / STATE_FILE
    json_state.write_text(json.dumps({**json.loads(json_state.read_text()), "step": 9}))
    save_checkpoint(accelerator, tmp_path, 4, {}, keep_last=1)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-4", "step-9"]


def test_a_failed_state_update_keeps_the_old_state(tmp_path, monkeypatch):
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 3, "evaluator": {"history": []}}))

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "replace", full)
    with pytest.raises(OSError):
        update_trainer_state(tmp_path, evaluator={"history": [{"step": 3}]})
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {"step": 3, "evaluator": {"history": []}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary file left behind


# ---- tiny SFT runs: what a run does with a damaged checkpoint or a full disk ----


def _sft_args(run_parent: Path, data: tuple[Path, Path], **extra):
    from tests.test_sft import _args

    return _args(run_parent, *data, **{"max_steps": 4, "checkpoint.every": 2, "eval.every": 2, **extra})


def _final(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def _history(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "eval" / "history.jsonl").read_text().splitlines()]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tokenizer):
    """(data, run folder): 4 steps without a fault, checkpoints at 2 and 4, dev evaluations at 0, 2 and 4."""
    from train.sft import main

    root = tmp_path_factory.mktemp("straight")
    data = (_manifest(root / "data", 8), _manifest(root / "data", 2, name="dev.jsonl"))
    main(_sft_args(root, data))
    return data, root / "run"


def test_resume_passes_over_a_checkpoint_truncated_after_the_fact_and_replays_its_steps(tmp_path, straight, capsys,
                                                                                        monkeypatch):
    from train import sft

    data, reference = straight
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "final")
    damaged = run / "checkpoints" / "step-4"
    _truncate(damaged / "optimizer.bin")
    # resume=DIR of it fails at start, naming the file, before any model is built
    built = []
    real_build = sft.build_student_model
    monkeypatch.setattr(sft, "build_student_model", lambda *a, **k: built.append(a) or real_build(*a, **k))
    refused = re.escape(f"resume={damaged}: damaged checkpoint: {damaged}/optimizer.bin is ")
    with pytest.raises(ConfigError, match=refused + r"\d+ bytes, \d+ when saved \(truncated or torn\)"):
        sft.main(_sft_args(tmp_path, data, resume=damaged))
    assert built == []
    capsys.readouterr()
    # resume=auto passes over it, says why, and goes on from step-2: the lost steps are replayed exactly
    result = sft.main(_sft_args(tmp_path, data))
    out = capsys.readouterr().out
    assert f"warning: resume=auto passes over {damaged}, damaged: {damaged}/optimizer.bin is" in out
    assert f"resumed from {run / 'checkpoints' / 'step-2'} at step 2" in out
    assert result["step"] == 4 and validate_checkpoint(damaged) is None  # written again, whole
    a, b = _final(reference), _final(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _history(run) == _history(reference) == [0, 2, 4]
    assert (run / "skipped.jsonl").read_text() == (reference / "skipped.jsonl").read_text()


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_the_last_good_checkpoint_intact(tmp_path, straight, monkeypatch, tokenizer):
    from train.sft import main

    data, reference = straight
    run = tmp_path / "run"
    _full_disk(monkeypatch, ".tmp-step-4/optimizer.bin", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(CheckpointWriteError) as failed:
        main(_sft_args(tmp_path, data))
    message = str(failed.value)
    assert f"checkpoint step-4 could not be written in {run / 'checkpoints'}: rank 0" in message
    assert "No space left on device" in message and "(the size of step-2)" in message
    assert message.endswith("The run stops (checkpoint.on_error=stop): free some space and resume (resume=auto), "
                            "or set checkpoint.on_error=continue to train on and retry at the next checkpoint")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"]
    assert validate_checkpoint(run / "checkpoints" / "step-2") is None
    state = json.loads((run / "checkpoints" / "step-2" / STATE_FILE).read_text())
    assert [h["step"] for h in state["evaluator"]["history"]] == [0, 2] and state["sampler"]
    assert [m["step"] for m in _metrics(run) if "loss" in m] == [1, 2, 3, 4]
    monkeypatch.undo()  # space freed: the resume replays steps 3 and 4
    main(_sft_args(tmp_path, data))
    a, b = _final(reference), _final(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _history(run) == [0, 2, 4]


def test_with_on_error_continue_a_full_disk_is_said_and_retried_at_the_next_checkpoint(tmp_path, straight,
                                                                                       monkeypatch, capsys):
    from train.sft import main

    data, reference = straight
    run = tmp_path / "run"
    _full_disk(monkeypatch, ".tmp-step-2/model.safetensors", OSError(errno.ENOSPC, "No space left on device"))
    main(_sft_args(tmp_path, data, **{"checkpoint.on_error": "continue"}))
    out = capsys.readouterr().out
    assert "warning: checkpoint step-2 could not be written" in out
    assert "Training goes on (checkpoint.on_error=continue); the next checkpoint tries again" in out
    errors = [m for m in _metrics(run) if "checkpoint_error" in m]
    assert len(errors) == 1 and errors[0]["step"] == 2 and "No space left on device" in errors[0]["checkpoint_error"]
    assert [p.name for p in complete_checkpoints(run)] == ["step-4"]  # retried at the next interval, whole
    assert validate_checkpoint(run / "checkpoints" / "step-4") is None
    a, b = _final(reference), _final(run)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the failed write changed nothing in training
    assert _history(run) == [0, 2, 4]


def test_a_full_disk_at_the_final_model_leaves_nothing_partial_and_resume_writes_it(tmp_path, straight, monkeypatch,
                                                                                    capsys):
    """The last checkpoint (step 4) is whole when the final model's write fails: no final/ and no partial folder
    are left, the message names the folder, the error and what to do; resume=auto then writes the final model
    without training a step again."""
    from train import recipe
    from train.sft import main

    data, reference = straight
    run = tmp_path / "run"
    real_save = recipe.save_student

    def full_disk(model, processor, folder, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 500)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(recipe, "save_student", full_disk)
    with pytest.raises(CheckpointWriteError) as failed:
        main(_sft_args(tmp_path, data))
    message = str(failed.value)
    assert message.startswith(f"the final model could not be written to {run / 'final'}: rank 0, writing the final "
                              "model: OSError: [Errno 28] No space left on device (the disk or quota is full)")
    assert "It needs more than the 500 B written before it failed" in message
    assert message.endswith("The partial folder .tmp-final is removed; the checkpoints (step-4 the newest) are intact: "
                            "free some space and run again with resume=auto, which starts from step-4 and writes the "
                            "final model")
    assert not (run / "final").exists() and not (run / ".tmp-final").exists()
    assert validate_checkpoint(run / "checkpoints" / "step-4") is None
    monkeypatch.setattr(recipe, "save_student", real_save)
    capsys.readouterr()
    main(_sft_args(tmp_path, data))
    assert f"resumed from {run / 'checkpoints' / 'step-4'} at step 4" in capsys.readouterr().out
    a, b = _final(reference), _final(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in _metrics(run) if "loss" in m] == [1, 2, 3, 4]  # no step trained twice
    assert _history(run) == [0, 2, 4]


# ---- two processes: a fault that one rank meets is agreed on by both ----


@pytest.mark.slow
def test_two_ranks_agree_on_faults_that_only_one_of_them_meets(tmp_path, tokenizer):
    """Under a 2-process DDP launch rank 1 alone meets a full disk while writing checkpoint step-2
    (checkpoint.on_error=continue) and an error in the step-2 dev evaluation: rank 0 says both, naming rank 1,
    neither rank waits for the other, and the run trains on to its end (this file's __main__ is the launch)."""
    train, dev = _manifest(tmp_path / "data", 8), _manifest(tmp_path / "data", 4, name="dev.jsonl")
    settings = {"output_dir": tmp_path / "run", "max_steps": 4, "data.train": f"[{{path: {train}}}]",
                "data.dev": f"[{{path: {dev}}}]", "data.num_workers": 0, "data.max_batch_seconds": 4.0,
                "data.max_batch_size": 2, "eval.every": 2, "eval.max_new_tokens": 4, "log.wandb_mode": "disabled",
                "checkpoint.every": 2, "checkpoint.on_error": "continue", "optim.warmup_steps": 0}
    argv = ["--config", str(ROOT / "configs/sft/toy.yaml")] + [f"{k}={v}" for k, v in settings.items()]
    proc = run(launcher("ddp") + [__file__] + argv, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    assert (f"warning: checkpoint step-2 could not be written in {folder}: rank 1, writing the state (accelerate "
            "save_state): OSError: [Errno 28] No space left on device") in proc.stdout
    assert "error: dev evaluation at step 2 failed (training goes on" in proc.stderr
    assert "rank 1, Traceback (most recent call last):" in proc.stderr
    metrics = _metrics(tmp_path / "run")
    assert [m["step"] for m in metrics if "checkpoint_error" in m] == [2]
    assert [m for m in metrics if "eval_error" in m] == [{"step": 2, "eval_error": "rank 1: ValueError: injected "
                                                                                  "dev failure"}]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert sorted(p.name for p in folder.iterdir()) == ["step-4"]
    assert validate_checkpoint(folder / "step-4") is None
    assert _history(tmp_path / "run") == [0, 4]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def _rank_1_meets_the_faults() -> None:
    """In the launch of the test above: on rank 1 only, checkpoint step-2 meets a full disk (its RNG state file,
    the one file rank 1 writes under DDP) and the second dev evaluation (step 2's) raises."""
    if os.environ.get("RANK") != "1":
        return
    from train.eval import periodic

    real_save, real_timed, calls = torch.save, periodic.timed_transcription, []

    def save(obj, f, *args, **kwargs):
        if ".tmp-step-2/" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    def timed_transcription(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("injected dev failure")
        return real_timed(*args, **kwargs)

    torch.save, periodic.timed_transcription = save, timed_transcription


if __name__ == "__main__":
    from train.sft import main, parse_args

    _rank_1_meets_the_faults()
    main(parse_args(sys.argv[1:]))
