"""A rank that dies or hangs (faults.collective_timeout_s, train/preemption.py): the other ranks end with an
error within the collective timeout instead of waiting for the job's wall time, each says which rank, step
and checkpoint, and what was saved before the fault survives: the newest checkpoint is complete and loads
(weights, optimizer state, sampler position, dev history), and the metrics history keeps every finished step.
Two CPU processes each; the fault hits rank 1 during step 3, after its rollouts, before its update.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.faults.test_preemption import _args, metric_rows
from tests.launch import ROOT, launcher, run
from tests.backend_runs import checkpoint_tensors
from tests.test_distill import _manifest
from train.checkpoint import STATE_FILE, complete_checkpoints

TIMEOUT = 20  # faults.collective_timeout_s: long enough for a healthy step on two loaded CPU cores
# After a rank fails, torch's elastic agent (under accelerate launch and torchrun) sends the others SIGTERM and
# SIGKILLs them 30 s later (fixed; TORCH_ELASTIC_SHUTDOWN_TIMEOUT applies only to signals the launcher gets).
GRACE = 30
MARGIN = 25  # step 3's rollouts before the collective, the launcher noticing, process exit, a loaded machine


@pytest.fixture()
def data(tmp_path):
    return _manifest(tmp_path / "data", 12), _manifest(tmp_path / "data", 4, name="dev.jsonl")


def _fault_run(backend: str, tmp_path: Path, data, fault: dict) -> tuple[object, float, Path]:
    """Launch with `fault` on rank 1 at step 3; (result, seconds from the step-2 checkpoint to the launcher's
    exit, the run folder)."""
    args = _args(tmp_path, data, **{"checkpoint.every": 2, "faults.collective_timeout_s": TIMEOUT})
    out = run(launcher(backend) + [str(ROOT / "train" / "distill.py")] + args,
              env_extra={**fault, "ARK_OPD_FAULT_RANK": "1"})
    ended = time.time()
    run_dir = tmp_path / "run"
    saved = (run_dir / "checkpoints" / "step-2" / STATE_FILE).stat().st_mtime  # the last thing before the fault
    return out, ended - saved, run_dir


def assert_saved_state_intact(run_dir: Path) -> None:
    """Everything saved before the fault at step 3: the step-2 checkpoint, whole, and the history up to it."""
    newest = complete_checkpoints(run_dir)
    assert [p.name for p in newest] == ["step-2"]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint of step 3
    tensors = checkpoint_tensors(newest[-1])  # every weight and optimizer file loads
    assert any("optim" in k and v.numel() > 1 for k, v in tensors.items())
    assert any("multi_modal_projector.linear_2.weight" in k for k in tensors)
    state = json.loads((newest[-1] / STATE_FILE).read_text())
    assert state["step"] == 2 and state["sampler"] and state["engine"]["last_epoch"] == 2
    assert [h["step"] for h in state["evaluator"]["history"]] == [2]  # eval.every=2
    assert [r["step"] for r in metric_rows(run_dir)] == [1, 2]  # step 3 never finished
    assert not (run_dir / "final").exists()


@pytest.mark.slow
def test_a_killed_rank_ends_the_other_within_the_timeout(tmp_path, data, tokenizer):
    """ZeRO-2: rank 1 is SIGKILLed mid-step. Rank 0 does not wait in its next collective: the launcher sees rank
    1 die and stops rank 0, or rank 0's collective fails on the closed connection, well within the timeout."""
    out, seconds, run_dir = _fault_run("zero2", tmp_path, data, {"ARK_OPD_KILL_AT_STEP": "3"})
    assert out.returncode != 0
    assert "exitcode  : -9" in out.stderr, out.stderr[-3000:]  # the launcher names the dead rank
    assert seconds < TIMEOUT + MARGIN, f"{seconds:.0f} s from the last checkpoint to the launcher's exit"
    assert_saved_state_intact(run_dir)


@pytest.mark.slow
def test_a_hung_rank_ends_the_other_at_the_collective_timeout(tmp_path, data, tokenizer):
    """DDP: rank 1 hangs mid-step (alive, silent). Rank 0 waits in the gradient all-reduce for
    faults.collective_timeout_s, fails with one line naming itself, the step and the checkpoint to resume
    from; the launcher then stops rank 1 (SIGTERM, which a hung rank does not act on; SIGKILL after GRACE)."""
    out, seconds, run_dir = _fault_run("ddp", tmp_path, data, {"ARK_OPD_HANG_AT_STEP": "3"})
    assert out.returncode != 0
    assert TIMEOUT <= seconds < TIMEOUT + GRACE + MARGIN, f"{seconds:.0f} s from the last checkpoint to the exit"
    lines = [line[line.index("rank 0 (pid "):] for line in out.stderr.splitlines() if "rank 0 (pid " in line]
    assert lines, out.stderr[-3000:]  # (a progress bar's last state may precede it on its line)
    assert ("a collective failed during step 3: another rank died, or did not get there within "
            "faults.collective_timeout_s ([") in lines[0]
    assert f"Timed out waiting {TIMEOUT * 1000}ms" in lines[0]  # gloo's own words: the configured timeout acted
    assert f"Newest complete checkpoint: {run_dir}/checkpoints/step-2; resume with resume=auto" in lines[0]
    assert_saved_state_intact(run_dir)
