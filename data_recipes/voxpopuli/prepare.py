"""VoxPopuli transcribed speech (hub: facebook/voxpopuli) -> OUT/<split>/<lang>.jsonl, audio under OUT/audio/.

    python -m data_recipes.voxpopuli.prepare                          # dev + test of its 16 languages -> data/voxpopuli
    python -m data_recipes.voxpopuli.prepare --splits train --languages de fr
    python -m data_recipes.voxpopuli.prepare --dataset DIR            # local save_to_disk copy: DIR/<lang>

Text is `raw_text` (cased, punctuated), or `normalized_text` where raw_text is empty; both kept.
The hub's `validation` split is written as `dev` (the release's asr_dev.tsv).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (DatasetPart, add_dataset_args, base_parser, exit_code, export_dataset_parts,
                                 label_names, part_paths, plain, report)

REPO = "facebook/voxpopuli"
# The transcribed languages (hub configs are these ISO codes); all 16 are project languages.
LANGUAGES = ("en", "de", "fr", "es", "pl", "it", "ro", "hu", "cs", "nl", "fi", "hr", "sk", "sl", "et", "lt")
SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # ours -> the hub's


def make_convert(dataset, part: DatasetPart):
    labels = label_names(dataset)

    def label(row, column):
        value = row.get(column)
        return labels[column](value) if column in labels and value is not None else plain(value)

    def convert(row: dict) -> dict:
        raw, normalized = (row.get("raw_text") or "").strip(), (row.get("normalized_text") or "").strip()
        extra = {"normalized_text": normalized or None, "speaker_id": plain(row.get("speaker_id")),
                 "gender": label(row, "gender"), "accent": label(row, "accent"),
                 "is_gold_transcript": plain(row.get("is_gold_transcript"))}
        return {"id": str(row["audio_id"]), "text": raw or normalized, "language": part.language,
                "extra": {k: v for k, v in extra.items() if v not in (None, "", "None")}}

    return convert


def build_parser():
    parser = base_parser(__doc__, "voxpopuli")
    add_dataset_args(parser, REPO)
    parser.add_argument("--splits", nargs="+", default=["dev", "test"], choices=list(SPLITS),
                        help="the splits to write")
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=list(LANGUAGES),
                        help="ISO codes of the languages to write")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    parts = []
    for split in args.splits:
        for language in args.languages:
            manifest, audio_dir = part_paths(args.out, split, language)
            parts.append(DatasetPart(language, SPLITS[split], split, language, manifest, audio_dir))
    results = export_dataset_parts(args, REPO, parts, make_convert)
    report(results, f"VoxPopuli -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
