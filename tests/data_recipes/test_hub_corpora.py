"""VoxPopuli, MLS, GigaSpeech and Open ASR Leaderboard recipes against fake local copies of their hub datasets."""

from __future__ import annotations

import pytest

from tests.data_recipes import fakes

TWO = sorted([fakes.expected_len(0), fakes.expected_len(1)])


def lengths(loaded):
    return sorted(len(s) for _, s in loaded.values())


# ---------------------------------------------------------------------------- VoxPopuli


@pytest.fixture(scope="module")
def voxpopuli_dir(tmp_path_factory):
    from datasets import ClassLabel, Value

    root = tmp_path_factory.mktemp("vp")
    features = fakes.audio_features(
        audio_id=Value("string"), language=ClassLabel(names=["en", "de", "fr"]), raw_text=Value("string"),
        normalized_text=Value("string"), gender=Value("string"), speaker_id=Value("string"),
        is_gold_transcript=Value("bool"), accent=Value("string"))
    for lang, code in (("de", 1), ("fr", 2)):
        ids = [f"20180111-0900-PLENARY-15-{lang}_20180111-17:28:1{i}_5" for i in range(4)]
        cells = [fakes.clip_cell(i, ids[i]) for i in range(3)] + [fakes.clip_cell(0, ids[3])]
        columns = {"audio_id": ids, "language": [code] * 4, "audio": cells,
                   "raw_text": ["Herr Präsident, danke.", "", "kaputt", ""],
                   "normalized_text": ["herr präsident danke", "meine damen und herren", "kaputt", ""],
                   "gender": ["male", "female", "male", "male"], "speaker_id": ["1", "2", "3", "4"],
                   "is_gold_transcript": [True, False, True, True], "accent": ["None"] * 4}
        fakes.save_dataset(root / lang, {"validation": columns, "test": columns}, features)
    return root


def test_voxpopuli(voxpopuli_dir, tmp_path):
    from data_recipes.voxpopuli import prepare

    results = prepare.main(["--dataset", str(voxpopuli_dir), "--out", str(tmp_path), "--languages", "de", "fr"])
    assert {(r.split, r.language) for r in results} == {(s, l) for s in ("dev", "test") for l in ("de", "fr")}
    for r in results:
        # row 2 corrupt, row 3 has neither raw nor normalised text
        assert r.utterances == 2 and r.skipped == {"unreadable": 1, "empty_text": 1}
        loaded = fakes.load_checked(r.manifest, language=r.language)
        assert lengths(loaded) == TWO
        texts = {uid.split("_")[1]: u.text for uid, (u, _) in loaded.items()}
        assert texts["20180111-17:28:10"] == "Herr Präsident, danke."  # raw_text
        assert texts["20180111-17:28:11"] == "meine damen und herren"  # falls back to normalized_text
        assert all(":" not in p.name for p in (tmp_path / "audio").rglob("*.*"))  # ids made file-name safe


# ---------------------------------------------------------------------------- MLS


@pytest.fixture(scope="module")
def mls_dir(tmp_path_factory):
    from datasets import Value

    root = tmp_path_factory.mktemp("mls")
    features = fakes.audio_features(
        original_path=Value("string"), begin_time=Value("float64"), end_time=Value("float64"),
        transcript=Value("string"), audio_duration=Value("float64"), speaker_id=Value("string"),
        chapter_id=Value("string"), file=Value("string"), id=Value("string"))
    ids = ["10218_10137_000000", "10218_10137_000001", "10218_10137_000002"]
    columns = {"original_path": ["http://archive.org/x.mp3"] * 3, "begin_time": [120.5, 135.0, 150.0],
               "end_time": [121.5, 136.5, 160.0], "transcript": ["hij zei dat", "en toen", "kapot"],
               "audio_duration": [1.0, 1.5, 10.0], "speaker_id": ["10218"] * 3, "chapter_id": ["10137"] * 3,
               "file": [f"{i}.opus" for i in ids], "id": ids, "audio": [fakes.clip_cell(i, ids[i]) for i in range(3)]}
    fakes.save_dataset(root / "dutch", {"dev": columns, "9_hours": columns}, features)
    return root


def test_mls(mls_dir, tmp_path):
    from data_recipes.mls import prepare

    results = prepare.main(["--dataset", str(mls_dir), "--out", str(tmp_path), "--languages", "nl",
                            "--splits", "dev", "9_hours"])
    for r in results:
        assert r.language == "nl" and r.manifest == tmp_path / r.split / "nl.jsonl"
        assert r.utterances == 2 and r.skipped == {"unreadable": 1}
        loaded = fakes.load_checked(r.manifest, language="nl")
        assert lengths(loaded) == TWO  # whole clips: the hub's begin/end are NOT applied again
        utt, _ = loaded["10218_10137_000000"]
        assert utt.begin_time is None and utt.end_time is None
        assert utt.extra["original_begin_time"] == 120.5 and utt.text == "hij zei dat"
    with pytest.raises(SystemExit):
        prepare.main(["--dataset", str(mls_dir), "--out", str(tmp_path), "--languages", "xx"])


# ---------------------------------------------------------------------------- GigaSpeech


