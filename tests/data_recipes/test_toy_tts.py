"""The toy TTS corpus recipe: tiny real builds (espeak-ng) of ja + de into tmp folders."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import unicodedata
from pathlib import Path

import pytest

if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)", allow_module_level=True)
for _name in ("wordfreq", "django", "babel", "soxr", "soundfile"):
    pytest.importorskip(_name)

import soundfile as sf  # noqa: E402

from data_recipes.toy_tts import lexicon as lx  # noqa: E402
from data_recipes.toy_tts import prepare, synth  # noqa: E402

SPLITS = ("train", "unlabelled", "dev", "test")
SIZES = {"train": 8, "unlabelled": 3, "dev": 4, "test": 4}
LANGS = ("ja", "de")
SCALE = {"ja": 3}  # ja gets 3x the training utterances of de


def expected_count(split: str, lang: str) -> int:
    return SIZES[split] * (SCALE.get(lang, 1) if split == "train" else 1)
KANA = re.compile(r"^[\u3041-\u3094\u30a1-\u30f4\u30fc]+$")


def args(out: Path, seed: int = 1, workers: int = 1, **sizes) -> list[str]:
    sizes = {**SIZES, **sizes}
    argv = ["--out", str(out), "--seed", str(seed), "--languages", ",".join(LANGS), "--workers", str(workers)]
    argv += ["--train-scale", ",".join(f"{k}={v}" for k, v in SCALE.items())]
    for split in SPLITS:
        argv += [f"--{split}-per-language", str(sizes[split])]
    return argv


def read(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()] for s in SPLITS}


def manifest_bytes(out: Path) -> dict[str, bytes]:
    return {s: (out / f"{s}.jsonl").read_bytes() for s in SPLITS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Built once with 2 worker processes (the pool path); other builds run in-process."""
    out = tmp_path_factory.mktemp("toy") / "corpus"
    prepare.main(args(out, workers=2))
    return out


def test_manifest_fields_types_and_audio(corpus):
    rows = read(corpus)
    ids = set()
    for split in SPLITS:
        for lang in LANGS:
            assert sum(r["language"] == lang for r in rows[split]) == expected_count(split, lang), (split, lang)
        for r in rows[split]:
            assert r["id"] not in ids
            ids.add(r["id"])
            assert re.fullmatch(rf"toy-{r['language']}-{split}-\d{{6}}", r["id"])
            assert r["audio"] == f"audio/{split}/{r['language']}/{r['id']}.flac"
            assert r["task"] == "asr"
            assert r["kind"] in ("words", "sentence")
            assert r["voice"].split("+")[0] == lx.VOICES[r["language"]]
            assert isinstance(r["rate"], int) and 130 <= r["rate"] <= 200
            assert isinstance(r["pitch"], int) and 30 <= r["pitch"] <= 70
            text = r["reference_text"] if split == "unlabelled" else r["text"]
            assert isinstance(text, str) and text and unicodedata.is_normalized("NFC", text)
            info = sf.info(str(corpus / r["audio"]))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert isinstance(r["duration"], float)
            assert r["duration"] == round(info.frames / info.samplerate, 3)
            assert 0.3 < r["duration"] < 15
    build = json.loads((corpus / "BUILD.json").read_text(encoding="utf-8"))
    assert build["complete"] is True and build["seed"] == 1 and build["languages"] == ["de", "ja"]  # canonical order
    assert build["train_scale"] == SCALE
    assert build["versions"]["espeak-ng"][0].isdigit() and build["versions"]["wordfreq"]


def test_unlabelled_split_has_no_text(corpus):
    for r in read(corpus)["unlabelled"]:
        assert "text" not in r and r["reference_text"]
    for split in ("train", "dev", "test"):
        assert all("text" in r and "reference_text" not in r for r in read(corpus)[split])


def test_scripts_and_spacing(corpus):
    de_letters = set("abcdefghijklmnopqrstuvwxyzäöüß")
    for split, rows in read(corpus).items():
        for r in rows:
            text = r.get("text", r.get("reference_text"))
            if r["language"] == "ja":
                assert KANA.match(text), text  # kana only, written without spaces
            else:
                words = text.split(" ")
                assert all(words) and all(set(w) <= de_letters for w in words), text
                if r["kind"] == "words":
                    assert 2 <= len(words) <= 6


