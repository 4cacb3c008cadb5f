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

Checked before anything is written: --language is a known code; the folder exists and holds audio
(a Kaldi folder: wav.scp and text); no two files get the same id (a.flac beside a.mp3; a Kaldi key
listed twice). A re-run reuses the manifest only while the audio files and transcripts are the ones
it was built from (paths, sizes, modification times); otherwise it is rebuilt, saying why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_recipes.common import (AUDIO_EXTENSIONS, HeaderCache, Skip, UnknownLanguage, base_parser, build_part,
                                 exit_code, file_row, guarded, language_code, report, segment_row,
                                 source_fingerprint)


SHOWN = 5  # names listed in a warning, the first few


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def utterance_id(root: Path, path: Path) -> str:
    """The relative path without extension, `/` -> `-`: sub/b.flac -> sub-b."""
    return "-".join(path.relative_to(root).with_suffix("").parts)


def transcript_of(path: Path) -> str | None:
    """The .txt beside an audio file, whitespace collapsed; None without one ("" for an empty one)."""
    transcript = path.with_suffix(".txt")
    return " ".join(transcript.read_text(encoding="utf-8").split()) if transcript.exists() else None


def folder_rows(root: Path, files: list[Path], language: str, skipped) -> list[dict]:
    def one(path: Path) -> dict:
        rel = path.relative_to(root).with_suffix("")
        return file_row(path, utterance_id(root, path), transcript_of(path), language, {"source_file": str(rel)})

    return list(guarded(files, one, skipped, what="file"))


def empty_transcripts_warning(source: Path, files: list[Path] | None) -> str | None:
    """A warning naming the transcripts that exist but hold no words (the lines stay unlabelled), or None.
    `files`: the audio files of a folder; None for a Kaldi folder. Read apart from building the manifest,
    so that a cached manifest is warned about too."""
    if files is None:
        entries = read_table(source / "text")
        empty = [key for key, words in entries if not words]
        what = f"{len(empty)} of {len(entries)} lines of text have no words"
    else:
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


def recording_path(spec: str, data_dir: Path, path_root: Path) -> Path | None:
    """The file of a wav.scp entry (relative: from `path_root`, then from `data_dir`); None for a pipe."""
    if spec.endswith("|"):
        return None
    path = Path(spec)
    if not path.is_absolute():
        path = next((p for p in (path_root / path, data_dir / path) if p.exists()), path_root / path)
    return path


def kaldi_rows(data_dir: Path, language: str, path_root: Path, skipped) -> list[dict]:
    recordings = dict(read_table(data_dir / "wav.scp"))
    texts = dict(read_table(data_dir / "text"))
    headers = HeaderCache()

    def resolve(rec: str) -> Path:
        if rec not in recordings:
            raise Skip("no_recording", rec)
        path = recording_path(recordings[rec], data_dir, path_root)
        if path is None:
            raise Skip("pipe_unsupported", recordings[rec])
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


def same_ids(root: Path, files: list[Path]) -> list[str]:
    """`a.flac and a.mp3 (id a)` for each id two or more audio files would share (the id drops the extension)."""
    by_id: dict[str, list[Path]] = {}
    for path in files:
        by_id.setdefault(utterance_id(root, path), []).append(path)
    return [f"{' and '.join(str(p.relative_to(root)) for p in paths)} (id {uid})"
            for uid, paths in by_id.items() if len(paths) > 1]


