"""Evaluate a model on manifests: WER/CER and their parts, language fidelity and RTFx, per manifest and language.

    python train/evaluate.py --model DIR --manifest A.jsonl [--manifest B.jsonl ...] --out report.json
        [--hyps] [--batch-size 16] [--max-new-tokens 256] [--language-prompt] [--device cuda] [--dtype bfloat16]

Writes report.json, report.md (a table) and report.png (error rate per language); with --hyps,
report.hyps.jsonl holds every hypothesis beside its reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.data.audio import AudioLimits  # noqa: E402
from train.data.manifest import ManifestError, read_manifest  # noqa: E402
from train.eval.report import average_rate, markdown_table, plot_error_rates, score_by_language  # noqa: E402
from train.decode import ENGINES, decoder_named  # noqa: E402
from train.eval.timed import StudentTranscriber, Transcriber, timed_transcription  # noqa: E402


def evaluate(transcriber: Transcriber, manifests: list[str], batch_size: int = 16,
             limits: AudioLimits = AudioLimits(), keep_hyps: bool = False,
             utterances: dict[str, list] | None = None) -> tuple[dict, list[dict]]:
    """(report, hypotheses): the report per manifest and language; hypothesis rows when `keep_hyps`.
    `utterances`: the manifests already read (by `check_inputs`), else they are read here."""
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
            "average_rate": average_rate(languages), "languages": languages,
        }
        if keep_hyps:
            rows.extend({"manifest": spec, "id": i, "language": lang, "reference": ref, "hypothesis": hyp}
                        for i, lang, ref, hyp in zip(result.ids, result.languages, result.references,
                                                     result.hypotheses))
    return report, rows


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint dir (ark-opd, GlmAsr or ARK layout)")
    parser.add_argument("--manifest", action="append", required=True, help="repeat for several")
    parser.add_argument("--out", required=True, help="report JSON path; .md and .png are written beside it")
    parser.add_argument("--hyps", action="store_true", help="also write every hypothesis beside its reference")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--language-prompt", action=argparse.BooleanOptionalAction, default=None,
                        help="tell the model each clip's language (default: as the model was trained, from its "
                             "ark_opd_prompt.json; else no)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as saved)")
    parser.add_argument("--max-seconds", type=float, default=AudioLimits.max_seconds)
    parser.add_argument("--decode-engine", choices=ENGINES, default="auto",
                        help="auto: static-cache on CUDA, eager elsewhere (train/decode/)")
    args = parser.parse_args(argv)
    utterances = check_inputs(parser, args)

    from train.models import load_student
    from train.models.processor import prompt_with_language

    model, processor = load_student(args.model, dtype=args.dtype, device=args.device)
    language_prompt = prompt_with_language(args.language_prompt, processor)
    print(f"language prompt: {'on' if language_prompt else 'off'} ("
          + ("as asked" if args.language_prompt is not None else "as the model was trained"
             if processor.language_prompt is not None else "the model does not say how it was trained") + ")")
    transcriber = StudentTranscriber(model, processor, name=str(args.model), max_new_tokens=args.max_new_tokens,
                                     language_prompt=language_prompt,
                                     generate_options={"decoder": decoder_named(args.decode_engine, args.device)})
    report, rows = evaluate(transcriber, args.manifest, args.batch_size,
                            AudioLimits(max_seconds=args.max_seconds), args.hyps, utterances)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown_table(report))
    plot_error_rates(report, out.with_suffix(".png"), title=f"{Path(args.model).name}: error rate by language")
    if args.hyps:
        with open(out.with_suffix(".hyps.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(markdown_table(report))
    return report


if __name__ == "__main__":
    main()
