"""Common Voice recipe: a fake release folder (TSVs + mp3 clips) and a fake hub-style dataset."""

from __future__ import annotations

import pytest
import soundfile as sf

from tests.data_recipes import fakes

HEADER = ("client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\t"
          "accents\tvariant\tlocale\tsegment\n")


def tsv_line(client, path, sentence, locale):
    return f"{client}\t{path}\tsid\t{sentence}\t\t2\t0\ttwenties\tfemale_feminine\t\t\t{locale}\t\n"


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv") / "cv-corpus-17.0-2024-03-15"
    for locale, words in (("de", "Guten Morgen"), ("zh-CN", "你好世界"), ("zh-TW", "你好")):
        folder = root / locale
        clips = folder / "clips"
        for i, (freq, secs) in enumerate([(300, 1.0), (600, 2.0)]):
            fakes.write(clips / f"common_voice_{locale}_{i}.mp3", fakes.tone(freq, secs, rate=48000), 48000,
                        fmt="MP3", subtype="MPEG_LAYER_III")
        (clips / f"common_voice_{locale}_bad.mp3").write_bytes(b"ID3 not an mp3 at all")
        train = HEADER + "".join([
            tsv_line("c1", f"common_voice_{locale}_0.mp3", f'{words} "zitiert" 0', locale),  # a bare quote in the text
            tsv_line("c2", f"common_voice_{locale}_1.mp3", f"{words} 1", locale),
            tsv_line("c3", f"common_voice_{locale}_bad.mp3", f"{words} bad", locale),  # corrupt clip
            tsv_line("c4", f"common_voice_{locale}_gone.mp3", f"{words} gone", locale),  # clip missing
        ])
        (folder / "train.tsv").write_text(train, encoding="utf-8")
        (folder / "dev.tsv").write_text(HEADER + tsv_line("c1", f"common_voice_{locale}_1.mp3", words, locale),
                                        encoding="utf-8")
    return root


def test_installed_libsndfile_decodes_mp3():
    assert "MP3" in sf.available_formats()  # else the recipe counts every clip as unreadable (see README)


def test_common_voice_release(release_dir, tmp_path):
    from data_recipes.common_voice import prepare

    results = prepare.main(["--source-dir", str(release_dir), "--out", str(tmp_path), "--splits", "train", "dev",
                            "test"])
    by = {(r.split, r.language): r for r in results}
    assert set(by) == {(s, l) for s in ("train", "dev", "test") for l in ("de", "zh", "zh-TW")}
    for stem in ("de", "zh", "zh-TW"):
        assert by[("test", stem)].missing  # no test.tsv in the fake
        r = by[("train", stem)]
        assert r.manifest == tmp_path / "train" / f"{stem}.jsonl"
        assert r.utterances == 2 and r.skipped == {"unreadable": 1, "missing": 1}
        language = "de" if stem == "de" else "zh"
        loaded = fakes.load_checked(r.manifest, language=language)
        for uid, (utt, samples) in loaded.items():
            assert utt.audio.startswith("/") and utt.audio.endswith(f"/clips/{uid}.mp3")
            freq = 300 if uid.endswith("_0") else 600
            assert abs(fakes.dominant_freq(samples) - freq) < 5  # the right clip, decoded from mp3
            assert utt.extra["client_id"] in ("c1", "c2") and utt.extra["gender"] == "female_feminine"
        texts = sorted(u.text for u, _ in loaded.values())
        assert texts[0].endswith('"zitiert" 0') or texts[1].endswith('"zitiert" 0')
        assert by[("dev", stem)].utterances == 1


def test_common_voice_one_locale_folder(release_dir, tmp_path):
    from data_recipes.common_voice import prepare

    results = prepare.main(["--source-dir", str(release_dir / "zh-CN"), "--out", str(tmp_path), "--splits", "dev"])
    assert [(r.split, r.language, r.utterances) for r in results] == [("dev", "zh", 1)]


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    from datasets import Value

    root = tmp_path_factory.mktemp("cv_hub")
    features = fakes.audio_features(
        client_id=Value("string"), path=Value("string"), sentence=Value("string"), up_votes=Value("int64"),
        down_votes=Value("int64"), age=Value("string"), gender=Value("string"), accent=Value("string"),
        locale=Value("string"), segment=Value("string"), variant=Value("string"))
    names = [f"common_voice_de_{i}" for i in range(3)]
    columns = {"client_id": ["a", "b", "c"], "path": [f"de_train_0/{n}.mp3" for n in names],
               "audio": [fakes.clip_cell(i, names[i]) for i in range(3)], "sentence": ["Eins.", "Zwei.", "Drei."],
               "up_votes": [2, 3, 2], "down_votes": [0, 0, 1], "age": ["", "thirties", ""], "gender": ["", "male", ""],
               "accent": ["", "", ""], "locale": ["de"] * 3, "segment": ["", "", ""], "variant": ["", "", ""]}
    fakes.save_dataset(root / "de", {"train": columns, "validation": columns}, features)
    return root


def test_common_voice_from_dataset(hub_dir, tmp_path):
    from data_recipes.common_voice import prepare

    results = prepare.main(["--dataset", str(hub_dir), "--out", str(tmp_path), "--languages", "de", "--splits",
                            "train", "dev"])
    for r in results:
        assert r.utterances == 2 and r.skipped == {"unreadable": 1}
        loaded = fakes.load_checked(r.manifest, language="de")
        assert set(loaded) == {"common_voice_de_0", "common_voice_de_1"}
        assert loaded["common_voice_de_1"][0].extra["age"] == "thirties"
    assert {r.split for r in results} == {"train", "dev"}


def test_a_locale_without_an_iso_639_1_code_is_left_out_or_refused(release_dir, tmp_path, capsys):
    """Manifests hold ISO 639-1 codes (train/data/manifest.py refuses others at read), so a release's
    `kab` is left out and said, and asking for it by name fails before anything is read."""
    import shutil

    from data_recipes.common_voice import prepare

    release = tmp_path / "release"
    shutil.copytree(release_dir, release)
    shutil.copytree(release / "de", release / "kab")
    results = prepare.main(["--source-dir", str(release), "--out", str(tmp_path / "out"), "--splits", "dev"])
    assert {r.language for r in results} == {"de", "zh", "zh-TW"}
    assert "1 locales have no ISO 639-1 code and are left out" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--languages 'kab': not an ISO 639-1 code"):
        prepare.main(["--source-dir", str(release), "--out", str(tmp_path / "out2"), "--languages", "de", "kab"])
    assert not (tmp_path / "out2").exists()