def test_gigaspeech_text_cleaning():
    from data_recipes.gigaspeech.prepare import clean_text

    assert clean_text("AS THEY SAY <COMMA> HELLO <PERIOD> <SIL>") == "AS THEY SAY, HELLO."
    assert clean_text("<MUSIC> WHAT IS IT <QUESTIONMARK> WOW <EXCLAMATIONPOINT>") == "WHAT IS IT? WOW!"
    assert clean_text("<COMMA> LEADING MARK <NOISE> <OTHER>") == "LEADING MARK"
    assert clean_text("<SIL> <MUSIC>") == "" and clean_text("<NOISE> <PERIOD>") == ""


@pytest.fixture(scope="module")
def gigaspeech_dir(tmp_path_factory):
    from datasets import ClassLabel, Value

    root = tmp_path_factory.mktemp("gs")
    features = fakes.audio_features(
        segment_id=Value("string"), speaker=Value("string"), text=Value("string"), begin_time=Value("float32"),
        end_time=Value("float32"), audio_id=Value("string"), title=Value("string"), url=Value("string"),
        source=ClassLabel(names=["audiobook", "podcast", "youtube"]),
        category=ClassLabel(names=["People and Blogs", "Business"]), original_full_path=Value("string"))

    def columns(prefix):
        ids = [f"{prefix}_POD0000000004_S000000{i}" for i in range(4)]
        return {"segment_id": ids, "speaker": ["N/A"] * 4,
                "text": ["DOUGLAS MCGRAY <COMMA> HE SAID <PERIOD>", "IS IT <QUESTIONMARK> <NOISE>", "BROKEN <PERIOD>",
                         "<SIL> <MUSIC>"],
                "begin_time": [10.0, 12.0, 14.0, 16.0], "end_time": [11.0, 13.5, 15.0, 17.0],
                "audio_id": ["POD0000000004"] * 4, "title": ["a podcast"] * 4, "url": ["http://x"] * 4,
                "source": [1] * 4, "category": [1] * 4, "original_full_path": ["audio/podcast/P0000/POD4.opus"] * 4,
                "audio": [fakes.clip_cell(i, ids[i]) for i in range(3)] + [fakes.clip_cell(0, ids[3])]}

    fakes.save_dataset(root / "dev", {"validation": columns("DEV")}, features)
    fakes.save_dataset(root / "test", {"test": columns("TEST")}, features)
    fakes.save_dataset(root / "xs", {"train": columns("XS"), "validation": columns("DEV"), "test": columns("TEST")},
                       features)
    return root


def test_gigaspeech(gigaspeech_dir, tmp_path):
    from data_recipes.gigaspeech import prepare

    results = prepare.main(["--dataset", str(gigaspeech_dir), "--out", str(tmp_path), "--subsets", "xs", "dev",
                            "test"])
    assert [r.manifest for r in results] == [tmp_path / f"{s}.jsonl" for s in ("xs", "dev", "test")]
    for r in results:
        assert r.utterances == 2 and r.skipped == {"unreadable": 1, "empty_after_tags": 1}
        loaded = fakes.load_checked(r.manifest, language="en")
        assert lengths(loaded) == TWO
        texts = sorted(u.text for u, _ in loaded.values())
        assert texts == ["DOUGLAS MCGRAY, HE SAID.", "IS IT?"]
        for utt, _ in loaded.values():
            assert utt.begin_time is None and utt.extra["original_begin_time"] in (10.0, 12.0)
            assert utt.extra["source"] == "podcast" and utt.extra["category"] == "Business"
            assert "speaker" not in utt.extra  # "N/A" dropped


# ---------------------------------------------------------------------------- Open ASR Leaderboard


@pytest.fixture(scope="module")
def leaderboard_dir(tmp_path_factory):
    from datasets import Value

    root = tmp_path_factory.mktemp("oal")
    features = fakes.audio_features(dataset=Value("string"), text=Value("string"), id=Value("string"),
                                    audio_length_s=Value("float64"))

    def columns(name):
        ids = [f"{name}-{i}" for i in range(4)]
        return {"dataset": [name] * 4, "id": ids, "audio_length_s": [1.0, 1.5, 0.0, 1.0],
                "text": ["hello there", "general kenobi", "broken", "ignore time segment in scoring"],
                "audio": [fakes.clip_cell(i, ids[i]) for i in range(3)] + [fakes.clip_cell(0, ids[3])]}

    fakes.save_dataset(root / "ami", {"test": columns("ami")}, features)
    fakes.save_dataset(root / "librispeech", {"test.clean": columns("ls"), "test.other": columns("ls")}, features)
    return root


def test_open_asr_leaderboard(leaderboard_dir, tmp_path):
    from data_recipes.open_asr_leaderboard import prepare

    results = prepare.main(["--dataset", str(leaderboard_dir), "--out", str(tmp_path), "--sets", "ami",
                            "librispeech:test.clean", "librispeech:test.other", "tedlium"])
    by = {r.manifest.name: r for r in results}
    assert set(by) == {"ami.jsonl", "librispeech_clean.jsonl", "librispeech_other.jsonl", "tedlium.jsonl"}
    assert by["tedlium.jsonl"].missing
    ids = set()
    for name in ("ami.jsonl", "librispeech_clean.jsonl", "librispeech_other.jsonl"):
        r = by[name]
        assert r.manifest.parent == tmp_path / "test"
        assert r.utterances == 2 and r.skipped == {"unreadable": 1, "empty_text": 1}
        loaded = fakes.load_checked(r.manifest, language="en")
        assert lengths(loaded) == TWO and {u.text for u, _ in loaded.values()} == {"hello there", "general kenobi"}
        ids |= set(loaded)
    assert "ami-ami-0" in ids and "librispeech-ls-0" in ids  # ids carry the set's config
