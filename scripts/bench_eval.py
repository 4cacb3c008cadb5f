"""RTFx of a student, measured as train/evaluate.py measures it, with generation forced to a realistic length.

    python scripts/bench_eval.py --config configs/models/tiny.yaml --device cpu --batch 16 --clips 64
    python scripts/bench_eval.py --config configs/models/ark_asr_3b.yaml --batch 64 --clips 256   # GPU, bf16

Random weights emit EOS at random, so each batch decodes exactly ceil(tokens_per_second x its longest
clip) tokens (real transcripts run ~3 tokens per audio second). Clips are 2-30 s, duration-sorted.
The baseline, measured in the same run on the same clips, is batch size 1. ARK-ASR-3B's published
RTFx is 490.98 (its card; hardware not comparable to a CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from train.cli import HelpFormatter, config_errors_exit
from train.config import ModelConfig, load_config
from train.data.manifest import read_manifest, write_jsonl
from train.eval.timed import timed_transcription
from train.decode import EAGER, ENGINES, decoder_named
from train.models import build_student, load_student


class ForcedLengthTranscriber:
    """Greedy decoding of exactly ceil(tokens_per_second x longest clip) tokens per batch."""

    def __init__(self, model, processor, tokens_per_second: float, name: str, decoder=EAGER):
        self.model, self.processor, self.tokens_per_second, self.name = model, processor, tokens_per_second, name
        self.allowed = processor.allowed_token_mask(model.config.text_config.vocab_size)
        self.decoder = decoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def transcribe(self, audios, languages):
        dtype = next(self.model.parameters()).dtype
        batch = self.processor(audios)
        batch = {k: v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device) for k, v in batch.items()}
        new_tokens = math.ceil(self.tokens_per_second * max(len(a) for a in audios) / 16000)
        out = self.decoder.generate(self.model, batch, self.allowed, [], self.processor.pad_token_id,
                                    max_new_tokens=new_tokens)
        return [self.processor.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in out.tokens_B_T]


def synthetic_utterances(clips: int, seed: int = 0) -> list:
    """`clips` noise clips of 2-30 s, written to a temporary folder that lives as long as the process."""
    folder = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    return read_manifest(_synthetic_manifest(folder, clips, seed))


def _synthetic_manifest(folder: Path, clips: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i, seconds in enumerate(np.linspace(2.0, 30.0, clips)):
        path = folder / f"{i}.flac"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        rows.append({"audio": path.name, "duration": float(seconds), "language": "en", "id": str(i)})
    return write_jsonl(rows, folder / "clips.jsonl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", default="configs/models/tiny.yaml", help="model config (random weights)")
    source.add_argument("--model", help="a checkpoint dir instead")
    parser.add_argument("--manifest", help="clips to transcribe (default: synthetic 2-30 s noise)")
    parser.add_argument("--clips", type=int, default=64, help="synthetic clips to make (without --manifest)")
    parser.add_argument("--batch", type=int, default=16, help="clips per batch")
    parser.add_argument("--tokens-per-second", type=float, default=3.0,
                        help="forced decode length per audio second (real transcripts: about 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--dtype", default=None,
                        help="float32, bfloat16 or float16 (default: the config's, or as the checkpoint was saved)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the batch-size-1 baseline")
    parser.add_argument("--engine", choices=ENGINES, default="auto", help="decode engine (train/decode/)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    torch.manual_seed(0)
    if args.model:
        model, processor = load_student(args.model, dtype=args.dtype, device=args.device)
    else:
        cfg = load_config(ModelConfig, args.config, [f"dtype={args.dtype}"] if args.dtype else [])
        model, processor = build_student(cfg, device=args.device)
    model.eval()
    transcriber = ForcedLengthTranscriber(model, processor, args.tokens_per_second, args.model or args.config,
                                          decoder=decoder_named(args.engine, args.device))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest or _synthetic_manifest(Path(tmp), args.clips, seed=0)
        utterances = read_manifest(manifest)
        batched = timed_transcription(transcriber, utterances, batch_size=args.batch, warmup_batches=1)
        row = {"model": transcriber.name, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
               and args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads",
               "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "clips": len(batched.ids),
               "audio_seconds": round(batched.audio_seconds, 1), "batch": args.batch,
               "tokens_per_second": args.tokens_per_second, "engine": transcriber.decoder.name,
               "rtfx": round(batched.rtfx, 2)}
        if not args.no_baseline:
            single = timed_transcription(transcriber, utterances, batch_size=1, warmup_batches=1)
            row.update(rtfx_batch_1=round(single.rtfx, 2), batched_speedup=round(batched.rtfx / single.rtfx, 2))
    print(json.dumps(row, indent=2))
    return row


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
