"""Shared machinery of the corpus recipes (`data_recipes/<corpus>/prepare.py`).

Every recipe turns one corpus into manifests of the project's JSONL format (see
`train/data/manifest.py`): one file per split (and language, for multilingual corpora), each
line `{"audio", "text", "language", "duration", "id", ...}`. This module holds what they share:

- `open_split`: one config/split of a `datasets` source: a local `save_to_disk` folder, or a
  hub dataset (with a fallback to the hub's Parquet export for repositories that still ship a
  loading script, which `datasets` >= 4 refuses to run).
- `dataset_rows`: writes each row's audio, as the original encoded bytes, under `OUT/audio/`
  and yields manifest lines; `file_row` / `segment_row` describe audio already on disk, in place.
- `build_part`: writes one manifest atomically, counts skipped rows by reason, and leaves a
  done marker (`.done-<name>` beside the manifest, written last) so a finished part is not redone.
- `source_fingerprint`: what a manifest of files left in place is cached on (their paths, sizes and
  modification times), so that a re-run notices files added, removed or changed.
- language codes: `iso_code` maps tags, locales and names to ISO 639-1; `language_code` also checks
  the result (manifests are read through it too), and `report` prints the closing summary.

A broken row (undecodable audio, a missing file, an empty transcript) raises `Skip(reason)`
inside a row; it is counted and the recipe goes on.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import soundfile as sf

from train.cli import HelpFormatter
from train.config import DEV_LANGUAGES, LANGUAGE_NAMES as PROMPT_NAMES


class SkipCounter(Counter):
    """Rows left out, by reason (the same shape as `train.data.audio.SkipCounter`, which is not
    imported here: importing `train.data` loads torch, seconds a recipe does not need)."""

    def report(self) -> str:
        if not self:
            return "no rows skipped"
        return "skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.items()))


# --------------------------------------------------------------------------------------------
# Languages

#: The project's 19 languages, in its canonical order (train.config imports no torch: cheap here).
PROJECT_LANGUAGES = DEV_LANGUAGES

# ISO 639-2/3 codes (and a few macro-language codes) that have an ISO 639-1 equivalent.
_ISO3_TO_ISO1 = {
    "cmn": "zh", "zho": "zh", "chi": "zh", "eng": "en", "deu": "de", "ger": "de", "jpn": "ja", "fra": "fr",
    "fre": "fr", "kor": "ko", "spa": "es", "pol": "pl", "ita": "it", "ron": "ro", "rum": "ro", "hun": "hu",
    "ces": "cs", "cze": "cs", "nld": "nl", "dut": "nl", "fin": "fi", "hrv": "hr", "slk": "sk", "slo": "sk",
    "slv": "sl", "est": "et", "ekk": "et", "lit": "lt", "por": "pt", "rus": "ru", "ukr": "uk", "swe": "sv",
    "dan": "da", "nor": "no", "nob": "nb", "nno": "nn", "ell": "el", "gre": "el", "bul": "bg", "lav": "lv",
    "lvs": "lv", "mlt": "mt", "tur": "tr", "ara": "ar", "arb": "ar", "hin": "hi", "vie": "vi", "tha": "th",
    "ind": "id", "cat": "ca", "eus": "eu", "glg": "gl", "cym": "cy", "gle": "ga",
}

# English language names (as some hub configs spell them) -> ISO 639-1.
LANGUAGE_NAMES = {
    "chinese": "zh", "mandarin": "zh", "english": "en", "german": "de", "japanese": "ja", "french": "fr",
    "korean": "ko", "spanish": "es", "polish": "pl", "italian": "it", "romanian": "ro", "hungarian": "hu",
    "czech": "cs", "dutch": "nl", "finnish": "fi", "croatian": "hr", "slovak": "sk", "slovenian": "sl",
    "estonian": "et", "lithuanian": "lt", "portuguese": "pt", "russian": "ru", "swedish": "sv",
    "danish": "da", "greek": "el", "bulgarian": "bg", "latvian": "lv", "maltese": "mt",
}


def iso_code(code: str) -> str:
    """ISO 639-1 code of a language tag, locale or name: `zh-CN` -> zh, `sv_SE` -> sv,
    `cmn_hans_cn` -> zh, `deu` -> de, `Dutch` -> nl. A language with no 639-1 code keeps its
    own (lower-cased) primary subtag, e.g. `yue`, `kab`."""
    tag = code.strip().lower()
    if tag in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[tag]
    primary = re.split(r"[-_]", tag)[0]
    return _ISO3_TO_ISO1.get(primary, primary)


# The ISO 639-1 codes: the two-letter language subtags of the IANA registry (BCP 47) that are not
# deprecated, i.e. ISO 639-1 with `sh` and `bh`. Written out rather than taken from a library:
# lingua's IsoCode639_1 holds only the 75 languages lingua detects (no mt, no ga), and langcodes
# and babel come only with the `toy` extra. ISO 639-1 changes about once a decade; a test checks
# this list against langcodes' copy of the registry where that is installed.
ISO_639_1 = frozenset("""
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv
    dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig
    ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh
    mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru
    rw sa sc sd se sg sh si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty
    ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split())

