"""Preemption and dead ranks: a run its scheduler stops loses no finished step, and a rank that dies or
hangs ends the others instead of holding them in a collective until the job's wall time.

Preemption. Spot reclaimers, Kubernetes and SLURM send SIGTERM and kill a grace period later; SLURM's
`--signal=USR1@SECONDS` warns with SIGUSR1 ahead of its time limit. While the training loop runs, each of
`faults.signals` only notes that it came (a handler may run between any two bytecodes: it does nothing
else). After every step, its dev evaluation and its checkpoint, the ranks agree in one tiny all-reduce
whether any of them noted one, so all of them stop after the same step even when the signal reached one
rank only. The step in progress is always finished, never abandoned: by the time a signal is looked at,
its rollouts (the costly part) are done, and a step cut short would have to take back the batches, skip
counts and random state it had drawn. The stop writes the checkpoint of that step (unless it was due
anyway), closes the metrics log and the trackers, says one line, and exits with PREEMPTED_EXIT_CODE. No
final model is written: the run is not finished. `resume=auto` goes on bitwise as an uninterrupted run.
Before the loop (setup, the step-0 evaluation) and after it (the final evaluation and model) the signals
act as they would without this: nothing would be saved there that a resume does not redo.

Dead ranks. Every collective fails after `faults.collective_timeout_s` (train/recipe.py
`make_accelerator`); a rank that dies usually ends the others at once (its connections close, and
`accelerate launch`/torchrun stop the other ranks). Either way the ranks left say, each in one line,
which rank failed at which step and which checkpoint a resume would start from.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from train.checkpoint import complete_checkpoints

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry", the status a requeue script
# tests for. Not 143 (128 + SIGTERM): a shell reports that for a process SIGTERM killed before it saved anything.
PREEMPTED_EXIT_CODE = 75


class Preempted(SystemExit):
    """The run stopped on a signal after writing its checkpoint; exits the process with PREEMPTED_EXIT_CODE."""

    def __init__(self, line: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.line = line


@dataclass
class Stop:
    """What the ranks agreed on: the signal, and the ranks it reached."""

    signal: str
    ranks: list[int]


class Preemption:
    """`with Preemption(cfg.faults.signals, accelerator, run_dir) as preemption:` around the training loop;
    `preemption.agreed(step)` after each step (collective). The previous handlers are put back on leaving."""

    def __init__(self, signals: list[str], accelerator, run_dir: Path):
        self.signals = [signal.Signals[name] for name in signals]
        self.accelerator, self.run_dir = accelerator, Path(run_dir)
        self.noted = 0  # the number of the signal this process received last; 0: none
        self.step = None  # the last step agreed on (finished), for the message of a failed collective
        self.previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> Preemption:
        if self.signals and threading.current_thread() is not threading.main_thread():
            print("warning: faults.signals: signal handlers can only be set in the main thread; a signal "
                  "will act as it does without them")
            return self
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.noted = signum

    def agreed(self, step: int) -> Stop | None:
        """Collective (every rank calls it after `step`, unless faults.signals is empty on all): whether any
        rank received one of the signals, the same answer on every rank."""
        self.step = step
        if not self.signals:
            return None
        accelerator = self.accelerator
        noted = torch.zeros(accelerator.num_processes, device=accelerator.device)
        noted[accelerator.process_index] = self.noted
        if accelerator.num_processes > 1:
            noted = accelerator.reduce(noted, reduction="sum")
        received = {rank: int(sig) for rank, sig in enumerate(noted.tolist()) if sig}
        if not received:
            return None
        return Stop(signal.Signals(next(iter(received.values()))).name, sorted(received))

    def __exit__(self, kind, error, traceback) -> bool:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        if error is not None and collective_failed(error):
            print(self.collective_failure(error), file=sys.stderr, flush=True)
        return False

    def collective_failure(self, error: BaseException) -> str:
        """One line naming this rank, the step it was in, and the checkpoint a resume would start from."""
        newest = complete_checkpoints(self.run_dir)
        during = f"step {self.step + 1}" if self.step is not None else "the first step"
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        return (f"rank {self.accelerator.process_index} (pid {os.getpid()}): a collective failed during {during}: "
                f"another rank died, or did not get there within faults.collective_timeout_s ({first}). Newest "
                f"complete checkpoint: {newest[-1] if newest else 'none yet'}; resume with resume=auto")


def collective_failed(error: BaseException) -> bool:
    """A failed all-reduce, barrier or broadcast: torch's distributed errors (NCCL), or gloo's RuntimeErrors
    (a timeout, a connection the dead rank's end closed)."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in ("gloo", "pair closure"))
