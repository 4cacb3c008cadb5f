"""Small fake inputs in the real formats of the corpora (no download): synthetic audio
(sines and noise) encoded as wav/flac/mp3/opus, `datasets` folders saved with `save_to_disk`
with the hub's column names, and on-disk release layouts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

CORRUPT = b"RIFF\x24\x00\x00\x00WAVEfmt this is not audio at all"


def tone(freq: float, seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, float32, shape (n,) or (n, channels)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(n)
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def write(path: Path, samples: np.ndarray, rate: int, fmt: str | None = None, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, format=fmt, subtype=subtype)
    return path


def expected_16k(seconds: float, rate: int) -> int:
    """Samples at 16 kHz of a clip of `seconds` recorded at `rate` (the loader resamples with soxr)."""
    n = int(round(seconds * rate))
    return int(round(n * 16000 / rate))


# Three clips every dataset family uses: a 16 kHz mono wav, a 44.1 kHz stereo flac, a corrupt one.
CLIPS = [
    {"seconds": 1.0, "rate": 16000, "channels": 1, "fmt": "WAV", "ext": ".wav", "freq": 300},
    {"seconds": 1.5, "rate": 44100, "channels": 2, "fmt": "FLAC", "ext": ".flac", "freq": 500},
    {"seconds": None, "rate": None, "channels": None, "fmt": None, "ext": ".wav", "freq": None},  # corrupt
]


def clip_cell(index: int, name: str) -> dict:
    """An `Audio()` cell ({"bytes", "path"}) for clip `index` of CLIPS, named `name` + ext."""
    spec = CLIPS[index]
    if spec["fmt"] is None:
        return {"bytes": CORRUPT, "path": name + spec["ext"]}
    data = encode(tone(spec["freq"], spec["seconds"], spec["rate"], spec["channels"]), spec["rate"], spec["fmt"])
    return {"bytes": data, "path": name + spec["ext"]}


def expected_len(index: int) -> int:
    spec = CLIPS[index]
    return expected_16k(spec["seconds"], spec["rate"])


def save_dataset(folder: Path, splits: dict[str, dict[str, list]], features=None) -> Path:
    """save_to_disk a DatasetDict {split: columns}; the `audio` column becomes `Audio()`."""
    from datasets import Audio, Dataset, DatasetDict, Features, Value

    raw = None
    if features is not None:  # encoding through Audio() needs torchcodec: store the struct, then cast
        raw = Features({k: ({"bytes": Value("binary"), "path": Value("string")} if isinstance(v, Audio) else v)
                        for k, v in features.items()})
    parts = {}
    for split, columns in splits.items():
        ds = Dataset.from_dict(columns, features=raw)
        parts[split] = ds.cast_column("audio", Audio())
    DatasetDict(parts).save_to_disk(str(folder))
    return folder


def audio_features(**columns):
    """`datasets.Features` with an `audio` column and the given others (name -> feature)."""
    from datasets import Audio, Features

    return Features({"audio": Audio(), **columns})


def load_checked(manifest: Path, language: str | None = None) -> dict[str, tuple[object, np.ndarray]]:
    """Every line of a manifest read with the project's reader and decoded with its loader:
    {id: (utterance, 16 kHz samples)}. Asserts ids are unique and durations match the audio."""
    from train.data.audio import load_audio
    from train.data.manifest import read_manifest

    utts = read_manifest(manifest)
    ids = [u.id for u in utts]
    assert len(ids) == len(set(ids)), f"duplicate ids in {manifest}"
    out = {}
    for utt in utts:
        samples = load_audio(utt)
        assert abs(len(samples) / 16000 - utt.duration) < 0.01, (utt.id, len(samples), utt.duration)
        if language is not None:
            assert utt.language == language, (utt.id, utt.language)
        out[utt.id] = (utt, samples)
    return out


def dominant_freq(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))