# Codes people write for a language that are not its ISO 639-1 code: country codes (gr is Greece,
# Greek is el) and withdrawn codes. A country code that is also a language's code (se, si, ee, uk)
# cannot be told apart and is read as the language.
_LOOKALIKES = {
    "gr": "el", "jp": "ja", "cn": "zh", "dk": "da", "cz": "cs", "ua": "uk", "us": "en", "gb": "en", "at": "de",
    "vn": "vi", "ir": "fa", "il": "he", "rs": "sr", "al": "sq", "by": "be", "kz": "kk", "mx": "es",
    "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro",
}


class UnknownLanguage(ValueError):
    """A language code that is neither ISO 639-1 nor a form `iso_code` maps to one."""


def language_code(value: str) -> str:
    """The ISO 639-1 code of `value` (any form `iso_code` maps: `de-DE`, `deu`, `German`), or a
    code of `train.config.LANGUAGE_NAMES` (`yue`: languages without one); else `UnknownLanguage`
    saying what was given and, where it can tell, which code was meant."""
    code = iso_code(value)
    if code in ISO_639_1 or code in PROMPT_NAMES:
        return code
    raise UnknownLanguage(f"{value!r}: not an ISO 639-1 code; {language_hint(code)}")


def language_hint(code: str) -> str:
    """`did you mean el?` for a look-alike or a near miss (the project's languages first), else where
    the codes are listed; for a three-letter code also how a language without a 639-1 code is added."""
    if code in _LOOKALIKES:
        return f"did you mean {_LOOKALIKES[code]}?"
    spellings = {c: c for c in ISO_639_1} | {c: c for c in PROMPT_NAMES} | _ISO3_TO_ISO1 | LANGUAGE_NAMES
    near = dict.fromkeys(spellings[s] for s in difflib.get_close_matches(code, spellings, n=4, cutoff=0.75))
    near_first = sorted(near, key=lambda c: c not in PROMPT_NAMES)
    hints = [f"did you mean {' or '.join(near_first)}?" if near
             else "the codes are listed at https://en.wikipedia.org/wiki/List_of_ISO_639-1_codes"]
    if len(code) == 3 and code.isalpha():
        hints.append("(a language without an ISO 639-1 code, as yue, is accepted once "
                     "train.config.LANGUAGE_NAMES names it)")
    return " ".join(hints)


# --------------------------------------------------------------------------------------------
# Rows that cannot be used


