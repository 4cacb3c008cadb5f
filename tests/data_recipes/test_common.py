"""The recipes' shared machinery: language codes, hub loading (Parquet-export fallback), done markers, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data_recipes import fakes

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ("fleurs", "librispeech", "common_voice", "voxpopuli", "mls", "aishell1", "gigaspeech", "wenetspeech",
           "open_asr_leaderboard", "local_dir")


def test_iso_codes():
    from data_recipes.common import iso_code
    from data_recipes.fleurs.prepare import CONFIGS

    assert [iso_code(c) for c in CONFIGS.values()] == list(CONFIGS)  # every FLEURS config -> its ISO code
    assert iso_code("zh-CN") == iso_code("zh-TW") == iso_code("cmn") == "zh"
    assert (iso_code("sv-SE"), iso_code("deu"), iso_code("Dutch"), iso_code("yue")) == ("sv", "de", "nl", "yue")


def test_language_code_checks_and_hints():
    from data_recipes.common import UnknownLanguage, language_code
    from data_recipes.fleurs.prepare import CONFIGS

    assert [language_code(c) for c in CONFIGS.values()] == list(CONFIGS)
    assert (language_code("de-DE"), language_code("ell"), language_code("Maltese"), language_code("yue")) == \
        ("de", "el", "mt", "yue")
    for value, message in [("gr", "did you mean el?"), ("jp", "did you mean ja?"), ("iw", "did you mean he?"),
                           ("dee", "did you mean de or ee? (a language without an ISO 639-1 code, as yue, is "
                                   "accepted once train.config.LANGUAGE_NAMES names it)"),
                           ("xx", "the codes are listed at https://en.wikipedia.org/wiki/List_of_ISO_639-1_codes")]:
        with pytest.raises(UnknownLanguage) as err:
            language_code(value)
        assert str(err.value) == f"{value!r}: not an ISO 639-1 code; {message}"


def test_iso_639_1_list_matches_the_registry():
    """The written-out list against langcodes' copy of the IANA registry (installed with the toy extra)."""
    from data_recipes.common import ISO_639_1

    registry = pytest.importorskip("langcodes.registry_parser")
    two_letter = {entry["Subtag"] for entry in registry.parse_registry()
                  if entry.get("Type") == "language" and len(entry["Subtag"]) == 2 and "Deprecated" not in entry}
    assert ISO_639_1 == two_letter


def test_unique_ids_and_safe_names():
    from data_recipes.common import UniqueIds, safe_name

    unique = UniqueIds()
    assert [unique(x) for x in ("a", "b", "a", "a-2", "a")] == ["a", "b", "a-2", "a-2-2", "a-3"]
    assert safe_name("20180111-17:28:18_5") == "20180111-17_28_18_5" and safe_name("x/../y") == "x_.._y"


def test_parquet_export_layouts():
    from data_recipes.common import parquet_export_files

    files = ["en_us/validation/0000.parquet", "en_us/test/0000.parquet", "en_us/test/0001.parquet",
             "en_us/partial-train/0000.parquet", "de_de/validation/0000.parquet", "en_us/validation/index.duckdb",
             "clean/partial-train.100/0000.parquet", "clean/partial-train.360/0000.parquet",
             "old/fleurs-validation.parquet", "old/fleurs-train-00000-of-00002.parquet",
             "old/fleurs-train-00001-of-00002.parquet", "default/train/0000.parquet"]
    assert parquet_export_files(files, "en_us", "validation") == (["en_us/validation/0000.parquet"], False)
    assert parquet_export_files(files, "en_us", "test")[0] == ["en_us/test/0000.parquet", "en_us/test/0001.parquet"]
    assert parquet_export_files(files, "en_us", "train") == (["en_us/partial-train/0000.parquet"], True)
    assert parquet_export_files(files, "clean", "train.100")[0] == ["clean/partial-train.100/0000.parquet"]
    assert parquet_export_files(files, "old", "train")[0] == ["old/fleurs-train-00000-of-00002.parquet",
                                                               "old/fleurs-train-00001-of-00002.parquet"]
    assert parquet_export_files(files, "old", "validation")[0] == ["old/fleurs-validation.parquet"]
    assert parquet_export_files(files, None, "train")[0] == ["default/train/0000.parquet"]
    assert parquet_export_files(files, "en_us", "dev") == ([], False)


