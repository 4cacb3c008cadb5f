"""Pseudo-label a manifest in chunks that survive a crash, one shard per process if asked.

Utterances go in duration order (stable sort): batches pad little, and taking every n-th one gives
shards of like total duration. Audio is decoded by DataLoader workers for the batches in flight only,
so memory does not grow with the manifest. For OUT (or a shard's `OUT-stem.shard-I-of-N.jsonl`):

    OUT.partial    kept lines, appended and fsynced chunk by chunk, in processing order
    OUT.progress   JSONL: {"run": what defines the run}, then one {"chunk": n, ...} per chunk (its input
                   indices, the kept ones in written order, drop and skip counts by reason, audio and
                   transcription seconds, OUT.partial's size after it), then {"complete": report}
    OUT            the kept lines in input-manifest order, written atomically once every chunk is done
    OUT.lock       held while a process works on OUT (a second one, say from a mistyped --shard, refuses)

OUT appears only when complete, so a pipeline that skips a stage whose output exists stays right. A rerun
cuts OUT.partial back to the last recorded size (a torn line, or a chunk written but not recorded, goes),
skips the recorded indices and goes on; a rerun with other settings is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from train.data.audio import SAMPLE_RATE, AudioLimits
from train.data.loader import UtteranceDataset
from train.data.manifest import Utterance, read_manifest
from train.eval.error_rates import error_rates
from train.eval.language_id import detect_language
from train.eval.normalizers import normalize
from train.eval.timed import Transcriber, synchronize

REPETITION_RATIO = 2.4  # Whisper's compression-ratio threshold for looping output
KILL_AFTER_CHUNK = "ARK_OPD_KILL_AFTER_CHUNKS"  # fault injection: SIGKILL once chunk k is written and recorded
KILL_BEFORE_RECORD = "ARK_OPD_KILL_BEFORE_RECORD"  # ... once chunk k is in OUT.partial but not yet recorded


class RunMismatch(RuntimeError):
    """OUT's files belong to another run, or are not in a state to go on from; the message says the way out."""


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def drop_reason(hyp: str, utt: Utterance, drop_empty: bool, drop_repetitive: bool, drop_wrong_language: bool,
                max_wer: float | None) -> str | None:
    """Why a pseudo-label should not be kept, or None."""
    if drop_empty and not normalize(hyp, utt.language):
        return "empty"
    if drop_repetitive and compression_ratio(hyp) > REPETITION_RATIO:
        return "repetitive"
    if drop_wrong_language and utt.language and hyp.strip() and detect_language(hyp) not in (utt.language, None):
        return "wrong_language"
    if max_wer is not None and utt.text and error_rates([utt.text], [hyp], utt.language)["rate"] > max_wer:
        return "above_max_wer"
    return None


# ---- file names -------------------------------------------------------------------------------------------

def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    """Where shard i of n writes: OUT itself when unsharded, else `stem.shard-i-of-n.suffix` beside it."""
    i, n = shard
    return out if n == 1 else out.with_name(f"{out.stem}.shard-{i}-of-{n}{out.suffix}")


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@contextlib.contextmanager
def exclusive(out: Path):
    """Hold OUT.lock (released by the kernel if the process dies); refuse if another process holds it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(out.name + ".lock")
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not lock.exists() or os.stat(lock).st_ino != os.fstat(f.fileno()).st_ino:
                raise BlockingIOError  # its holder finished and removed it: the lock now lives in a new file
        except BlockingIOError:
            raise RunMismatch(f"another process is writing {out} (it holds {lock.name}); give each process its "
                              "own --shard I/N or --out") from None
        yield
        lock.unlink()  # on success only, while still held


# ---- output lines -----------------------------------------------------------------------------------------

def raw_lines(spec: str) -> list[dict] | None:
    """The input JSONL's own objects, in the order `read_jsonl` reads them (None for datasets)."""
    path = Path(spec)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def row_from(utt: Utterance) -> dict:
    """A manifest line for an utterance that came from a dataset: audio is written out by its reader."""
    if not isinstance(utt.audio, str):
        raise ValueError(f"{utt.source}: pseudo-labelling a dataset with embedded audio needs the audio on disk; "
                         "export it with its data recipe first")
    row = {"id": utt.id, "audio": utt.audio, "duration": utt.duration, "language": utt.language}
    if utt.text:
        row["text"] = utt.text
    for key in ("begin_time", "end_time", "task"):
        if getattr(utt, key) is not None:
            row[key] = getattr(utt, key)
    return {**row, **utt.extra}


def output_line(utt: Utterance, raw: dict | None, hyp: str, model: str, out_dir: Path) -> bytes:
    """The input line with the hypothesis as `text`, its transcript as `reference`, and audio resolving from OUT."""
    row = dict(raw) if raw is not None else row_from(utt)
    if raw is not None and not Path(row["audio"]).is_absolute():
        row["audio"] = os.path.relpath(utt.audio, out_dir)
    if row.get("text"):
        row["reference"] = row["text"]
    row["text"] = hyp
    row["pseudo_label_model"] = model
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


