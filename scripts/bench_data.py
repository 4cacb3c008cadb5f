"""Data-loading throughput of one worker: decode + log-mel features, in audio-seconds per second.

    python scripts/bench_data.py --manifest data/toy/train.jsonl [--limit 400] [--batch 16]

Measures, in one process and one thread (what one DataLoader worker has): decoding (soundfile +
soxr), our per-clip features padded to the batch's longest clip, and — the baseline, same run —
Whisper's extractor padding every clip to 30 s as Whisper-style pipelines do. Prints audio-s/s for
each, the real-time factor one worker reaches (processing seconds per audio second), and the
speed-up over the baseline.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from train.cli import HelpFormatter
from train.data import AudioSkipped, load_audio, read_manifest
from train.models.processor import make_feature_extractor, ArkProcessor
from train.models.tokenizer import build_qwen25_ark_tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--manifest", required=True, help="JSONL manifest of the clips to decode")
    parser.add_argument("--limit", type=int, default=400, help="at most this many clips")
    parser.add_argument("--batch", type=int, default=16, help="clips per feature batch")
    parser.add_argument("--mel-bins", type=int, default=128, help="log-mel bins of the features")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)

    utterances = read_manifest(args.manifest)[: args.limit]
    t0 = time.perf_counter()
    audios = []
    for utt in utterances:
        try:
            audios.append(load_audio(utt))
        except AudioSkipped:
            pass
    decode_s = time.perf_counter() - t0
    audio_s = sum(len(a) for a in audios) / 16000
    audios.sort(key=len)  # as the duration-bucketed sampler groups them
    batches = [audios[i:i + args.batch] for i in range(0, len(audios), args.batch)]

    processor = ArkProcessor(build_qwen25_ark_tokenizer(), make_feature_extractor(args.mel_bins))
    t0 = time.perf_counter()
    for batch in batches:
        processor.features(batch)
    ours_s = time.perf_counter() - t0

    whisper = make_feature_extractor(args.mel_bins)
    t0 = time.perf_counter()
    for batch in batches:
        whisper(batch, sampling_rate=16000, padding="max_length", return_tensors="np")
    padded_s = time.perf_counter() - t0

    row = {
        "manifest": args.manifest, "clips": len(audios), "audio_seconds": round(audio_s, 1),
        "decode_audio_s_per_s": round(audio_s / decode_s, 1),
        "features_audio_s_per_s": round(audio_s / ours_s, 1),
        "decode_plus_features_audio_s_per_s": round(audio_s / (decode_s + ours_s), 1),
        "one_worker_real_time_factor": round((decode_s + ours_s) / audio_s, 5),
        "baseline_30s_padding_features_audio_s_per_s": round(audio_s / padded_s, 1),
        "features_speedup_over_30s_padding": round(padded_s / ours_s, 2),
        "mean_clip_seconds": round(float(np.mean([len(a) for a in audios])) / 16000, 2),
    }
    print(json.dumps(row, indent=2))
    return row


if __name__ == "__main__":
    main()
