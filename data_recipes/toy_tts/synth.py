"""One utterance: espeak-ng -> 22,050 Hz WAV -> 16 kHz mono (soxr) -> FLAC PCM_16 (soundfile).

Runs inside worker processes: it takes and returns only plain Python values (no torch tensors).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
TRAILING_SILENCE_S = 0.1  # espeak-ng ends every utterance with ~0.4 s of silence; keep this much
_SILENCE = 1e-3  # |sample| below this counts as silence when trimming the tail


@dataclass(frozen=True)
class Job:
    spoken: str  # text espeak-ng reads
    voice: str  # espeak-ng voice with variant, e.g. "de+m3"
    rate: int  # words per minute (-s)
    pitch: int  # 0-99 (-p)
    path: str  # FLAC file to write


def die_with_parent() -> None:
    """Worker-process initializer (Linux): end this worker when the process that started it dies,
    so a build killed with SIGKILL leaves no synthesis workers behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, check=True).stdout.decode()
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


def speak(spoken: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's waveform (float32, mono) and its sample rate."""
    import soundfile as sf

    proc = subprocess.run(
        ["espeak-ng", "-b", "1", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout"],
        input=spoken.encode("utf-8"),
        capture_output=True,
        check=True,
    )
    audio, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def synthesise(job: Job) -> float:
    """Write `job.path` (16 kHz mono FLAC, PCM_16) and return its duration in seconds, read back
    from the written file. The file appears atomically (written to a temporary name, renamed)."""
    import soundfile as sf
    import soxr

    audio, sr = speak(job.spoken, job.voice, job.rate, job.pitch)
    voiced = np.flatnonzero(np.abs(audio) > _SILENCE)
    if voiced.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {job.spoken!r} ({job.voice})")
    audio = audio[: min(len(audio), voiced[-1] + 1 + int(TRAILING_SILENCE_S * sr))]
    audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ")
    audio = np.clip(audio, -1.0, 1.0)
    os.makedirs(os.path.dirname(job.path), exist_ok=True)
    tmp = job.path + ".tmp"
    sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, job.path)
    info = sf.info(job.path)
    return info.frames / info.samplerate
