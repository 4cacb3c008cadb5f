"""Audio decoding: soundfile (wav, flac, ogg, mp3 where libsndfile has it), segments by time, mono, 16 kHz via soxr.

A clip that cannot be used raises `AudioSkipped` with one of `SKIP_REASONS`; callers count it and
go on. Nothing here ever stops a run.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from train.data.manifest import DatasetAudio, Utterance

SAMPLE_RATE = 16000
SKIP_REASONS = ("missing", "unreadable", "empty", "non_finite", "all_zero", "too_short", "too_long")


class AudioSkipped(Exception):
    """This clip is unusable; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class AudioLimits:
    min_seconds: float = 0.1  # shorter clips hold too little speech to transcribe or score
    max_seconds: float = 30.0  # the encoder's window (1500 frames)


def _open(utt: Utterance):
    """A soundfile handle for the utterance's audio, or AudioSkipped(missing | unreadable)."""
    if isinstance(utt.audio, DatasetAudio):
        try:
            data, path = utt.audio.read()
        except Exception as err:  # noqa: BLE001 - a broken dataset row is one skipped clip
            raise AudioSkipped("unreadable", f"{utt.id}: {err}") from None
        if data is None and path is None:
            raise AudioSkipped("missing", f"{utt.id}: dataset row has neither bytes nor a path")
        source = io.BytesIO(data) if data is not None else path
    else:
        source = utt.audio
    if isinstance(source, str) and not os.path.exists(source):
        raise AudioSkipped("missing", source)
    try:
        return sf.SoundFile(source)
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types for corrupt files
        raise AudioSkipped("unreadable", f"{utt.id} ({source if isinstance(source, str) else 'bytes'}): {err}") from None


def load_audio(utt: Utterance, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """Mono float32 samples at 16 kHz for `utt` (its begin/end segment only), or AudioSkipped."""
    with _open(utt) as f:
        rate, total = f.samplerate, f.frames
        begin = int(round((utt.begin_time or 0.0) * rate))
        end = int(round(utt.end_time * rate)) if utt.end_time is not None else total
        if total == 0:
            raise AudioSkipped("empty", f"{utt.id}: no samples")
        if begin >= total or end <= begin:
            raise AudioSkipped("empty", f"{utt.id}: segment {utt.begin_time}-{utt.end_time} s is outside "
                                        f"the file's {total / rate:.2f} s")
        end = min(end, total)
        seconds = (end - begin) / rate
        # Length checks first: an over-long file is skipped without decoding it.
        if seconds > limits.max_seconds:
            raise AudioSkipped("too_long", f"{utt.id}: {seconds:.2f} s > {limits.max_seconds} s")
        try:
            if begin:
                f.seek(begin)  # reads only the segment, not the whole file
            samples = f.read(end - begin, dtype="float32", always_2d=True)
        except Exception as err:  # noqa: BLE001
            raise AudioSkipped("unreadable", f"{utt.id}: {err}") from None
    if samples.size == 0:
        raise AudioSkipped("empty", f"{utt.id}: no samples decoded")
    if not np.isfinite(samples).all():
        raise AudioSkipped("non_finite", f"{utt.id}: NaN or inf samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.any(mono):
        raise AudioSkipped("all_zero", f"{utt.id}: every sample is zero")
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if len(mono) / SAMPLE_RATE < limits.min_seconds:
        raise AudioSkipped("too_short", f"{utt.id}: {len(mono) / SAMPLE_RATE:.3f} s < {limits.min_seconds} s")
    return np.ascontiguousarray(mono, dtype=np.float32)


class SkipCounter(Counter):
    """Skipped clips by reason; merge counters from workers and ranks with `+=`."""

    def report(self) -> str:
        if not self:
            return "no clips skipped"
        return "skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.items()))
