"""Multilingual LibriSpeech (hub: facebook/multilingual_librispeech) -> OUT/<split>/<lang>.jsonl.

    python -m data_recipes.mls.prepare                                # dev + test of its 7 languages -> data/mls
    python -m data_recipes.mls.prepare --splits train 9_hours --languages de nl
    python -m data_recipes.mls.prepare --dataset DIR                  # local save_to_disk copy: DIR/<config>

Configs are language names (dutch french german italian polish portuguese spanish); manifests use
ISO codes. Each row's audio is already the segment: the hub's `begin_time`/`end_time` locate it in
the original LibriVox recording and are kept as `original_begin_time`/`original_end_time`, not as
the manifest's begin_time/end_time (which would cut the clip again).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (DatasetPart, add_dataset_args, base_parser, exit_code, export_dataset_parts,
                                 part_paths, plain, report)

REPO = "facebook/multilingual_librispeech"
CONFIGS = {"nl": "dutch", "fr": "french", "de": "german", "it": "italian", "pl": "polish", "pt": "portuguese",
           "es": "spanish"}
SPLITS = ("dev", "test", "train", "9_hours", "1_hours")


def make_convert(dataset, part: DatasetPart):
    def convert(row: dict) -> dict:
        extra = {"speaker_id": plain(row.get("speaker_id")), "chapter_id": plain(row.get("chapter_id")),
                 "original_path": plain(row.get("original_path")),
                 "original_begin_time": plain(row.get("begin_time")),
                 "original_end_time": plain(row.get("end_time"))}
        return {"id": str(row["id"]), "text": row.get("transcript"), "language": part.language, "extra": extra}

    return convert


def build_parser():
    parser = base_parser(__doc__, "mls")
    add_dataset_args(parser, REPO)
    parser.add_argument("--splits", nargs="+", default=["dev", "test"], choices=list(SPLITS),
                        help="the splits to write")
    parser.add_argument("--languages", nargs="+", default=list(CONFIGS),
                        help=f"ISO codes or config names; default: all ({' '.join(CONFIGS)})")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    names = {v: k for k, v in CONFIGS.items()}
    parts = []
    for split in args.splits:
        for language in args.languages:
            iso = names.get(language, language)
            if iso not in CONFIGS:
                raise SystemExit(f"MLS has no language {language!r}: one of {sorted(CONFIGS)} or {sorted(names)}")
            manifest, audio_dir = part_paths(args.out, split, iso)
            parts.append(DatasetPart(CONFIGS[iso], split, split, iso, manifest, audio_dir))
    results = export_dataset_parts(args, REPO, parts, make_convert)
    report(results, f"MLS -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
