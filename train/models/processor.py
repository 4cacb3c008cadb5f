"""Audio features, placeholder counts and the exact ARK prompt: everything between a clip and token ids.

Prompt (no newlines):
    <|user|><|begin_of_audio|>{<|audio|> x n}<|end_of_audio|>{instruction}<|assistant|>
Target:
    {text}<|im_end|>
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, WhisperFeatureExtractor

from train.config import LANGUAGE_NAMES, PromptConfig, TokensConfig
from train.models.token_filter import allowed_token_mask

SAMPLE_RATE = 16000
HOP_LENGTH = 160
# The stride-2 conv needs >= 7 mel frames to give the merge step 4 frames (one placeholder):
# shorter clips are padded with silence up to this many samples.
MIN_SAMPLES = 7 * HOP_LENGTH
PROMPT_FILE = "ark_opd_prompt.json"


def audio_token_count_from_frames(num_frames: int | torch.Tensor, merge_factor: int = 4):
    """Placeholders for `num_frames` mel frames: stride-2 conv, then merge; at least one."""
    if isinstance(num_frames, torch.Tensor):
        return (((num_frames + 1) // 2) // merge_factor).clamp(min=1)
    return max(((num_frames + 1) // 2) // merge_factor, 1)


def audio_token_count(num_samples: int, merge_factor: int = 4) -> int:
    """n = max(((num_samples // 160 + 1) // 2) // merge, 1): 12 for 1 s, 375 for 30 s at 16 kHz."""
    return audio_token_count_from_frames(num_samples // HOP_LENGTH, merge_factor)


class ArkProcessor:
    """Tokenizer + Whisper log-mel front end + the ARK prompt format."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, feature_extractor: WhisperFeatureExtractor,
                 tokens: TokensConfig | None = None, prompt: PromptConfig | None = None, merge_factor: int = 4,
                 language_prompt: bool | None = None):
        # How the model was prompted in training: True = with each clip's language (`language_instruction`),
        # False = without, None = not recorded (a fresh model, an older checkpoint, a released ARK model).
        # Saved in ark_opd_prompt.json; `prompt_with_language` makes it the default wherever the model decodes.
        self.language_prompt = language_prompt
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.tokens = tokens or TokensConfig()
        self.prompt_cfg = prompt or PromptConfig()
        self.merge_factor = merge_factor
        self.audio_token_id = self.tokens.audio_token_id
        added = tokenizer.added_tokens_decoder
        if self.audio_token_id not in added:
            raise ValueError(f"tokens.audio_token_id={self.audio_token_id} is not an added special token of the "
                             "tokenizer (the placeholder must be one token that text never produces)")
        self.audio_token = added[self.audio_token_id].content
        for name in ("<|user|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|assistant|>", "<|im_end|>"):
            if tokenizer.convert_tokens_to_ids(name) in (None, tokenizer.unk_token_id):
                raise ValueError(f"tokenizer has no special token {name}; the ARK prompt needs it")
        vocab = tokenizer.get_vocab()
        unknown = [t for t in self.tokens.eos_tokens if t not in vocab]
        if unknown:
            raise ValueError(f"tokens.eos_tokens: {unknown} are not tokens of the tokenizer")
        self.eos_token_ids = sorted({vocab[t] for t in self.tokens.eos_tokens}
                                    | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        self._allowed: dict[int, torch.Tensor] = {}
        # Padding is masked everywhere; a tokenizer without a pad token pads with its first EOS id.
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]

    # ---- counts and text -------------------------------------------------------------------
    def audio_token_count(self, num_samples: int) -> int:
        """Number of `<|audio|>` placeholders for a clip of `num_samples` samples at 16 kHz."""
        return audio_token_count(max(num_samples, MIN_SAMPLES), self.merge_factor)

    def instruction(self, language: str | None = None) -> str:
        if language is None:
            return self.prompt_cfg.instruction
        if language not in LANGUAGE_NAMES:
            raise ValueError(f"language {language!r} has no name in train.config.LANGUAGE_NAMES")
        return self.prompt_cfg.language_instruction.format(language=LANGUAGE_NAMES[language])

    def prompt(self, num_samples: int, language: str | None = None) -> str:
        """The exact prompt text, placeholders expanded; `language` (ISO 639-1) forces the output language."""
        n = self.audio_token_count(num_samples)
        return (f"<|user|><|begin_of_audio|>{self.audio_token * n}<|end_of_audio|>"
                f"{self.instruction(language)}<|assistant|>")

    @staticmethod
    def target(text: str) -> str:
        return f"{text}<|im_end|>"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: Sequence[int]) -> str:
        """Transcript text: stops at the first EOS id, drops special tokens, composes characters (NFC:
        a character vocabulary spells é and Korean syllables as NFD parts)."""
        ids = list(ids)
        for i, t in enumerate(ids):
            if t in self.eos_token_ids:
                ids = ids[:i]
                break
        return unicodedata.normalize("NFC", self.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    def allowed_token_mask(self, vocab_size: int) -> torch.Tensor:
        """allowed_V for decoding: the ASR token filter of this tokenizer and model vocabulary.
        Built once per vocabulary size (every rollout and transcription asks for it)."""
        if vocab_size not in self._allowed:
            self._allowed[vocab_size] = allowed_token_mask(self.tokenizer, vocab_size, self.eos_token_ids,
                                                           self.audio_token_id, self.tokens.block_from_id)
        return self._allowed[vocab_size]

    # ---- features --------------------------------------------------------------------------
    def features(self, audios: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features padded to the longest clip: feats_B_M_F (zeros past each clip) and mask_B_F.

        Each clip is featurised on its own, so a clip's frames never depend on the other clips in the
        batch (Whisper's extractor, given a batch, pads the waveforms first and the last STFT frames
        of shorter clips would then see zeros instead of their own reflection padding).
        """
        per_clip = []
        for audio in audios:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1:
                raise ValueError(f"expected mono 1-D audio, got shape {audio.shape}")
            if len(audio) < MIN_SAMPLES:
                audio = np.pad(audio, (0, MIN_SAMPLES - len(audio)))
            feats = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, padding="longest",
                                           return_tensors="np").input_features[0]
            per_clip.append(feats[:, : len(audio) // HOP_LENGTH])
        num_frames = max(f.shape[1] for f in per_clip)
        feats_B_M_F = torch.zeros(len(per_clip), self.feature_extractor.feature_size, num_frames)
        mask_B_F = torch.zeros(len(per_clip), num_frames, dtype=torch.long)
        for i, f in enumerate(per_clip):
            feats_B_M_F[i, :, : f.shape[1]] = torch.from_numpy(f)
            mask_B_F[i, : f.shape[1]] = 1
        return feats_B_M_F, mask_B_F

    # ---- batches ---------------------------------------------------------------------------
    def prompt_ids(self, num_samples: Sequence[int], languages: Sequence[str | None]) -> dict[str, torch.Tensor]:
        """Left-padded prompts (`input_ids`, `attention_mask`), ready for generation."""
        prompts = [self.encode(self.prompt(n, lang)) for n, lang in zip(num_samples, languages)]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        return {"input_ids": ids, "attention_mask": attn}

    def prompt_target_ids(self, num_samples: Sequence[int], languages: Sequence[str | None],
                          texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded prompt + target and `labels` (-100 on prompt and padding), for teacher forcing."""
        prompts = [self.encode(self.prompt(n, lang)) for n, lang in zip(num_samples, languages)]
        targets = [self.encode(self.target(t)) for t in texts]
        width = max(len(p) + len(t) for p, t in zip(prompts, targets))
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, t) in enumerate(zip(prompts, targets)):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            attn[i, : len(p) + len(t)] = 1
            labels[i, len(p): len(p) + len(t)] = torch.tensor(t)
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}

    def __call__(self, audios: Sequence[np.ndarray], languages: Sequence[str | None] | None = None,
                 texts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """A model batch. Without `texts`: left-padded prompts, ready for generation. With `texts`:
        right-padded prompt + target, and `labels` (-100 on prompt and padding) for teacher forcing."""
        languages = list(languages) if languages is not None else [None] * len(audios)
        feats_B_M_F, mask_B_F = self.features(audios)
        lengths = [len(a) for a in audios]
        ids = self.prompt_ids(lengths, languages) if texts is None else self.prompt_target_ids(lengths, languages, texts)
        return {**ids, "input_features": feats_B_M_F, "input_features_mask": mask_B_F}

    # ---- persistence -----------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.tokenizer.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)
        saved = {"tokens": asdict(self.tokens), "prompt": asdict(self.prompt_cfg), "merge_factor": self.merge_factor}
        if self.language_prompt is not None:
            saved["language_prompt"] = self.language_prompt
        (path / PROMPT_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def prompt_with_language(asked: bool | None, processor: "ArkProcessor") -> bool:
    """Whether to tell the model each clip's language: as asked (a flag, a config key), else as the model
    was trained (its ark_opd_prompt.json), else not."""
    if asked is not None:
        return asked
    return bool(processor.language_prompt)


def make_feature_extractor(num_mel_bins: int = 128) -> WhisperFeatureExtractor:
    """Whisper's log-mel front end (25 ms window, 10 ms hop, 16 kHz), built offline."""
    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH,
                                   chunk_length=30, n_fft=400, padding_value=0.0, return_attention_mask=False)
