"""Manifests: JSONL with validation by file and line, ARK's own lines, Hugging Face datasets, one reader."""

from __future__ import annotations

import json

import pytest

from tests.data.audio_files import sine, write
from train.data.audio import load_audio
from train.data.manifest import ManifestError, read_manifest, write_jsonl


def _manifest(tmp_path, rows, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_jsonl_fields_paths_and_extras(tmp_path):
    write(tmp_path / "audio" / "a.wav", sine(300, 1.5))
    path = _manifest(tmp_path, [
        {"audio": "audio/a.wav", "text": "hallo welt", "language": "de", "duration": 1.5, "id": "u1",
         "speaker": "s7"},
        {"audio": str(tmp_path / "audio" / "a.wav"), "language": "de"},
        {"audio": "audio/a.wav", "text": "", "language": "de"},
    ])
    utts = read_manifest(path)
    assert [u.id for u in utts] == ["u1", "m-2", "m-3"]
    assert utts[0].audio == str(tmp_path / "audio" / "a.wav") and utts[0].extra == {"speaker": "s7"}
    assert utts[1].duration == pytest.approx(1.5)  # from the file header
    assert utts[0].labelled and not utts[1].labelled and not utts[2].labelled
    assert len(load_audio(utts[1])) == 24000


def test_ark_lines_load_unchanged(tmp_path):
    write(tmp_path / "long.wav", sine(200, 4.0))
    path = _manifest(tmp_path, [{"audio": "long.wav", "text": "第一段", "task": "asr", "begin_time": 0.5,
                                 "end_time": 2.0}])
    (utt,) = read_manifest(path)
    assert (utt.task, utt.begin_time, utt.end_time, utt.text) == ("asr", 0.5, 2.0, "第一段")
    assert utt.duration == pytest.approx(1.5) and utt.language is None
    assert len(load_audio(utt)) == 24000


@pytest.mark.parametrize("line, message", [
    ('{"text": "no audio"}', r"m\.jsonl:2: missing field 'audio'"),
    ('{"audio": 5}', r"m\.jsonl:2: field 'audio' is int"),
    ('{"audio": "a.wav", "duration": "long"}', r"m\.jsonl:2: field 'duration' is str"),
    ('{"audio": "a.wav", "duration": -1}', r"m\.jsonl:2: field 'duration' must be a finite number"),
    ('{"audio": "a.wav", "begin_time": 3, "end_time": 2}', r"m\.jsonl:2: end_time 2 is not after"),
    ('{"audio": "a.wav", "language": ["de"]}', r"m\.jsonl:2: field 'language' is list"),
    ('{"audio": "a.wav", ', r"m\.jsonl:2: not valid JSON"),
    ('["a.wav"]', r"m\.jsonl:2: expected a JSON object"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    path = _manifest(tmp_path, [{"audio": "a.wav", "duration": 1.0}, line])
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


@pytest.mark.parametrize("code, hint", [
    ("gr", r"did you mean el\?"),  # Greece's country code
    ("dee", r"did you mean de or ee\?"),
    ("xx", r"the codes are listed at https://en.wikipedia.org/wiki/List_of_ISO_639-1_codes"),
    ("Germn", r"did you mean de\?"),
])
def test_unknown_language_names_line_value_and_a_hint(tmp_path, code, hint):
    path = _manifest(tmp_path, [{"audio": "a.wav", "language": "de", "duration": 1.0},
                                {"audio": "a.wav", "language": code, "duration": 1.0, "id": "x"}])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:2: field 'language' is '{code}': not an ISO 639-1 code; "
                                            rf"{hint}"):
        read_manifest(path)


def test_language_forms_are_read_as_their_code(tmp_path):
    rows = [{"audio": "a.wav", "duration": 1.0, "id": str(i), **({"language": x} if x is not None else {})}
            for i, x in enumerate(["de", "de-DE", "deu", "German", "EN", "zh_CN", "yue", "", None])]
    utts = read_manifest(_manifest(tmp_path, rows))
    assert [u.language for u in utts] == ["de", "de", "de", "de", "en", "zh", "yue", None, None]


def test_repeated_id_names_both_lines(tmp_path):
    path = _manifest(tmp_path, [{"audio": "a.wav", "duration": 1.0, "id": "a"},
                                {"audio": "b.wav", "duration": 1.0, "id": "b"},
                                {"audio": "c.wav", "duration": 1.0, "id": "a"}])
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: id 'a' is also the id of line 1"):
        read_manifest(path)
    # Ids made from the line number are unique too, and an explicit one that equals one is caught.
    path = _manifest(tmp_path, [{"audio": "a.wav", "duration": 1.0}, {"audio": "a.wav", "duration": 1.0, "id": "n-1"}],
                     name="n.jsonl")
    with pytest.raises(ManifestError, match=r"n\.jsonl:2: id 'n-1' is also the id of line 1"):
        read_manifest(path)


def test_check_unique_ids_across_sources(tmp_path):
    from train.data.manifest import check_unique_ids

    a = read_manifest(_manifest(tmp_path, [{"audio": "a.wav", "duration": 1.0, "id": "u1"}], name="a.jsonl"))
    b = read_manifest(_manifest(tmp_path, [{"audio": "b.wav", "duration": 1.0, "id": "u2"},
                                           {"audio": "c.wav", "duration": 1.0, "id": "u1"}], name="b.jsonl"))
    check_unique_ids([("a.jsonl", a)])
    with pytest.raises(ManifestError, match=r"id 'u1' is in a\.jsonl and in b\.jsonl: ids must be unique across"):
        check_unique_ids([("a.jsonl", a), ("b.jsonl", b)])
    with pytest.raises(ManifestError, match=r"id 'u1' is twice in a\.jsonl.*listed twice\? give it a weight"):
        check_unique_ids([("a.jsonl", a), ("a.jsonl", a)])


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "nope.jsonl")


def test_write_jsonl_round_trips(tmp_path):
    write(tmp_path / "a.wav", sine(300, 1.0))
    rows = [{"audio": "a.wav", "text": "żółć 你好", "language": "pl", "duration": 1.0, "id": "x"}]
    path = write_jsonl(rows, tmp_path / "out" / "m.jsonl")
    assert "żółć 你好" in path.read_text(encoding="utf-8")
    assert not list(path.parent.glob("*.tmp"))
    (tmp_path / "out" / "a.wav").symlink_to(tmp_path / "a.wav")
    assert read_manifest(path)[0].text == "żółć 你好"


def _audio_dataset(tmp_path):
    from datasets import Audio, Dataset

    files = [write(tmp_path / f"{i}.flac", sine(200 + 100 * i, 1.0 + i)) for i in range(3)]
    ds = Dataset.from_dict({"audio": [str(f) for f in files], "sentence": ["eins", "zwei", "drei"],
                            "utt": ["a", "b", "c"], "locale": ["de", "de", "de"]})
    return ds.cast_column("audio", Audio())


def test_saved_dataset_reads_through_the_same_reader(tmp_path):
    from datasets import DatasetDict

    ds = _audio_dataset(tmp_path)
    ds.save_to_disk(str(tmp_path / "ds"))
    utts = read_manifest(tmp_path / "ds", language="de")
    assert [u.text for u in utts] == ["eins", "zwei", "drei"]
    assert [round(u.duration, 3) for u in utts] == [1.0, 2.0, 3.0]
    assert all(u.language == "de" for u in utts)
    assert len(load_audio(utts[2])) == 48000
    DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ManifestError, match="name the split"):
        read_manifest(tmp_path / "dd")
    assert len(read_manifest(f"{tmp_path / 'dd'}#validation")) == 3


def test_dataset_columns_are_checked(tmp_path):
    from train.data.manifest import read_dataset

    ds = _audio_dataset(tmp_path)
    utts = read_dataset(ds, "cv", id_column="utt", language_column="locale")
    assert [u.id for u in utts] == ["a", "b", "c"] and utts[0].language == "de"
    with pytest.raises(ManifestError, match="no column 'speaker'"):
        read_dataset(ds, "cv", id_column="speaker")
    with pytest.raises(ManifestError, match="no audio column 'wav'"):
        read_dataset(ds, "cv", audio_column="wav")


def test_dataset_languages_and_ids_are_checked(tmp_path):
    from train.data.manifest import read_dataset

    ds = _audio_dataset(tmp_path)
    assert {u.language for u in read_dataset(ds, "cv", language="German")} == {"de"}
    with pytest.raises(ManifestError, match=r"cv: the source's language is 'gr': not an ISO 639-1 code; did you "
                                            r"mean el"):
        read_dataset(ds, "cv", language="gr")
    bad = ds.map(lambda row, i: {"locale": "jp" if i == 1 else "de", "utt": "a" if i == 2 else row["utt"]},
                 with_indices=True)
    with pytest.raises(ManifestError, match=r"cv: row 1: column 'locale' is 'jp': not an ISO 639-1 code; did "
                                            r"you mean ja"):
        read_dataset(bad, "cv", language_column="locale")
    with pytest.raises(ManifestError, match=r"cv: row 2: id 'a' \(column 'utt'\) is also the id of row 0"):
        read_dataset(bad, "cv", id_column="utt")


def test_dataset_with_embedded_bytes(tmp_path):
    from datasets import Audio, Dataset

    data = (tmp_path / "x.flac")
    write(data, sine(440, 1.0))
    ds = Dataset.from_dict({"audio": [{"bytes": data.read_bytes(), "path": "x.flac"}], "text": ["hi"]})
    ds = ds.cast_column("audio", Audio(decode=False))
    ds.save_to_disk(str(tmp_path / "emb"))
    data.unlink()  # the bytes live in the dataset now
    (utt,) = read_manifest(tmp_path / "emb")
    assert utt.text == "hi" and len(load_audio(utt)) == 16000