class Skip(Exception):
    """Raised inside one row: the row is counted under `reason` and left out; the recipe goes on."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def guarded(items: Iterable, fn: Callable[[Any], dict | None], skipped: SkipCounter,
            what: str = "row") -> Iterator[dict]:
    """`fn(item)` for every item, skipping (and counting) the items it refuses: `Skip(reason)`
    counts `reason`; any other exception counts `error` (its first few are printed)."""
    for item in items:
        try:
            row = fn(item)
        except Skip as err:
            skipped[err.reason] += 1
            continue
        except Exception as err:  # noqa: BLE001 - one broken row must never stop a recipe
            skipped["error"] += 1
            if skipped["error"] <= 5:
                print(f"  {what} failed ({type(err).__name__}: {err})")
            continue
        if row is not None:
            yield row


# --------------------------------------------------------------------------------------------
# Audio


_FORMAT_EXT = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff",
               "CAF": ".caf", "W64": ".w64", "RF64": ".wav", "NIST": ".sph", "AU": ".au"}
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")


def probe(source: str | Path | bytes) -> sf._SoundFileInfo:
    """The audio's header (no samples decoded), or `Skip("missing" | "unreadable" | "empty")`."""
    if isinstance(source, (str, Path)):
        if not os.path.exists(source):
            raise Skip("missing", str(source))
        target: Any = str(source)
    else:
        target = io.BytesIO(source)
    try:
        info = sf.info(target)
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types for corrupt input
        raise Skip("unreadable", str(err)) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise Skip("empty", "no samples")
    return info


def duration_of(info: sf._SoundFileInfo) -> float:
    return info.frames / info.samplerate


def extension_for(info: sf._SoundFileInfo, name: str | None = None) -> str:
    """File extension for encoded audio: the original name's, where it is an audio one, else from the header."""
    if name:
        suffix = Path(name).suffix.lower()
        if suffix in AUDIO_EXTENSIONS:
            return suffix
    if info.format == "OGG" and info.subtype == "OPUS":
        return ".opus"
    return _FORMAT_EXT.get(info.format, ".audio")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe form of an id (ids may hold ':' or '/')."""
    name = _UNSAFE.sub("_", text).strip("._")
    return name[:180] or "utt"


def write_bytes(dest: Path, data: bytes) -> None:
    """Write `data` to `dest` atomically; a file already there with the same size is kept (resume)."""
    if dest.exists() and dest.stat().st_size == len(data):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)


class UniqueIds:
    """Stable unique ids: a repeated id gets `-2`, `-3`, ... in order of appearance."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def __call__(self, uid: str) -> str:
        uid = str(uid)
        if uid not in self.seen:
            self.seen[uid] = 1
            return uid
        while True:
            self.seen[uid] += 1
            candidate = f"{uid}-{self.seen[uid]}"
            if candidate not in self.seen:
                self.seen[candidate] = 1
                return candidate


def manifest_line(audio: str, duration: float, uid: str, text: str | None, language: str | None,
                  extra: dict | None = None) -> dict:
    """One manifest line, fields in the usual order; `text` is left out when empty (unlabelled)."""
    row: dict[str, Any] = {"audio": audio}
    if text:
        row["text"] = text
    if language:
        row["language"] = language
    row["duration"] = round(float(duration), 4)
    row["id"] = uid
    for key, value in (extra or {}).items():
        if key not in row and value is not None:
            row[key] = value
    return row


def source_fingerprint(files: Iterable[str | Path]) -> dict:
    """What a manifest of files left in place is cached on (an `options` entry of `build_part`): how
    many of `files` exist, their total size, and a digest of each one's path, size and modification
    time (stat only, nothing read). A file added, removed, replaced or edited changes it; a file
    that is named but absent (a transcript not written yet) counts as absent."""
    digest = hashlib.sha1()
    count = size = 0
    for name in sorted({str(f) for f in files}):
        try:
            stat = os.stat(name)
        except FileNotFoundError:
            digest.update(f"{name}\tabsent\n".encode("utf-8", "surrogateescape"))
            continue
        count += 1
        size += stat.st_size
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return {"files": count, "bytes": size, "paths_sizes_mtimes": digest.hexdigest()[:16]}


