"""Transcribe audio files, or pseudo-label a whole manifest into a new one (streamed, resumable, sharded).

    python train/transcribe.py --model DIR AUDIO [AUDIO ...] [--language de]
    python train/transcribe.py --model DIR --manifest IN.jsonl --out OUT.jsonl
        [--language-prompt] [--drop-empty] [--drop-repetitive] [--drop-wrong-language] [--max-wer 0.3]
        [--batch-size 16] [--chunk-size 512] [--num-workers 4] [--shard I/N] [--overwrite]
    torchrun --nproc_per_node 8 train/transcribe.py --model DIR --manifest IN.jsonl --out OUT.jsonl ...
    python train/transcribe.py --merge --out OUT.jsonl --shards 8

In file mode each file's transcript goes to stdout as `PATH<TAB>TEXT`; a file that exists but cannot
be used (corrupt, empty, silent, too long...) is named on stderr with its reason, after the others are
transcribed, and the command then exits with status 1. Paths that do not exist are all named before
the model loads (status 2).

DIR is any checkpoint `train.models` loads (ark-opd, GlmAsr, released ARK-ASR) or a Qwen3-ASR
directory (model_type qwen3_asr). In manifest mode each output line keeps every field of its
input line, puts the hypothesis in `text`, moves the input's text (if any) to `reference`, and
records `pseudo_label_model`; relative audio paths are rewritten so they still resolve from OUT's
folder. Filters drop lines (counted by reason): empty hypotheses; repetitive ones (zlib compression
ratio above 2.4, Whisper's hallucination threshold); hypotheses not in the line's language; and,
where a reference exists, a WER/CER above --max-wer (as distil-whisper filters its pseudo-labels).
Unusable audio is skipped and counted.

Clips are decoded a few batches ahead in --num-workers processes and transcribed in duration order,
--chunk-size at a time; after each chunk the kept lines and a record go to OUT.partial and
OUT.progress (see train/pseudo_label.py). OUT itself appears, in input-manifest order, when every
chunk is done. Rerunning the same command after a crash goes on from the last recorded chunk; a
complete run reruns as a no-op; other settings are refused (--overwrite starts over).
--shard I/N takes every N-th utterance of the duration order from I and writes
OUT-stem.shard-I-of-N.jsonl; under torchrun or accelerate launch the shard defaults to RANK/WORLD_SIZE
and the device to cuda:LOCAL_RANK. --merge then checks that all N shards are complete and writes OUT,
in the same order an unsharded run writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.data.manifest import Utterance  # noqa: E402
from train.cli import HelpFormatter  # noqa: E402
from train.eval.timed import Transcriber, timed_transcription  # noqa: E402
from train.decode import ENGINES, decoder_named  # noqa: E402
from train.models.weights import read_config_json  # noqa: E402
from train.pseudo_label import (RunMismatch, compression_ratio, drop_reason, merge_shards,  # noqa: E402,F401
                                pseudo_label)


def load_transcriber(model_dir: str, device: str, dtype: str | None, max_new_tokens: int,
                     language_prompt: bool | None, decode_engine: str = "auto") -> Transcriber:
    """A Qwen3-ASR or student transcriber; `language_prompt` None: as the student was trained."""
    if (problem := check_model_dir(model_dir)) is not None:
        raise SystemExit(f"--model {problem}")
    if read_config_json(model_dir).get("model_type") == "qwen3_asr":
        from train.eval.qwen3_asr_transcriber import Qwen3ASRTranscriber

        return Qwen3ASRTranscriber.from_pretrained(model_dir, device=device, dtype=dtype,
                                                   max_new_tokens=max_new_tokens)
    from train.eval.timed import StudentTranscriber
    from train.models import load_student

    from train.models.processor import prompt_with_language

    model, processor = load_student(model_dir, dtype=dtype, device=device)
    return StudentTranscriber(model, processor, name=str(model_dir), max_new_tokens=max_new_tokens,
                              language_prompt=prompt_with_language(language_prompt, processor),
                              generate_options={"decoder": decoder_named(decode_engine, device)})


# A few decoding processes keep a GPU fed; more than the cores this process may use only contend.
DEFAULT_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N), with 0 <= I < N."""
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= I < N")
    return shard


