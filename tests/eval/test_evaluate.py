"""Timed transcription (what the clock covers), per-language reports, and train/evaluate.py end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from tests.data.audio_files import sine, write
from train.data.manifest import read_manifest
from train.eval import timed
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
