"""What a set of manifests really holds: every file opened, usable utterances and hours, skips by reason.

    python -m train.data.inspect MANIFEST [MANIFEST ...] [--workers 2] [--max-seconds 30] [--min-seconds 0.1]

Prints JSON: {"utterances", "hours", "labelled", "languages": {code: {"utterances", "hours"}},
"durations": {percentiles, seconds}, "skipped": {reason: count}, "manifests": {path: {...}}}.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from train.cli import HelpFormatter
from train.data.audio import SAMPLE_RATE, AudioLimits, AudioSkipped, load_audio
from train.data.manifest import Utterance, read_manifest

PERCENTILES = (0, 10, 50, 90, 99, 100)


def _probe(args: tuple[Utterance, AudioLimits]) -> tuple[str, float | None, str | None]:
    utt, limits = args
    try:
        return utt.id, len(load_audio(utt, limits)) / SAMPLE_RATE, None
    except AudioSkipped as skipped:
        return utt.id, None, skipped.reason


def summarise(utterances: list[Utterance], probes: list[tuple[str, float | None, str | None]]) -> dict:
    """Counts over the usable utterances (decoded length, not the manifest's claim) and skips by reason."""
    languages: dict[str, dict] = defaultdict(lambda: {"utterances": 0, "hours": 0.0})
    durations, skipped, labelled = [], defaultdict(int), 0
    for utt, (_, seconds, reason) in zip(utterances, probes):
        if reason is not None:
            skipped[reason] += 1
            continue
        durations.append(seconds)
        labelled += int(utt.labelled)
        lang = languages[utt.language or "unknown"]
        lang["utterances"] += 1
        lang["hours"] += seconds / 3600
    for lang in languages.values():
        lang["hours"] = round(lang["hours"], 4)
    values = np.percentile(durations, PERCENTILES) if durations else [0.0] * len(PERCENTILES)
    return {"utterances": len(durations), "hours": round(sum(durations) / 3600, 4), "labelled": labelled,
            "languages": dict(sorted(languages.items())),
            "durations": {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, values)},
            "skipped": dict(sorted(skipped.items()))}


def inspect(specs: list[str], limits: AudioLimits = AudioLimits(), workers: int = 2) -> dict:
    per_manifest, everything, all_probes = {}, [], []
    for spec in specs:
        utterances = read_manifest(spec)
        jobs = [(u, limits) for u in utterances]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                probes = list(pool.map(_probe, jobs, chunksize=64))
        else:
            probes = [_probe(j) for j in jobs]
        per_manifest[spec] = summarise(utterances, probes)
        everything.extend(utterances)
        all_probes.extend(probes)
    return {**summarise(everything, all_probes), "manifests": per_manifest}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("manifests", nargs="+",
                        help="JSONL files, saved dataset folders (DIR#split) or hub ids (hf:REPO[:CONFIG]:SPLIT)")
    parser.add_argument("--workers", type=int, default=2, help="processes opening the audio")
    parser.add_argument("--min-seconds", type=float, default=AudioLimits.min_seconds,
                        help="shorter clips count as skipped")
    parser.add_argument("--max-seconds", type=float, default=AudioLimits.max_seconds,
                        help="longer clips count as skipped")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    report = inspect(args.manifests, AudioLimits(args.min_seconds, args.max_seconds), args.workers)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
