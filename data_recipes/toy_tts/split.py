"""Split the toy corpus's training audio for the paper's table: a labelled part for the base student,
the rest (plus the unlabelled split) as unlabelled audio for teacher-data adaptation and OPD.

    python data_recipes/toy_tts/split.py --corpus data/toy_tts --labelled-share 0.5

Writes, beside the corpus's own manifests (so audio paths stay relative to them):
  train_labelled.jsonl  the first `labelled-share` of each language's training lines, as they are
  train_pool.jsonl      the other training lines and unlabelled.jsonl, with their transcripts moved
                        to `reference_text` (the field the unlabelled split already uses): OPD and
                        pseudo-labelling read no labels, and a report can still score them.
The split is by position within each language (the corpus is already in random order), so it is
the same for the same corpus and share.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.cli import HelpFormatter  # noqa: E402
from train.data.manifest import write_jsonl  # noqa: E402


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def split(corpus: Path, labelled_share: float) -> dict:
    if not 0 < labelled_share < 1:
        raise ValueError(f"--labelled-share must be in (0, 1), got {labelled_share}")
    by_language = defaultdict(list)
    for row in _lines(corpus / "train.jsonl"):
        by_language[row["language"]].append(row)
    labelled, pool = [], []
    for rows in by_language.values():
        cut = round(len(rows) * labelled_share)
        labelled += rows[:cut]
        for row in rows[cut:]:
            row = dict(row)
            row["reference_text"] = row.pop("text", "")
            pool.append(row)
    pool += _lines(corpus / "unlabelled.jsonl")
    write_jsonl(labelled, corpus / "train_labelled.jsonl")
    write_jsonl(pool, corpus / "train_pool.jsonl")
    return {"labelled": len(labelled), "pool": len(pool),
            "labelled_hours": round(sum(r["duration"] for r in labelled) / 3600, 3),
            "pool_hours": round(sum(r["duration"] for r in pool) / 3600, 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("data/toy_tts"),
                        help="the toy corpus folder (data_recipes/toy_tts/prepare.py)")
    parser.add_argument("--labelled-share", type=float, default=0.5,
                        help="share of each language's training lines kept labelled")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    counts = split(args.corpus, args.labelled_share)
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
