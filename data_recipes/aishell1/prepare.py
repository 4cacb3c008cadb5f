"""AISHELL-1 (openslr.org/33, Mandarin) -> OUT/<split>.jsonl (train dev test), language zh.

From the extracted release, wavs referenced in place:
    python -m data_recipes.aishell1.prepare --source-dir /data/aishell      # the folder holding data_aishell/
    python -m data_recipes.aishell1.prepare --source-dir /data/aishell/data_aishell --splits dev test
From a `datasets` copy (a hub id or a local save_to_disk folder with an audio and a text column):
    python -m data_recipes.aishell1.prepare --dataset DIR --splits test

The release ships data_aishell/wav/<speaker>.tar.gz archives: extract them first
(`cd data_aishell/wav && for f in *.tar.gz; do tar xzf "$f"; done`), giving wav/{train,dev,test}/<speaker>/<utt>.wav.
Transcripts (data_aishell/transcript/aishell_transcript_v0.8.txt: `<utt> 字 字 ...`, word-segmented)
are joined without spaces. A wav without a transcript line is counted (`no_transcript`) and left out.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (DatasetPart, PartResult, Skip, base_parser, build_part, exit_code,
                                 export_dataset_parts, file_row, guarded, part_paths, report)

SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # ours -> the usual hub names
TRANSCRIPT = "transcript/aishell_transcript_v0.8.txt"
LANGUAGE = "zh"
TEXT_COLUMNS = ("text", "transcription", "sentence", "transcript")
ID_COLUMNS = ("id", "key", "utt_id", "segment_id")


def join_words(text: str) -> str:
    """AISHELL's word-segmented transcript as plain Chinese text: "而 对 楼市" -> "而对楼市"."""
    return re.sub(r"\s+", "", text)


def release_root(source_dir: Path) -> Path:
    source_dir = Path(source_dir)
    return source_dir / "data_aishell" if (source_dir / "data_aishell").is_dir() else source_dir


def read_transcripts(root: Path) -> dict[str, str]:
    out = {}
    for line in (root / TRANSCRIPT).read_text(encoding="utf-8").splitlines():
        uid, _, words = line.strip().partition(" ")
        if uid:
            out[uid] = join_words(words)
    return out


def release_rows(split_dir: Path, transcripts: dict[str, str], skipped) -> list[dict]:
    wavs = sorted(split_dir.glob("*/*.wav"))

    def one(path: Path) -> dict:
        uid = path.stem
        if uid not in transcripts:
            raise Skip("no_transcript", uid)
        return file_row(path, uid, transcripts[uid], LANGUAGE, {"speaker": path.parent.name}, require_text=True)

    return list(guarded(wavs, one, skipped))


def make_convert(dataset, part: DatasetPart):
    columns = dataset.column_names or []
    text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
    id_column = next((c for c in ID_COLUMNS if c in columns), None)
    if text_column is None:
        raise ValueError(f"no text column among {TEXT_COLUMNS} (columns: {columns})")
    counter = iter(range(10**12))

    def convert(row: dict) -> dict:
        uid = str(row[id_column]) if id_column else Path(str((row.get("audio") or {}).get("path") or "")).stem
        return {"id": uid or f"aishell1-{part.split}-{next(counter)}", "text": join_words(row.get(text_column) or ""),
                "language": LANGUAGE}

    return convert


def build_parser():
    parser = base_parser(__doc__, "aishell1")
    parser.add_argument("--source-dir", type=Path, default=None,
                        help="the extracted release: data_aishell/ or the folder holding it")
    parser.add_argument("--dataset", default=None, metavar="HUB_ID_OR_DIR",
                        help="instead: a `datasets` source (hub id or save_to_disk folder with train/validation/test)")
    parser.add_argument("--streaming", action="store_true", help="stream a hub --dataset")
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test"], choices=list(SPLITS),
                        help="the splits to write")
    return parser


def main(argv: list[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.source_dir is None) == (args.dataset is None):
        parser.error("give exactly one of --source-dir and --dataset")
    if args.dataset is not None:
        parts = []
        for split in args.splits:
            manifest, audio_dir = part_paths(args.out, split)
            parts.append(DatasetPart(None, SPLITS[split], split, None, manifest, audio_dir, row_language=LANGUAGE))
        results = export_dataset_parts(args, args.dataset, parts, make_convert)
    else:
        root = release_root(args.source_dir)
        results = []
        transcripts = read_transcripts(root) if (root / TRANSCRIPT).exists() else None
        for split in args.splits:
            manifest, _ = part_paths(args.out, split)
            split_dir = root / "wav" / split
            if transcripts is None or not split_dir.is_dir():
                why = f"no {root / TRANSCRIPT}" if transcripts is None else f"no folder {split_dir}"
                if list((root / "wav").glob("*.tar.gz")):
                    why += " (extract the wav/*.tar.gz archives first)"
                results.append(PartResult(split, None, manifest, missing=why))
                continue
            results.append(build_part(manifest, split, None,
                                      lambda skipped, d=split_dir: release_rows(d, transcripts, skipped),
                                      args.force, {"source_dir": str(root.resolve())}))
    report(results, f"AISHELL-1 -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
