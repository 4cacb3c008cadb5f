"""Manifests: JSONL files and Hugging Face datasets, read through one reader into `Utterance`s.

JSONL (one utterance a line; ARK's own `{audio, text, task, begin_time, end_time}` lines load as
they are):
    audio       path, relative to the manifest's folder or absolute            (required)
    text        transcript; absent or empty for unlabelled audio
    language    ISO 639-1 code; forms that map to one are read as it (de-DE, deu, German -> de),
                anything else is an error naming the line (data_recipes.common.language_code)
    duration    seconds (else read from the file header, or end_time - begin_time)
    id          unique within the manifest (default: <file stem>-<line>); a repeated id is an error
    begin_time, end_time, task                                               (optional)
Any other field is kept in `Utterance.extra`. The sources of one run should not share ids either:
`check_unique_ids`.

A source is named by a string:
    path/to/train.jsonl                    a JSONL manifest
    path/to/saved_dataset[#split]          a `datasets.save_to_disk` folder (DatasetDict: give #split)
    hf:REPO[:CONFIG]:SPLIT                 a hub dataset (needs access to the hub)
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import soundfile as sf

# One table of language codes, kept with the recipes that write them (data_recipes.common loads no torch).
from data_recipes.common import UnknownLanguage, language_code

_TEXT_COLUMNS = ("text", "transcription", "sentence", "normalized_text", "raw_transcription")


class ManifestError(ValueError):
    """A manifest line or dataset row is malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class DatasetAudio:
    """Audio held inside a Hugging Face dataset row (read lazily, in the data-loading worker)."""

    dataset: Any = field(compare=False, repr=False)
    row: int
    column: str

    def read(self) -> tuple[bytes | None, str | None]:
        value = self.dataset[self.row][self.column]
        if isinstance(value, dict):
            return value.get("bytes"), value.get("path")
        if isinstance(value, str):
            return None, value
        raise ManifestError(f"dataset row {self.row}: column {self.column!r} is {type(value).__name__}, "
                            "expected an Audio(decode=False) value or a path")


def audio_name(audio: str | DatasetAudio) -> str:
    """Where a clip's audio is, as a person would look for it: the path, or the dataset row and column."""
    if isinstance(audio, DatasetAudio):
        return f"dataset row {audio.row}, column {audio.column}"
    return str(audio)


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str | DatasetAudio  # absolute path, or audio inside a dataset row
    duration: float
    text: str | None = None
    language: str | None = None
    begin_time: float | None = None
    end_time: float | None = None
    task: str | None = None
    source: str = ""  # the manifest it came from
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def labelled(self) -> bool:
        return bool(self.text)


_TYPES = {"audio": (str,), "text": (str, type(None)), "language": (str, type(None)), "id": (str, int),
          "duration": (int, float), "begin_time": (int, float, type(None)), "end_time": (int, float, type(None)),
          "task": (str, type(None))}


def _check(obj: dict, where: str) -> None:
    if "audio" not in obj:
        raise ManifestError(f"{where}: missing field 'audio'")
    for key, types in _TYPES.items():
        if key in obj and (not isinstance(obj[key], types) or isinstance(obj[key], bool)):
            expected = " or ".join(t.__name__ for t in types if t is not type(None))
            raise ManifestError(f"{where}: field {key!r} is {type(obj[key]).__name__} "
                                f"({obj[key]!r:.40}), expected {expected}")
    for key in ("duration", "begin_time", "end_time"):
        if obj.get(key) is not None and (not math.isfinite(obj[key]) or obj[key] < 0):
            raise ManifestError(f"{where}: field {key!r} must be a finite number >= 0, got {obj[key]}")
    if obj.get("begin_time") is not None and obj.get("end_time") is not None and obj["end_time"] <= obj["begin_time"]:
        raise ManifestError(f"{where}: end_time {obj['end_time']} is not after begin_time {obj['begin_time']}")


def _language(value: str | None, where: str, field_name: str = "field 'language'") -> str | None:
    """The ISO 639-1 code of a line's language (None when absent or empty), or ManifestError with a hint."""
    if value is None or not value.strip():
        return None
    try:
        return language_code(value)
    except UnknownLanguage as err:
        raise ManifestError(f"{where}: {field_name} is {err}") from None


def _header_duration(path: str) -> float | None:
    """Duration from the file header (no samples read); None if unreadable (the loader will count it)."""
    try:
        info = sf.info(path)
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - any decoder failure means "unknown"; the audio loader reports why
        return None


def read_jsonl(path: str | Path) -> list[Utterance]:
    """Utterances of a JSONL manifest; the first malformed line raises naming file, line and field."""
    path = Path(path)
    base = path.resolve().parent
    out = []
    first_line: dict[str, int] = {}  # id -> the line it is on
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            _check(obj, where)
            language = _language(obj.get("language"), where)
            uid = str(obj.get("id", f"{path.stem}-{lineno}"))
            if uid in first_line:
                raise ManifestError(f"{where}: id {uid!r} is also the id of line {first_line[uid]} "
                                    "(ids must be unique within a manifest)")
            first_line[uid] = lineno
            audio = obj["audio"]
            audio = audio if Path(audio).is_absolute() else str(base / audio)
            begin, end = obj.get("begin_time"), obj.get("end_time")
            duration = obj.get("duration")
            if duration is None:
                if begin is not None and end is not None:
                    duration = end - begin
                else:
                    header = _header_duration(audio)
                    duration = (header - (begin or 0.0)) if header is not None else 0.0
            known = {"audio", "text", "language", "duration", "id", "begin_time", "end_time", "task"}
            out.append(Utterance(
                id=uid, audio=audio, duration=float(duration),
                text=obj.get("text") or None, language=language, begin_time=begin, end_time=end,
                task=obj.get("task"), source=str(path), extra={k: v for k, v in obj.items() if k not in known}))
    return out


