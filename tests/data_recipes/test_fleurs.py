"""FLEURS recipe against a fake `google/fleurs` saved locally with the hub's columns."""

from __future__ import annotations

import json

import pytest

from tests.data_recipes import fakes

LANGS = {"en": "en_us", "zh": "cmn_hans_cn"}


@pytest.fixture(scope="module")
def fleurs_dir(tmp_path_factory):
    from datasets import ClassLabel, Value

    root = tmp_path_factory.mktemp("fleurs_src")
    features = fakes.audio_features(
        id=Value("int32"), num_samples=Value("int32"), path=Value("string"), transcription=Value("string"),
        raw_transcription=Value("string"), gender=ClassLabel(names=["male", "female", "other"]),
        lang_id=ClassLabel(names=["cmn_hans_cn", "en_us"]), language=Value("string"),
        lang_group_id=ClassLabel(names=["western_european_we", "cjk"]))
    for iso, config in LANGS.items():
        splits = {}
        for split in ("validation", "test"):
            names = [f"{split}{i}{iso}" for i in range(3)]
            splits[split] = {
                # two recordings of the same sentence (id 7), as FLEURS has: distinct files, one sentence id
                "id": [7, 7, 9], "num_samples": [16000, 66150, 0],
                "path": [f"/cache/extracted/{split}/{n}.wav" for n in names],
                "audio": [fakes.clip_cell(i, names[i]) for i in range(3)],
                "transcription": [f"hello world {i}" for i in range(3)],
                "raw_transcription": [f"Hello, World {i}!" for i in range(3)],
                "gender": [0, 1, 0], "lang_id": [list(LANGS.values()).index(config)] * 3,
                "language": ["English" if iso == "en" else "Mandarin Chinese"] * 3, "lang_group_id": [0, 0, 0],
            }
        fakes.save_dataset(root / config, splits, features)
    return root


def test_fleurs_exports_dev_and_test(fleurs_dir, tmp_path):
    from data_recipes.fleurs import prepare

    out = tmp_path / "fleurs"
    results = prepare.main(["--dataset", str(fleurs_dir), "--out", str(out), "--languages", "en", "zh"])
    assert {(r.split, r.language) for r in results} == {(s, l) for s in ("dev", "test") for l in ("en", "zh")}
    for r in results:
        assert r.missing is None and not r.cached
        assert r.utterances == 2 and r.skipped == {"unreadable": 1}
        assert r.manifest == out / r.split / f"{r.language}.jsonl"  # the project's dev-set path scheme
        loaded = fakes.load_checked(r.manifest, language=r.language)
        lengths = sorted(len(s) for _, s in loaded.values())
        assert lengths == sorted([fakes.expected_len(0), fakes.expected_len(1)])
        for utt, _ in loaded.values():
            assert utt.text.startswith("Hello, World ")  # raw_transcription, not the normalised one
            assert utt.extra["normalized_text"].startswith("hello world ")
            assert utt.extra["sentence_id"] == 7 and utt.extra["gender"] in ("male", "female")
        lines = [json.loads(x) for x in r.manifest.read_text().splitlines()]
        for line in lines:  # audio written under OUT/audio/, referenced relative to the manifest
            assert not line["audio"].startswith("/")
            assert (r.manifest.parent / line["audio"]).resolve().is_relative_to(out.resolve() / "audio")
        exts = sorted(line["audio"].rsplit(".", 1)[1] for line in lines)
        assert exts == ["flac", "wav"]  # original encoded bytes, no re-encoding
    # the stereo 44.1 kHz flac kept its bytes exactly
    src = fakes.clip_cell(1, "x")["bytes"]
    flacs = list((out / "audio").rglob("*.flac"))
    assert flacs and all(p.read_bytes() == src for p in flacs)

    # done markers: a second run does nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    again = prepare.main(["--dataset", str(fleurs_dir), "--out", str(out), "--languages", "en", "zh"])
    assert all(r.cached for r in again)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")} == before
    assert (out / "dev" / ".done-en").exists()


def test_fleurs_missing_language_is_reported_not_fatal(fleurs_dir, tmp_path):
    from data_recipes.common import exit_code
    from data_recipes.fleurs import prepare

    results = prepare.main(["--dataset", str(fleurs_dir), "--out", str(tmp_path), "--splits", "dev",
                            "--languages", "en", "de"])
    by_lang = {r.language: r for r in results}
    assert by_lang["en"].utterances == 2
    assert by_lang["de"].missing and "de_de" in by_lang["de"].missing
    assert exit_code(results) == 1
