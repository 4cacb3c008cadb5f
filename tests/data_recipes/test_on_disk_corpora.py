"""AISHELL-1, WenetSpeech and local-folder recipes against fake on-disk releases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.data_recipes import fakes

# ---------------------------------------------------------------------------- AISHELL-1


@pytest.fixture(scope="module")
def aishell_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("aishell")
    data = root / "data_aishell"
    wav = data / "wav"
    fakes.write(wav / "train" / "S0002" / "BAC009S0002W0122.wav", fakes.tone(300, 1.0), 16000)
    fakes.write(wav / "train" / "S0002" / "BAC009S0002W0123.wav", fakes.tone(500, 0.7, rate=44100, channels=2),
                44100)
    (wav / "train" / "S0002" / "BAC009S0002W0124.wav").write_bytes(fakes.CORRUPT)
    fakes.write(wav / "train" / "S0003" / "BAC009S0003W0200.wav", fakes.tone(300, 0.5), 16000)  # no transcript
    fakes.write(wav / "dev" / "S0724" / "BAC009S0724W0121.wav", fakes.tone(700, 1.3), 16000)
    (data / "transcript").mkdir(parents=True)
    (data / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n"
        "BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉\n"
        "BAC009S0002W0124 自 六月 底 呼和浩特 市 率先 宣布 取消 限 购 后\n"
        "BAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况\n", encoding="utf-8")
    return root


def test_aishell_release(aishell_dir, tmp_path):
    from data_recipes.aishell1 import prepare

    results = prepare.main(["--source-dir", str(aishell_dir), "--out", str(tmp_path)])
    by = {r.split: r for r in results}
    assert by["test"].missing  # no wav/test in the fake
    r = by["train"]
    assert r.manifest == tmp_path / "train.jsonl"
    assert r.utterances == 2 and r.skipped == {"unreadable": 1, "no_transcript": 1}
    loaded = fakes.load_checked(r.manifest, language="zh")
    assert loaded["BAC009S0002W0122"][0].text == "而对楼市成交抑制作用最大的限购"  # words joined, no spaces
    assert len(loaded["BAC009S0002W0123"][1]) == fakes.expected_16k(0.7, 44100)
    assert loaded["BAC009S0002W0123"][0].extra["speaker"] == "S0002"
    dev = fakes.load_checked(by["dev"].manifest, language="zh")
    assert list(dev) == ["BAC009S0724W0121"] and dev["BAC009S0724W0121"][0].text == "甚至出现交易几乎停滞的情况"


def test_aishell_dataset(tmp_path):
    from data_recipes.aishell1 import prepare

    src = tmp_path / "src"
    cols = {"audio": [fakes.clip_cell(i, f"BAC009S0764W{i:04d}") for i in range(3)],
            "text": ["广州 女 大学生 登山 失联", "继续 扩大 搜寻 范围", "坏"]}
    fakes.save_dataset(src, {"test": cols})
    results = prepare.main(["--dataset", str(src), "--out", str(tmp_path / "out"), "--splits", "test"])
    assert results[0].utterances == 2 and results[0].skipped == {"unreadable": 1}
    loaded = fakes.load_checked(results[0].manifest, language="zh")
    assert {u.text for u, _ in loaded.values()} == {"广州女大学生登山失联", "继续扩大搜寻范围"}
    assert set(loaded) == {"BAC009S0764W0000", "BAC009S0764W0001"}
    with pytest.raises(SystemExit):  # exactly one source
        prepare.main(["--out", str(tmp_path)])


# ---------------------------------------------------------------------------- WenetSpeech

# Long file A (wav, 16 kHz): 300 Hz for 0-2 s, 700 Hz for 2-4 s, 1100 Hz for 4-6 s.
# Long file B (opus, 16 kHz): 500 Hz for 0-2 s, 900 Hz for 2-4 s.


def stitched(freqs, rate=16000, seconds=2.0):
    return np.concatenate([fakes.tone(f, seconds, rate, seed=i) for i, f in enumerate(freqs)])


@pytest.fixture(scope="module")
def wenet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wenet")
    fakes.write(root / "audio" / "train" / "youtube" / "B00000" / "Y0000000000_A.wav", stitched([300, 700, 1100]),
                16000)
    fakes.write(root / "audio" / "dev" / "podcast" / "B00001" / "X0000000001_B.opus", stitched([500, 900]), 16000,
                fmt="OGG", subtype="OPUS")
    meta = {"dataset": "WenetSpeech", "version": "v1.0", "audios": [
        {"aid": "Y0000000000_A", "path": "audio/train/youtube/B00000/Y0000000000_A.wav", "duration": 6.0,
         "segments": [
             {"sid": "Y0000000000_A_S00000", "begin_time": 0.0, "end_time": 2.0, "text": "第一段",
              "confidence": 1.0, "subsets": ["L", "M", "S"]},
             {"sid": "Y0000000000_A_S00001", "begin_time": 2.0, "end_time": 4.0, "text": "第二段",
              "confidence": 1.0, "subsets": ["L", "M"]},
             {"sid": "Y0000000000_A_S00002", "begin_time": 4.0, "end_time": 6.0, "text": "第三段",
              "confidence": 0.9, "subsets": ["L"]},
             {"sid": "Y0000000000_A_S00003", "begin_time": 5.5, "end_time": 9.0, "text": "越界",
              "confidence": 1.0, "subsets": ["L"]},  # past the file's end
             {"sid": "Y0000000000_A_S00004", "begin_time": 1.0, "end_time": 1.5, "text": "",
              "confidence": 1.0, "subsets": ["L"]}]},  # empty text
        {"aid": "X0000000001_B", "path": "audio/dev/podcast/B00001/X0000000001_B.opus", "duration": 4.0,
         "segments": [
             {"sid": "X0000000001_B_S00000", "begin_time": 0.0, "end_time": 2.0, "text": "开发一",
              "confidence": 1.0, "subsets": ["DEV"]},
             {"sid": "X0000000001_B_S00001", "begin_time": 2.0, "end_time": 4.0, "text": "开发二",
              "confidence": 1.0, "subsets": ["DEV"]}]},
        {"aid": "Y0000000002_C", "path": "audio/train/youtube/B00000/Y0000000002_C.opus", "duration": 3.0,
         "segments": [{"sid": "Y0000000002_C_S00000", "begin_time": 0.0, "end_time": 3.0, "text": "丢失",
                       "confidence": 1.0, "subsets": ["L", "M", "S"]}]},  # its audio file is missing
    ]}
    (root / "WenetSpeech.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return root


def test_wenetspeech_segments(wenet_dir, tmp_path):
    from data_recipes.wenetspeech import prepare

    results = prepare.main(["--source-dir", str(wenet_dir), "--out", str(tmp_path)])
    by = {r.split: r for r in results}
    assert list(by) == ["DEV", "S", "M", "L"]  # every subset found, in the usual order
    assert (by["S"].utterances, by["M"].utterances, by["L"].utterances, by["DEV"].utterances) == (1, 2, 3, 2)
    assert by["S"].skipped == {"missing": 1}
    assert by["L"].skipped == {"missing": 1, "segment_outside_file": 1, "empty_text": 1}
    expect = {"Y0000000000_A_S00000": 300, "Y0000000000_A_S00001": 700, "Y0000000000_A_S00002": 1100,
              "X0000000001_B_S00000": 500, "X0000000001_B_S00001": 900}
    for split in ("L", "DEV"):
        loaded = fakes.load_checked(by[split].manifest, language="zh")
        for sid, (utt, samples) in loaded.items():
            assert utt.audio.startswith("/") and utt.begin_time is not None and utt.end_time is not None
            assert abs(len(samples) - 32000) <= 1  # 2 s segments of the long files, not the whole files
            assert abs(fakes.dominant_freq(samples) - expect[sid]) < 5, sid  # the right part of the file
    lines = [json.loads(x) for x in by["L"].manifest.read_text(encoding="utf-8").splitlines()]
    assert {x["text"] for x in lines} == {"第一段", "第二段", "第三段"}
    assert {x["aid"] for x in lines} == {"Y0000000000_A"} and lines[2]["confidence"] == 0.9
    again = prepare.main(["--json", str(wenet_dir / "WenetSpeech.json"), "--out", str(tmp_path), "--splits", "DEV"])
    assert again[0].cached and again[0].utterances == 2


# ---------------------------------------------------------------------------- local folders


@pytest.fixture(scope="module")
def audio_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("calls") / "my_calls"
    fakes.write(root / "a.wav", fakes.tone(300, 1.0), 16000)
    (root / "a.txt").write_text("Guten Tag,\n wie geht's?\n", encoding="utf-8")
    fakes.write(root / "sub" / "b.flac", fakes.tone(500, 0.6, rate=8000, channels=2), 8000)
    (root / "sub" / "b.txt").write_text("Hallo", encoding="utf-8")
    fakes.write(root / "sub" / "c.ogg", fakes.tone(700, 0.9), 16000, fmt="OGG", subtype="VORBIS")  # unlabelled
    fakes.write(root / "d.mp3", fakes.tone(900, 1.1, rate=44100), 44100, fmt="MP3", subtype="MPEG_LAYER_III")
    (root / "broken.wav").write_bytes(fakes.CORRUPT)
    (root / "notes.md").write_text("not audio")
    return root


def test_local_audio_folder(audio_tree, tmp_path):
    from data_recipes.local_dir import prepare

    results = prepare.main(["--audio-dir", str(audio_tree), "--language", "de", "--out", str(tmp_path)])
    r = results[0]
    assert r.manifest == tmp_path / "my_calls.jsonl"
    assert r.utterances == 4 and r.skipped == {"unreadable": 1}
    loaded = fakes.load_checked(r.manifest, language="de")
    assert set(loaded) == {"a", "sub-b", "sub-c", "d"}
    assert loaded["a"][0].text == "Guten Tag, wie geht's?"
    assert loaded["sub-b"][0].text == "Hallo" and len(loaded["sub-b"][1]) == fakes.expected_16k(0.6, 8000)
    assert loaded["sub-c"][0].text is None and not loaded["sub-c"][0].labelled  # no .txt: unlabelled
    lines = {x["id"]: x for x in map(json.loads, r.manifest.read_text().splitlines())}
    assert "text" not in lines["sub-c"] and lines["a"]["source_file"] == "a"
    assert all(u.audio.startswith(str(audio_tree)) for u, _ in loaded.values())  # in place
    assert prepare.main(["--audio-dir", str(audio_tree), "--language", "de", "--out", str(tmp_path)])[0].cached


def test_empty_transcripts_are_reported_and_stay_unlabelled(tmp_path, capsys):
    from data_recipes.local_dir import prepare

    root = tmp_path / "calls"
    for name in ("a", "b", "sub/c", "d"):
        fakes.write(root / f"{name}.wav", fakes.tone(300, 0.5), 16000)
    (root / "a.txt").write_text("Hallo", encoding="utf-8")
    (root / "b.txt").write_text("", encoding="utf-8")
    (root / "sub" / "c.txt").write_text(" \n\t\n", encoding="utf-8")  # whitespace only: no transcript either
    args = ["--audio-dir", str(root), "--language", "de", "--out", str(tmp_path / "out")]
    r = prepare.main(args)[0]
    out = capsys.readouterr().out
    assert r.utterances == 4 and r.skipped == {}
    assert "warning: 2 of 4 audio files have an empty .txt transcript (b.txt, sub/c.txt): written as unlabelled" in out
    loaded = fakes.load_checked(r.manifest, language="de")
    assert loaded["a"][0].text == "Hallo" and loaded["d"][0].text is None  # no .txt: unlabelled, nothing to say
    assert loaded["b"][0].text is None and loaded["sub-c"][0].text is None
    assert prepare.main(args)[0].cached and "2 of 4 audio files" in capsys.readouterr().out  # said again

    data = tmp_path / "kaldi"
    data.mkdir()
    (data / "wav.scp").write_text(f"u1 {root / 'a.wav'}\nu2 {root / 'b.wav'}\n")
    (data / "text").write_text("u1 ONE\nu2\n")
    r = prepare.main(["--kaldi-dir", str(data), "--language", "en", "--out", str(tmp_path / "out")])[0]
    assert r.utterances == 2 and "warning: 1 of 2 lines of text have no words (u2): written as unlabelled" \
        in capsys.readouterr().out


def test_kaldi_dir(tmp_path, monkeypatch):
    from data_recipes.local_dir import prepare

    rec = tmp_path / "recs"
    fakes.write(rec / "meeting1.wav", stitched([300, 700, 1100]), 16000)
    fakes.write(rec / "meeting2.flac", stitched([500, 900], rate=8000), 8000)
    data = tmp_path / "data" / "test"
    data.mkdir(parents=True)
    (data / "wav.scp").write_text(
        f"meeting1 {rec / 'meeting1.wav'}\n"
        "meeting2 recs/meeting2.flac\n"  # relative to --path-root
        "meeting3 sox /x/y.wav -t wav - |\n"  # a pipe: not supported
        "meeting4 /nowhere/meeting4.wav\n")
    (data / "segments").write_text(
        "spk1-meeting1-0000 meeting1 0.0 2.0\nspk1-meeting1-0001 meeting1 2.0 4.0\n"
        "spk2-meeting1-0002 meeting1 4.0 -1\n"  # -1: to the end of the recording
        "spk1-meeting2-0000 meeting2 2.0 4.0\nspk1-meeting3-0000 meeting3 0.0 1.0\n"
        "spk1-meeting4-0000 meeting4 0.0 1.0\nspk1-meeting1-0009 meeting1 5.0 8.0\n")
    (data / "text").write_text("spk1-meeting1-0000 GOOD MORNING\nspk1-meeting1-0001 HELLO AGAIN\n"
                               "spk1-meeting2-0000 BYE\n")
    monkeypatch.chdir(tmp_path)
    results = prepare.main(["--kaldi-dir", str(data), "--language", "en", "--out", str(tmp_path / "out"),
                            "--name", "meetings"])
    r = results[0]
    assert r.manifest == tmp_path / "out" / "meetings.jsonl"
    assert r.utterances == 4
    assert r.skipped == {"pipe_unsupported": 1, "missing": 1, "segment_outside_file": 1}
    loaded = fakes.load_checked(r.manifest, language="en")
    expect = {"spk1-meeting1-0000": 300, "spk1-meeting1-0001": 700, "spk2-meeting1-0002": 1100,
              "spk1-meeting2-0000": 900}
    for uid, (utt, samples) in loaded.items():
        assert abs(len(samples) - 32000) <= 1 and abs(fakes.dominant_freq(samples) - expect[uid]) < 5, uid
    assert loaded["spk1-meeting1-0001"][0].text == "HELLO AGAIN"
    assert loaded["spk2-meeting1-0002"][0].text is None  # no line in `text`: unlabelled
    assert loaded["spk2-meeting1-0002"][0].end_time == 6.0
    assert loaded["spk1-meeting2-0000"][0].audio == str(rec / "meeting2.flac")


def test_kaldi_dir_without_segments(tmp_path):
    from data_recipes.local_dir import prepare

    fakes.write(tmp_path / "u1.wav", fakes.tone(300, 1.0), 16000)
    data = tmp_path / "kaldi"
    data.mkdir()
    (data / "wav.scp").write_text(f"u1 {tmp_path / 'u1.wav'}\nu2 {tmp_path / 'u2.wav'}\n")
    (data / "text").write_text("u1 ONE\nu2 TWO\n")
    r = prepare.main(["--kaldi-dir", str(data), "--language", "English", "--out", str(tmp_path / "out")])[0]
    assert r.utterances == 1 and r.skipped == {"missing": 1}
    loaded = fakes.load_checked(r.manifest, language="en")
    assert loaded["u1"][0].text == "ONE" and loaded["u1"][0].begin_time is None


def _refused(prepare, args, capsys) -> str:
    """The error message of a run that must stop at its arguments (exit 2, argparse's usage error)."""
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_local_dir_refuses_a_source_that_makes_no_manifest(tmp_path, capsys):
    from data_recipes.local_dir import prepare

    out = tmp_path / "out"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.md").write_text("not audio")
    (tmp_path / "a.wav").write_bytes(b"")
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\n")
    cases = [
        (["--audio-dir", str(tmp_path / "my_cals")], f"--audio-dir {tmp_path / 'my_cals'}: no such folder"),
        (["--audio-dir", str(tmp_path / "a.wav")], f"--audio-dir {tmp_path / 'a.wav'}: not a folder"),
        (["--audio-dir", str(tmp_path / "empty")], f"--audio-dir {tmp_path / 'empty'}: no audio files in it or its "
                                                   "subfolders (looked for .wav .flac .ogg .opus .mp3)"),
        (["--kaldi-dir", str(kaldi)], f"--kaldi-dir {kaldi}: no text (a Kaldi data folder holds wav.scp and text; "
                                      "for unlabelled audio, an empty text file)"),
        (["--kaldi-dir", str(tmp_path / "empty")], f"--kaldi-dir {tmp_path / 'empty'}: no wav.scp"),
    ]
    for source, message in cases:
        assert message in _refused(prepare, [*source, "--language", "de", "--out", str(out)], capsys)
    (kaldi / "text").write_text("u1 ONE\n")
    (kaldi / "wav.scp").write_text("u1 a.wav\nu2 b.wav\nu1 c.wav\n")
    assert f"--kaldi-dir {kaldi}: wav.scp lists a key more than once: u1 (lines 1 and 3)" in \
        _refused(prepare, ["--kaldi-dir", str(kaldi), "--language", "de", "--out", str(out)], capsys)
    assert not out.exists()  # no manifest, no done marker


def test_local_dir_language_is_checked_before_any_file(tmp_path, capsys):
    from data_recipes.local_dir import prepare

    err = _refused(prepare, ["--audio-dir", str(tmp_path / "not_there"), "--language", "gr"], capsys)
    assert "argument --language: 'gr': not an ISO 639-1 code; did you mean el?" in err
    assert "not_there" not in err  # stopped at the arguments, before looking at the folder


def test_local_dir_refuses_two_files_with_one_id(tmp_path, capsys):
    from data_recipes.local_dir import prepare

    root = tmp_path / "calls"
    fakes.write(root / "x.flac", fakes.tone(300, 0.5), 16000, fmt="FLAC")
    fakes.write(root / "x.mp3", fakes.tone(300, 0.5), 16000, fmt="MP3", subtype="MPEG_LAYER_III")
    fakes.write(root / "a-b.wav", fakes.tone(300, 0.5), 16000)
    fakes.write(root / "a" / "b.wav", fakes.tone(300, 0.5), 16000)
    fakes.write(root / "y.wav", fakes.tone(300, 0.5), 16000)
    err = _refused(prepare, ["--audio-dir", str(root), "--language", "de", "--out", str(tmp_path / "out")], capsys)
    assert (f"--audio-dir {root}: files that would get the same id: a/b.wav and a-b.wav (id a-b); "
            "x.flac and x.mp3 (id x). Rename or move one of each") in err
    assert not (tmp_path / "out").exists()


def test_local_dir_rerun_notices_changed_files(tmp_path, capsys):
    import os

    from data_recipes.local_dir import prepare

    root = tmp_path / "calls"
    fakes.write(root / "a.wav", fakes.tone(300, 0.5), 16000)
    fakes.write(root / "b.wav", fakes.tone(500, 0.5), 16000)
    (root / "a.txt").write_text("eins", encoding="utf-8")
    args = ["--audio-dir", str(root), "--language", "de", "--out", str(tmp_path / "out")]

    def run():
        r = prepare.main(args)[0]
        texts = {u.id: u.text for u, _ in fakes.load_checked(r.manifest, language="de").values()}
        return r, texts, capsys.readouterr().out

    r, texts, _ = run()
    assert texts == {"a": "eins", "b": None}
    r, _, out = run()
    assert r.cached and "rebuilding" not in out  # nothing changed: the cached manifest
    (root / "b.txt").write_text("zwei", encoding="utf-8")  # a new transcript
    r, texts, out = run()
    assert not r.cached and texts == {"a": "eins", "b": "zwei"}
    assert "calls.jsonl: rebuilding, changed since the last build: source_files (files 3 -> 4, bytes" in out
    (root / "a.txt").write_text("drei", encoding="utf-8")  # the same size: seen by its modification time
    os.utime(root / "a.txt", ns=(0, 10**9))
    r, texts, out = run()
    assert not r.cached and texts["a"] == "drei" and "source_files (paths_sizes_mtimes" in out
    fakes.write(root / "c.wav", fakes.tone(700, 0.5), 16000)  # a new file
    r, texts, _ = run()
    assert not r.cached and set(texts) == {"a", "b", "c"}
    (root / "b.wav").unlink()
    (root / "b.txt").unlink()
    r, texts, _ = run()
    assert not r.cached and set(texts) == {"a", "c"}
    assert run()[0].cached
