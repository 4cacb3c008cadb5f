"""Timed transcription (what the clock covers), per-language reports, and train/evaluate.py end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from tests.data.audio_files import sine, write
from train.data.manifest import read_manifest
from train.eval import timed
from train.eval.report import markdown_table
from train.eval.timed import batches_by_duration, timed_transcription


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    texts = {"de": ["guten tag", "hallo welt", "danke schön"], "zh": ["你好世界", "早上好"]}
    for lang, ts in texts.items():
        for i, text in enumerate(ts):
            write(tmp_path / f"{lang}{i}.wav", sine(200 + 60 * i, 0.5 + i))
            rows.append({"audio": f"{lang}{i}.wav", "text": text, "language": lang, "id": f"{lang}{i}"})
    rows.append({"audio": "missing.wav", "text": "x", "language": "zh", "id": "gone"})
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


@dataclass
class EchoTranscriber:
    """Answers with a fixed text per language and advances a fake clock by one second a batch."""

    clock: FakeClock
    answers: dict
    name: str = "echo"
    device: torch.device = torch.device("cpu")
    calls: list = field(default_factory=list)

    def transcribe(self, audios, languages):
        self.calls.append([len(a) for a in audios])
        self.clock.now += 1.0
        return [self.answers[lang] for lang in languages]


def test_batches_are_duration_sorted_and_capped():
    batches = batches_by_duration([5.0, 1.0, 3.0, 2.0, 4.0], max_batch_size=2)
    assert batches == [[1, 3], [2, 4], [0]]
    assert batches_by_duration([1.0, 1.0, 3.0], max_batch_size=8, max_batch_seconds=4.0) == [[0, 1], [2]]


def test_clock_covers_transcription_only_after_warm_up(manifest, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timed.time, "perf_counter", clock)
    real_load = timed.load_audio

    def slow_load(utt, limits):  # decoding must not be on the clock
        clock.now += 100.0
        return real_load(utt, limits)

    monkeypatch.setattr(timed, "load_audio", slow_load)
    fake = EchoTranscriber(clock, {"de": "guten tag", "zh": "你好世界"})
    result = timed_transcription(fake, read_manifest(manifest), batch_size=2, warmup_batches=1)
    assert len(fake.calls) == 3 + 1  # three batches, the first also run once to warm up
    assert result.transcription_seconds == 3.0
    assert result.audio_seconds == pytest.approx(0.5 + 1.5 + 2.5 + 0.5 + 1.5)
    assert result.rtfx == pytest.approx(result.audio_seconds / 3.0)
    assert all(c == sorted(c) for c in fake.calls)
    assert result.skipped == {"missing": 1} and result.skipped_by_language == {"zh": {"missing": 1}}
    # hypotheses come back in manifest order despite the duration sort
    assert dict(zip(result.ids, result.hypotheses))["zh1"] == "你好世界"


def test_report_by_language(manifest):
    from train.evaluate import evaluate

    fake = EchoTranscriber(FakeClock(), {"de": "guten tag", "zh": "你好世界"})
    report, rows = evaluate(fake, [str(manifest)], batch_size=4, keep_hyps=True)
    m = report["manifests"][str(manifest)]
    de, zh = m["languages"]["de"], m["languages"]["zh"]
    # de: refs "guten tag" / "hallo welt" / "danke schön" vs "guten tag" each: 0 + 2 + 2 subs of 6 words
    assert (de["metric"], de["errors"], de["ref_len"]) == ("wer", 4, 6)
    # zh: "你好世界" exact; "早上好" vs "你好世界" shares only 好: 4 edits either way (3 sub + 1 ins)
    assert (zh["metric"], zh["errors"], zh["ref_len"]) == ("cer", 4, 7)
    assert zh["skipped"] == {"missing": 1} and de["skipped"] == {}
    assert de["fidelity"] == 1.0 and zh["fidelity"] == 1.0
    assert m["average_rate"] == pytest.approx((4 / 6 + 4 / 7) / 2)
    assert len(rows) == 5 and {"reference", "hypothesis", "id", "language"} <= set(rows[0])


def test_evaluate_cli_writes_json_table_chart_and_hyps(manifest, tmp_path, tiny_student):
    from train.evaluate import main
    from train.models import save_student

    model, processor = tiny_student
    ckpt = save_student(model, processor, tmp_path / "ckpt")
    out = tmp_path / "eval" / "report.json"
    report = main(["--model", str(ckpt), "--manifest", str(manifest), "--out", str(out), "--hyps",
                   "--max-new-tokens", "6", "--device", "cpu"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    table = out.with_suffix(".md").read_text()
    assert "| dev.jsonl | de | 3 | 0 | WER |" in table and "| dev.jsonl | zh | 2 | 1 | CER |" in table
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    hyps = [json.loads(line) for line in out.with_suffix(".hyps.jsonl").read_text().splitlines()]
    assert len(hyps) == 5 and all(isinstance(h["hypothesis"], str) for h in hyps)


# ---- what a report says: CER beside WER, each utterance's errors, skipped clips, options -----------------------

# (language, seconds) -> hypothesis: one insertion, one deletion, one substitution in de; a deletion and an
# insertion in zh (the manifest fixture's clips last 0.5, 1.5 and 2.5 s)
SCRIPTED = {("de", 0.5): "guten guten tag", ("de", 1.5): "hallo", ("de", 2.5): "danke schon",
            ("zh", 0.5): "你好世", ("zh", 1.5): "早上好呀"}


@dataclass
class ScriptedTranscriber:
    name: str = "scripted"
    device: torch.device = torch.device("cpu")

    def transcribe(self, audios, languages):
        return [SCRIPTED[(lang, round(len(a) / 16000, 1))] for a, lang in zip(audios, languages)]


def test_cer_beside_wer_for_every_language_and_its_average(manifest):
    import jiwer

    from train.evaluate import evaluate

    report, _ = evaluate(ScriptedTranscriber(), [str(manifest)], batch_size=4)
    m = report["manifests"][str(manifest)]
    de, zh = m["languages"]["de"], m["languages"]["zh"]
    refs, hyps = ["guten tag", "hallo welt", "danke schön"], ["guten guten tag", "hallo", "danke schon"]
    assert de["metric"] == "wer" and de["rate"] == pytest.approx(jiwer.wer(refs, hyps))  # 3 / 6
    # CER in characters without spaces, as zh/ja/ko are scored
    expected_cer = jiwer.cer([r.replace(" ", "") for r in refs], [h.replace(" ", "") for h in hyps])
    assert de["cer"] == pytest.approx(expected_cer) and de["cer"] == pytest.approx((5 + 4 + 1) / 27)
    assert zh["cer"] == zh["rate"] == pytest.approx(2 / 7)
    assert m["average_rate"] == pytest.approx((3 / 6 + 2 / 7) / 2)  # still the primary metric's mean
    assert m["average_cer"] == pytest.approx((de["cer"] + 2 / 7) / 2)
    table = markdown_table(report)
    assert "| metric | error rate | WER | CER |" in table
    assert "| dev.jsonl | de | 3 | 0 | WER | 50.00 % | 50.00 % | 37.04 % | 1 / 1 / 1 |" in table
    assert "| dev.jsonl | zh | 2 | 1 | CER | 28.57 % | — | 28.57 % | 0 / 1 / 1 |" in table
    assert f"| dev.jsonl | average of the languages | 5 | 1 | primary | {100 * m['average_rate']:.2f} % | — | " \
           f"{100 * m['average_cer']:.2f} % |" in table


def test_each_utterance_has_its_errors_and_they_add_up_to_the_report(manifest):
    import jiwer

    from train.evaluate import evaluate

    report, rows = evaluate(ScriptedTranscriber(), [str(manifest)], batch_size=2, keep_hyps=True)
    by_id = {r["id"]: r for r in rows}
    de2 = by_id["de2"]
    assert (de2["metric"], de2["reference_normalised"], de2["hypothesis_normalised"]) == \
        ("wer", "danke schön", "danke schon")
    assert {k: de2[k] for k in ("ref_units", "substitutions", "deletions", "insertions", "hits")} == \
        {"ref_units": 2, "substitutions": 1, "deletions": 0, "insertions": 0, "hits": 1}
    assert de2["alignment"] == "REF:  danke schön\nHYP:  danke schon\nEVAL:       S"
    assert by_id["de0"]["alignment"] == "REF:  guten ***** tag\nHYP:  guten guten tag\nEVAL:       I"
    assert by_id["de1"]["alignment"] == "REF:  hallo welt\nHYP:  hallo ****\nEVAL:       D"
    # CJK characters take two columns, so the columns line up in a terminal
    assert by_id["zh0"]["alignment"] == "REF:  你 好 世 界\nHYP:  你 好 世 **\nEVAL:          D"
    assert by_id["zh1"]["metric"] == "cer" and by_id["zh1"]["insertions"] == 1 and by_id["zh1"]["ref_units"] == 3
    for lang, row in report["manifests"][str(manifest)]["languages"].items():
        mine = [r for r in rows if r["language"] == lang]
        for key in ("substitutions", "deletions", "insertions"):
            assert sum(r[key] for r in mine) == row[key], (lang, key)
        assert sum(r["ref_units"] for r in mine) == row["ref_len"]
        assert sum(r["hits"] for r in mine) == row["ref_len"] - row["substitutions"] - row["deletions"]
    for r in rows:  # each utterance against jiwer on its own
        out = (jiwer.process_characters if r["metric"] == "cer" else jiwer.process_words)(
            r["reference_normalised"].replace(" ", "") if r["metric"] == "cer" else r["reference_normalised"],
            r["hypothesis_normalised"].replace(" ", "") if r["metric"] == "cer" else r["hypothesis_normalised"])
        assert (r["substitutions"], r["deletions"], r["insertions"], r["hits"]) == \
            (out.substitutions, out.deletions, out.insertions, out.hits)


def test_an_empty_reference_is_not_scored_and_adds_nothing():
    from train.eval.report import utterance_errors

    row = utterance_errors("(laughter)", "ha ha", "en")  # brackets are normalised away: nothing to score
    assert row["scored"] is False and row["ref_units"] == row["insertions"] == 0 and row["alignment"] == ""


def test_skipped_clips_are_named(manifest, tmp_path):
    from train.evaluate import evaluate

    (tmp_path / "de1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # corrupt one clip
    skipped = []
    report, _ = evaluate(ScriptedTranscriber(), [str(manifest)], batch_size=4, skipped_clips=skipped)
    assert [(s["manifest"], s["id"], s["reason"]) for s in skipped] == \
        [(str(manifest), "de1", "unreadable"), (str(manifest), "gone", "missing")]
    assert skipped[1]["audio"] == str(tmp_path / "missing.wav") and skipped[0]["audio"].endswith("de1.wav")
    assert report["manifests"][str(manifest)]["skipped"] == {"unreadable": 1, "missing": 1}  # counts stay


def test_plot_title_names_model_and_manifests_and_shortens_the_middle():
    from train.eval.report import plot_title, shorten_middle

    assert shorten_middle("runs/x/final", 40) == "runs/x/final"
    long = "/data/users/someone/experiments/2025-01-01/domain-adaptation/runs/medical/final"
    short = shorten_middle(long, 40)
    assert len(short) == 40 and short.startswith("/data/users/") and short.endswith("/medical/final")
    title = plot_title({"model": "runs/x/final", "manifests": {"a/dev.jsonl": {}, "b/test.jsonl": {}}})
    assert title == "runs/x/final\non a/dev.jsonl, b/test.jsonl"
    assert max(len(line) for line in plot_title({"model": long, "manifests": {long: {}}}).splitlines()) <= 73


def test_evaluate_cli_records_its_options_names_skips_and_titles_the_chart(manifest, tmp_path, tiny_student,
                                                                           monkeypatch):
    from datetime import datetime, timezone

    import matplotlib.figure

    from train.eval.report import plot_title
    from train.evaluate import main
    from train.models import save_student

    titles, savefig = [], matplotlib.figure.Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        titles.append(fig.axes[0].get_title())
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    model, processor = tiny_student
    ckpt = save_student(model, processor, tmp_path / "runs" / "x" / "final")
    out = tmp_path / "eval" / "report.json"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    report = main(["--model", str(ckpt), "--manifest", str(manifest), "--out", str(out), "--hyps",
                   "--max-new-tokens", "4", "--device", "cpu", "--batch-size", "3"])
    options = json.loads(out.read_text())["options"]
    assert {k: options[k] for k in ("model", "manifests", "batch_size", "max_new_tokens", "language_prompt",
                                    "language_prompt_source", "device", "dtype", "dtype_asked", "decode_engine",
                                    "decode_engine_asked", "max_seconds")} == {
        "model": str(ckpt), "manifests": [str(manifest)], "batch_size": 3, "max_new_tokens": 4,
        "language_prompt": False, "language_prompt_source": "model does not say", "device": "cpu",
        "dtype": "float32", "dtype_asked": None, "decode_engine": "eager", "decode_engine_asked": "auto",
        "max_seconds": 30.0}
    assert options["ark_opd_commit"] is None or len(options["ark_opd_commit"]) == 40
    assert before <= datetime.fromisoformat(options["utc"]) <= datetime.now(timezone.utc)
    assert titles == [plot_title({"model": str(ckpt), "manifests": {str(manifest): {}}})]  # not just "final"
    assert titles[0].splitlines()[0].endswith("x/final") and titles[0].endswith("dev.jsonl")
    skipped = [json.loads(x) for x in out.with_suffix(".skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"manifest": str(manifest), "id": "gone", "audio": str(tmp_path / "missing.wav"),
                        "reason": "missing", "detail": str(tmp_path / "missing.wav")}]
    assert report["manifests"][str(manifest)]["skipped"] == {"missing": 1}
    hyps = [json.loads(x) for x in out.with_suffix(".hyps.jsonl").read_text().splitlines()]
    for lang, row in report["manifests"][str(manifest)]["languages"].items():
        assert sum(h["substitutions"] + h["deletions"] + h["insertions"] for h in hyps
                   if h["language"] == lang) == row["errors"]


def test_every_option_of_evaluate_shows_its_default():
    from tests.eval.test_compare import options_without_default
    from train.evaluate import build_parser

    assert options_without_default(build_parser()) == []