# ---- what defines a run -----------------------------------------------------------------------------------

def fingerprint(spec: str, utterances: list[Utterance]) -> dict:
    """Cheap evidence that the input is unchanged: size and hash of a JSONL's bytes, else of the rows' metadata."""
    path = Path(spec)
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    for utt in utterances:
        audio = utt.audio if isinstance(utt.audio, str) else utt.audio.row
        digest.update(json.dumps([utt.id, audio, utt.duration, utt.text, utt.language]).encode())
    return {"utterances": len(utterances), "sha256": digest.hexdigest()}


def _resolved_spec(spec: str) -> str:
    path_part, sep, split = str(spec).partition("#")
    return str(Path(path_part).resolve()) + sep + split if Path(path_part).exists() else str(spec)


def run_identity(manifest: str, utterances: list[Utterance], model: str, filters: dict, limits: AudioLimits,
                 shard: tuple[int, int], settings: dict) -> dict:
    """Everything that changes OUT's lines: a rerun must match it to go on. Batch, chunk and worker counts
    may change between runs (a run killed by running out of memory resumes with a smaller batch)."""
    identity = {"manifest": _resolved_spec(manifest), "fingerprint": fingerprint(manifest, utterances),
                "model": model, "filters": filters, "limits": asdict(limits), "shard": f"{shard[0]}/{shard[1]}",
                **settings}
    return json.loads(json.dumps(identity))  # as it will read back from the progress file


# ---- the progress file ------------------------------------------------------------------------------------

def read_progress(path: Path) -> tuple[list[dict], int]:
    """The whole records of a progress file and their byte length (a line torn by a kill is not one)."""
    if not path.exists():
        return [], 0
    records, good = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    return records, good