def test_load_hub_falls_back_to_the_parquet_export(monkeypatch):
    import datasets
    import huggingface_hub

    from data_recipes import common

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        if path != "parquet":
            raise RuntimeError("Dataset scripts are no longer supported, but found fleurs.py")
        return "the parquet dataset"

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo, repo_type, revision: ["en_us/validation/0000.parquet", "de_de/test/0.parquet"])
    assert common.load_hub("google/fleurs", "en_us", "validation") == "the parquet dataset"
    assert calls[0][:2] == ("google/fleurs", "en_us")
    assert calls[1][2]["data_files"] == {
        "validation": ["hf://datasets/google/fleurs@refs%2Fconvert%2Fparquet/en_us/validation/0000.parquet"]}
    with pytest.raises(common.SplitNotFound):
        common.load_hub("google/fleurs", "en_us", "test")

    def other_error(path, name=None, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(datasets, "load_dataset", other_error)
    with pytest.raises(RuntimeError, match="something else"):
        common.load_hub("google/fleurs", "en_us", "validation")


def test_open_split_local_layouts(tmp_path):
    from datasets import Dataset

    from data_recipes.common import SplitNotFound, open_split

    cols = {"audio": [fakes.clip_cell(0, "a")], "text": ["x"]}
    fakes.save_dataset(tmp_path / "cfg", {"test": cols})  # DIR/<config> = DatasetDict
    Dataset.from_dict({"text": ["only"]}).save_to_disk(str(tmp_path / "cfg2" / "dev"))  # DIR/<config>/<split>
    assert open_split(str(tmp_path), "unused/repo", "cfg", "test")["text"] == ["x"]
    assert open_split(str(tmp_path), "unused/repo", "cfg2", "dev")["text"] == ["only"]
    assert open_split(str(tmp_path / "cfg"), "unused/repo", None, "test")["text"] == ["x"]  # no configs
    with pytest.raises(SplitNotFound):
        open_split(str(tmp_path), "unused/repo", "cfg", "train")
    with pytest.raises(SplitNotFound):
        open_split(str(tmp_path), "unused/repo", "nope", "test")
    with pytest.raises(FileNotFoundError):  # a path that is not there is not taken for a hub id
        open_split(str(tmp_path / "typo"), "unused/repo", "cfg", "test")


def test_build_part_markers(tmp_path):
    from data_recipes.common import Skip, build_part, guarded, marker_path

    manifest = tmp_path / "dev" / "en.jsonl"
    made = []

    def produce(skipped):
        made.append(1)

        def one(i):
            if i == 2:
                raise Skip("unreadable")
            if i == 3:
                raise ValueError("a bug in one row")
            return {"audio": f"{i}.wav", "duration": 1.5, "id": str(i)}

        return guarded(range(5), one, skipped)

    r = build_part(manifest, "dev", "en", produce, options={"limit": None})
    assert (r.utterances, r.seconds, r.skipped, r.cached) == (3, 4.5, {"unreadable": 1, "error": 1}, False)
    assert json.loads(marker_path(manifest).read_text())["utterances"] == 3
    assert build_part(manifest, "dev", "en", produce, options={"limit": None}).cached and len(made) == 1
    assert not build_part(manifest, "dev", "en", produce, options={"limit": 2}).cached  # other options: redone
    assert not build_part(manifest, "dev", "en", produce, force=True, options={"limit": 2}).cached
    assert len(made) == 3

    def interrupted(skipped):
        yield {"audio": "x.wav", "duration": 1.0, "id": "x"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_part(manifest, "dev", "en", interrupted, force=True)
    assert not marker_path(manifest).exists()  # an interrupted part is not marked done ...
    assert not manifest.with_name("en.jsonl.tmp").exists()
    assert not build_part(manifest, "dev", "en", produce, options={"limit": None}).cached  # ... and is redone


def test_build_part_says_why_it_rebuilds(tmp_path, capsys):
    from data_recipes.common import build_part

    manifest = tmp_path / "m.jsonl"
    produce = lambda skipped: [{"audio": "a.wav", "duration": 1.0, "id": "a"}]  # noqa: E731
    build_part(manifest, "m", None, produce, options={"limit": 2, "source_files": {"files": 4, "bytes": 10}})
    assert build_part(manifest, "m", None, produce,
                      options={"limit": 2, "source_files": {"files": 4, "bytes": 10}}).cached
    assert "rebuilding" not in capsys.readouterr().out
    assert not build_part(manifest, "m", None, produce,
                          options={"limit": None, "source_files": {"files": 5, "bytes": 10}}).cached
    assert f"{manifest}: rebuilding, changed since the last build: limit 2 -> None; source_files (files 4 -> 5)" \
        in capsys.readouterr().out


def test_source_fingerprint(tmp_path):
    import os

    from data_recipes.common import source_fingerprint

    a, b, note = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "a.txt"
    a.write_bytes(b"1234")
    b.write_bytes(b"56")
    seen = [source_fingerprint([a, b, note])]
    assert (seen[0]["files"], seen[0]["bytes"]) == (2, 6)
    assert source_fingerprint([b, a, note, a]) == seen[0]  # order and repeats do not matter
    note.write_text("hallo")  # a transcript that was absent
    seen.append(source_fingerprint([a, b, note]))
    os.utime(b, ns=(0, 10**9))  # same size, another modification time
    seen.append(source_fingerprint([a, b, note]))
    b.unlink()
    seen.append(source_fingerprint([a, b, note]))
    assert [f["files"] for f in seen] == [2, 3, 3, 2]
    assert len({f["paths_sizes_mtimes"] for f in seen}) == 4
    b.write_bytes(b"56")
    os.utime(b, ns=(0, 10**9))
    before = source_fingerprint([a, b])
    b.write_bytes(b"57")  # edited, same size, its old time put back: stat only, contents are not read
    os.utime(b, ns=(0, 10**9))
    assert source_fingerprint([a, b]) == before


@pytest.mark.parametrize("recipe", RECIPES)
def test_help(recipe):
    out = subprocess.run([sys.executable, "-m", f"data_recipes.{recipe}.prepare", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--out" in out.stdout and "python -m data_recipes." in out.stdout


def test_help_when_run_as_a_file(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "data_recipes" / "gigaspeech" / "prepare.py"), "--help"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--subsets" in out.stdout, out.stderr
    from data_recipes.fleurs import prepare

    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["--help"])
    assert exit_info.value.code == 0
