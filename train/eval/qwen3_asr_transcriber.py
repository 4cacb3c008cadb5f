"""A Qwen3-ASR model behind the Transcriber interface (evaluation and pseudo-labelling), through
transformers' own `apply_transcription_request` and `generate`: the language is forced with the
`language {Name}<asr_text>` prefix when the manifest gives one the model knows."""

from __future__ import annotations

from pathlib import Path

import torch


class Qwen3ASRTranscriber:
    def __init__(self, model, processor, name: str = "qwen3_asr", max_new_tokens: int = 256):
        from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

        self.model, self.processor, self.name = model.eval(), processor, name
        self.max_new_tokens = max_new_tokens
        self.known_languages = set(LANGUAGE_CODE_TO_NAME)

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, dtype=None, max_new_tokens: int = 256):
        from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration

        model = Qwen3ASRForConditionalGeneration.from_pretrained(path, dtype=dtype or "auto")
        processor = AutoProcessor.from_pretrained(path)
        return cls(model.to(device) if device else model, processor, name=str(path), max_new_tokens=max_new_tokens)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def transcribe(self, audios, languages) -> list[str]:
        forced = [lang if lang in self.known_languages else None for lang in languages]
        inputs = self.processor.apply_transcription_request(list(audios), language=forced)
        dtype = next(self.model.parameters()).dtype
        inputs = {k: v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = [self.processor.decode(row, return_format="transcription_only") for row in new]
        return [t if isinstance(t, str) else t.get("transcription", "") for t in texts]
