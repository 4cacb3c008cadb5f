"""FLEURS (hub: google/fleurs) -> OUT/<split>/<lang>.jsonl, audio under OUT/audio/<split>/<lang>/.

    python -m data_recipes.fleurs.prepare                 # dev + test of the 19 project languages -> data/fleurs
    python -m data_recipes.fleurs.prepare --splits dev --languages en de zh
    python -m data_recipes.fleurs.prepare --dataset DIR   # a local copy: DIR/<config> = a saved DatasetDict

The 19 manifests data/fleurs/dev/<lang>.jsonl are the project's default dev sets.
Text is `raw_transcription` (cased, punctuated); `transcription` (FLEURS' normalised form) is kept
as the extra field `normalized_text`. Split `validation` is written as `dev`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (PROJECT_LANGUAGES, DatasetPart, add_dataset_args, base_parser, exit_code,
                                 export_dataset_parts, iso_code, label_names, part_paths, plain, report)

REPO = "google/fleurs"
# ISO 639-1 code -> FLEURS config, for the project's 19 languages.
CONFIGS = {
    "zh": "cmn_hans_cn", "en": "en_us", "de": "de_de", "ja": "ja_jp", "fr": "fr_fr", "ko": "ko_kr",
    "es": "es_419", "pl": "pl_pl", "it": "it_it", "ro": "ro_ro", "hu": "hu_hu", "cs": "cs_cz", "nl": "nl_nl",
    "fi": "fi_fi", "hr": "hr_hr", "sk": "sk_sk", "sl": "sl_si", "et": "et_ee", "lt": "lt_lt",
}
SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # ours -> the hub's


def resolve(language: str) -> tuple[str, str]:
    """(config, ISO code) for an ISO code (`de`) or a FLEURS config (`de_de`)."""
    if language in CONFIGS:
        return CONFIGS[language], language
    if "_" in language:
        return language, iso_code(language)
    raise SystemExit(f"unknown FLEURS language {language!r}: give an ISO code of {sorted(CONFIGS)} "
                     "or a FLEURS config such as af_za")


def make_convert(dataset, part: DatasetPart):
    labels = label_names(dataset)

    def convert(row: dict) -> dict:
        name = row.get("path") or (row.get("audio") or {}).get("path") or str(row.get("id"))
        extra = {"normalized_text": row.get("transcription"), "sentence_id": plain(row.get("id")),
                 "config": part.config}
        if row.get("gender") is not None:
            extra["gender"] = labels["gender"](row["gender"]) if "gender" in labels else plain(row["gender"])
        return {"id": f"fleurs-{part.language}-{Path(str(name)).stem}", "text": row.get("raw_transcription"),
                "language": part.language, "extra": extra}

    return convert


def build_parser():
    parser = base_parser(__doc__, "fleurs")
    add_dataset_args(parser, REPO)
    parser.add_argument("--splits", nargs="+", default=["dev", "test"], choices=list(SPLITS),
                        help="the splits to write")
    parser.add_argument("--languages", nargs="+", default=list(PROJECT_LANGUAGES),
                        help="ISO codes (or FLEURS configs); default: the project's 19 languages")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    parts = []
    for split in args.splits:
        for language in args.languages:
            config, iso = resolve(language)
            manifest, audio_dir = part_paths(args.out, split, iso)
            parts.append(DatasetPart(config, SPLITS[split], split, iso, manifest, audio_dir))
    results = export_dataset_parts(args, REPO, parts, make_convert)
    report(results, f"FLEURS -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