def repeated_keys(path: Path) -> list[str]:
    """`u1 (lines 1 and 4)` for each key a Kaldi table lists more than once."""
    lines: dict[str, list[int]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        key = line.strip().partition(" ")[0]
        if key:
            lines.setdefault(key, []).append(lineno)
    return [f"{key} (lines {' and '.join(map(str, n))})" for key, n in lines.items() if len(n) > 1]


def source_problem(source: Path, kaldi: bool, files: list[Path] | None) -> str | None:
    """Why the source folder cannot make a manifest (checked before anything is written), or None."""
    flag = "--kaldi-dir" if kaldi else "--audio-dir"
    if not source.exists():
        return f"{flag} {source}: no such folder"
    if not source.is_dir():
        return f"{flag} {source}: not a folder"
    if not kaldi:
        if not files:
            return (f"--audio-dir {source}: no audio files in it or its subfolders "
                    f"(looked for {' '.join(AUDIO_EXTENSIONS)})")
        clashes = same_ids(source, files)
        if clashes:
            return (f"--audio-dir {source}: files that would get the same id: {'; '.join(clashes[:SHOWN])}"
                    f"{'; ...' if len(clashes) > SHOWN else ''}. Rename or move one of each")
        return None
    for table in ("wav.scp", "text"):
        if not (source / table).is_file():
            return (f"--kaldi-dir {source}: no {table} (a Kaldi data folder holds wav.scp and text"
                    f"{'; for unlabelled audio, an empty text file' if table == 'text' else ''})")
    if not read_table(source / "wav.scp"):
        return f"--kaldi-dir {source}: wav.scp lists no recordings"
    for table in ("wav.scp", "segments", "text"):
        if (source / table).is_file() and (repeats := repeated_keys(source / table)):
            return f"--kaldi-dir {source}: {table} lists a key more than once: {', '.join(repeats[:SHOWN])}"
    return None


def source_files(source: Path, files: list[Path] | None, path_root: Path) -> list[Path]:
    """The files a manifest is built from: audio and transcripts (.txt, named even where absent), or the
    Kaldi tables and the recordings wav.scp names."""
    if files is not None:
        return [*files, *(p.with_suffix(".txt") for p in files)]
    tables = [source / t for t in ("wav.scp", "text", "segments")]
    recordings = (recording_path(spec, source, path_root) for _, spec in read_table(source / "wav.scp"))
    return tables + [p for p in recordings if p is not None]


def language_arg(value: str) -> str:
    """--language, checked when the arguments are read (before any file is scanned)."""
    try:
        return language_code(value)
    except UnknownLanguage as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser():
    parser = base_parser(__doc__, "local")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio-dir", type=Path, help="a folder tree of audio files with optional .txt beside them")
    source.add_argument("--kaldi-dir", type=Path, help="a Kaldi data folder (wav.scp, text, optional segments)")
    parser.add_argument("--language", required=True, type=language_arg,
                        help="ISO 639-1 code of the audio (de, zh, ...; de-DE, deu and German read as de)")
    parser.add_argument("--name", default=None, help="manifest name (default: the folder's name)")
    parser.add_argument("--path-root", type=Path, default=Path("."),
                        help="where relative wav.scp paths start (default: the current folder)")
    return parser


def main(argv: list[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    language = args.language  # checked and mapped to its ISO 639-1 code by language_arg
    kaldi = args.kaldi_dir is not None
    source = (args.audio_dir or args.kaldi_dir).resolve()
    path_root = args.path_root.resolve()
    files = audio_files(source) if not kaldi and source.is_dir() else None
    problem = source_problem(source, kaldi, files)
    if problem:
        parser.error(problem)
    name = args.name or source.name
    manifest = Path(args.out) / f"{name}.jsonl"
    if kaldi:
        produce = lambda skipped: kaldi_rows(source, language, path_root, skipped)  # noqa: E731
    else:
        produce = lambda skipped: folder_rows(source, files, language, skipped)  # noqa: E731
    # The files are read in place, so the cached manifest is only as current as they are.
    options = {"source": str(source), "kind": "kaldi" if kaldi else "folder", "language": language,
               "source_files": source_fingerprint(source_files(source, files, path_root))}
    results = [build_part(manifest, name, None, produce, args.force, options)]
    report(results, f"local audio -> {args.out}")
    warning = empty_transcripts_warning(source, files)
    if warning:
        print(warning)
    return results


if __name__ == "__main__":
    sys.exit(exit_code(main()))
