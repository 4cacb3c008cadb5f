"""LibriSpeech recipe: a fake hub copy (openslr/librispeech_asr columns) and a fake release tree."""

from __future__ import annotations

import pytest

from tests.data_recipes import fakes


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    from datasets import Value

    root = tmp_path_factory.mktemp("ls_hub")
    features = fakes.audio_features(file=Value("string"), text=Value("string"), speaker_id=Value("int64"),
                                    chapter_id=Value("int64"), id=Value("string"))
    for config in ("clean", "other"):
        splits = {}
        for split in ("validation", "test"):
            ids = [f"{i + 1}{'0' if config == 'clean' else '9'}{len(split)}-128104-000{i}" for i in range(3)]
            splits[split] = {"file": [f"{i}.flac" for i in ids],
                             "audio": [fakes.clip_cell(i, ids[i]) for i in range(3)],
                             "text": ["MISTER QUILTER IS THE APOSTLE", "NOR IS MISTER QUILTER'S MANNER", "X"],
                             "speaker_id": [1272, 1272, 1462], "chapter_id": [128104] * 3, "id": ids}
        fakes.save_dataset(root / config, splits, features)
    return root


def test_librispeech_from_dataset(hub_dir, tmp_path):
    from data_recipes.librispeech import prepare

    results = prepare.main(["--dataset", str(hub_dir), "--out", str(tmp_path), "--splits", "dev-clean",
                            "test-other", "train-clean-100"])
    by = {r.split: r for r in results}
    assert by["train-clean-100"].missing  # the fake has no train.100: reported, the rest still built
    for split in ("dev-clean", "test-other"):
        r = by[split]
        assert r.manifest == tmp_path / f"{split}.jsonl"
        assert r.utterances == 2 and r.skipped == {"unreadable": 1}
        loaded = fakes.load_checked(r.manifest, language="en")
        assert sorted(len(s) for _, s in loaded.values()) == sorted([fakes.expected_len(0), fakes.expected_len(1)])
        texts = {u.text for u, _ in loaded.values()}
        assert texts == {"MISTER QUILTER IS THE APOSTLE", "NOR IS MISTER QUILTER'S MANNER"}  # upper-case as distributed
        assert all(u.extra["speaker_id"] == 1272 for u, _ in loaded.values())


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls_release") / "LibriSpeech"
    chapter = root / "dev-clean" / "84" / "121123"
    fakes.write(chapter / "84-121123-0000.flac", fakes.tone(200, 1.2), 16000)
    fakes.write(chapter / "84-121123-0001.flac", fakes.tone(400, 0.8, rate=8000, channels=2), 8000)
    (chapter / "84-121123-0002.flac").write_bytes(fakes.CORRUPT)  # corrupt
    fakes.write(chapter / "84-121123-0009.flac", fakes.tone(300, 0.5), 16000)  # no transcript line
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
        "84-121123-0002 THE STAIRCASE GROANED\n84-121123-0003 A FILE THAT IS NOT THERE\n")
    chapter2 = root / "dev-clean" / "174" / "50561"
    fakes.write(chapter2 / "174-50561-0000.flac", fakes.tone(250, 1.0), 16000)
    (chapter2 / "174-50561.trans.txt").write_text("174-50561-0000 FORGOTTEN TOO THE NAME OF GILLIAN\n")
    return root.parent


def test_librispeech_from_release_tree(release_dir, tmp_path):
    from data_recipes.librispeech import prepare

    results = prepare.main(["--source-dir", str(release_dir), "--out", str(tmp_path), "--splits", "dev-clean",
                            "test-clean"])
    by = {r.split: r for r in results}
    assert by["test-clean"].missing and "test-clean" in by["test-clean"].missing
    r = by["dev-clean"]
    assert r.utterances == 3
    assert r.skipped == {"unreadable": 1, "missing": 1, "no_transcript": 1}
    loaded = fakes.load_checked(r.manifest, language="en")
    assert set(loaded) == {"84-121123-0000", "84-121123-0001", "174-50561-0000"}
    utt, samples = loaded["84-121123-0001"]
    assert len(samples) == fakes.expected_16k(0.8, 8000) and utt.text == "BUT IN LESS THAN FIVE MINUTES"
    assert utt.audio.startswith("/") and utt.audio.endswith("dev-clean/84/121123/84-121123-0001.flac")  # in place
    assert not (tmp_path / "audio").exists()  # nothing copied
    assert utt.extra == {"speaker_id": "84", "chapter_id": "121123"}
    again = prepare.main(["--source-dir", str(release_dir), "--out", str(tmp_path), "--splits", "dev-clean"])
    assert again[0].cached and again[0].utterances == 3
