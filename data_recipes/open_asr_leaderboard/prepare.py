"""The English test sets of the Hugging Face Open ASR Leaderboard -> OUT/test/<set>.jsonl, audio under OUT/audio/.

    python -m data_recipes.open_asr_leaderboard.prepare                    # all 8 sets -> data/open_asr_leaderboard
    python -m data_recipes.open_asr_leaderboard.prepare --sets ami librispeech:test.clean
    python -m data_recipes.open_asr_leaderboard.prepare --dataset hf-audio/esb-datasets-test-only-sorted
    python -m data_recipes.open_asr_leaderboard.prepare --dataset DIR      # local save_to_disk copy: DIR/<config>

Source: hub dataset hf-audio/open-asr-leaderboard (gated), which the leaderboard's evaluation code
(github.com/huggingface/open_asr_leaderboard) loads as `load_dataset(path, config, split=...)`; its
earlier name was hf-audio/esb-datasets-test-only-sorted (same configs and columns: audio, dataset,
text, id, audio_length_s). A set is CONFIG:SPLIT; `librispeech:test.clean` is written as
librispeech_clean.jsonl, `librispeech:test.other` as librispeech_other.jsonl, the others as <config>.jsonl.
Rows whose reference is empty or "ignore time segment in scoring" are left out (the leaderboard
drops them too), counted as `empty_text`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (DatasetPart, Skip, add_dataset_args, base_parser, exit_code, export_dataset_parts,
                                 report)

REPO = "hf-audio/open-asr-leaderboard"
SETS = ("ami:test", "earnings22:test", "gigaspeech:test", "librispeech:test.clean", "librispeech:test.other",
        "spgispeech:test", "tedlium:test", "voxpopuli:test")
LANGUAGE = "en"


def set_name(config: str, split: str) -> str:
    return config if split == "test" else f"{config}_{split.removeprefix('test.')}"


def make_convert(dataset, part: DatasetPart):
    def convert(row: dict) -> dict:
        text = (row.get("text") or "").strip()
        if text.lower() == "ignore time segment in scoring":
            raise Skip("empty_text", str(row.get("id")))
        return {"id": f"{part.config}-{row['id']}", "text": text, "language": LANGUAGE,
                "extra": {"dataset": row.get("dataset") or part.config, "source_id": str(row["id"])}}

    return convert


def build_parser():
    parser = base_parser(__doc__, "open_asr_leaderboard")
    add_dataset_args(parser, REPO)
    parser.add_argument("--sets", nargs="+", default=list(SETS),
                        help="CONFIG[:SPLIT] (split default: test); default: all 8 leaderboard sets")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    parts = []
    for item in args.sets:
        config, _, split = item.partition(":")
        split = split or "test"
        manifest = Path(args.out) / "test" / f"{set_name(config, split)}.jsonl"
        audio_dir = Path(args.out) / "audio" / "test" / set_name(config, split)
        parts.append(DatasetPart(config, split, "test", set_name(config, split), manifest, audio_dir,
                                 row_language=LANGUAGE))
    results = export_dataset_parts(args, REPO, parts, make_convert)
    report(results, f"Open ASR Leaderboard -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
