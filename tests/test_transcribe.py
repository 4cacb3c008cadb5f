"""train/transcribe.py: pseudo-labelled manifests keep fields, move references, apply each filter, stream in
flat memory, resume after a kill to the same bytes, refuse changed settings, and merge shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.audio_files import sine, write
from train.data.manifest import read_manifest
from train.transcribe import RunMismatch, compression_ratio, main, pseudo_label

HYPS = {
    "keep": "guten morgen zusammen",
    "empty": "  ",
    "loop": "ja " * 40,
    "english": "good morning to everyone here today",
    "far": "völlig andere worte hier",
    "unlabelled": "hallo welt wie geht es",
}


@dataclass
class ScriptedTranscriber:
    """Answers each clip with the hypothesis scripted for its id (clip lengths encode the id)."""

    name: str = "scripted-model"
    device: torch.device = torch.device("cpu")

    def transcribe(self, audios, languages):
        return [HYPS[ORDER[round(len(a) / 1600) - 5]] for a in audios]


ORDER = list(HYPS)


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for i, key in enumerate(ORDER):
        write(tmp_path / "in" / "audio" / f"{key}.wav", sine(200 + 30 * i, (5 + i) * 0.1))
        row = {"id": key, "audio": f"audio/{key}.wav", "language": "de", "speaker": f"s{i}", "task": "asr"}
        if key != "unlabelled":
            row["text"] = "guten morgen zusammen"
        rows.append(row)
    path = tmp_path / "in" / "unlabelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compression_ratio_flags_loops():
    assert compression_ratio("ja " * 40) > 2.4 > compression_ratio("guten morgen zusammen")


def test_no_filters_keeps_everything_and_moves_references(manifest, tmp_path):
    out = tmp_path / "elsewhere" / "pseudo.jsonl"
    report = pseudo_label(ScriptedTranscriber(), str(manifest), out, batch_size=4)
    assert report["written"] == 6 and report["dropped"] == {}
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["keep"]["text"] == HYPS["keep"] and rows["keep"]["reference"] == "guten morgen zusammen"
    assert "reference" not in rows["unlabelled"] and rows["unlabelled"]["text"] == HYPS["unlabelled"]
    assert rows["keep"]["speaker"] == "s0" and rows["keep"]["task"] == "asr"
    assert all(r["pseudo_label_model"] == "scripted-model" for r in rows.values())
    # audio paths still resolve from the new manifest's folder
    assert all((tmp_path / "in" / "audio").samefile(Path(u.audio).parent) for u in read_manifest(out))


def test_each_filter_drops_its_lines(manifest, tmp_path):
    report = pseudo_label(ScriptedTranscriber(), str(manifest), tmp_path / "f.jsonl", batch_size=4, drop_empty=True,
                          drop_repetitive=True, drop_wrong_language=True, max_wer=0.5)
    assert report["dropped"] == {"empty": 1, "repetitive": 1, "wrong_language": 1, "above_max_wer": 1}
    kept = {json.loads(x)["id"] for x in (tmp_path / "f.jsonl").read_text().splitlines()}
    assert kept == {"keep", "unlabelled"}


def test_cli_with_a_tiny_student(manifest, tmp_path, tiny_student, capsys):
    from train.models import save_student

    model, processor = tiny_student
    ckpt = save_student(model, processor, tmp_path / "ckpt")
    out = tmp_path / "cli.jsonl"
    report = main(["--model", str(ckpt), "--manifest", str(manifest), "--out", str(out), "--max-new-tokens", "5",
                   "--device", "cpu"])
    assert report["written"] == 6 and len(out.read_text().splitlines()) == 6
    files = main(["--model", str(ckpt), str(manifest.parent / "audio" / "keep.wav"), "--language", "de",
                  "--max-new-tokens", "4", "--device", "cpu"])
    assert len(files["texts"]) == 1 and "keep.wav\t" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", str(ckpt), "--manifest", str(manifest)])  # --out missing


def test_qwen3_asr_transcriber_on_a_tiny_model():
    from tests.teachers.qwen3_fixtures import tiny_qwen3_asr
    from train.eval.qwen3_asr_transcriber import Qwen3ASRTranscriber

    # The real checkpoints ship their chat template; this minimal one renders the same turn layout.
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}"
                "{% if c.type == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
                "{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}"
                "{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}")
    model, processor = tiny_qwen3_asr(chat_template=template)
    transcriber = Qwen3ASRTranscriber(model, processor, max_new_tokens=4)
    prompt = processor.apply_transcription_request([sine(300, 1.0)], language=["de"], tokenize=False)[0]
    assert prompt.endswith("<|im_start|>assistant\nlanguage German<asr_text>")
    texts = transcriber.transcribe([sine(300, 1.0), sine(500, 0.6)], ["de", "hr"])  # hr: no forced language
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# ---- streaming, resume, shards ------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class EchoTranscriber:
    """Deterministic text from the clip's samples; every third clip (by length) comes back empty."""

    name: str = "echo-model"
    device: torch.device = torch.device("cpu")
    calls: int = 0
    fail_at_call: int | None = None  # raise on this call: a crash mid-run, in-process

    def transcribe(self, audios, languages):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("scripted crash")
        return ["" if len(a) % 3 == 0 else f"clip {len(a)} {float(np.abs(a).sum()):.2f}" for a in audios]


