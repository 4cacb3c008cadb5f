"""Save and resume everything that defines a run: model, optimizer, scheduler, RNG states (through
`accelerator.save_state`, which also handles DeepSpeed), plus the step, the sampler position and
the evaluator's history in `trainer_state.json`.

A checkpoint is written into `checkpoints/.tmp-step-N` and renamed to `checkpoints/step-N` only
when complete, so a run killed at any moment leaves either a whole checkpoint or none. Before the
rename every file is read back, synced to disk and recorded in `checksums.json` (size and sha256);
`trainer_state.json` is the last file written (it checks itself: whole JSON, the folder's step).
Disks fill up and network filesystems tear files after the fact, so a resume checks a checkpoint
against that record first (`validate_checkpoint`): `resume=auto` takes the newest one that validates
and says which it passed over and why; `resume=DIR` refuses a damaged one. A write that fails (a full
disk, say) removes the partial checkpoint and raises `CheckpointWriteError` on every rank, naming the
path, the error and the space it needs; older checkpoints are pruned (`keep_last`) only once a newer
one is whole, synced and recorded. The final model is written the same way (`write_final`: a temporary
folder renamed to `final/`, a failure said on every rank with nothing partial left).
Each checkpoint keeps a copy of the run's `config.yaml`: the settings its state was made under, which a
resume is checked against (train/run_config.py).

With several processes every rank writes its own files (ZeRO shards, RNG states) into one folder on a
filesystem all ranks share (the rename on rank 0 already assumes it); the reading back and hashing is
shared out over the ranks, so each reads about 1/world of the bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from train.config import ConfigError
from train.quiet import tied_embeddings_saved

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
CHECKSUMS_FILE = "checksums.json"  # {relative path: {size, sha256}}: every file but itself and STATE_FILE
_STEP = re.compile(r"^step-(\d+)$")
_TMP = ".tmp-step-"
_BLOCK = 16 << 20  # bytes read at a time while hashing


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (every rank raises it): its partial files were removed and the
    older checkpoints are as they were."""


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, run_dir: str | Path, accelerator=None, say=None, validate: bool = True
                   ) -> Path | None:
    """The checkpoint to resume from: `never` (none); `auto`, the newest complete one that validates (each
    newer one passed over is said, with what is wrong), or none in a run without checkpoints; or an
    explicit dir, which must validate. A ConfigError if none validates. Collective with `accelerator`
    (every rank calls it: the ranks share the hashing). `validate=False`: taken as it is (checked before).
    `say`: where warnings go (default: printed by rank 0)."""
    say = _sayer(accelerator, say)
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / STATE_FILE).exists():
            raise FileNotFoundError(f"resume={resume}: not a complete checkpoint (no {STATE_FILE})")
        problem = validate_checkpoint(path, accelerator, say) if validate else None
        if problem:
            raise ConfigError(f"resume={resume}: damaged checkpoint: {problem}. Resume from another checkpoint "
                              "(resume=auto takes the newest one that validates)")
        return path
    found = complete_checkpoints(run_dir)
    passed = []
    for path in reversed(found):
        problem = validate_checkpoint(path, accelerator, say) if validate else None
        if problem is None:
            return path
        say(f"warning: resume=auto passes over {path}, damaged: {problem}")
        passed.append(f"{path.name}: {problem}")
    if found:
        raise ConfigError(f"resume=auto: no checkpoint in {Path(run_dir) / 'checkpoints'} validates ("
                          + "; ".join(passed) + "). resume=never trains from step 0 in this folder (move "
                          "checkpoints/ aside first: a later resume=auto would look at them again)")
    return None


def validate_checkpoint(path: str | Path, accelerator=None, say=None) -> str | None:
    """None if every file of the checkpoint is as it was saved; else what is wrong, naming each damaged file
    (missing, another size, other contents, or trainer_state.json unreadable). A checkpoint saved before
    checksums were recorded passes, with a warning. Collective with `accelerator`: rank 0 checks the
    state file and every size, then the ranks share the hashing; all get the same answer."""
    path, say = Path(path), _sayer(accelerator, say)
    found = None
    if _is_main(accelerator):
        found = _state_problem(path) or _recorded(path)
    found = _from_main(accelerator, found)
    if isinstance(found, str):
        return found
    if found is None:
        say(f"warning: {path} has no {CHECKSUMS_FILE} (saved before checkpoints recorded their files): "
            "its files cannot be checked")
        return None
    digests, failures = _digests(accelerator, path, {name: entry["size"] for name, entry in found.items()})
    problems = [f"{path / name} has other contents than when saved (same size, another sha256)"
                for name, entry in sorted(found.items()) if name in digests and
                digests[name]["sha256"] != entry["sha256"]]
    return "; ".join(failures + problems) or None