def file_row(path: str | Path, uid: str, text: str | None, language: str | None, extra: dict | None = None,
             require_text: bool = False) -> dict:
    """A manifest line for an audio file left where it is (absolute path, header duration)."""
    if require_text and not (text or "").strip():
        raise Skip("empty_text", uid)
    path = Path(path).absolute()
    info = probe(path)
    return manifest_line(str(path), duration_of(info), uid, text, language, extra)


class HeaderCache:
    """`probe` results of long files, read once each (a `Skip` is remembered too)."""

    def __init__(self):
        self.cache: dict[str, sf._SoundFileInfo | Skip] = {}

    def __call__(self, path: str | Path) -> sf._SoundFileInfo:
        key = str(path)
        if key not in self.cache:
            try:
                self.cache[key] = probe(key)
            except Skip as err:
                self.cache[key] = err
        value = self.cache[key]
        if isinstance(value, Skip):
            raise Skip(value.reason, key)
        return value


def segment_row(path: str | Path, begin: float, end: float, uid: str, text: str | None, language: str | None,
                headers: HeaderCache, extra: dict | None = None, require_text: bool = False,
                tolerance: float = 0.05) -> dict:
    """A manifest line for a segment [begin, end) s of a long file left in place (no cutting).
    `end` <= 0 means the end of the file (Kaldi's -1)."""
    if require_text and not (text or "").strip():
        raise Skip("empty_text", uid)
    path = Path(path).absolute()
    total = duration_of(headers(path))
    begin = float(begin)
    end = total if float(end) <= 0 else float(end)
    if begin < 0 or end <= begin:
        raise Skip("bad_segment", f"{uid}: {begin}-{end}")
    if begin >= total or end > total + tolerance:
        raise Skip("segment_outside_file", f"{uid}: {begin}-{end} s of a {total:.2f} s file")
    end = min(end, total)
    row = manifest_line(str(path), end - begin, uid, text, language, extra)
    row["begin_time"] = round(begin, 4)
    row["end_time"] = round(end, 4)
    return row


# --------------------------------------------------------------------------------------------
# Hugging Face datasets

PARQUET_REF = "refs/convert/parquet"


class SplitNotFound(LookupError):
    """The requested config/split is not in the source."""


def parquet_export_files(files: Iterable[str], config: str | None, split: str) -> tuple[list[str], bool]:
    """The files of one config/split in a hub Parquet export (branch refs/convert/parquet) and
    whether the export is partial. Layouts seen: `<config>/<split>/0000.parquet`,
    `<config>/partial-<split>/0000.parquet` (the export stopped at ~5 GB), and the older
    `<config>/<name>-<split>[-00000-of-00004].parquet`."""
    config = config or "default"
    chosen, partial = [], False
    for name in files:
        parts = name.split("/")
        if parts[0] != config or not name.endswith(".parquet"):
            continue
        if len(parts) == 3:
            folder = parts[1]
            is_partial = folder.startswith("partial-")
            if (folder[len("partial-"):] if is_partial else folder) == split:
                chosen.append(name)
                partial |= is_partial
        elif len(parts) == 2:
            stem = re.sub(r"-\d{5}-of-\d{5}$", "", parts[1][: -len(".parquet")])
            if stem == split or stem.endswith("-" + split):
                chosen.append(name)
    return sorted(chosen), partial


def load_hub(repo: str, config: str | None, split: str, streaming: bool = False, revision: str | None = None):
    """One split of a hub dataset. Repositories that still hold only a loading script (google/fleurs,
    facebook/voxpopuli, ... at the time of writing) are read from the hub's automatic Parquet export."""
    from datasets import load_dataset

    try:
        return load_dataset(repo, config, split=split, streaming=streaming, revision=revision)
    except RuntimeError as err:
        if "Dataset scripts are no longer supported" not in str(err):
            raise
    from huggingface_hub import list_repo_files

    print(f"  {repo} has only a loading script, which datasets>=4 does not run: "
          f"reading its Parquet export ({PARQUET_REF})")
    files, partial = parquet_export_files(
        list_repo_files(repo, repo_type="dataset", revision=PARQUET_REF), config, split)
    if not files:
        raise SplitNotFound(f"{repo}: no Parquet export of config {config!r} split {split!r}")
    if partial:
        print(f"  warning: the Parquet export of {repo} {config}/{split} is partial (the hub converts "
              f"only the first ~5 GB of a split); use the original release for all of it")
    ref = quote(PARQUET_REF, safe="")
    urls = [f"hf://datasets/{repo}@{ref}/{name}" for name in files]
    return load_dataset("parquet", data_files={split: urls}, split=split, streaming=streaming)


