"""GigaSpeech (hub: speechcolab/gigaspeech, gated) -> OUT/<subset>.jsonl, English, audio under OUT/audio/.

    python -m data_recipes.gigaspeech.prepare                         # dev + test -> data/gigaspeech
    python -m data_recipes.gigaspeech.prepare --subsets xs dev test   # xs = the 10 h training subset
    python -m data_recipes.gigaspeech.prepare --dataset DIR           # local save_to_disk copy: DIR/<config>

Subsets as the corpus names them: xs s m l xl (training; hub config <subset>, split train), dev (config
dev, split validation), test (config test, split test). Text: the punctuation tags <COMMA> <PERIOD>
<QUESTIONMARK> <EXCLAMATIONPOINT> become marks, the garbage tags <SIL> <MUSIC> <NOISE> <OTHER> are
dropped, and a segment left with no words is skipped (counted as `empty_after_tags`). Case is kept
as distributed (upper-case). Each row's audio is the segment already: the hub's begin_time/end_time
(in the original recording) are kept as `original_begin_time`/`original_end_time`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (DatasetPart, Skip, add_dataset_args, base_parser, exit_code, export_dataset_parts,
                                 label_names, part_paths, plain, report)

REPO = "speechcolab/gigaspeech"
SUBSETS = {"xs": ("xs", "train"), "s": ("s", "train"), "m": ("m", "train"), "l": ("l", "train"),
           "xl": ("xl", "train"), "dev": ("dev", "validation"), "test": ("test", "test")}
PUNCTUATION = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GARBAGE = {"<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>"}
_TAG = re.compile(r"^<[A-Z_]+>$")
LANGUAGE = "en"


def clean_text(text: str) -> str:
    """GigaSpeech's tagged transcript as plain text:
    "AS THEY SAY <COMMA> HELLO <PERIOD> <SIL>" -> "AS THEY SAY, HELLO."."""
    words: list[str] = []
    for token in text.split():
        if token in PUNCTUATION:
            if words:  # a mark with no word before it has nothing to attach to
                words[-1] += PUNCTUATION[token]
        elif token in GARBAGE or _TAG.match(token):
            continue
        else:
            words.append(token)
    return " ".join(words)


def make_convert(dataset, part: DatasetPart):
    labels = label_names(dataset)

    def label(row, column):
        value = row.get(column)
        return labels[column](value) if column in labels and value is not None else plain(value)

    def convert(row: dict) -> dict:
        text = clean_text(row.get("text") or "")
        if not re.search(r"\w", text):
            raise Skip("empty_after_tags", str(row.get("segment_id")))
        extra = {"speaker": plain(row.get("speaker")), "audio_id": plain(row.get("audio_id")),
                 "title": plain(row.get("title")), "url": plain(row.get("url")), "source": label(row, "source"),
                 "category": label(row, "category"), "original_full_path": plain(row.get("original_full_path")),
                 "original_begin_time": plain(row.get("begin_time")),
                 "original_end_time": plain(row.get("end_time"))}
        return {"id": str(row["segment_id"]), "text": text, "language": LANGUAGE,
                "extra": {k: v for k, v in extra.items() if v not in (None, "", "N/A")}}

    return convert


def build_parser():
    parser = base_parser(__doc__, "gigaspeech")
    add_dataset_args(parser, REPO)
    parser.add_argument("--subsets", nargs="+", default=["dev", "test"], choices=list(SUBSETS),
                        help="the subsets to write")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    parts = []
    for subset in args.subsets:
        config, hub_split = SUBSETS[subset]
        manifest, audio_dir = part_paths(args.out, subset)
        parts.append(DatasetPart(config, hub_split, subset, None, manifest, audio_dir, row_language=LANGUAGE))
    results = export_dataset_parts(args, REPO, parts, make_convert)
    report(results, f"GigaSpeech -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