def saved_config(checkpoint: str | Path) -> tuple[str, Path] | None:
    """(text, file) of the settings a checkpoint was saved under: its own config.yaml, or for a checkpoint
    written before they were kept there, its run folder's; None if neither exists."""
    checkpoint = Path(checkpoint)
    for path in (checkpoint / CONFIG_FILE, checkpoint.parent.parent / CONFIG_FILE):
        if path.is_file():
            return path.read_text(), path
    return None


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict, keep_last: int = 2) -> Path:
    """Write checkpoint `step-N` on all processes (collective), with the run's config.yaml and the record of
    its files; once it is whole, synced and recorded, keep the newest `keep_last`. If any rank's part fails
    (a full disk, say), the partial checkpoint is removed and every rank raises CheckpointWriteError: the
    ranks agree after each phase, so none is left waiting for another."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    final, tmp = folder / f"step-{step}", folder / f"{_TMP}{step}"
    main = accelerator.is_main_process
    failure = _attempt(lambda: _fresh_folder(folder, tmp)) if main else None
    failures = _agreed(accelerator, failure, "preparing the folder")
    if not failures:
        failure = _attempt(lambda: _save_state(accelerator, tmp, run_dir))
        failures = _agreed(accelerator, failure, "writing the state (accelerate save_state)")
    digests = {}
    if not failures:
        sizes = _attempt(lambda: _file_sizes(tmp)) if main else None
        failure = sizes if isinstance(sizes, Exception) else None
        sizes = _from_main(accelerator, None if failure else sizes)  # rank 0 lists the folder: one listing for all
        if sizes is None:
            failures = _agreed(accelerator, failure, "listing its files")
        else:  # every file read back and synced to disk, by the ranks in shares
            digests, failures = _digests(accelerator, tmp, sizes, sync=True)
    if not failures:
        failure = _attempt(lambda: _seal(tmp, final, digests, {"step": step, **state})) if main else None
        failures = _agreed(accelerator, failure, f"writing {CHECKSUMS_FILE}, {STATE_FILE} and renaming")
    if failures:
        raise _write_failed(accelerator, run_dir, tmp, step, failures) from failure
    if main:
        _prune(run_dir, step, keep_last)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state (step, sampler, ...)."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE_FILE).read_text())


def update_trainer_state(path: str | Path, **entries) -> None:
    """Replace `entries` in a complete checkpoint's trainer state, atomically (the checkpoint stays
    complete at every moment: the old file is replaced by a whole new one, or stays if that fails)."""
    path = Path(path)
    state = {**json.loads((path / STATE_FILE).read_text()), **entries}
    tmp = path / f".tmp-{STATE_FILE}"
    try:
        _write_synced(tmp, json.dumps(state, indent=2))
        os.replace(tmp, path / STATE_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def file_digest(path: str | Path, sync: bool = False) -> dict:
    """{size, sha256} of a file, read in blocks; `sync`: also flush it to disk (fsync) before answering."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            size += len(block)
        if sync:
            os.fsync(f.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def checkpoint_bytes(path: str | Path) -> int:
    """A checkpoint's size on disk, in bytes."""
    return _tree_bytes(Path(path))


def write_final(accelerator, run_dir: str | Path, write) -> Path:
    """The run's final model: `write(folder)` on rank 0 into a temporary folder beside `final/`, which then
    replaces `final/` in one rename. Collective. A write that fails (a full disk, say) is agreed on by every
    rank: the partial folder is removed, checkpoints (and an earlier `final/`) are as they were, and every
    rank raises CheckpointWriteError naming the folder, the error, the space free and how to finish."""
    run_dir = Path(run_dir)
    final, tmp = run_dir / "final", run_dir / ".tmp-final"
    failure, written, free_then = None, 0, 0
    if _is_main(accelerator):
        failure = _attempt(lambda: _write_and_rename(write, tmp, final))
        if failure is not None:
            written, free_then = _tree_bytes(tmp), _free_bytes(run_dir)
            shutil.rmtree(tmp, ignore_errors=True)
    failures = _agreed(accelerator, failure, "writing the final model")
    if not failures:
        return final
    written, free_then = _from_main(accelerator, (written, free_then))
    newest = complete_checkpoints(run_dir)
    intact = (f"the checkpoints ({newest[-1].name} the newest) are intact: free some space and run again with "
              f"resume=auto, which starts from {newest[-1].name} and writes the final model") if newest else \
        "the run has no checkpoint to resume from"
    raise CheckpointWriteError(
        f"the final model could not be written to {final}: {'; '.join(failures)}. It needs more than the "
        f"{_size(written)} written before it failed; {_size(free_then)} was free on that filesystem when it "
        f"failed. The partial folder {tmp.name} is removed; {intact}")


def _write_and_rename(write, tmp: Path, final: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)  # a write interrupted before
    write(tmp)
    _replace(tmp, final)  # final exists when a run is extended past its earlier end


# ---- the parts of a write, each run on the ranks named in save_checkpoint ----

def _fresh_folder(folder: Path, tmp: Path) -> None:
    """An empty `tmp`; the partial checkpoints of interrupted writes (never resumed from) removed first."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{_TMP}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()


def _save_state(accelerator, tmp: Path, run_dir: Path) -> None:
    with tied_embeddings_saved():  # the tied lm_head is left out of the file on purpose (train/quiet.py)
        accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process and (run_dir / CONFIG_FILE).is_file():
        shutil.copyfile(run_dir / CONFIG_FILE, tmp / CONFIG_FILE)


def _file_sizes(folder: Path) -> dict[str, int]:
    """{relative path: size} of every file to record (all but the record itself and the state file)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)) not in (CHECKSUMS_FILE, STATE_FILE)}


