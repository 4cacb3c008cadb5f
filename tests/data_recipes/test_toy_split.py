"""data_recipes/toy_tts/split.py: a labelled share per language, the rest pooled with its labels hidden."""

from __future__ import annotations

import json

import pytest

from data_recipes.toy_tts.split import split


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_split_per_language_hides_pool_labels(tmp_path):
    train = [{"id": f"{lang}{i}", "audio": f"a/{lang}{i}.flac", "text": f"t{i}", "language": lang, "duration": 1.0}
             for lang in ("en", "de") for i in range(8)]
    unlabelled = [{"id": "u0", "audio": "a/u0.flac", "language": "en", "duration": 2.0, "reference_text": "x"}]
    _write(tmp_path / "train.jsonl", train)
    _write(tmp_path / "unlabelled.jsonl", unlabelled)
    counts = split(tmp_path, 0.25)
    labelled = [json.loads(x) for x in (tmp_path / "train_labelled.jsonl").read_text().splitlines()]
    pool = [json.loads(x) for x in (tmp_path / "train_pool.jsonl").read_text().splitlines()]
    assert [r["id"] for r in labelled] == ["en0", "en1", "de0", "de1"]
    assert labelled[0] == train[0]
    assert counts == {"labelled": 4, "pool": 13, "labelled_hours": 0.001, "pool_hours": 0.004}
    assert not any("text" in r for r in pool)
    assert {r["id"]: r["reference_text"] for r in pool}["en5"] == "t5"
    assert {r["id"] for r in labelled}.isdisjoint(r["id"] for r in pool)


def test_share_must_be_a_fraction(tmp_path):
    with pytest.raises(ValueError, match="labelled-share"):
        split(tmp_path, 1.0)