def main_with_echo(argv: list[str]) -> dict:
    """train/transcribe.py's main with the echo transcriber in place of a checkpoint (for subprocesses)."""
    import train.transcribe as transcribe

    transcribe.load_transcriber = lambda *args: EchoTranscriber()
    return transcribe.main(argv)


def _pool(folder: Path, count: int, seconds=lambda i: 0.2 + 0.01 * (i % 37), missing=()) -> Path:
    """A manifest of `count` short tones (lengths vary, not sorted by duration); `missing` indices have no file."""
    rows = []
    for i in range(count):
        audio = folder / "audio" / f"{i}.wav"
        if i not in missing:
            write(audio, sine(150 + 7 * i, seconds(i)))
        rows.append({"id": f"u{i}", "audio": f"audio/{i}.wav", "language": "de", "duration": seconds(i)})
    path = folder / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "echo", "--manifest", str(manifest), "--out", str(out), "--chunk-size", "8",
            "--batch-size", "4", "--num-workers", "0", "--drop-empty", "--device", "cpu", *extra]


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out.parent / (out.name + ".progress")).read_text().splitlines()]


def test_peak_memory_does_not_grow_with_the_manifest(tmp_path):
    import tracemalloc

    big = _pool(tmp_path, 200, seconds=lambda i: 2.0 + 0.01 * (i % 7))
    small = tmp_path / "small.jsonl"
    small.write_text("".join(big.read_text().splitlines(keepends=True)[:40]))
    peaks = {}
    for manifest in (small, big):
        tracemalloc.start()  # numpy's buffers are traced, so decoded audio counts
        report = pseudo_label(EchoTranscriber(), str(manifest), tmp_path / f"{manifest.stem}.out.jsonl",
                              batch_size=8, chunk_size=16)
        peaks[manifest.stem] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sum(report["dropped"].values()) + report["written"] == len(read_manifest(manifest))
    all_audio_bytes = 200 * 2.0 * 16000 * 4  # float32 samples of every clip: what whole-manifest decoding holds
    assert peaks["pool"] < 1.5 * peaks["small"], peaks
    assert peaks["pool"] < all_audio_bytes / 4, peaks


def _run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    code = "import sys; from tests.test_transcribe import main_with_echo; main_with_echo(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env})