def launcher_shard() -> tuple[int, int]:
    """This process's shard under torchrun / accelerate launch (RANK of WORLD_SIZE), else the whole manifest."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def default_device() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if local_rank is not None else "cuda"


def check_model_dir(path: str) -> str | None:
    """Why `path` is not a model directory, or None."""
    if not Path(path).is_dir():
        return f"{path}: no such directory"
    if not (Path(path) / "config.json").is_file():
        return f"{path}: no config.json there (not a model directory)"
    return None


def check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What the run reads and writes, checked before a model loads: errors name the flag and the path
    (the model directory is checked by `load_transcriber`, first)."""
    if missing := [path for path in args.audio if not Path(path).is_file()]:
        parser.error("\n".join(f"{path}: no such audio file" for path in missing))
    if args.manifest:
        if not args.manifest.startswith("hf:") and not Path(args.manifest.split("#")[0]).exists():
            parser.error(f"--manifest {args.manifest}: no such manifest")
        if Path(args.out).is_dir():
            parser.error(f"--out {args.out}: is a directory; give the output manifest's path, e.g. {args.out}/pseudo.jsonl")
        if args.max_wer is not None:
            print("note: --max-wer compares with each line's reference transcript; lines without one are kept "
                  "whatever their WER (it does nothing on unlabelled audio)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: none; required except with --merge)")
    parser.add_argument("audio", nargs="*", help="audio files to transcribe (file mode; default: none)")
    parser.add_argument("--manifest", help="manifest to pseudo-label (manifest mode; default: none)")
    parser.add_argument("--out", help="output manifest (manifest mode, --merge; default: none)")
    parser.add_argument("--language", help="ISO code forced for every file (file mode; default: none, the model "
                                           "decides)")
    parser.add_argument("--language-prompt", action=argparse.BooleanOptionalAction, default=None,
                        help="tell the model each line's language (default: as the model was trained, from its "
                             "ark_opd_prompt.json; on with --language)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per generate call (duration-sorted)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest transcript generated, in tokens")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK (or cuda) if there is one, else cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as saved)")
    parser.add_argument("--decode-engine", choices=ENGINES, default="auto",
                        help="the student's decoder: auto = static-cache on CUDA, eager elsewhere (train/decode/)")
    parser.add_argument("--drop-empty", action="store_true", help="drop lines whose hypothesis is empty")
    parser.add_argument("--drop-repetitive", action="store_true",
                        help="drop hypotheses whose zlib compression ratio is above 2.4 (loops)")
    parser.add_argument("--drop-wrong-language", action="store_true",
                        help="drop hypotheses not in the line's language")
    parser.add_argument("--max-wer", type=float, default=None,
                        help="drop lines above this WER/CER vs their reference (default: keep all)")
    parser.add_argument("--chunk-size", type=int, default=512, help="clips transcribed between two progress records")
    parser.add_argument("--num-workers", type=int, default=DEFAULT_WORKERS, help="audio-decoding processes (default: min(4, usable cores), here %(default)s)")
    parser.add_argument("--shard", type=parse_shard, default=None,
                        help="I/N: this process's share (default: RANK/WORLD_SIZE under a launcher, else 0/1)")
    parser.add_argument("--overwrite", action="store_true", help="discard OUT's progress and start over")
    parser.add_argument("--merge", action="store_true", help="write OUT from the --shards N complete shard outputs")
    parser.add_argument("--shards", type=int, default=None, help="number of shards to merge (with --merge; "
                                                                 "default: none)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge:
        if not args.out or not args.shards or args.shards < 1 or args.manifest or args.audio:
            parser.error("--merge takes --out OUT --shards N (and no --manifest or AUDIO)")
        return args
    if not args.model:
        parser.error("--model is required (except with --merge)")
    if bool(args.manifest) == bool(args.audio) or bool(args.manifest) != bool(args.out):
        parser.error("give either AUDIO files, or --manifest IN --out OUT")
    if min(args.batch_size, args.chunk_size) < 1 or args.num_workers < 0:
        parser.error("--batch-size and --chunk-size must be >= 1, --num-workers >= 0")
    if args.audio:
        if args.language is not None and args.language_prompt is None:
            args.language_prompt = True
    elif args.language is not None:
        print(f"warning: --language {args.language} is ignored in manifest mode: each line's own language is used")
    check_inputs(parser, args)
    args.shard = args.shard or launcher_shard()
    args.device = args.device or default_device()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        if args.merge:
            report = merge_shards(args.out, args.shards)
            print(json.dumps(report, indent=2))
            return report
        transcriber = load_transcriber(args.model, args.device, args.dtype, args.max_new_tokens, args.language_prompt,
                                       args.decode_engine)
        if args.manifest:
            report = pseudo_label(
                transcriber, args.manifest, args.out, args.batch_size, drop_empty=args.drop_empty,
                drop_repetitive=args.drop_repetitive, drop_wrong_language=args.drop_wrong_language,
                max_wer=args.max_wer, chunk_size=args.chunk_size, num_workers=args.num_workers, shard=args.shard,
                overwrite=args.overwrite, settings={"max_new_tokens": args.max_new_tokens,
                                                    "language_prompt": getattr(transcriber, "language_prompt",
                                                                               args.language_prompt),
                                                    "dtype": args.dtype})
            print(json.dumps(report, indent=2))
            return report
    except RunMismatch as err:
        raise SystemExit(f"error: {err}") from None
    result = transcribe_files(transcriber, args.audio, args.language, args.batch_size)
    if result["unreadable"]:
        raise SystemExit(f"error: {len(result['unreadable'])} of {len(args.audio)} file(s) could not be read "
                         "(named above)")
    return result


def transcribe_files(transcriber: Transcriber, paths: list[str], language: str | None, batch_size: int) -> dict:
    """Print `path<TAB>transcript` per usable file (stdout), then `path: could not be read (reason: detail)`
    per other file (stderr); returns {"texts": {path: text}, "skipped": {reason: n},
    "unreadable": {path: "reason: detail"}}."""
    utterances = [Utterance(id=path, audio=str(Path(path).resolve()), duration=0.0, language=language)
                  for path in paths]
    result = timed_transcription(transcriber, utterances, batch_size=batch_size, warmup_batches=0)
    texts = dict(zip(result.ids, result.hypotheses))
    for path in paths:
        if path in texts:
            print(f"{path}\t{texts[path]}")
    unreadable = {clip.id: f"{clip.reason}: {clip.detail}" for clip in result.skipped_clips}
    for path, why in unreadable.items():
        print(f"{path}: could not be read ({why})", file=sys.stderr)
    return {"texts": texts, "skipped": dict(result.skipped), "unreadable": unreadable}


if __name__ == "__main__":
    main()