def read_dataset(dataset, name: str, language: str | None = None, audio_column: str = "audio",
                 text_column: str | None = None, id_column: str | None = None,
                 language_column: str | None = None) -> list[Utterance]:
    """Utterances of a `datasets.Dataset` with an audio column (decoded lazily, by soundfile).
    The language is `language_column`'s value where given, else `language` for every row; either is
    checked as a manifest line's is, and ids (`id_column`) must be unique as a manifest's are."""
    from datasets import Audio

    language = _language(language, name, "the source's language")

    if audio_column not in dataset.column_names:
        raise ManifestError(f"{name}: no audio column {audio_column!r} (columns: {dataset.column_names})")
    if isinstance(dataset.features[audio_column], Audio):
        # datasets decodes with torchcodec, whose CUDA-only wheel will not load beside CPU torch.
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    for column in (id_column, language_column):
        if column is not None and column not in dataset.column_names:
            raise ManifestError(f"{name}: no column {column!r} (columns: {dataset.column_names})")
    if text_column is None:
        text_column = next((c for c in _TEXT_COLUMNS if c in dataset.column_names), None)
    elif text_column not in dataset.column_names:
        raise ManifestError(f"{name}: no text column {text_column!r} (columns: {dataset.column_names})")
    # Metadata columns in one columnar read: per-row access to an Arrow table is slow at scale.
    columns = dataset.select_columns([c for c in dataset.column_names if c != audio_column]).to_dict()
    codes: dict[Any, str | None] = {}  # each distinct column value checked once
    first_row: dict[str, int] = {}
    out = []
    for row in range(len(dataset)):
        fields = {name: values[row] for name, values in columns.items()}
        uid = str(fields[id_column]) if id_column else f"{name}-{row}"
        if uid in first_row:
            raise ManifestError(f"{name}: row {row}: id {uid!r} (column {id_column!r}) is also the id of row "
                                f"{first_row[uid]} (ids must be unique within a source)")
        first_row[uid] = row
        if language_column:
            value = fields[language_column]
            if value not in codes:
                if value is not None and not isinstance(value, str):
                    raise ManifestError(f"{name}: row {row}: column {language_column!r} is "
                                        f"{type(value).__name__} ({value!r:.40}), expected str")
                codes[value] = _language(value, f"{name}: row {row}", f"column {language_column!r}")
        audio = DatasetAudio(dataset, row, audio_column)
        duration = fields.get("duration")
        if duration is None:
            data, path = audio.read()
            try:
                info = sf.info(io.BytesIO(data)) if data is not None else sf.info(path)
                duration = info.frames / info.samplerate
            except Exception:  # noqa: BLE001 - unreadable rows are counted by the loader, not fatal here
                duration = 0.0
        out.append(Utterance(
            id=uid, audio=audio, duration=float(duration),
            text=(fields.get(text_column) or None) if text_column else None,
            language=codes[fields[language_column]] if language_column else language,
            begin_time=fields.get("begin_time"), end_time=fields.get("end_time"), task=fields.get("task"),
            source=name))
    return out


def read_manifest(spec: str | Path, language: str | None = None, text_column: str | None = None,
                  audio_column: str = "audio") -> list[Utterance]:
    """Utterances from a JSONL file, a saved dataset folder (`dir#split`) or a hub id (`hf:REPO[:CONFIG]:SPLIT`)."""
    spec = str(spec)
    if spec.startswith("hf:"):
        from datasets import load_dataset

        parts = spec[3:].split(":")
        if len(parts) not in (2, 3):
            raise ManifestError(f"{spec}: expected hf:REPO[:CONFIG]:SPLIT")
        repo, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
        dataset = load_dataset(repo, config, split=split)
        return read_dataset(dataset, spec, language, audio_column, text_column)
    path_part, _, split = spec.partition("#")
    path = Path(path_part)
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if not split:
                raise ManifestError(f"{spec}: a DatasetDict; name the split as {path}#SPLIT "
                                    f"(one of {list(dataset)})")
            dataset = dataset[split]
        return read_dataset(dataset, spec, language, audio_column, text_column)
    if not path.exists():
        raise ManifestError(f"{spec}: no such manifest")
    return read_jsonl(path)


def check_unique_ids(sources: Iterable[tuple[str, Sequence[Utterance]]]) -> None:
    """ManifestError if two utterances of `(name, utterances)` sources share an id, naming the id and
    both sources. For the sources of one role of a run (its training sources, read together): logs,
    hypotheses, pseudo-labels and skip lists name a clip by its id, so a shared id makes two clips one."""
    first: dict[str, str] = {}
    for name, utterances in sources:
        for utt in utterances:
            if utt.id in first:
                where = ("twice in " + name) if first[utt.id] == name else f"in {first[utt.id]} and in {name}"
                raise ManifestError(f"id {utt.id!r} is {where}: ids must be unique across the sources of a run "
                                    "(the same manifest listed twice? give it a weight instead)")
            first[utt.id] = name


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write manifest rows (dicts with the fields above), UTF-8, one object a line, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