def _is_saved(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()


def open_split(source: str | None, repo: str, config: str | None, split: str, streaming: bool = False):
    """One config/split of a `datasets` source.

    `source` None: the hub dataset `repo`. An existing folder: `save_to_disk` output, looked up as
    FOLDER/<config>/<split> (a Dataset), FOLDER/<config> (a DatasetDict), and, for corpora without
    configs, FOLDER/<split> or FOLDER (a DatasetDict). Anything else: a hub id used instead of `repo`.
    Raises `SplitNotFound` when a local source lacks the split."""
    if source is not None and not Path(source).exists() and (
            str(source).startswith(("/", ".", "~")) or str(source).count("/") > 1):
        raise FileNotFoundError(f"no folder {source} (a hub id has the form owner/name)")
    if source is None or not Path(source).exists():
        return load_hub(source or repo, config, split, streaming=streaming)
    from datasets import DatasetDict, load_from_disk

    root = Path(source)
    candidates = [root / config / split, root / config] if config else [root / split, root]
    for folder in candidates:
        if not _is_saved(folder):
            continue
        data = load_from_disk(str(folder))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise SplitNotFound(f"{folder}: no split {split!r} (splits: {list(data)})")
            return data[split]
        if folder.name == split:
            return data
    raise SplitNotFound(f"{root}: no saved dataset for config {config!r} split {split!r}")


def undecoded(dataset, column: str = "audio"):
    """The dataset with its audio column left encoded ({"bytes", "path"}): `datasets` decodes with
    torchcodec, whose CUDA-only wheel will not load beside CPU torch."""
    from datasets import Audio

    features = getattr(dataset, "features", None)
    if features is not None and column in features and isinstance(features[column], Audio):
        dataset = dataset.cast_column(column, Audio(decode=False))
    return dataset


def label_names(dataset) -> dict[str, Callable[[int], str]]:
    """For each ClassLabel column, a function from its integer to its name."""
    from datasets import ClassLabel

    features = getattr(dataset, "features", None) or {}
    return {name: feature.int2str for name, feature in features.items() if isinstance(feature, ClassLabel)}


def plain(value):
    """A JSON-friendly scalar (None for anything else)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return None


def _audio_bytes(value) -> tuple[bytes, str | None]:
    """Encoded bytes and original name of an undecoded audio cell."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, str):
        data, path = None, value
    else:
        raise Skip("missing", f"audio cell is {type(value).__name__}")
    if data is None:
        if path and os.path.isfile(path):
            data = Path(path).read_bytes()
        else:
            raise Skip("missing", f"no bytes and no file at {path!r}")
    return data, path


def dataset_rows(dataset, convert: Callable[[dict], dict], audio_dir: Path, manifest_dir: Path,
                 skipped: SkipCounter, audio_column: str = "audio", require_text: bool = True,
                 limit: int | None = None) -> Iterator[dict]:
    """Manifest lines for the rows of a `datasets` split, each row's audio written (original bytes,
    no re-encoding) to `audio_dir/<2 hex>/<id><ext>` and referenced relative to `manifest_dir`.

    `convert(row)` returns {"id", "text", "language", "extra"} (or raises `Skip`). Rows without
    decodable audio or, with `require_text`, without a transcript are counted and left out."""
    dataset = undecoded(dataset, audio_column)
    unique = UniqueIds()
    used_names: set[str] = set()

    def one(row: dict) -> dict:
        fields = convert(row)
        text = (fields.get("text") or "").strip() or None
        if require_text and not text:
            raise Skip("empty_text", str(fields.get("id")))
        data, name = _audio_bytes(row.get(audio_column))
        info = probe(data)
        uid = unique(fields["id"])
        stem = safe_name(uid)
        shard = hashlib.md5(uid.encode("utf-8")).hexdigest()[:2]
        file_name = stem + extension_for(info, name)
        key = f"{shard}/{file_name}"
        if key in used_names:  # two ids that differ only in unsafe characters
            file_name = f"{stem}-{len(used_names)}{extension_for(info, name)}"
            key = f"{shard}/{file_name}"
        used_names.add(key)
        dest = audio_dir / shard / file_name
        write_bytes(dest, data)
        return manifest_line(os.path.relpath(dest, manifest_dir), duration_of(info), uid, text,
                             fields.get("language"), fields.get("extra"))

    def rows():
        for index, row in enumerate(dataset):
            if limit is not None and index >= limit:
                return
            yield row

    yield from guarded(rows(), one, skipped)


# --------------------------------------------------------------------------------------------
# Parts (one manifest each), done markers, summary


@dataclass
class PartResult:
    split: str
    language: str | None
    manifest: Path
    utterances: int = 0
    seconds: float = 0.0
    skipped: dict = field(default_factory=dict)
    cached: bool = False
    missing: str | None = None  # why the part could not be built at all (e.g. the split is absent)

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def marker_path(manifest: Path) -> Path:
    """The done marker of a manifest: `.done-<stem>` beside it (e.g. OUT/dev/.done-en)."""
    return manifest.parent / f".done-{manifest.stem}"


def build_part(manifest: Path, split: str, language: str | None,
               produce: Callable[[SkipCounter], Iterable[dict]], force: bool = False,
               options: dict | None = None) -> PartResult:
    """Write one manifest from `produce(skipped)`'s lines, then its done marker (last).

    A manifest whose marker exists and records the same `options` is complete: it is not redone
    (unless `force`); with other options it is, and the run says which changed. A run stopped
    half-way leaves no marker, and the part is built again (audio already written is kept)."""
    manifest = Path(manifest)
    marker = marker_path(manifest)
    options = options or {}
    if not force and marker.exists() and manifest.exists():
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            done = None
        if done is not None and done.get("options") == options:
            return PartResult(split, language, manifest, done["utterances"], done["seconds"],
                              done.get("skipped", {}), cached=True)
        if done is not None:
            print(f"  {manifest}: rebuilding, changed since the last build: "
                  f"{'; '.join(option_changes(done.get('options') or {}, options))}")
    marker.unlink(missing_ok=True)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    skipped = SkipCounter()
    count, seconds = 0, 0.0
    tmp = manifest.with_name(manifest.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in produce(skipped):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
                seconds += row.get("duration", 0.0)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(manifest)
    marker.write_text(json.dumps({"utterances": count, "seconds": seconds, "skipped": dict(skipped),
                                  "options": options, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                 ensure_ascii=False), encoding="utf-8")
    return PartResult(split, language, manifest, count, seconds, dict(skipped))


def option_changes(old: dict, new: dict) -> list[str]:
    """What differs between two `options` dicts, one entry per key: `limit 100 -> None`, and for a
    dict value (a `source_fingerprint`) the entries that differ: `source_files (files 4 -> 5, ...)`."""
    changes = []
    for key in dict.fromkeys([*old, *new]):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            changes.append(f"{key} ({', '.join(option_changes(before, after))})")
        else:
            changes.append(f"{key} {before!r} -> {after!r}")
    return changes


def part_paths(out: Path, split: str, language: str | None = None) -> tuple[Path, Path]:
    """(manifest, audio folder) of one part: OUT/<split>/<lang>.jsonl and OUT/audio/<split>/<lang>/
    for multilingual corpora, OUT/<split>.jsonl and OUT/audio/<split>/ for monolingual ones."""
    out = Path(out)
    if language is None:
        return out / f"{split}.jsonl", out / "audio" / split
    return out / split / f"{language}.jsonl", out / "audio" / split / language


@dataclass
class DatasetPart:
    """One manifest to build from one config/split of a `datasets` source."""

    config: str | None
    hub_split: str
    split: str  # the output split name (as the corpus names it)
    language: str | None  # ISO code; None for a monolingual layout
    manifest: Path
    audio_dir: Path
    row_language: str | None = None  # the language written on each line (default: `language`)

    def __post_init__(self):
        if self.row_language is None:
            self.row_language = self.language


def export_dataset_parts(args: argparse.Namespace, repo: str, parts: list[DatasetPart],
                         make_convert: Callable[[Any, DatasetPart], Callable[[dict], dict]],
                         require_text: bool = True) -> list[PartResult]:
    """Build every part from `args.dataset` (hub id or local folder; default `repo`). A part whose
    config/split cannot be opened is reported and the others still run."""
    results = []
    for part in parts:
        options = {"source": str(args.dataset or repo), "config": part.config, "split": part.hub_split,
                   "limit": args.limit}

        def produce(skipped, part=part):
            print(f"  {part.split}/{part.language or '-'}: reading {args.dataset or repo} "
                  f"{part.config or ''}:{part.hub_split}")
            dataset = open_split(args.dataset, repo, part.config, part.hub_split,
                                 streaming=getattr(args, "streaming", False))
            convert = make_convert(dataset, part)
            yield from dataset_rows(dataset, convert, part.audio_dir, part.manifest.parent, skipped,
                                    require_text=require_text, limit=args.limit)

        try:
            results.append(build_part(part.manifest, part.split, part.language, produce, args.force, options))
        except Exception as err:  # noqa: BLE001 - a missing split / gated repo: report it, do the rest
            results.append(PartResult(part.split, part.language, part.manifest,
                                      missing=f"{type(err).__name__}: {err}"))
    return results


def exit_code(results: list[PartResult]) -> int:
    """0 when every part was built (or was already complete), 1 otherwise."""
    return 1 if any(r.missing for r in results) else 0


def report(results: list[PartResult], title: str) -> str:
    """Print (and return) the closing summary: utterances and hours per part, rows skipped by reason."""
    lines = [f"{title}:"]
    total_utts, total_seconds, total_skips = 0, 0.0, SkipCounter()
    for r in results:
        where = f"{r.split}/{r.language}" if r.language else r.split
        if r.missing:
            lines.append(f"  {where:<28} not built: {r.missing}")
            continue
        skips = ", ".join(f"{n} {reason}" for reason, n in sorted(r.skipped.items())) or "none"
        lines.append(f"  {where:<28} {r.utterances:>9} utts {r.hours:>9.3f} h   skipped: {skips}"
                     f"{'   (cached)' if r.cached else ''}")
        total_utts += r.utterances
        total_seconds += r.seconds
        total_skips.update(r.skipped)
    lines.append(f"  {'total':<28} {total_utts:>9} utts {total_seconds / 3600:>9.3f} h   "
                 f"{total_skips.report()}")
    text = "\n".join(lines)
    print(text)
    return text


# --------------------------------------------------------------------------------------------
# Command line


def base_parser(description: str, corpus: str) -> argparse.ArgumentParser:
    """The options every recipe shares: --out, --force, --limit."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data") / corpus,
                        help=f"output folder (default: data/{corpus})")
    parser.add_argument("--force", action="store_true", help="rebuild parts that are already complete")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many source rows per part (a quick look; recorded in the done marker)")
    return parser


def add_dataset_args(parser: argparse.ArgumentParser, repo: str, local_too: bool = True) -> None:
    parser.add_argument("--dataset", default=None, metavar="HUB_ID_OR_DIR",
                        help=f"the `datasets` source: a hub id (default: {repo}) or a local "
                             "save_to_disk folder (DIR/<config> holding the splits)"
                        if local_too else f"hub id (default: {repo})")
    parser.add_argument("--streaming", action="store_true",
                        help="stream the hub dataset instead of downloading whole splits first")
