"""Transcribe audio files, or pseudo-label a whole manifest into a new one.

    python train/transcribe.py --model DIR AUDIO [AUDIO ...] [--language de]
    python train/transcribe.py --model DIR --manifest IN.jsonl --out OUT.jsonl
        [--language-prompt] [--drop-empty] [--drop-repetitive] [--drop-wrong-language] [--max-wer 0.3]

DIR is any checkpoint `train.models` loads (ark-opd, GlmAsr, released ARK-ASR) or a Qwen3-ASR
directory (model_type qwen3_asr). In manifest mode each output line keeps every field of its
input line, puts the hypothesis in `text`, moves the input's text (if any) to `reference`, and
records `pseudo_label_model`; relative audio paths are rewritten so they still resolve from OUT's
folder. Filters drop lines (counted by reason): empty hypotheses; repetitive ones (zlib compression
ratio above 2.4, Whisper's hallucination threshold); hypotheses not in the line's language; and,
where a reference exists, a WER/CER above --max-wer (as distil-whisper filters its pseudo-labels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from collections import Counter
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.data.audio import AudioLimits  # noqa: E402
from train.data.manifest import Utterance, read_manifest, write_jsonl  # noqa: E402
from train.eval.error_rates import error_rates  # noqa: E402
from train.eval.language_id import detect_language  # noqa: E402
from train.eval.normalizers import normalize  # noqa: E402
from train.eval.timed import Transcriber, timed_transcription  # noqa: E402
from train.models.weights import read_config_json  # noqa: E402

REPETITION_RATIO = 2.4  # Whisper's compression-ratio threshold for looping output


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def drop_reason(hyp: str, utt: Utterance, drop_empty: bool, drop_repetitive: bool, drop_wrong_language: bool,
                max_wer: float | None) -> str | None:
    """Why a pseudo-label should not be kept, or None."""
    if drop_empty and not normalize(hyp, utt.language):
        return "empty"
    if drop_repetitive and compression_ratio(hyp) > REPETITION_RATIO:
        return "repetitive"
    if drop_wrong_language and utt.language and hyp.strip() and detect_language(hyp) not in (utt.language, None):
        return "wrong_language"
    if max_wer is not None and utt.text and error_rates([utt.text], [hyp], utt.language)["rate"] > max_wer:
        return "above_max_wer"
    return None


def _raw_lines(spec: str) -> list[dict] | None:
    """The input JSONL's own objects, in the order `read_jsonl` reads them (None for datasets)."""
    path = Path(spec)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pseudo_label(transcriber: Transcriber, manifest: str, out: str | Path, batch_size: int = 16,
                 limits: AudioLimits = AudioLimits(), drop_empty: bool = False, drop_repetitive: bool = False,
                 drop_wrong_language: bool = False, max_wer: float | None = None) -> dict:
    """Transcribe `manifest` into `out`; returns {"written", "dropped": {reason: n}, "skipped": {...}, "rtfx"}."""
    utterances = read_manifest(manifest)
    raws = _raw_lines(manifest)
    by_id = {u.id: (u, raws[i] if raws is not None else None) for i, u in enumerate(utterances)}
    result = timed_transcription(transcriber, utterances, batch_size=batch_size, limits=limits, warmup_batches=0)
    out = Path(out)
    hyps = dict(zip(result.ids, result.hypotheses))
    rows, dropped = [], Counter()
    for utt, raw in by_id.values():
        if utt.id not in hyps:
            continue  # unusable audio: counted in result.skipped
        hyp = hyps[utt.id]
        reason = drop_reason(hyp, utt, drop_empty, drop_repetitive, drop_wrong_language, max_wer)
        if reason:
            dropped[reason] += 1
            continue
        row = dict(raw) if raw is not None else _row_from(utt)
        if raw is not None and not Path(row["audio"]).is_absolute():
            row["audio"] = os.path.relpath(utt.audio, out.resolve().parent)
        if row.get("text"):
            row["reference"] = row["text"]
        row["text"] = hyp
        row["pseudo_label_model"] = transcriber.name
        rows.append(row)
    write_jsonl(rows, out)
    return {"written": len(rows), "dropped": dict(dropped), "skipped": dict(result.skipped),
            "audio_seconds": round(result.audio_seconds, 2), "rtfx": round(result.rtfx, 2)}


def _row_from(utt: Utterance) -> dict:
    """A manifest line for an utterance that came from a dataset: audio is written out by its reader."""
    if not isinstance(utt.audio, str):
        raise ValueError(f"{utt.source}: pseudo-labelling a dataset with embedded audio needs the audio on disk; "
                         "export it with its data recipe first")
    row = {"id": utt.id, "audio": utt.audio, "duration": utt.duration, "language": utt.language}
    if utt.text:
        row["text"] = utt.text
    for key in ("begin_time", "end_time", "task"):
        if getattr(utt, key) is not None:
            row[key] = getattr(utt, key)
    return {**row, **utt.extra}


def load_transcriber(model_dir: str, device: str, dtype: str | None, max_new_tokens: int,
                     language_prompt: bool) -> Transcriber:
    if read_config_json(model_dir).get("model_type") == "qwen3_asr":
        from train.eval.qwen3_asr_transcriber import Qwen3ASRTranscriber

        return Qwen3ASRTranscriber.from_pretrained(model_dir, device=device, dtype=dtype,
                                                   max_new_tokens=max_new_tokens)
    from train.eval.timed import StudentTranscriber
    from train.models import load_student

    model, processor = load_student(model_dir, dtype=dtype, device=device)
    return StudentTranscriber(model, processor, name=str(model_dir), max_new_tokens=max_new_tokens,
                              language_prompt=language_prompt)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("audio", nargs="*", help="audio files to transcribe (file mode)")
    parser.add_argument("--manifest", help="manifest to pseudo-label (manifest mode)")
    parser.add_argument("--out", help="output manifest (manifest mode)")
    parser.add_argument("--language", help="ISO code forced for every file (file mode)")
    parser.add_argument("--language-prompt", action="store_true", help="tell the model each line's language")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--drop-empty", action="store_true")
    parser.add_argument("--drop-repetitive", action="store_true")
    parser.add_argument("--drop-wrong-language", action="store_true")
    parser.add_argument("--max-wer", type=float, default=None, help="drop lines above this WER/CER vs their reference")
    args = parser.parse_args(argv)
    if bool(args.manifest) == bool(args.audio) or bool(args.manifest) != bool(args.out):
        parser.error("give either AUDIO files, or --manifest IN --out OUT")
    if args.audio:
        args.language_prompt = args.language_prompt or args.language is not None
    transcriber = load_transcriber(args.model, args.device, args.dtype, args.max_new_tokens, args.language_prompt)
    if args.manifest:
        report = pseudo_label(transcriber, args.manifest, args.out, args.batch_size, drop_empty=args.drop_empty,
                              drop_repetitive=args.drop_repetitive, drop_wrong_language=args.drop_wrong_language,
                              max_wer=args.max_wer)
        print(json.dumps(report, indent=2))
        return report
    utterances = [Utterance(id=path, audio=str(Path(path).resolve()), duration=0.0, language=args.language)
                  for path in args.audio]
    result = timed_transcription(transcriber, utterances, batch_size=args.batch_size, warmup_batches=0)
    texts = dict(zip(result.ids, result.hypotheses))
    for path in args.audio:
        print(f"{path}\t{texts.get(path, '<unreadable audio>')}")
    return {"texts": texts, "skipped": dict(result.skipped)}


if __name__ == "__main__":
    main()
