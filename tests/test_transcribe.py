"""train/transcribe.py: pseudo-labelled manifests keep fields, move references, and apply each filter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.data.audio_files import sine, write
from train.data.manifest import read_manifest
from train.transcribe import compression_ratio, main, pseudo_label

HYPS = {
    "keep": "guten morgen zusammen",
    "empty": "  ",
    "loop": "ja " * 40,
    "english": "good morning to everyone here today",
    "far": "völlig andere worte hier",
    "unlabelled": "hallo welt wie geht es",
}


@dataclass
class ScriptedTranscriber:
    """Answers each clip with the hypothesis scripted for its id (clip lengths encode the id)."""

    name: str = "scripted-model"
    device: torch.device = torch.device("cpu")

    def transcribe(self, audios, languages):
        return [HYPS[ORDER[round(len(a) / 1600) - 5]] for a in audios]


ORDER = list(HYPS)


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for i, key in enumerate(ORDER):
        write(tmp_path / "in" / "audio" / f"{key}.wav", sine(200 + 30 * i, (5 + i) * 0.1))
        row = {"id": key, "audio": f"audio/{key}.wav", "language": "de", "speaker": f"s{i}", "task": "asr"}
        if key != "unlabelled":
            row["text"] = "guten morgen zusammen"
        rows.append(row)
    path = tmp_path / "in" / "unlabelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compression_ratio_flags_loops():
    assert compression_ratio("ja " * 40) > 2.4 > compression_ratio("guten morgen zusammen")


def test_no_filters_keeps_everything_and_moves_references(manifest, tmp_path):
    out = tmp_path / "elsewhere" / "pseudo.jsonl"
    report = pseudo_label(ScriptedTranscriber(), str(manifest), out, batch_size=4)
    assert report["written"] == 6 and report["dropped"] == {}
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["keep"]["text"] == HYPS["keep"] and rows["keep"]["reference"] == "guten morgen zusammen"
    assert "reference" not in rows["unlabelled"] and rows["unlabelled"]["text"] == HYPS["unlabelled"]
    assert rows["keep"]["speaker"] == "s0" and rows["keep"]["task"] == "asr"
    assert all(r["pseudo_label_model"] == "scripted-model" for r in rows.values())
    # audio paths still resolve from the new manifest's folder
    assert all((tmp_path / "in" / "audio").samefile(Path(u.audio).parent) for u in read_manifest(out))


def test_each_filter_drops_its_lines(manifest, tmp_path):
    report = pseudo_label(ScriptedTranscriber(), str(manifest), tmp_path / "f.jsonl", batch_size=4, drop_empty=True,
                          drop_repetitive=True, drop_wrong_language=True, max_wer=0.5)
    assert report["dropped"] == {"empty": 1, "repetitive": 1, "wrong_language": 1, "above_max_wer": 1}
    kept = {json.loads(x)["id"] for x in (tmp_path / "f.jsonl").read_text().splitlines()}
    assert kept == {"keep", "unlabelled"}


def test_cli_with_a_tiny_student(manifest, tmp_path, tiny_student, capsys):
    from train.models import save_student

    model, processor = tiny_student
    ckpt = save_student(model, processor, tmp_path / "ckpt")
    out = tmp_path / "cli.jsonl"
    report = main(["--model", str(ckpt), "--manifest", str(manifest), "--out", str(out), "--max-new-tokens", "5",
                   "--device", "cpu"])
    assert report["written"] == 6 and len(out.read_text().splitlines()) == 6
    files = main(["--model", str(ckpt), str(manifest.parent / "audio" / "keep.wav"), "--language", "de",
                  "--max-new-tokens", "4", "--device", "cpu"])
    assert len(files["texts"]) == 1 and "keep.wav\t" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", str(ckpt), "--manifest", str(manifest)])  # --out missing


def test_qwen3_asr_transcriber_on_a_tiny_model():
    from tests.teachers.qwen3_fixtures import tiny_qwen3_asr
    from train.eval.qwen3_asr_transcriber import Qwen3ASRTranscriber

    # The real checkpoints ship their chat template; this minimal one renders the same turn layout.
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}"
                "{% if c.type == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
                "{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}"
                "{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}")
    model, processor = tiny_qwen3_asr(chat_template=template)
    transcriber = Qwen3ASRTranscriber(model, processor, max_new_tokens=4)
    prompt = processor.apply_transcription_request([sine(300, 1.0)], language=["de"], tokenize=False)[0]
    assert prompt.endswith("<|im_start|>assistant\nlanguage German<asr_text>")
    texts = transcriber.transcribe([sine(300, 1.0), sine(500, 0.6)], ["de", "hr"])  # hr: no forced language
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
