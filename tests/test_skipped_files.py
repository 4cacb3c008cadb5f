"""skipped.jsonl: every clip a run could not use, named in the run folder (train/recipe.py SkippedClips),
the same after an interrupted and resumed run as after an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.data.audio_files import broken_files
from tests.test_distill import _manifest
from train.data.loader import Collator, UtteranceDataset
from train.data.manifest import read_manifest
from train.recipe import SKIPPED_FILE, SkippedClips


def _with_broken(manifest: Path, name: str) -> Path:
    """The manifest with one unreadable clip added (a corrupt wav)."""
    garbage = broken_files(manifest.parent / "broken")["unreadable"]
    row = {"audio": str(garbage), "text": "alpha bravo", "language": "en", "id": f"{name}-broken", "duration": 0.8}
    out = manifest.with_name(name)
    out.write_text(manifest.read_text() + json.dumps(row) + "\n")
    return out


def test_a_batch_names_the_clips_it_skipped(tmp_path, tiny_student):
    _, processor = tiny_student
    manifest = _with_broken(_manifest(tmp_path / "data", 2), "mixed.jsonl")
    dataset = UtteranceDataset(read_manifest(str(manifest)))
    batch = Collator(processor)([dataset[i] for i in range(3)])
    assert batch["size"] == 2 and batch["skipped"] == {"unreadable": 1}  # the counts stay
    [clip] = batch["skipped_clips"]
    assert clip["id"] == "mixed.jsonl-broken" and clip["reason"] == "unreadable"
    assert clip["audio"] == str(tmp_path / "data" / "broken" / "garbage.wav") and clip["detail"]


def _accelerator(main: bool = True):
    return SimpleNamespace(is_main_process=main, num_processes=1)


def test_the_file_keeps_what_a_checkpoint_counted_and_drops_the_rest(tmp_path):
    clip = {"id": "a", "audio": "/x/a.wav", "reason": "missing", "detail": ""}
    skipped = SkippedClips(_accelerator(), tmp_path)
    assert (tmp_path / SKIPPED_FILE).read_text() == "" and skipped.report() == "no clips skipped"
    skipped.add(2, "train", [clip])
    skipped.add(1, "dev", [{**clip, "id": "b"}])
    assert (tmp_path / SKIPPED_FILE).read_text() == ""  # held until a point every rank reaches
    skipped.flush()
    lines = [json.loads(x) for x in (tmp_path / SKIPPED_FILE).read_text().splitlines()]
    assert lines == [{"step": 1, "id": "b", "audio": "/x/a.wav", "reason": "missing", "detail": "", "split": "dev"},
                     {"step": 2, "id": "a", "audio": "/x/a.wav", "reason": "missing", "detail": "", "split": "train"}]
    assert skipped.lines == 2
    skipped.add(3, "train", [clip])
    skipped.flush()  # ... then the run dies before the checkpoint that counted 3 lines is complete
    resumed = SkippedClips(_accelerator(), tmp_path, {"missing": 1}, lines=2)
    assert len((tmp_path / SKIPPED_FILE).read_text().splitlines()) == 2 and resumed.lines == 2
    assert resumed.total == 1 and str(tmp_path / SKIPPED_FILE) in SkippedClips(_accelerator(), tmp_path, {}, None).report()
    SkippedClips(_accelerator(main=False), tmp_path, lines=0)  # only rank 0 touches the file
    assert len((tmp_path / SKIPPED_FILE).read_text().splitlines()) == 2
    SkippedClips(_accelerator(), tmp_path)  # a new run in the same folder starts the file again
    assert (tmp_path / SKIPPED_FILE).read_text() == ""


def _sft_args(tmp_path: Path, train: Path, dev: Path, **extra):
    from tests.test_sft import _args

    return _args(tmp_path, train, dev, max_steps=6, **{"checkpoint.every": 2, "eval.every": 4,
                                                        "data.max_batch_size": 3, **extra})


def test_an_interrupted_and_resumed_run_writes_the_same_skipped_file(tmp_path, tokenizer, monkeypatch, capsys):
    from train import recipe
    from train.sft import main

    train = _with_broken(_manifest(tmp_path / "data", 5), "train_mixed.jsonl")
    dev = _with_broken(_manifest(tmp_path / "data", 2, name="dev.jsonl"), "dev_mixed.jsonl")
    main(_sft_args(tmp_path / "straight", train, dev))
    assert "each skipped clip (training and dev) is named in" in capsys.readouterr().out
    straight = (tmp_path / "straight/run" / SKIPPED_FILE).read_text()
    records = [json.loads(x) for x in straight.splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps and all(r["id"] == "train_mixed.jsonl-broken" and r["reason"] == "unreadable"
                               for r in records if r["split"] == "train")
    # the dev evaluations: the starting model's (eval.on_start), step 4 (eval.every) and the last
    assert [r["step"] for r in records if r["split"] == "dev"] == [0, 4, 6]
    assert {r["id"] for r in records if r["split"] == "dev"} == {"dev_mixed.jsonl-broken"}
    steps = [json.loads(x) for x in (tmp_path / "straight/run/metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["skipped_files"] == len(train_steps)  # the counts and the named clips agree
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)

    real = recipe.save_checkpoint

    def dies_while_saving_step_6(accelerator, run_dir, step, state, keep_last=2):
        if step == 6:  # after skipped.jsonl was brought up to step 6, before the checkpoint that counts it
            raise RuntimeError("injected: killed while saving")
        return real(accelerator, run_dir, step, state, keep_last)

    monkeypatch.setattr(recipe, "save_checkpoint", dies_while_saving_step_6)
    with pytest.raises(RuntimeError, match="injected"):
        main(_sft_args(tmp_path / "resumed", train, dev))
    monkeypatch.setattr(recipe, "save_checkpoint", real)
    interrupted = (tmp_path / "resumed/run" / SKIPPED_FILE).read_text()
    assert max(json.loads(x)["step"] for x in interrupted.splitlines()) > 4  # lines the step-4 checkpoint did not count
    main(_sft_args(tmp_path / "resumed", train, dev))
    assert "resumed from" in capsys.readouterr().out
    assert (tmp_path / "resumed/run" / SKIPPED_FILE).read_text() == straight  # no line twice, none lost
