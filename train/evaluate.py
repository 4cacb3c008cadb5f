"""Evaluate a model on manifests: WER/CER and their parts, language fidelity and RTFx, per manifest and language.

    python train/evaluate.py --model DIR --manifest A.jsonl [--manifest B.jsonl ...] --out report.json
        [--hyps] [--batch-size 16] [--max-new-tokens 256] [--language-prompt] [--device cuda] [--dtype bfloat16]

Writes report.json (per manifest and language: the primary metric, CER for zh/ja/ko/yue/th and WER
elsewhere, with its substitutions/deletions/insertions, CER beside it for every language, language
fidelity, RTFx, the clips skipped by reason; and under "options" how it was run: model, manifests,
decoding settings, device, dtype, commit, time), report.md (the table), report.png (error rate per
language, titled with the model and manifests) and report.skipped.jsonl (one line per clip that could
not be used: {manifest, id, audio, reason, detail}; empty when none). With --hyps, report.hyps.jsonl
holds every utterance: reference and hypothesis, both normalised as scored, the metric, reference
units, substitutions/deletions/insertions/hits and sclite's REF/HYP/EVAL alignment (they add up to the
report's counts). Compare reports with train/compare.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.data.audio import AudioLimits  # noqa: E402
from train.data.manifest import ManifestError, read_manifest  # noqa: E402
from train.cli import HelpFormatter  # noqa: E402
from train.eval.report import (average_cer, average_rate, markdown_table, plot_error_rates,  # noqa: E402
                               score_by_language, utterance_errors)
from train.decode import ENGINES, decoder_named  # noqa: E402
from train.eval.timed import StudentTranscriber, Transcriber, timed_transcription  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def evaluate(transcriber: Transcriber, manifests: list[str], batch_size: int = 16,
             limits: AudioLimits = AudioLimits(), keep_hyps: bool = False,
             utterances: dict[str, list] | None = None, skipped_clips: list[dict] | None = None
             ) -> tuple[dict, list[dict]]:
    """(report, hypotheses): the report per manifest and language; when `keep_hyps`, one row per utterance
    with its errors (`utterance_errors`). `utterances`: the manifests already read (by `check_inputs`), else
    they are read here. `skipped_clips`, when given, receives {manifest, id, audio, reason, detail} per clip
    that could not be used."""
    report = {"model": transcriber.name, "manifests": {}}
    rows = []
    for spec in manifests:
        read = utterances[spec] if utterances and spec in utterances else read_manifest(spec)
        result = timed_transcription(transcriber, read, batch_size=batch_size, limits=limits)
        languages = score_by_language(result.references, result.hypotheses, result.languages,
                                      result.skipped_by_language)
        report["manifests"][spec] = {
            "utterances": len(result.ids), "skipped": dict(result.skipped),
            "audio_seconds": round(result.audio_seconds, 3),
            "transcription_seconds": round(result.transcription_seconds, 3), "rtfx": result.rtfx,
            "average_rate": average_rate(languages), "average_cer": average_cer(languages), "languages": languages,
        }
        if skipped_clips is not None:
            skipped_clips.extend({"manifest": spec, "id": clip.id, "audio": clip.audio, "reason": clip.reason,
                                  "detail": clip.detail} for clip in result.skipped_clips)
        if keep_hyps:
            rows.extend({"manifest": spec, "id": i, "language": lang, "reference": ref, "hypothesis": hyp,
                         **utterance_errors(ref, hyp, lang)}
                        for i, lang, ref, hyp in zip(result.ids, result.languages, result.references,
                                                     result.hypotheses))
    return report, rows


def git_commit() -> str | None:
    """This checkout's commit, or None where there is no git or no repository (an installed copy)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, list]:
    """The model directory, every manifest and the output path, checked before the model loads (a wrong
    --out used to fail after a whole evaluation). Returns the manifests' utterances."""
    from train.transcribe import check_model_dir

    if (problem := check_model_dir(args.model)) is not None:
        parser.error(f"--model {problem}")
    out = Path(args.out)
    if out.is_dir():
        parser.error(f"--out {out}: is a directory; give the report's path, e.g. {out}/report.json")
    if out.suffix != ".json":
        parser.error(f"--out {out}: the report is JSON (report.md and report.png go beside it): name it *.json")
    utterances = {}
    for spec in args.manifest:
        try:
            utterances[spec] = read_manifest(spec)
        except ManifestError as err:
            parser.error(f"--manifest {err}")
    return utterances


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint dir (ark-opd, GlmAsr or ARK layout)")
    parser.add_argument("--manifest", action="append", required=True,
                        help="JSONL manifest, saved dataset or hf:REPO[:CONFIG]:SPLIT; repeat for several")
    parser.add_argument("--out", required=True,
                        help="report JSON path; .md, .png and .skipped.jsonl (and .hyps.jsonl) are written beside it")
    parser.add_argument("--hyps", action="store_true",
                        help="also write every utterance's hypothesis, reference, errors and alignment")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per generate call (duration-sorted)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest transcript generated, in tokens")
    parser.add_argument("--language-prompt", action=argparse.BooleanOptionalAction, default=None,
                        help="tell the model each clip's language (default: as the model was trained, from its "
                             "ark_opd_prompt.json; else no)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if there is one, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as saved)")
    parser.add_argument("--max-seconds", type=float, default=AudioLimits.max_seconds,
                        help="longer clips are skipped (reason too_long)")
    parser.add_argument("--decode-engine", choices=ENGINES, default="auto",
                        help="auto: static-cache on CUDA, eager elsewhere (train/decode/)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    utterances = check_inputs(parser, args)

    from train.models import load_student
    from train.models.processor import prompt_with_language

    model, processor = load_student(args.model, dtype=args.dtype, device=args.device)
    language_prompt = prompt_with_language(args.language_prompt, processor)
    prompt_source = ("asked" if args.language_prompt is not None else "as trained"
                     if processor.language_prompt is not None else "model does not say")
    print(f"language prompt: {'on' if language_prompt else 'off'} (" + {
        "asked": "as asked", "as trained": "as the model was trained",
        "model does not say": "the model does not say how it was trained"}[prompt_source] + ")")
    decoder = decoder_named(args.decode_engine, args.device)
    transcriber = StudentTranscriber(model, processor, name=str(args.model), max_new_tokens=args.max_new_tokens,
                                     language_prompt=language_prompt, generate_options={"decoder": decoder})
    skipped: list[dict] = []
    report, rows = evaluate(transcriber, args.manifest, args.batch_size,
                            AudioLimits(max_seconds=args.max_seconds), args.hyps, utterances, skipped)
    report["options"] = {
        "model": str(args.model), "manifests": list(args.manifest), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "language_prompt": language_prompt,
        "language_prompt_source": prompt_source, "device": str(args.device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "dtype_asked": args.dtype,
        "decode_engine": getattr(decoder, "name", args.decode_engine), "decode_engine_asked": args.decode_engine,
        "max_seconds": args.max_seconds, "ark_opd_commit": git_commit(),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown_table(report))
    plot_error_rates(report, out.with_suffix(".png"))
    write_jsonl(out.with_suffix(".skipped.jsonl"), skipped)
    if args.hyps:
        write_jsonl(out.with_suffix(".hyps.jsonl"), rows)
    print(markdown_table(report))
    if skipped:
        print(f"{len(skipped)} clip(s) could not be used: each is named, with its reason, in "
              f"{out.with_suffix('.skipped.jsonl')}")
    return report


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
