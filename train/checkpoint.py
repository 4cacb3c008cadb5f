"""Save and resume everything that defines a run: model, optimizer, scheduler, RNG states (through
`accelerator.save_state`, which also handles DeepSpeed), plus the step, the sampler position and
the evaluator's history in `trainer_state.json`.

A checkpoint is written into `checkpoints/.tmp-step-N` and renamed to `checkpoints/step-N` only
when complete, so a run killed at any moment leaves either a whole checkpoint or none;
`trainer_state.json` is the last file written. `resume=auto` takes the newest complete one.
Each checkpoint keeps a copy of the run's `config.yaml`: the settings its state was made under, which a
resume is checked against (train/run_config.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from train.quiet import tied_embeddings_saved

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
_STEP = re.compile(r"^step-(\d+)$")


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: `auto` (newest complete, or none), `never`, or an explicit dir."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"resume={resume}: not a complete checkpoint (no {STATE_FILE})")
    return path


def saved_config(checkpoint: str | Path) -> tuple[str, Path] | None:
    """(text, file) of the settings a checkpoint was saved under: its own config.yaml, or for a checkpoint
    written before they were kept there, its run folder's; None if neither exists."""
    checkpoint = Path(checkpoint)
    for path in (checkpoint / CONFIG_FILE, checkpoint.parent.parent / CONFIG_FILE):
        if path.is_file():
            return path.read_text(), path
    return None


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict, keep_last: int = 2) -> Path:
    """Write checkpoint `step-N` atomically on all processes, with the run's config.yaml; keep the newest
    `keep_last`."""
    folder = Path(run_dir) / "checkpoints"
    final, tmp = folder / f"step-{step}", folder / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with tied_embeddings_saved():  # the tied lm_head is left out of the file on purpose (train/quiet.py)
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if (Path(run_dir) / CONFIG_FILE).is_file():
            shutil.copyfile(Path(run_dir) / CONFIG_FILE, tmp / CONFIG_FILE)
        with open(tmp / STATE_FILE, "w") as f:
            json.dump({"step": step, **state}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state (step, sampler, ...)."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE_FILE).read_text())


def update_trainer_state(path: str | Path, **entries) -> None:
    """Replace `entries` in a complete checkpoint's trainer state, atomically (the checkpoint stays
    complete at every moment: the old file is replaced by a whole new one)."""
    path = Path(path)
    state = {**json.loads((path / STATE_FILE).read_text()), **entries}
    tmp = path / f".tmp-{STATE_FILE}"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / STATE_FILE)
