"""Timed batched transcription and RTFx, measured as the open_asr_leaderboard measures it.

The clock covers feature extraction, host-to-device transfer, generation and decoding of the
tokens to text; not audio decoding (which happens before, in `load_audio`). Clips are sorted by
duration and batched; warm-up batches run first and are not timed; on a GPU the device is
synchronised before each clock read. RTFx = total audio seconds / total transcription seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch

from train.data.audio import SAMPLE_RATE, AudioLimits, AudioSkipped, SkipCounter, load_audio
from train.data.manifest import Utterance, audio_name


class Transcriber(Protocol):
    """Anything that turns a batch of 16 kHz clips into text: the student, a teacher, a baseline."""

    name: str
    device: torch.device

    def transcribe(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]) -> list[str]: ...


@dataclass
class StudentTranscriber:
    """A `train.models` student behind the Transcriber interface (greedy unless sampling is asked for)."""

    model: object
    processor: object
    name: str = "student"
    max_new_tokens: int = 256
    language_prompt: bool = False  # put the manifest language in the prompt
    # passed to `generate`: do_sample/temperature/top_p, or all_done (decoding kept in step across ranks)
    generate_options: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def transcribe(self, audios, languages):
        from train.models.generation import transcribe

        prompt_languages = list(languages) if self.language_prompt else None
        return transcribe(self.model, self.processor, audios, prompt_languages, self.max_new_tokens,
                          **self.generate_options)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class SkippedClip:
    """One clip that could not be used: its id, where its audio is, the reason (SKIP_REASONS) and the detail."""

    id: str
    audio: str
    reason: str
    detail: str = ""


@dataclass
class TimedResult:
    ids: list[str]
    references: list[str | None]
    hypotheses: list[str]
    languages: list[str | None]
    durations: list[float]
    skipped: SkipCounter
    skipped_by_language: dict[str, SkipCounter]
    audio_seconds: float
    transcription_seconds: float
    skipped_clips: list[SkippedClip] = field(default_factory=list)  # the clips counted in `skipped`, in input order

    @property
    def rtfx(self) -> float:
        return self.audio_seconds / self.transcription_seconds if self.transcription_seconds else float("inf")


def batches_by_duration(durations: Sequence[float], max_batch_size: int, max_batch_seconds: float | None = None
                        ) -> list[list[int]]:
    """Indices sorted by duration, cut into batches of at most `max_batch_size` clips (and padded seconds)."""
    order = np.argsort(np.asarray(durations), kind="stable")
    batches, current = [], []
    for i in order.tolist():
        longest = durations[i]  # sorted ascending: the newest clip is the longest
        if current and (len(current) >= max_batch_size or
                        (max_batch_seconds is not None and (len(current) + 1) * longest > max_batch_seconds)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def timed_transcription(transcriber: Transcriber, utterances: Sequence[Utterance], batch_size: int = 16,
                        max_batch_seconds: float | None = None, warmup_batches: int = 1,
                        limits: AudioLimits = AudioLimits(), equal_batches=None) -> TimedResult:
    """Transcribe every usable utterance (duration-sorted batches) and time only the transcription.
    `equal_batches(local_count) -> count` pads with untimed repeats of the last batch to that many
    batches, so that ranks sharing collective forwards (ZeRO-3) run the same number."""
    skipped, by_language, kept, audios, skipped_clips = SkipCounter(), {}, [], [], []
    for utt in utterances:
        try:
            audios.append(load_audio(utt, limits))
            kept.append(utt)
        except AudioSkipped as err:
            skipped[err.reason] += 1
            skipped_clips.append(SkippedClip(utt.id, audio_name(utt.audio), err.reason,
                                             str(err).removeprefix(f"{err.reason}: ")))
            by_language.setdefault(utt.language or "unknown", SkipCounter())[err.reason] += 1
    durations = [len(a) / SAMPLE_RATE for a in audios]
    batches = batches_by_duration(durations, batch_size, max_batch_seconds)
    extra = (equal_batches(len(batches)) - len(batches)) if equal_batches is not None else 0
    device = transcriber.device
    for batch in batches[:warmup_batches]:
        transcriber.transcribe([audios[i] for i in batch], [kept[i].language for i in batch])
    hypotheses: list[str] = [""] * len(kept)
    synchronize(device)
    elapsed = 0.0
    for batch in batches:
        start = time.perf_counter()
        texts = transcriber.transcribe([audios[i] for i in batch], [kept[i].language for i in batch])
        synchronize(device)
        elapsed += time.perf_counter() - start
        for i, text in zip(batch, texts):
            hypotheses[i] = text
    for _ in range(extra):  # not timed, results discarded
        filler = batches[-1] if batches else []
        transcriber.transcribe([audios[i] for i in filler] or [np.zeros(SAMPLE_RATE, dtype=np.float32)],
                               [kept[i].language for i in filler] or [None])
    return TimedResult(ids=[u.id for u in kept], references=[u.text for u in kept], hypotheses=hypotheses,
                       languages=[u.language for u in kept], durations=durations, skipped=skipped,
                       skipped_by_language=by_language, audio_seconds=float(sum(durations)),
                       transcription_seconds=elapsed, skipped_clips=skipped_clips)
