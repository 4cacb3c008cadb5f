"""LibriSpeech -> OUT/<split>.jsonl (dev-clean, test-other, train-clean-100, ...), English.

From the hub (openslr/librispeech_asr), audio written under OUT/audio/<split>/:
    python -m data_recipes.librispeech.prepare                        # dev-clean dev-other test-clean test-other
    python -m data_recipes.librispeech.prepare --splits train-clean-100 dev-clean
    python -m data_recipes.librispeech.prepare --dataset DIR          # local save_to_disk copy: DIR/clean, DIR/other
From the original release (openslr.org/12), files referenced in place:
    python -m data_recipes.librispeech.prepare --source-dir /data/LibriSpeech

Text is upper-case without punctuation, as distributed (evaluation normalises).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (DatasetPart, PartResult, add_dataset_args, base_parser, build_part,
                                 exit_code, export_dataset_parts, file_row, guarded, part_paths, plain, report)

REPO = "openslr/librispeech_asr"
# split as the release names it -> (hub config, hub split)
SPLITS = {
    "dev-clean": ("clean", "validation"), "dev-other": ("other", "validation"),
    "test-clean": ("clean", "test"), "test-other": ("other", "test"),
    "train-clean-100": ("clean", "train.100"), "train-clean-360": ("clean", "train.360"),
    "train-other-500": ("other", "train.500"),
}
LANGUAGE = "en"


def make_convert(dataset, part: DatasetPart):
    def convert(row: dict) -> dict:
        return {"id": str(row["id"]), "text": row.get("text"), "language": LANGUAGE,
                "extra": {"speaker_id": plain(row.get("speaker_id")), "chapter_id": plain(row.get("chapter_id"))}}

    return convert


def release_root(source_dir: Path) -> Path:
    """The folder holding dev-clean/, train-clean-100/, ...: `LibriSpeech/` or the folder given."""
    source_dir = Path(source_dir)
    return source_dir / "LibriSpeech" if (source_dir / "LibriSpeech").is_dir() else source_dir


def release_rows(split_dir: Path, skipped) -> list[dict]:
    """Lines for one split of the release: <spk>/<chapter>/<spk>-<chapter>.trans.txt + <utt>.flac."""
    items, transcribed = [], set()
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            transcribed.add(uid)
            items.append((trans.parent / f"{uid}.flac", uid, text.strip()))
    # audio without a transcript line: counted, not used
    skipped["no_transcript"] += sum(1 for f in split_dir.glob("*/*/*.flac") if f.stem not in transcribed)

    def one(item):
        path, uid, text = item
        speaker, chapter = (uid.split("-") + ["", ""])[:2]
        return file_row(path, uid, text, LANGUAGE, {"speaker_id": speaker, "chapter_id": chapter},
                        require_text=True)

    return list(guarded(items, one, skipped))


def build_parser():
    parser = base_parser(__doc__, "librispeech")
    add_dataset_args(parser, REPO)
    parser.add_argument("--source-dir", type=Path, default=None,
                        help="the extracted release (the LibriSpeech/ folder or its parent) instead of the hub")
    parser.add_argument("--splits", nargs="+", default=["dev-clean", "dev-other", "test-clean", "test-other"],
                        choices=list(SPLITS), help="the splits to write")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    if args.source_dir is not None:
        root = release_root(args.source_dir)
        results = []
        for split in args.splits:
            manifest, _ = part_paths(args.out, split)
            if not (root / split).is_dir():
                results.append(PartResult(split, None, manifest, missing=f"no folder {root / split}"))
                continue
            results.append(build_part(manifest, split, None,
                                      lambda skipped, split=split: release_rows(root / split, skipped),
                                      args.force, {"source_dir": str(root.resolve())}))
    else:
        parts = []
        for split in args.splits:
            config, hub_split = SPLITS[split]
            manifest, audio_dir = part_paths(args.out, split)
            parts.append(DatasetPart(config, hub_split, split, None, manifest, audio_dir))
        results = export_dataset_parts(args, REPO, parts, make_convert)
    report(results, f"LibriSpeech -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
