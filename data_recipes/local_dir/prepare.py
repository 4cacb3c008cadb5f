"""Your own audio -> OUT/<name>.jsonl, files referenced in place (absolute paths, nothing copied).

A folder tree of audio files (wav flac ogg opus mp3), each with an optional same-named .txt transcript
beside it (no .txt: an unlabelled line without `text`, usable for OPD and pseudo-labelling; an empty
or whitespace-only .txt is unlabelled too, and the summary warns with the files' names, since supervised
training drops such lines):
    python -m data_recipes.local_dir.prepare --audio-dir /data/my_calls --language de --out data/local
A Kaldi data folder: wav.scp (`<recording> <path>`), text (`<utt> <words...>`), optional segments
(`<utt> <recording> <begin> <end>`, written as begin_time/end_time in the long file):
    python -m data_recipes.local_dir.prepare --kaldi-dir /kaldi/egs/x/data/test --language en

--name sets the manifest's name (default: the folder's name). wav.scp entries that are commands
(`sox ... |`) are not supported: they are counted (`pipe_unsupported`) and left out. Relative paths
in wav.scp are looked up from --path-root (default: the current folder), then from the data folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (AUDIO_EXTENSIONS, HeaderCache, Skip, base_parser, build_part, exit_code,
                                 file_row, guarded, iso_code, report, segment_row)


SHOWN = 5  # names listed in a warning, the first few


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def transcript_of(path: Path) -> str | None:
    """The .txt beside an audio file, whitespace collapsed; None without one ("" for an empty one)."""
    transcript = path.with_suffix(".txt")
    return " ".join(transcript.read_text(encoding="utf-8").split()) if transcript.exists() else None


def folder_rows(root: Path, language: str, skipped) -> list[dict]:
    def one(path: Path) -> dict:
        rel = path.relative_to(root).with_suffix("")
        return file_row(path, "-".join(rel.parts), transcript_of(path), language, {"source_file": str(rel)})

    return list(guarded(audio_files(root), one, skipped, what="file"))


def empty_transcripts_warning(source: Path, kaldi: bool) -> str | None:
    """A warning naming the transcripts that exist but hold no words (the lines stay unlabelled), or None.
    Read apart from building the manifest, so that a cached manifest is warned about too."""
    if kaldi:
        entries = read_table(source / "text")
        empty = [key for key, words in entries if not words]
        what = f"{len(empty)} of {len(entries)} lines of text have no words"
    else:
        files = audio_files(source)
        empty = [str(p.relative_to(source).with_suffix(".txt")) for p in files if transcript_of(p) == ""]
        what = f"{len(empty)} of {len(files)} audio files have an empty .txt transcript"
    if not empty:
        return None
    names = ", ".join(empty[:SHOWN]) + (", ..." if len(empty) > SHOWN else "")
    return (f"warning: {what} ({names}): written as unlabelled lines, which OPD and pseudo-labelling use "
            "but supervised training (train/sft.py) drops")


def read_table(path: Path) -> list[tuple[str, str]]:
    """`<key> <rest>` lines of a Kaldi table."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, rest = line.strip().partition(" ")
        if key:
            out.append((key, rest.strip()))
    return out


def kaldi_rows(data_dir: Path, language: str, path_root: Path, skipped) -> list[dict]:
    recordings = dict(read_table(data_dir / "wav.scp"))
    texts = dict(read_table(data_dir / "text"))
    headers = HeaderCache()

    def resolve(rec: str) -> Path:
        if rec not in recordings:
            raise Skip("no_recording", rec)
        spec = recordings[rec]
        if spec.endswith("|"):
            raise Skip("pipe_unsupported", spec)
        path = Path(spec)
        if not path.is_absolute():
            path = next((p for p in (path_root / path, data_dir / path) if p.exists()), path_root / path)
        return path

    if (data_dir / "segments").exists():
        def one(item) -> dict:
            utt, rest = item
            fields = rest.split()
            if len(fields) != 3:
                raise Skip("bad_segment", f"{utt} {rest}")
            rec, begin, end = fields[0], float(fields[1]), float(fields[2])
            return segment_row(resolve(rec), begin, end, utt, texts.get(utt), language, headers,
                               {"recording": rec})

        return list(guarded(read_table(data_dir / "segments"), one, skipped, what="segment"))

    def whole(item) -> dict:
        rec, _ = item
        return file_row(resolve(rec), rec, texts.get(rec), language)

    return list(guarded(recordings.items(), whole, skipped, what="recording"))


def build_parser():
    parser = base_parser(__doc__, "local")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio-dir", type=Path, help="a folder tree of audio files with optional .txt beside them")
    source.add_argument("--kaldi-dir", type=Path, help="a Kaldi data folder (wav.scp, text, optional segments)")
    parser.add_argument("--language", required=True, help="ISO 639-1 code of the audio (de, zh, ...)")
    parser.add_argument("--name", default=None, help="manifest name (default: the folder's name)")
    parser.add_argument("--path-root", type=Path, default=Path("."),
                        help="where relative wav.scp paths start (default: the current folder)")
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    language = iso_code(args.language)
    source = (args.audio_dir or args.kaldi_dir).resolve()
    name = args.name or source.name
    manifest = Path(args.out) / f"{name}.jsonl"
    if args.audio_dir is not None:
        produce = lambda skipped: folder_rows(source, language, skipped)  # noqa: E731
    else:
        produce = lambda skipped: kaldi_rows(source, language, args.path_root.resolve(), skipped)  # noqa: E731
    options = {"source": str(source), "kind": "kaldi" if args.kaldi_dir else "folder", "language": language}
    results = [build_part(manifest, name, None, produce, args.force, options)]
    report(results, f"local audio -> {args.out}")
    warning = empty_transcripts_warning(source, kaldi=args.kaldi_dir is not None)
    if warning:
        print(warning)
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
