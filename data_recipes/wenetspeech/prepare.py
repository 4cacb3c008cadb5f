"""WenetSpeech (Mandarin, 10k+ h) -> OUT/<subset>.jsonl, segments of the long files referenced in place.

    python -m data_recipes.wenetspeech.prepare --source-dir /data/WenetSpeech                 # every subset found
    python -m data_recipes.wenetspeech.prepare --source-dir /data/WenetSpeech --splits DEV TEST_NET TEST_MEETING S
    python -m data_recipes.wenetspeech.prepare --json /data/WenetSpeech/WenetSpeech.json

The release's WenetSpeech.json lists `audios` (aid, path relative to the JSON's folder, duration) and
their `segments` (sid, begin_time, end_time, text, confidence, subsets). Each segment becomes one
line with begin_time/end_time inside its long opus file (nothing is cut or copied). Splits are the
subset names: S, M, L (nested training sets), W (weakly labelled), DEV, TEST_NET, TEST_MEETING.
The whole JSON is read into memory (it is several GB: expect ~10-20 GB of RAM).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (HeaderCache, PartResult, base_parser, build_part, exit_code, guarded, part_paths,
                                 report, segment_row)

LANGUAGE = "zh"
SUBSET_ORDER = ("DEV", "TEST_NET", "TEST_MEETING", "S", "M", "L", "W")


def segment_items(meta: dict, base: Path, subset: str):
    for audio in meta.get("audios", []):
        for seg in audio.get("segments", []):
            if subset in seg.get("subsets", []):
                yield audio, seg


def subset_rows(meta: dict, base: Path, subset: str, headers: HeaderCache, skipped) -> list[dict]:
    def one(item) -> dict:
        audio, seg = item
        extra = {"aid": audio.get("aid"), "confidence": seg.get("confidence")}
        return segment_row(base / audio["path"], seg["begin_time"], seg["end_time"], str(seg["sid"]),
                           (seg.get("text") or "").strip(), LANGUAGE, headers, extra, require_text=True)

    return list(guarded(segment_items(meta, base, subset), one, skipped, what="segment"))


def build_parser():
    parser = base_parser(__doc__, "wenetspeech")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source-dir", type=Path, help="the release folder holding WenetSpeech.json and audio/")
    source.add_argument("--json", type=Path, help="the metadata JSON (audio paths are relative to its folder)")
    parser.add_argument("--splits", nargs="+", default=None,
                        help=f"subsets ({' '.join(SUBSET_ORDER)}); default: every subset in the JSON")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    meta_path = args.json if args.json is not None else args.source_dir / "WenetSpeech.json"
    base = meta_path.resolve().parent
    options = {"json": str(meta_path.resolve()), "limit": args.limit}
    meta = None

    def load_meta():
        nonlocal meta
        if meta is None:
            print(f"  reading {meta_path}")
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return meta

    splits = args.splits
    if splits is None:  # every subset the JSON names, in the usual order
        found = {s for audio in load_meta().get("audios", []) for seg in audio.get("segments", [])
                 for s in seg.get("subsets", [])}
        splits = [s for s in SUBSET_ORDER if s in found] + sorted(found - set(SUBSET_ORDER))
    headers = HeaderCache()
    results = []
    for subset in splits:
        manifest, _ = part_paths(args.out, subset)

        def produce(skipped, subset=subset):
            rows = subset_rows(load_meta(), base, subset, headers, skipped)
            return rows[: args.limit] if args.limit is not None else rows

        result = build_part(manifest, subset, None, produce, args.force, options)
        if result.utterances == 0 and not result.skipped:
            result = PartResult(subset, None, manifest, missing=f"no segment of subset {subset!r}")
        results.append(result)
    report(results, f"WenetSpeech -> {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
