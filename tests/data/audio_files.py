"""Real audio files for the data tests, good and broken, written with soundfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def sine(freq: float, seconds: float, rate: int = 16000, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype=subtype)
    return path


def broken_files(folder: Path) -> dict[str, Path]:
    """One real file (or path) per skip reason."""
    folder.mkdir(parents=True, exist_ok=True)
    garbage = folder / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(256)))
    empty = folder / "empty.wav"
    with sf.SoundFile(empty, "w", samplerate=16000, channels=1, subtype="PCM_16"):
        pass
    nan = sine(300, 1.0)
    nan[100] = np.nan
    return {
        "missing": folder / "does-not-exist.flac",
        "unreadable": garbage,
        "empty": empty,
        "non_finite": write(folder / "nan.wav", nan, subtype="FLOAT"),
        "all_zero": write(folder / "zeros.flac", np.zeros(16000, dtype=np.float32)),
        "too_short": write(folder / "short.wav", sine(300, 0.05)),
        "too_long": write(folder / "long.flac", sine(300, 31.0, amp=0.1)),
    }


def dominant_frequency(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])