def test_killed_runs_resume_to_the_same_bytes(tmp_path, monkeypatch):
    import train.transcribe as transcribe

    manifest = _pool(tmp_path, 60, missing={7, 41})
    monkeypatch.setattr(transcribe, "load_transcriber", lambda *args: EchoTranscriber())
    straight = transcribe.main(_cli(manifest, tmp_path / "straight.jsonl"))
    out = tmp_path / "killed.jsonl"
    partial, progress = tmp_path / "killed.jsonl.partial", tmp_path / "killed.jsonl.progress"

    # killed after chunk 3's lines reached OUT.partial, before its record: chunk 3 must be redone, not doubled
    killed = _run_cli(_cli(manifest, out), {"ARK_OPD_KILL_BEFORE_RECORD": "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    chunks = [r for r in _records(out) if "chunk" in r]
    assert [c["chunk"] for c in chunks] == [1, 2] and not out.exists()
    assert partial.stat().st_size > chunks[-1]["bytes"]
    # the rerun goes on, and is killed again right after recording chunk 5
    killed = _run_cli(_cli(manifest, out), {"ARK_OPD_KILL_AFTER_CHUNKS": "5"})
    assert killed.returncode == -9 and "resuming" in killed.stderr, killed.stderr[-2000:]
    chunks = [r for r in _records(out) if "chunk" in r]
    assert [c["chunk"] for c in chunks] == [1, 2, 3, 4, 5] and partial.stat().st_size == chunks[-1]["bytes"]
    # kills mid-write leave torn lines in both files
    with open(partial, "ab") as f:
        f.write(b'{"id": "u99", "audio": "au')
    with open(progress, "ab") as f:
        f.write(b'{"chunk": 6, "indi')

    resumed = transcribe.main(_cli(manifest, out))
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    assert {k: resumed[k] for k in ("written", "dropped", "skipped", "audio_seconds")} == \
        {k: straight[k] for k in ("written", "dropped", "skipped", "audio_seconds")}
    assert resumed["skipped"] == {"missing": 2} and resumed["dropped"]["empty"] > 0 and resumed["written"] > 30
    ids = [int(json.loads(x)["id"][1:]) for x in out.read_text().splitlines()]
    assert ids == sorted(ids)  # input-manifest order, although clips were transcribed in duration order
    done = [i for r in _records(out) if "chunk" in r for i in r["indices"]]
    assert sorted(done) == list(range(60)) and not partial.exists() and not (tmp_path / "killed.jsonl.lock").exists()


def test_changed_settings_refuse_overwrite_restarts_complete_reruns_nothing(tmp_path, monkeypatch):
    import train.transcribe as transcribe
    from train.pseudo_label import exclusive

    manifest = _pool(tmp_path, 12)
    out = tmp_path / "out.jsonl"
    first = pseudo_label(EchoTranscriber(), str(manifest), out, batch_size=4, chunk_size=5)
    written, progress = out.read_bytes(), (tmp_path / "out.jsonl.progress").read_bytes()

    again = EchoTranscriber()
    assert pseudo_label(again, str(manifest), out, batch_size=2, chunk_size=3) == first
    assert again.calls == 0 and out.read_bytes() == written
    assert (tmp_path / "out.jsonl.progress").read_bytes() == progress

    with pytest.raises(RunMismatch, match=r"out\.jsonl\.progress.*drop_empty.*--overwrite"):
        pseudo_label(EchoTranscriber(), str(manifest), out, drop_empty=True)
    with pytest.raises(RunMismatch, match="model"):
        pseudo_label(EchoTranscriber(name="another-model"), str(manifest), out)
    monkeypatch.setattr(transcribe, "load_transcriber", lambda *args: EchoTranscriber())
    with pytest.raises(SystemExit, match=r"out\.jsonl\.progress.*--overwrite"):  # the CLI also decodes differently
        transcribe.main(["--model", "echo", "--manifest", str(manifest), "--out", str(out), "--device", "cpu"])
    with manifest.open("a") as f:  # one more line (ids stay unique, as manifests must have them)
        f.write(manifest.read_text().splitlines(keepends=True)[0].replace('"id": "u0"', '"id": "u12"'))
    with pytest.raises(RunMismatch, match="fingerprint"):
        pseudo_label(EchoTranscriber(), str(manifest), out)

    redone = pseudo_label(EchoTranscriber(), str(manifest), out, drop_empty=True, overwrite=True)
    assert redone["dropped"]["empty"] > 0 and redone["written"] + redone["dropped"]["empty"] == 13
    assert len(out.read_text().splitlines()) == redone["written"]
    stranger = tmp_path / "stranger.jsonl"
    stranger.write_text("{}\n")
    with pytest.raises(RunMismatch, match="no progress file"):
        pseudo_label(EchoTranscriber(), str(manifest), stranger)
    with exclusive(out), pytest.raises(RunMismatch, match="another process is writing"):
        pseudo_label(EchoTranscriber(), str(manifest), out, drop_empty=True)


def test_three_shards_merge_to_the_unsharded_output(tmp_path):
    from train.pseudo_label import merge_shards

    manifest = _pool(tmp_path, 31, missing={4})
    whole = pseudo_label(EchoTranscriber(), str(manifest), tmp_path / "whole.jsonl", batch_size=4, chunk_size=4,
                         drop_empty=True, num_workers=2)
    out = tmp_path / "sharded.jsonl"
    for i in (0, 1):
        pseudo_label(EchoTranscriber(), str(manifest), out, batch_size=4, chunk_size=4, drop_empty=True, shard=(i, 3))
    with pytest.raises(RuntimeError, match="scripted crash"):
        pseudo_label(EchoTranscriber(fail_at_call=2), str(manifest), out, batch_size=4, chunk_size=4,
                     drop_empty=True, shard=(2, 3))
    with pytest.raises(RunMismatch, match=r"shard 2/3 \(.*sharded\.shard-2-of-3\.jsonl\): not complete") as err:
        merge_shards(out, 3)
    assert "shard 0/3" not in str(err.value) and not out.exists()

    pseudo_label(EchoTranscriber(), str(manifest), out, batch_size=4, chunk_size=4, drop_empty=True, shard=(2, 3))
    merged = merge_shards(out, 3)
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes() and merged["written"] > 10
    assert {k: merged[k] for k in ("written", "dropped", "skipped")} == \
        {k: whole[k] for k in ("written", "dropped", "skipped")}
    durations = [u.duration for u in read_manifest(manifest)]
    totals = [sum(durations[i] for r in _records(tmp_path / f"sharded.shard-{s}-of-3.jsonl") if "chunk" in r
                  for i in r["indices"]) for s in range(3)]
    assert max(totals) - min(totals) <= max(durations)  # every third of the duration order: balanced


def test_launchers_choose_the_shard_and_device(monkeypatch, tmp_path):
    from train.transcribe import parse_args

    (tmp_path / "in.jsonl").write_text("")
    argv = ["--model", "m", "--manifest", str(tmp_path / "in.jsonl"), "--out", "out.jsonl"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = parse_args(argv)
    assert args.shard == (2, 4) and args.device == "cuda:1"
    assert parse_args([*argv, "--shard", "0/3", "--device", "cpu"]).shard == (0, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parse_args(argv).shard == (0, 1)
    with pytest.raises(SystemExit):
        parse_args([*argv, "--shard", "3/3"])
    assert parse_args(["--merge", "--out", "out.jsonl", "--shards", "3"]).merge


# ---- file mode: unreadable files are named, and the exit status says so -------------------------------------

def test_file_mode_names_unreadable_files_after_the_others_and_fails(tmp_path, monkeypatch, capsys):
    import train.transcribe as transcribe

    good = write(tmp_path / "good.wav", sine(300, 0.5))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" + bytes(range(64)))
    silent = write(tmp_path / "silent.flac", np.zeros(8000, dtype=np.float32))
    monkeypatch.setattr(transcribe, "load_transcriber", lambda *args: EchoTranscriber())
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main(["--model", "echo", str(good), str(corrupt), str(silent), "--device", "cpu"])
    assert exit_info.value.code == "error: 2 of 3 file(s) could not be read (named above)"
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and out.startswith(f"{good}\tclip 8000 ")  # the readable file's transcript
    assert f"{corrupt}: could not be read (unreadable: " in err and f"{silent}: could not be read (all_zero: " in err

    # a missing path is refused before any model loads, every one named
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main(["--model", "echo", str(good), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.wav'}: no such audio file" in err and f"{tmp_path / 'b.wav'}: no such audio file" in err


def test_file_mode_exit_status_and_a_file_gone_after_the_check(tmp_path, capsys):
    from train.transcribe import transcribe_files

    good = write(tmp_path / "good.wav", sine(300, 0.5))
    gone = tmp_path / "gone.wav"
    result = transcribe_files(EchoTranscriber(), [str(good), str(gone)], None, batch_size=4)
    assert list(result["texts"]) == [str(good)] and result["unreadable"] == {str(gone): f"missing: {gone}"}
    assert f"{gone}: could not be read (missing: {gone})" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all")
    run = _run_cli(["--model", "echo", str(good), str(corrupt), "--device", "cpu"], {})
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stdout.startswith(f"{good}\tclip 8000") and f"{corrupt}: could not be read (unreadable" in run.stderr


def test_every_option_of_transcribe_shows_its_default():
    from tests.eval.test_compare import options_without_default
    from train.transcribe import build_parser

    assert options_without_default(build_parser()) == []