def test_no_text_shared_between_splits(corpus):
    rows = read(corpus)
    texts = [(r["language"], r.get("text", r.get("reference_text"))) for s in SPLITS for r in rows[s]]
    assert len(texts) == len(set(texts))
    seen_in_training = {(r["language"], r.get("text", r.get("reference_text"))) for s in ("train", "unlabelled") for r in rows[s]}
    assert not seen_in_training & {(r["language"], r["text"]) for s in ("dev", "test") for r in rows[s]}


def test_same_seed_gives_identical_corpus(corpus, tmp_path):
    again = tmp_path / "again"
    prepare.main(args(again, workers=1))  # one process instead of two: same bytes
    assert manifest_bytes(again) == manifest_bytes(corpus)
    for r in read(corpus)["train"] + read(corpus)["test"]:
        assert (again / r["audio"]).read_bytes() == (corpus / r["audio"]).read_bytes()


def test_different_seed_draws_fresh_texts(corpus, tmp_path):
    other = tmp_path / "other"
    prepare.main(args(other, seed=2))
    a = {r["text"] for r in read(corpus)["train"]}
    b = {r["text"] for r in read(other)["train"]}
    assert len(a & b) <= 2, a & b
    assert [r["id"] for r in read(other)["train"]] == [r["id"] for r in read(corpus)["train"]]


def test_train_scale_changes_only_the_training_split():
    """Scaling a language's training utterances leaves dev and test as they were (they are drawn
    first), and the other languages untouched."""
    sizes = {"train": 5, "unlabelled": 2, "dev": 3, "test": 3}
    plain = prepare.plan(["de", "ja"], sizes, seed=3)
    scaled = prepare.plan(["de", "ja"], sizes, seed=3, train_scale={"ja": 4})
    for split in ("dev", "test"):
        assert [u for u in plain if u.split == split] == [u for u in scaled if u.split == split]
    assert [u for u in plain if u.language == "de"] == [u for u in scaled if u.language == "de"]
    assert sum(u.split == "train" and u.language == "ja" for u in scaled) == 20


@pytest.mark.parametrize("spec", ["ja", "ja=0", "xx=2", "ja=two"])
def test_bad_train_scale_is_refused_by_name(spec, tmp_path):
    with pytest.raises(SystemExit, match="--train-scale: bad entry"):
        prepare.main(["--out", str(tmp_path / "c"), "--languages", "ja", "--train-scale", spec])
    assert prepare.parse_train_scale("") == {} and prepare.parse_train_scale("zh=4, ja=2") == {"zh": 4, "ja": 2}


