"""Mozilla Common Voice -> OUT/<split>/<lang>.jsonl (lang: ISO 639-1; zh-CN -> zh).

From an extracted release (commonvoice.mozilla.org / Mozilla Data Collective), clips referenced in place:
    python -m data_recipes.common_voice.prepare --source-dir /data/cv-corpus-17.0-2024-03-15 --languages de zh-CN
    python -m data_recipes.common_voice.prepare --source-dir /data/cv-corpus-17.0-2024-03-15/de
From a `datasets` copy (hub id mozilla-foundation/common_voice_17_0, gated; or a local save_to_disk folder
DIR/<locale>), audio written under OUT/audio/<split>/<lang>/:
    python -m data_recipes.common_voice.prepare --dataset DIR --languages de en

Splits: train dev test (also validated, other, invalidated). A locale whose ISO code is another
locale's (zh-TW, zh-HK next to zh-CN) is written as OUT/<split>/<locale>.jsonl with language zh.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import soundfile as sf

from data_recipes.common import (DatasetPart, PartResult, UnknownLanguage, add_dataset_args, base_parser, build_part,
                                 exit_code, language_code,
                                 export_dataset_parts, file_row, guarded, iso_code, part_paths, report)

REPO = "mozilla-foundation/common_voice_17_0"
SPLITS = {"train": "train", "dev": "validation", "test": "test", "validated": "validated", "other": "other",
          "invalidated": "invalidated"}  # ours (= the release's TSV names) -> the hub's
# Common Voice locales of the project's 19 languages.
PROJECT_LOCALES = ("zh-CN", "en", "de", "ja", "fr", "ko", "es", "pl", "it", "ro", "hu", "cs", "nl", "fi", "hr",
                   "sk", "sl", "et", "lt")
# The locale that owns a language's ISO code where a language has several (zh-CN over zh-TW, zh-HK).
PRIMARY = {"zh-CN": "zh", "sv-SE": "sv", "fy-NL": "fy", "ga-IE": "ga", "hy-AM": "hy", "pa-IN": "pa",
           "nn-NO": "nn", "ne-NP": "ne", "es-ES": "es", "pt-BR": "pt"}
EXTRA_COLUMNS = ("client_id", "up_votes", "down_votes", "age", "gender", "accents", "accent", "variant",
                 "locale", "segment", "sentence_domain")
MP3_OK = "MP3" in sf.available_formats()


def stem_for(locale: str) -> str:
    """The manifest name of a locale: its ISO code, unless it is a regional variant of another locale."""
    if "-" not in locale or locale in PRIMARY:
        return iso_code(locale)
    return locale


def extras(row: dict) -> dict:
    return {k: row[k] for k in EXTRA_COLUMNS if row.get(k) not in (None, "")}


def make_convert(dataset, part: DatasetPart):
    def convert(row: dict) -> dict:
        name = row.get("path") or (row.get("audio") or {}).get("path") or ""
        return {"id": Path(str(name)).stem, "text": row.get("sentence"), "language": part.row_language,
                "extra": extras(row)}

    return convert


def locale_dirs(source_dir: Path, locales: list[str] | None) -> dict[str, Path]:
    """{locale: folder with clips/ and the TSVs} of a release folder (or of one locale's folder)."""
    source_dir = Path(source_dir)
    if (source_dir / "clips").is_dir():
        found = {source_dir.name: source_dir}
    else:
        found = {d.name: d for d in sorted(source_dir.iterdir()) if (d / "clips").is_dir()}
    if locales:
        return {loc: found.get(loc, source_dir / loc) for loc in locales}
    return found


def release_rows(folder: Path, split: str, language: str, skipped) -> list[dict]:
    """Lines of one release TSV (client_id path sentence ... columns); clips/<path> in place."""
    with open(folder / f"{split}.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))

    def one(row: dict) -> dict:
        path = folder / "clips" / row["path"]
        return file_row(path, Path(row["path"]).stem, (row.get("sentence") or "").strip(), language, extras(row),
                        require_text=True)

    return list(guarded(rows, one, skipped))


def build_parser():
    parser = base_parser(__doc__, "common_voice")
    add_dataset_args(parser, REPO)
    parser.add_argument("--source-dir", type=Path, default=None,
                        help="an extracted release: cv-corpus-*/ (locale folders) or one cv-corpus-*/<locale>/")
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test"], choices=list(SPLITS),
                        help="the splits to write")
    parser.add_argument("--languages", nargs="+", default=None,
                        help="Common Voice locales (de, zh-CN, ...); default: every locale of --source-dir, "
                             "or the project's 19 languages from a dataset")
    return parser


def readable_locales(locales: list[str], asked: bool) -> list[str]:
    """The locales whose language a manifest can hold (train/data/manifest.py reads ISO 639-1 codes, and
    the codes listed in train.config.LANGUAGE_NAMES). A locale asked for by name that has none is an
    error here, before anything is read; of every locale of a release, those are left out, said once."""
    unknown = {}
    for locale in locales:
        try:
            language_code(locale)
        except UnknownLanguage as err:
            unknown[locale] = str(err)
    if unknown and asked:
        raise SystemExit("--languages " + "; ".join(unknown.values()))
    if unknown:
        print(f"warning: {len(unknown)} locales have no ISO 639-1 code and are left out (add a language to "
              f"train.config.LANGUAGE_NAMES to read it): {', '.join(sorted(unknown))}")
    return [loc for loc in locales if loc not in unknown]


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    if args.languages:
        args.languages = readable_locales(args.languages, asked=True)
    if not MP3_OK:
        print("warning: this libsndfile cannot decode MP3; Common Voice clips will be counted as unreadable")
    if args.source_dir is not None:
        results = []
        folders = locale_dirs(args.source_dir, args.languages)
        for locale in set(folders) - set(readable_locales(list(folders), asked=bool(args.languages))):
            del folders[locale]
        for locale, folder in folders.items():
            language, stem = iso_code(locale), stem_for(locale)
            for split in args.splits:
                manifest, _ = part_paths(args.out, split, stem)
                if not (folder / f"{split}.tsv").exists():
                    results.append(PartResult(split, stem, manifest, missing=f"no {folder / (split + '.tsv')}"))
                    continue
                results.append(build_part(
                    manifest, split, stem,
                    lambda skipped, folder=folder, split=split, language=language:
                        release_rows(folder, split, language, skipped),
                    args.force, {"source_dir": str(folder.resolve())}))
    else:
        parts = []
        for locale in args.languages or PROJECT_LOCALES:
            for split in args.splits:
                manifest, audio_dir = part_paths(args.out, split, stem_for(locale))
                parts.append(DatasetPart(locale, SPLITS[split], split, stem_for(locale), manifest, audio_dir,
                                         row_language=iso_code(locale)))
        results = export_dataset_parts(args, REPO, parts, make_convert)
    report(results, f"Common Voice -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