def append_synced(path: Path, data: bytes) -> int:
    """Append and fsync, so that what a record claims is on disk before the record is; returns the new size."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def _record(data: dict) -> bytes:
    return (json.dumps(data) + "\n").encode("utf-8")


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def _way_out(progress: Path) -> str:
    return (f"rerun with --overwrite to start over (discarding {progress.name} and what it recorded), "
            "or choose another --out")


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"filters": {"max_wer": 0.3}} -> {"filters.max_wer": 0.3}, so that a message names the one changed leaf."""
    out = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _mismatch(progress: Path, recorded: dict | None, identity: dict) -> RunMismatch:
    was, now = _flat(recorded if isinstance(recorded, dict) else {}), _flat(identity)
    changed = [f"{key}: {str(was.get(key))[:80]} -> {str(now.get(key))[:80]}"
               for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
    return RunMismatch(f"{progress} records a run with other settings ({'; '.join(changed)}); {_way_out(progress)}")


def resume_state(out: Path, identity: dict, overwrite: bool) -> tuple[list[dict], dict | None]:
    """The chunk records already done (OUT.partial cut back to match them) and, if the run is complete, its report."""
    progress, partial = progress_path(out), partial_path(out)
    if overwrite:
        for path in (progress, partial, out):
            path.unlink(missing_ok=True)
    records, good = read_progress(progress)
    if not records:  # nothing recorded (a kill can tear even the first line): start afresh
        if out.exists():
            raise RunMismatch(f"{out} exists but no progress file ({progress.name}) says which run wrote it; "
                              f"{_way_out(progress)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        progress.write_bytes(_record({"run": identity}))
        partial.write_bytes(b"")
        return [], None
    if records[0].get("run") != identity:
        raise _mismatch(progress, records[0].get("run"), identity)
    _truncate(progress, good)
    chunks = [r for r in records if "chunk" in r]
    complete = next((r["complete"] for r in records if "complete" in r), None)
    if complete is not None:
        if not out.exists():
            raise RunMismatch(f"{progress} says the run is complete but {out} is gone; {_way_out(progress)}")
        partial.unlink(missing_ok=True)
        return chunks, complete
    size = chunks[-1]["bytes"] if chunks else 0
    if not partial.exists() or partial.stat().st_size < size:
        raise RunMismatch(f"{partial} holds less than the {size} bytes {progress.name} records; {_way_out(progress)}")
    _truncate(partial, size)
    return chunks, None


def report_of(chunks: list[dict]) -> dict:
    """Counts over chunk records (of one run, or of every shard's)."""
    dropped, skipped = Counter(), Counter()
    for chunk in chunks:
        dropped.update(chunk["dropped"])
        skipped.update(chunk["skipped"])
    audio = sum(c["audio_seconds"] for c in chunks)
    seconds = sum(c["transcription_seconds"] for c in chunks)
    return {"written": sum(len(c["kept"]) for c in chunks), "dropped": dict(sorted(dropped.items())),
            "skipped": dict(sorted(skipped.items())), "audio_seconds": round(audio, 2),
            "rtfx": round(audio / seconds, 2) if seconds else float("inf")}


# ---- transcription ----------------------------------------------------------------------------------------

def shard_order(durations: list[float], shard: tuple[int, int]) -> list[int]:
    """This shard's input indices: every n-th of the stable duration order, from i."""
    i, n = shard
    return np.argsort(np.asarray(durations, dtype=float), kind="stable").tolist()[i::n]


def plan_chunks(todo: list[int], chunk_size: int, batch_size: int) -> list[list[list[int]]]:
    """`todo` cut into chunks, each cut into batches (a batch never spans two chunks)."""
    chunks = [todo[start:start + chunk_size] for start in range(0, len(todo), chunk_size)]
    return [[chunk[start:start + batch_size] for start in range(0, len(chunk), batch_size)] for chunk in chunks]


def _as_list(items: list[dict]) -> list[dict]:
    return items


def audio_batches(utterances: list[Utterance], batches: list[list[int]], limits: AudioLimits, num_workers: int):
    """Each batch's items (audio, or the reason it is unusable) in order; workers decode a few batches ahead."""
    return iter(DataLoader(UtteranceDataset(utterances, limits), batch_sampler=batches, collate_fn=_as_list,
                           num_workers=num_workers))


@dataclass
class Job:
    """What every chunk of one pseudo-labelling run needs."""

    transcriber: Transcriber
    utterances: list[Utterance]
    raws: list[dict] | None
    filters: dict
    out_dir: Path


def transcribe_chunk(job: Job, batches: list[list[int]], items_per_batch) -> tuple[bytes, dict]:
    """The chunk's kept lines (in processing order) and its progress record, less its number and size."""
    lines, kept, dropped, skipped = [], [], Counter(), Counter()
    audio_seconds = seconds = 0.0
    device = job.transcriber.device
    synchronize(device)
    for indices in batches:
        items = next(items_per_batch)
        skipped.update(item["skip"] for item in items if item["skip"])
        usable = [(i, item["audio"]) for i, item in zip(indices, items, strict=True) if item["audio"] is not None]
        if not usable:
            continue
        audios = [audio for _, audio in usable]
        start = time.perf_counter()
        texts = job.transcriber.transcribe(audios, [job.utterances[i].language for i, _ in usable])
        synchronize(device)
        seconds += time.perf_counter() - start
        audio_seconds += sum(len(a) for a in audios) / SAMPLE_RATE
        for (i, _), hyp in zip(usable, texts, strict=True):
            utt = job.utterances[i]
            reason = drop_reason(hyp, utt, **job.filters)
            if reason:
                dropped[reason] += 1
                continue
            kept.append(i)
            lines.append(output_line(utt, job.raws[i] if job.raws is not None else None, hyp,
                                     job.transcriber.name, job.out_dir))
    record = {"indices": [i for batch in batches for i in batch], "kept": kept, "dropped": dict(dropped),
              "skipped": dict(skipped), "audio_seconds": audio_seconds, "transcription_seconds": seconds}
    return b"".join(lines), record


def _kill_if(variable: str, chunk: int) -> None:
    if int(os.environ.get(variable) or 0) == chunk:
        os.kill(os.getpid(), signal.SIGKILL)


def write_atomically(path: Path, lines: list[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def finish(out: Path, chunks: list[dict]) -> dict:
    """Write OUT from OUT.partial in input-manifest order, then record the run complete; returns the report."""
    partial = partial_path(out)
    lines = partial.read_bytes().splitlines(keepends=True)
    kept = [i for chunk in chunks for i in chunk["kept"]]
    if len(lines) != len(kept):
        raise RunMismatch(f"{partial} has {len(lines)} lines where {progress_path(out).name} records {len(kept)}; "
                          f"{_way_out(progress_path(out))}")
    write_atomically(out, [lines[j] for j in sorted(range(len(kept)), key=kept.__getitem__)])
    report = report_of(chunks)
    append_synced(progress_path(out), _record({"complete": report}))  # a kill before this line: finish runs again
    partial.unlink()
    return report


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pseudo_label(transcriber: Transcriber, manifest: str, out: str | Path, batch_size: int = 16,
                 limits: AudioLimits = AudioLimits(), drop_empty: bool = False, drop_repetitive: bool = False,
                 drop_wrong_language: bool = False, max_wer: float | None = None, chunk_size: int = 512,
                 num_workers: int = 0, shard: tuple[int, int] = (0, 1), overwrite: bool = False,
                 settings: dict | None = None) -> dict:
    """Transcribe `manifest` (this shard of it) into `out`, resuming a partial run of the same settings;
    returns {"written", "dropped": {reason: n}, "skipped": {reason: n}, "audio_seconds", "rtfx"}.
    `settings`: anything else that changes the output (decoding options), recorded and compared on resume."""
    utterances = read_manifest(manifest)
    raws = raw_lines(manifest)
    if raws is None:
        for utt in utterances:
            row_from(utt)  # refuse embedded dataset audio now, not after hours of transcription
    filters = {"drop_empty": drop_empty, "drop_repetitive": drop_repetitive,
               "drop_wrong_language": drop_wrong_language, "max_wer": max_wer}
    out = shard_path(Path(out), shard)
    identity = run_identity(manifest, utterances, transcriber.name, filters, limits, shard, settings or {})
    with exclusive(out):
        chunks, report = resume_state(out, identity, overwrite)
        if report is not None:
            _log(f"{out}: already complete ({progress_path(out).name}); nothing to redo")
            return report
        done = {i for chunk in chunks for i in chunk["indices"]}
        todo = [i for i in shard_order([u.duration for u in utterances], shard) if i not in done]
        if done:
            _log(f"{out}: resuming from {progress_path(out).name}, {len(done)} utterances done, {len(todo)} to go")
        plan = plan_chunks(todo, chunk_size, batch_size)
        items = audio_batches(utterances, [batch for chunk in plan for batch in chunk], limits, num_workers)
        job = Job(transcriber, utterances, raws, filters, out.resolve().parent)
        run_chunks(job, out, plan, items, chunks)
        return finish(out, chunks)


def run_chunks(job: Job, out: Path, plan: list[list[list[int]]], items_per_batch, chunks: list[dict]) -> None:
    """Transcribe the planned chunks, each appended to OUT.partial and then recorded (and to `chunks`)."""
    processed = sum(len(chunk["indices"]) for chunk in chunks)
    total = processed + sum(len(batch) for chunk in plan for batch in chunk)
    for number, batches in enumerate(plan, start=len(chunks) + 1):
        data, record = transcribe_chunk(job, batches, items_per_batch)
        size = append_synced(partial_path(out), data)
        _kill_if(KILL_BEFORE_RECORD, number)
        record = {"chunk": number, **record, "bytes": size}
        append_synced(progress_path(out), _record(record))
        chunks.append(record)
        processed += len(record["indices"])
        _log(f"{out}: chunk {number} recorded, {processed}/{total} utterances")
        _kill_if(KILL_AFTER_CHUNK, number)


# ---- shards -----------------------------------------------------------------------------------------------

def _shard_state(out: Path, records: list[dict]) -> str | None:
    """Why a shard cannot be merged yet, or None."""
    if not records:
        return "not started"
    if not any("complete" in r for r in records):
        done = sum(len(r["indices"]) for r in records if "chunk" in r)
        return f"not complete ({done} utterances recorded)"
    return None if out.exists() else "complete, but the file is gone"


def merge_shards(out: str | Path, shards: int) -> dict:
    """Write OUT from the complete outputs of shards 0..n-1, in input-manifest order (as an unsharded run
    writes it); refuses, naming each shard that is not complete. Returns the combined report, whose rtfx
    is per process (audio seconds over the shards' summed transcription seconds)."""
    out = Path(out)
    runs, problems = [], []
    for i in range(shards):
        path = shard_path(out, (i, shards))
        records, _ = read_progress(progress_path(path))
        problem = _shard_state(path, records)
        if problem:
            problems.append(f"shard {i}/{shards} ({path}): {problem}")
        else:
            runs.append((path, records))
    if problems:
        raise RunMismatch("cannot merge until every shard is complete; run (or rerun) these with the same command "
                          "and --shard I/N:\n  " + "\n  ".join(problems))
    settings = {json.dumps({k: v for k, v in records[0]["run"].items() if k != "shard"}, sort_keys=True)
                for _, records in runs}
    if len(settings) > 1:
        raise RunMismatch(f"the shards of {out} were made with different settings (see their .progress files' "
                          "first lines); rerun the odd ones with --overwrite and the same options")
    indexed, chunks = [], []
    for path, records in runs:
        shard_chunks = [r for r in records if "chunk" in r]
        kept = sorted(i for chunk in shard_chunks for i in chunk["kept"])  # a finished shard is in input order
        lines = path.read_bytes().splitlines(keepends=True)
        if len(lines) != len(kept):
            raise RunMismatch(f"{path} has {len(lines)} lines where {progress_path(path).name} records "
                              f"{len(kept)}; rerun that shard with --overwrite")
        indexed.extend(zip(kept, lines, strict=True))
        chunks.extend(shard_chunks)
    indexed.sort(key=lambda pair: pair[0])
    write_atomically(out, [line for _, line in indexed])
    return {**report_of(chunks), "shards": shards}