def _seal(tmp: Path, final: Path, digests: dict, state: dict) -> None:
    """The record, then the state file (last), then the rename; each synced to disk."""
    _write_synced(tmp / CHECKSUMS_FILE, json.dumps(digests, indent=1, sort_keys=True))
    _write_synced(tmp / STATE_FILE, json.dumps(state, indent=2))
    _replace(tmp, final)  # final exists when the same step is written again (a resume from an earlier checkpoint)


def _replace(tmp: Path, final: Path) -> None:
    """`tmp` renamed to `final` (an older `final` removed first), the rename made durable."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _sync_dir(final.parent)


def _prune(run_dir: Path, step: int, keep_last: int) -> None:
    """Keep the new checkpoint and the `keep_last - 1` newest older ones. Newer ones (from a run resumed
    from an earlier checkpoint, or passed over as damaged) are left for the run to write again."""
    older = [p for p in complete_checkpoints(run_dir) if int(p.name.split("-")[1]) < step]
    for old in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _write_failed(accelerator, run_dir: Path, tmp: Path, step: int, failures: list[str]) -> CheckpointWriteError:
    """Remove the partial checkpoint (rank 0) and say what failed, what it needs and what is intact."""
    folder = tmp.parent
    free_then, written, partial = _free_bytes(folder), _tree_bytes(tmp), _newest_files(tmp)
    accelerator.wait_for_everyone()  # every rank has measured before the partial files go
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    previous = [p for p in complete_checkpoints(run_dir) if p.name != f"step-{step}"]
    if previous:
        need = f"It needs about {_size(checkpoint_bytes(previous[-1]))} (the size of {previous[-1].name})"
        intact = f"{previous[-1].name} and the older checkpoints are intact"
    else:
        need = f"It needs more than the {_size(written)} written before it failed (no earlier checkpoint to measure)"
        intact = "there was no earlier checkpoint"
    return CheckpointWriteError(
        f"checkpoint step-{step} could not be written in {folder}: {'; '.join(failures)}"
        + (f" (the files written last: {partial})" if partial else "") + f". {need}; "
        f"{_size(free_then)} was free on that filesystem when it failed, {_size(_free_bytes(folder))} now that "
        f"the partial checkpoint {tmp.name} is removed; {intact}")


# ---- collectives: every rank calls them, in the same order ----

def _is_main(accelerator) -> bool:
    return accelerator is None or accelerator.is_main_process


def _sayer(accelerator, say):
    return say if say is not None else print if _is_main(accelerator) else (lambda *_: None)


def _world(accelerator) -> tuple[int, int]:
    return (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)


def _from_main(accelerator, value):
    """Rank 0's `value` on every rank."""
    if _world(accelerator)[1] == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _from_all(accelerator, value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if _world(accelerator)[1] == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def _agreed(accelerator, failure: Exception | None, doing: str) -> list[str]:
    """Every rank's failure (if any) of the phase just run, said the same on every rank."""
    rank = _world(accelerator)[0]
    return [f for f in _from_all(accelerator, None if failure is None else
                                 f"rank {rank}, {doing}: {_describe(failure)}") if f]


def _digests(accelerator, folder: Path, sizes: dict[str, int], sync: bool = False) -> tuple[dict, list[str]]:
    """({name: {size, sha256}}, problems) for the files `sizes` names, each rank reading its share (the
    largest files spread first). A file missing or of another size than `sizes` is a problem, not hashed."""
    rank, world = _world(accelerator)
    shares, loads = [[] for _ in range(world)], [0] * world
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        least = loads.index(min(loads))
        shares[least].append(name)
        loads[least] += sizes[name]
    mine, problems = {}, []
    for name in shares[rank]:
        file = folder / name
        try:
            actual = file.stat().st_size
            if actual != sizes[name]:
                problems.append(f"{file} is {actual} bytes, {sizes[name]} when saved (truncated or torn)")
                continue
            mine[name] = file_digest(file, sync)
        except FileNotFoundError:
            problems.append(f"{file} is missing")
        except Exception as err:  # noqa: BLE001 - said, with the file, on every rank
            problems.append(f"rank {rank}, reading {file}: {_describe(err)}")
    merged, said = {}, []
    for digests, found in _from_all(accelerator, (mine, problems)):
        merged.update(digests)
        said.extend(found)
    return merged, sorted(said)


def _state_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint's trainer_state.json, or None."""
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError:
        return f"{file} is missing"
    except (OSError, ValueError) as err:
        return f"{file} cannot be read ({err}): truncated or torn"
    if not isinstance(state, dict) or "step" not in state:
        return f"{file} has no step: not a trainer state"
    m = _STEP.match(path.name)
    if m and state["step"] != int(m.group(1)):
        return f"{file} says step {state['step']}, not {m.group(1)}"
    return None


def _recorded(path: Path) -> dict | str | None:
    """The record of a checkpoint's files ({name: {size, sha256}}), None if it has none (saved before
    records were kept), or what is wrong with it. Missing files and other sizes are found here (a stat
    each), before anything is hashed."""
    file = path / CHECKSUMS_FILE
    if not file.exists():
        return None
    try:
        record = json.loads(file.read_text())
        assert all(isinstance(e["size"], int) and isinstance(e["sha256"], str) for e in record.values())
    except (OSError, ValueError, AssertionError, KeyError, TypeError, AttributeError) as err:
        return f"{file} cannot be read ({type(err).__name__}: {err}): truncated or torn"
    problems = []
    for name, entry in sorted(record.items()):
        if not (path / name).is_file():
            problems.append(f"{path / name} is missing")
        elif (size := (path / name).stat().st_size) != entry["size"]:
            problems.append(f"{path / name} is {size} bytes, {entry['size']} when saved (truncated or torn)")
    return "; ".join(problems) or record


def _attempt(action):
    """`action()`'s result, or the exception it raised (a failed write is decided on by all ranks)."""
    try:
        return action()
    except Exception as err:  # noqa: BLE001 - torch and safetensors do not raise OSError for a full disk
        return err


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        text += " (the disk or quota is full)"
    return text


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    """The rename itself made durable (the directory's entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _newest_files(folder: Path, count: int = 3) -> str:
    """The files of `folder` written last, with their sizes, newest last (the one a write failed in)."""
    try:
        files = sorted((p.stat().st_mtime_ns, p) for p in folder.rglob("*") if p.is_file())
        return ", ".join(f"{p.relative_to(folder)} {_size(p.stat().st_size)}" for _, p in files[-count:])
    except OSError:
        return ""


def _tree_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return 0


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"
