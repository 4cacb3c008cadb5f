"""Is the model listening? Its loss on dev transcripts with each clip's own audio vs another clip's.

A decoder can lower its training loss by modelling the transcripts alone (ENVIRONMENT.md: tiny
models on a memorisable sentence set ignored the audio for 20 CPU-minutes). Then its NLL is the
same whatever audio it is given. `ListeningProbe` pairs a fixed set of dev transcripts with their
own clips and with the next clip's (texts rolled by one), and reports both NLLs per transcript
token and their difference: the gap is ~0 for a model that ignores the audio and grows as it
learns to listen.
"""

from __future__ import annotations

import torch

from train.data.audio import AudioLimits, AudioSkipped, load_audio
from train.data.manifest import Utterance
from train.supervised import teacher_forced


def transcript_nll(model, batch: dict) -> tuple[float, int]:
    """(summed NLL, token count) of the batch's label tokens under teacher forcing."""
    nll_N, targets_N = teacher_forced(model, batch)
    return float(nll_N.sum()), len(targets_N)


class ListeningProbe:
    """Own- vs swapped-audio NLL on the first `clips` labelled, readable utterances given, prompted
    as in training (`language_prompt`: with each clip's language)."""

    def __init__(self, utterances: list[Utterance], processor, clips: int = 32, batch_size: int = 16,
                 limits: AudioLimits = AudioLimits(), language_prompt: bool = False):
        self.processor, self.batch_size = processor, batch_size
        self.audio, self.texts, self.languages = [], [], []
        for utt in utterances:
            if len(self.audio) == clips:
                break
            if not utt.text:
                continue
            try:
                self.audio.append(load_audio(utt, limits))
            except AudioSkipped:
                continue
            self.texts.append(utt.text)
            self.languages.append(utt.language if language_prompt else None)
        if len(self.audio) < 2:
            raise ValueError(f"the listening probe needs at least 2 labelled, readable clips, found {len(self.audio)}")

    def _mean_nll(self, model, texts: list[str]) -> float:
        """Each clip keeps its own prompt (and language tag); only the transcript it is scored on moves."""
        total, count = 0.0, 0
        for i in range(0, len(self.audio), self.batch_size):
            window = slice(i, i + self.batch_size)
            batch = self.processor(self.audio[window], texts=texts[window], languages=self.languages[window])
            nll, n = transcript_nll(model, batch)
            total, count = total + nll, count + n
        return total / count

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        own = self._mean_nll(model, self.texts)
        swapped = self._mean_nll(model, self.texts[1:] + self.texts[:1])
        return {"own_audio_nll": own, "swapped_audio_nll": swapped, "listening_gap": swapped - own}