def mtimes(folder: Path) -> dict[Path, int]:
    """Every file under `folder` with its modification time, to show a call wrote nothing."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_second_run_is_cached(corpus, monkeypatch, capsys):
    before = mtimes(corpus)

    def boom(job):
        raise AssertionError("synthesised although the corpus was up to date")

    monkeypatch.setattr(synth, "synthesise", boom)
    prepare.main(args(corpus, workers=1))  # --workers does not change the output, so not the cache key
    assert "up to date" in capsys.readouterr().out
    assert mtimes(corpus) == before


def test_check_says_whether_the_build_is_current_and_writes_nothing(corpus, tmp_path):
    before = mtimes(corpus)
    with pytest.raises(SystemExit) as same:
        prepare.main(args(corpus) + ["--check"])
    with pytest.raises(SystemExit) as other:
        prepare.main(args(corpus, train=5) + ["--check"])
    with pytest.raises(SystemExit) as missing:
        prepare.main(args(tmp_path / "none") + ["--check"])
    assert (same.value.code, other.value.code, missing.value.code) == (0, 1, 1)
    assert mtimes(corpus) == before
    assert not (tmp_path / "none").exists()


def test_interrupted_build_is_redone(corpus, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real = synth.synthesise
    calls = []

    def dies_midway(job):
        calls.append(job)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "synthesise", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(args(out))
    assert json.loads((out / "BUILD.json").read_text())["complete"] is False
    assert not (out / "train.jsonl").exists()
    monkeypatch.setattr(synth, "synthesise", real)
    prepare.main(args(out))
    assert json.loads((out / "BUILD.json").read_text())["complete"] is True
    assert manifest_bytes(out) == manifest_bytes(corpus)

    # other arguments: not up to date, rebuilt in place with the new sizes; the test set
    # depends only on the seed and its own size
    prepare.main(args(out, dev=2, train=5))
    assert len(read(out)["dev"]) == 2 * len(LANGS) and len(read(out)["train"]) == 5 * (1 + SCALE["ja"])
    assert (out / "test.jsonl").read_bytes() == (corpus / "test.jsonl").read_bytes()


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "audio").mkdir()
    with pytest.raises(SystemExit):
        prepare.main(args(tmp_path))


def test_word_filters():
    assert lx.is_word("de", "straße") and not lx.is_word("de", "x") and not lx.is_word("de", "3d")
    assert not lx.is_word("cs", "vi") and not lx.is_word("it", "di")  # espeak reads Roman numerals as numbers
    assert not lx.is_word("en", "st")  # no vowel: spelled out
    assert not lx.is_word("ja", "漢字") and lx.is_word("ja", "コーヒー") and not lx.is_word("ja", "ウェブ")
    assert lx.is_word("zh", "我们") and not lx.is_word("zh", "我们a")
    assert lx.nfc("şi") == "și"
    assert lx.normalise_sentence("fr", "Entrez une adresse e-mail valide.") is None  # hyphen
    assert lx.normalise_sentence("fr", "Entrez %(name)s ici.") is None  # placeholder
    assert lx.normalise_sentence("de", "Alle Filter zurücksetzen").text == "alle filter zurücksetzen"
    # ja: kana as written, nothing converted: a string with kanji is left out
    assert lx.normalise_sentence("ja", "新しいパスワード") is None
    assert lx.normalise_sentence("ja", "ページ2") is None and lx.normalise_sentence("ja", "%(name)sのパスワード") is None
    entry = lx.normalise_sentence("ja", "パスワードがセットされました。ログインしてください。")
    assert entry.text == "パスワードがセットされましたログインしてください"
    assert entry.spoken == "パスワードがセットされました ログインしてください"


def test_lexicons_are_small_native_and_read_by_espeak():
    for lang in LANGS:
        words = lx.lexicon(lang)
        assert len(words) == lx.LEXICON_SIZE and len({w.text for w in words}) == len(words)
        assert all(lx.is_word(lang, w.text) for w in words)
    assert lx.sentences("ja") and lx.sentences("de")


def test_japanese_is_kana_as_written_in_the_sources():
    import wordfreq

    # the lexicon: wordfreq's own kana-only words, unchanged and in its order (most frequent first)
    ranked = wordfreq.top_n_list("ja", lx.JA_DEPTH)
    rank = {w: i for i, w in reversed(list(enumerate(ranked)))}
    words = lx.lexicon("ja")
    assert all(KANA.match(w.text) and w.spoken == w.text and w.text in rank for w in words)
    assert [rank[w.text] for w in words] == sorted(rank[w.text] for w in words)
    # the sentences: Django strings that are pure kana once punctuation is removed
    sentences = lx.sentences("ja")
    assert len(sentences) >= 20 and all(KANA.match(e.text) for e in sentences)
    catalog = {"".join(c for c in s if c.isalpha()) for s in lx.django_strings("ja")}
    assert all(e.text in catalog for e in sentences)


def test_recipe_imports_no_copyleft_python_package():
    """The project is Apache-2.0: the recipe may import the standard library and these packages
    only (soxr is LGPL, a binding of a shared library the whole project uses; espeak-ng runs as
    a separate program). A GPL kanji -> kana converter was removed: ja texts are kana as written."""
    allowed = {"wordfreq", "babel", "django", "soxr", "soundfile", "numpy", "data_recipes",
               "train"}  # the project's own code (train.cli: the help formatter every entry point shares)
    for module in (lx, prepare, synth):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, (module.__name__, name)
    assert set(prepare.PACKAGES) <= allowed


def test_project_reader_loads_the_manifests(corpus):
    from train.data.manifest import read_jsonl

    train = read_jsonl(corpus / "train.jsonl")
    assert len(train) == sum(expected_count("train", lang) for lang in LANGS)
    assert all(Path(u.audio).is_file() and u.text and u.language in LANGS for u in train)
    unlabelled = read_jsonl(corpus / "unlabelled.jsonl")
    assert all(u.text in (None, "") for u in unlabelled)


def read_manifests(out: Path, names=prepare.MANIFESTS) -> dict[str, bytes]:
    return {n: (out / f"{n}.jsonl").read_bytes() for n in names}


def test_labelled_share_and_pool_split_train_by_position(corpus):
    """train_labelled: the first half of each language's training lines, as they are; train_pool: the
    rest with the transcript under reference_text, then every unlabelled line."""
    rows = read(corpus)
    labelled = [json.loads(x) for x in (corpus / "train_labelled.jsonl").read_text().splitlines()]
    pool = [json.loads(x) for x in (corpus / "train_pool.jsonl").read_text().splitlines()]
    want_labelled, want_pool = [], []
    for lang in dict.fromkeys(r["language"] for r in rows["train"]):  # the manifest's (canonical) order
        lines = [r for r in rows["train"] if r["language"] == lang]
        cut = round(len(lines) * 0.5)
        want_labelled += lines[:cut]
        want_pool += [{k if k != "text" else "reference_text": v for k, v in r.items()} for r in lines[cut:]]
    assert labelled == want_labelled and len(labelled) == round(8 * 0.5) + round(8 * 3 * 0.5)
    assert pool[: len(want_pool)] == want_pool and pool[len(want_pool):] == rows["unlabelled"]
    assert not any("text" in r for r in pool)
    assert {r["id"] for r in labelled}.isdisjoint(r["id"] for r in pool)


def test_pool_only_leaves_out_the_labelled_audio_and_a_full_build_adds_just_that(corpus, tmp_path, monkeypatch):
    out = tmp_path / "pool_first"
    real = synth.synthesise
    written: list[str] = []

    def counted(job):
        written.append(Path(job.path).name.removesuffix(".flac"))
        return real(job)

    monkeypatch.setattr(synth, "synthesise", counted)
    prepare.main(args(out) + ["--pool-only"])
    labelled = {json.loads(x)["id"] for x in (corpus / "train_labelled.jsonl").read_text().splitlines()}
    everything = {r["id"] for rows in read(corpus).values() for r in rows}
    assert set(written) == everything - labelled and len(written) == len(everything - labelled)
    assert not (out / "train.jsonl").exists() and not (out / "train_labelled.jsonl").exists()
    assert read_manifests(out, prepare.POOL) == read_manifests(corpus, prepare.POOL)
    codes = []
    for extra in (["--pool-only", "--check"], ["--check"]):
        with pytest.raises(SystemExit) as check:
            prepare.main(args(out) + extra)
        codes.append(check.value.code)
    assert codes == [0, 1]  # pool-only is current as such, not as a full build

    written.clear()
    prepare.main(args(out))
    assert sorted(written) == sorted(labelled)  # the pool's audio is reused, not synthesised again
    assert read_manifests(out) == read_manifests(corpus)
    with pytest.raises(SystemExit) as check:
        prepare.main(args(out) + ["--pool-only", "--check"])  # a full build serves a pool-only ask too
    assert check.value.code == 0


@pytest.mark.parametrize("share", ["0", "1", "1.5"])
def test_labelled_share_outside_0_1_is_refused_by_name(share, tmp_path):
    with pytest.raises(SystemExit, match="--labelled-share"):
        prepare.main(args(tmp_path / "c") + ["--labelled-share", share])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("train, pool_only", [("train_pool", True), ("train_labelled", False), ("train", False)])
def test_a_run_builds_only_the_toy_audio_it_reads(train, pool_only, tmp_path, monkeypatch):
    """train/recipe.py builds a missing toy corpus on first use: without the labelled share's audio
    when the run reads only the pool, dev and test (OPD from the shipped base)."""
    from types import SimpleNamespace

    from train.recipe import TOY_DIR, ensure_toy_corpus

    calls = []
    monkeypatch.setattr(prepare, "main", calls.append)
    monkeypatch.chdir(tmp_path)
    source = lambda name: SimpleNamespace(path=f"{TOY_DIR}/{name}.jsonl")  # noqa: E731
    cfg = SimpleNamespace(data=SimpleNamespace(train=[source(train)], dev=[source("dev")]))
    ensure_toy_corpus(cfg, SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None))
    assert calls == [["--out", TOY_DIR, "--seed", "0"] + (["--pool-only"] if pool_only else [])]
