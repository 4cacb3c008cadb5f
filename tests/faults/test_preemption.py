"""Preemption (faults.signals, train/preemption.py): a signal stops the run after a whole step, at a checkpoint
of that step, with exit status 75 and one line; resume=auto then ends bitwise where an uninterrupted run
ends. What each test asserts survives: weights, optimizer state, RNG, the sampler's position, the schedule,
the metrics history (metrics.jsonl) and the dev evaluation history (eval/history.jsonl).

One process in-process (SIGUSR1; faults.signals=[] for contrast); two CPU processes under DDP (SIGTERM to
one rank only: the ranks agree on the step) and DeepSpeed ZeRO-2 (SIGTERM to the launcher, which forwards it
to every rank), each against the uninterrupted run on the same backend that tests/backend_runs.py makes once.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.backend_runs import FAULT, checkpoint_tensors, settings_like
from tests.backend_runs import STEPS as BACKEND_STEPS
from tests.launch import ROOT, launcher, run
from tests.test_distill import _manifest, _overrides
from train.checkpoint import STATE_FILE, complete_checkpoints
from train.distill import main, parse_args
from train.preemption import PREEMPTED_EXIT_CODE

TIMING = ("step_seconds", "rollout_seconds")  # wall-clock columns: the only ones a resume may change
STEPS = 4


@pytest.fixture()
def data(tmp_path):
    return _manifest(tmp_path / "data", 12), _manifest(tmp_path / "data", 4, name="dev.jsonl")


def _args(folder: Path, data, **extra) -> list[str]:
    # eval.every=2: the dev history has a point before the stop (step 2) and one after it (step 4); no step-0
    # evaluation (eval.on_start), which would only take time.
    return _overrides(folder, *data, **{"max_steps": STEPS, "eval.every": 2, "eval.on_start": False,
                                        "checkpoint.keep_last": 5, **extra})


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_state(a: Path, b: Path, rng: bool = True) -> None:
    """Two checkpoints hold the same state: every weight and optimizer tensor bitwise, the RNG states (unless
    not `rng`), and the trainer state (step, schedule, sampler position, dev history, skip counts)."""
    tensors_a, tensors_b = checkpoint_tensors(a), checkpoint_tensors(b)
    assert tensors_a.keys() == tensors_b.keys(), (sorted(tensors_a)[:5], sorted(tensors_b)[:5])
    assert any("optim" in k and v.numel() > 1 for k, v in tensors_a.items()), f"{a}: no optimizer state"
    changed = [k for k in tensors_a if not torch.equal(tensors_a[k], tensors_b[k])]
    assert changed == [], f"{a} vs {b}: {changed[:5]}"
    rng_a, rng_b = sorted(a.glob("random_states_*.pkl")), sorted(b.glob("random_states_*.pkl"))
    assert rng_a and [p.name for p in rng_a] == [p.name for p in rng_b]
    assert not rng or all(p.read_bytes() == q.read_bytes() for p, q in zip(rng_a, rng_b)), "RNG states differ"
    state_a, state_b = (json.loads((p / STATE_FILE).read_text()) for p in (a, b))
    for key in ("step", "engine", "sampler", "evaluator", "skipped", "skipped_lines"):
        assert state_a[key] == state_b[key], key


def assert_resumed_as_uninterrupted(straight: Path, stopped: Path, stop_step: int, steps: int = STEPS) -> None:
    """`stopped` (a run folder preempted at `stop_step`, then resumed to the end) holds what `straight` holds."""
    assert_same_state(straight / "checkpoints" / f"step-{stop_step}", stopped / "checkpoints" / f"step-{stop_step}")
    # Not the global torch RNG after the resume: a resumed run starts its DataLoader iterator at the resume, and
    # each new iterator draws its base seed from it (torch's DataLoader); nothing in a step draws from it.
    assert_same_state(straight / "checkpoints" / f"step-{steps}", stopped / "checkpoints" / f"step-{steps}",
                      rng=False)
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(stopped / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metric_rows(stopped) == metric_rows(straight)  # every step once, with the same numbers
    assert [r["step"] for r in metric_rows(stopped)] == list(range(1, steps + 1))
    assert (stopped / "eval" / "history.jsonl").read_text() == (straight / "eval" / "history.jsonl").read_text()


def assert_stopped_at(run_dir: Path, step: int) -> None:
    """What a preempted run leaves: a complete checkpoint of the stop step and the metrics up to it, no final model."""
    assert complete_checkpoints(run_dir)[-1].name == f"step-{step}"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert not (run_dir / "final").exists()  # the run is not finished
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, step + 1))


@pytest.mark.slow
def test_a_signal_stops_one_process_after_its_step_and_resume_is_bitwise(tmp_path, data, tokenizer, monkeypatch,
                                                                         capsys):
    """SIGUSR1 (SLURM's warning) during step 3, after its rollouts: the step is finished, checkpointed
    (checkpoint.every=2 would not have), the run exits 75 without a final model; resumed, it ends as the
    uninterrupted run. log.wandb_mode=offline: the tracker is closed on the way out."""
    main(parse_args(_args(tmp_path / "straight", data, **{"checkpoint.every": 1})))
    stopped = tmp_path / "stopped" / "run"
    monkeypatch.setenv("ARK_OPD_SIGNAL_AT_STEP", "3")
    monkeypatch.setenv("ARK_OPD_SIGNAL", "SIGUSR1")
    with pytest.raises(SystemExit) as exited:
        main(parse_args(_args(tmp_path / "stopped", data, **{"log.wandb_mode": "offline"})))
    assert exited.value.code == PREEMPTED_EXIT_CODE == 75
    out = capsys.readouterr().out
    assert (f"preempted by SIGUSR1 (received by rank 0) at step 3: checkpoint {stopped}/checkpoints/step-3 written; "
            "resume with resume=auto (exit status 75)") in out
    import wandb

    assert wandb.run is None  # the tracker was finished
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handlers were put back
    assert_stopped_at(stopped, 3)
    monkeypatch.delenv("ARK_OPD_SIGNAL_AT_STEP")
    main(parse_args(_args(tmp_path / "stopped", data)))
    assert f"resumed from {stopped}/checkpoints/step-3 at step 3" in capsys.readouterr().out
    assert_resumed_as_uninterrupted(tmp_path / "straight" / "run", stopped, 3)


def test_with_no_faults_signals_a_signal_acts_as_without_them(tmp_path, data, tokenizer, monkeypatch):
    """faults.signals=[]: the handler in place (here the test's own, for SIGTERM's default would end pytest)
    gets the signal mid-step; no checkpoint is written at that step."""

    class Terminated(Exception):
        pass

    def terminated(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        monkeypatch.setenv("ARK_OPD_SIGNAL_AT_STEP", "3")
        with pytest.raises(Terminated):
            main(parse_args(_args(tmp_path, data, **{"faults.signals": "[]", "checkpoint.every": 2})))
        assert signal.getsignal(signal.SIGTERM) is terminated
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert complete_checkpoints(tmp_path / "run")[-1].name == "step-2"
    assert [r["step"] for r in metric_rows(tmp_path / "run")] == [1, 2]  # step 3 died before its update


def test_sft_stops_the_same_way(tmp_path, tokenizer, monkeypatch, capsys):
    """train/sft.py shares the stop (train/recipe.py): SIGTERM at step 3 of 4, then resume=auto, ends bitwise."""
    from tests.test_sft import _args as sft_args
    from train.sft import main as sft

    train, dev = _manifest(tmp_path / "data", 8), _manifest(tmp_path / "data", 2, name="dev.jsonl")
    common = {"eval.on_start": False, "checkpoint.keep_last": 5}
    sft(sft_args(tmp_path / "straight", train, dev, **common, **{"checkpoint.every": 1}))
    monkeypatch.setenv("ARK_OPD_SIGNAL_AT_STEP", "3")
    with pytest.raises(SystemExit) as exited:
        sft(sft_args(tmp_path / "stopped", train, dev, **common))
    assert exited.value.code == 75 and "preempted by SIGTERM (received by rank 0) at step 3" in capsys.readouterr().out
    stopped = tmp_path / "stopped" / "run"
    assert_stopped_at(stopped, 3)
    monkeypatch.delenv("ARK_OPD_SIGNAL_AT_STEP")
    sft(sft_args(tmp_path / "stopped", train, dev, **common))
    straight = tmp_path / "straight" / "run"
    assert_same_state(straight / "checkpoints" / "step-3", stopped / "checkpoints" / "step-3")
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(stopped / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metric_rows(stopped) == metric_rows(straight)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero2"])
def test_two_processes_stop_at_the_same_step_and_resume_bitwise(tmp_path, backend_runs, backend):
    """DDP: SIGTERM reaches rank 1 only, during step 3: the ranks agree (one all-reduce after each step) and
    both stop after step 3. ZeRO-2: rank 0 sends SIGTERM to the launcher during step 3 (as `scancel` or a spot
    reclaim would), which forwards it to every rank: whatever step they are in is finished and checkpointed
    (checkpoint.every=2 would not have written it at step 3). Either way resume=auto on the same backend ends
    bitwise as the uninterrupted run of tests/backend_runs.py with the same settings (a NaN step 4 included)."""
    straight = backend_runs[backend]
    args = settings_like(straight, tmp_path, backend, **{"checkpoint.every": 2})
    cmd = launcher(backend) + [str(ROOT / "train" / "distill.py")] + args
    signal_at = {"ARK_OPD_SIGNAL_AT_STEP": "3", **({"ARK_OPD_FAULT_RANK": "1"} if backend == "ddp" else
                                                    {"ARK_OPD_FAULT_RANK": "0", "ARK_OPD_SIGNAL_TO": "launcher"})}
    out = run(cmd, env_extra={**FAULT, **signal_at})
    assert out.returncode != 0, out.stderr[-3000:]  # the launcher reports a rank's status 75 as a failure
    lines = [line for line in out.stdout.splitlines() if line.startswith("preempted by SIGTERM")]
    assert len(lines) == 1, out.stdout[-3000:] + out.stderr[-3000:]  # said once, by rank 0
    stop_step = int(lines[0].split(" at step ")[1].split(":")[0])
    if backend == "ddp":
        assert "(received by rank 1) at step 3" in lines[0]
        assert "exitcode  : 75" in out.stderr, out.stderr[-3000:]  # the launcher's report names the first rank out
    assert stop_step in (3, 4), lines[0]  # the forwarded signal may land after step 3's agreement
    stopped = tmp_path / "run"
    assert_stopped_at(stopped, stop_step)
    resumed = run(cmd, env_extra=FAULT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {stopped}/checkpoints/step-{stop_step}" in resumed.stdout
    assert_resumed_as_uninterrupted(straight, stopped, stop_step, steps=BACKEND_STEPS)


@pytest.mark.parametrize("override,message", [
    ("faults.signals=[SIGTERN]", "'SIGTERN' is not a signal name"),
    ("faults.signals=[SIGKILL]", "SIGKILL cannot be caught"),
    ("faults.signals=[SIGTERM, SIGTERM]", "lists a signal twice"),
    ("faults.collective_timeout_s=0", "must be >= 1 second"),
])
def test_faults_settings_are_checked_before_any_compute(tmp_path, override, message):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match=f"^{override.split('=')[0]}.*{message}"):
        parse_args(_args(tmp_path, (tmp_path / "train.jsonl", tmp_path / "dev.jsonl")) + [override])


def _one_process():
    from types import SimpleNamespace

    return SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))


def test_the_handler_only_notes_the_signal_and_is_put_back(tmp_path):
    from train.preemption import Preemption, Stop

    with Preemption(["SIGTERM", "SIGUSR1"], _one_process(), tmp_path) as preempt:
        assert preempt.agreed(1) is None
        os.kill(os.getpid(), signal.SIGUSR1)  # the process goes on: the handler only notes it
        assert preempt.agreed(2) == Stop("SIGUSR1", [0])
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with Preemption([], _one_process(), tmp_path) as off:  # faults.signals=[]: nothing set, nothing reduced
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL and off.agreed(3) is None


def test_a_failed_collective_is_said_with_rank_step_and_checkpoint(tmp_path, capsys):
    from train.preemption import Preemption, collective_failed

    gloo_timeout = RuntimeError("[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                                "20000ms for recv operation to complete")
    assert collective_failed(gloo_timeout) and not collective_failed(RuntimeError("CUDA out of memory"))
    (tmp_path / "checkpoints" / "step-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-4" / STATE_FILE).write_text("{}")
    with pytest.raises(RuntimeError), Preemption(["SIGTERM"], _one_process(), tmp_path) as preempt:
        preempt.agreed(5)
        raise gloo_timeout
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"rank 0 (pid {os.getpid()}): a collective failed during step 6: another rank died, or "
                           "did not get there within faults.collective_timeout_s ([third_party/gloo")
    assert line.endswith(f"Newest complete checkpoint: {tmp_path}/checkpoints/step-4; resume with resume=auto")


@pytest.mark.parametrize("seconds", [20, 600])
def test_the_collective_timeout_reaches_the_process_group(monkeypatch, seconds):
    """make_accelerator hands faults.collective_timeout_s to accelerate's process-group setup (init_process_group,
    or DeepSpeed's init_distributed): 600 s too, which accelerate would drop as its own default."""
    from datetime import timedelta

    from train import recipe
    from train.config import DistillConfig, ModelConfig, load_config

    made = {}
    monkeypatch.setattr(recipe, "Accelerator", lambda **kwargs: made.update(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(DistillConfig, ROOT / "configs/distill/tiny_random_teacher.yaml",
                      ["data.train=[{path: a.jsonl}]", f"faults.collective_timeout_s={seconds}"])
    recipe.make_accelerator(cfg, load_config(ModelConfig, ROOT / "configs/models/tiny.yaml"))
    (group,) = made["kwargs_handlers"]
    given = group.to_kwargs()
    assert given["backend"] == "gloo" and abs(given["timeout"] - timedelta(seconds=seconds)) < timedelta(seconds=1e-3)
