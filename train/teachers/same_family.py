"""A student-shaped teacher: any checkpoint `train.models` loads (a bigger GlmAsr/ARK model).

It builds its own prompt (its tokenizer, its placeholder count), takes the audio through its own
front end when its mel bins differ from the student's, encodes each utterance once and repeats
the audio embeddings for the n samples of that utterance; train.teachers.scoring scores the
student's tokens, `rows_per_forward` rollout rows per forward (None: all at once).
"""

from __future__ import annotations

import torch

from train.models.processor import HOP_LENGTH, prompt_with_language
from train.opd.rollout import Rollout
from train.teachers.base import TokenScores
from train.teachers.scoring import TeacherModel, score_rollout
from train.teachers.token_map import TokenMap


class SameFamilyTeacher:
    """A frozen student-shaped model scoring rollouts (the `Teacher` protocol of train.teachers.base).
    `rows_per_forward` bounds the full-vocabulary logits held at once (rows x tokens x vocab).
    `dropped_positions` counts, for the last call, rollout positions whose sampled token has no teacher
    equivalent (only with another tokenizer; removed from the returned mask); `dropped_positions_total`
    over all calls."""

    def __init__(self, model, processor, student_processor, student_vocab_size: int, name: str = "teacher",
                 language_prompt: bool | None = None, max_unmapped: float = 0.05, rows_per_forward: int | None = None):
        if rows_per_forward is not None and rows_per_forward < 1:
            raise ValueError(f"rows_per_forward must be >= 1, got {rows_per_forward}")
        self.model, self.processor, self.name = model.eval(), processor, name
        # None: prompted as the teacher was trained (its ark_opd_prompt.json), else without the language.
        self.language_prompt = prompt_with_language(language_prompt, processor)
        self.rows_per_forward = rows_per_forward
        self.model.requires_grad_(False)
        self.dropped_positions = self.dropped_positions_total = 0
        # Identity when the tokenizers agree (the usual case); else strings are matched, EOS aliased.
        self.token_map = TokenMap.for_student(student_processor, processor.tokenizer, student_vocab_size,
                                              model.config.text_config.vocab_size, max_unmapped_share=max_unmapped,
                                              teacher_name=name)

    @classmethod
    def from_pretrained(cls, path, student_processor, student_vocab_size: int, dtype=None, device=None,
                        rows_per_forward: int | None = None, **kwargs) -> "SameFamilyTeacher":
        """Any checkpoint `load_student` reads; kwargs (language_prompt, max_unmapped) go to the constructor."""
        from train.models import load_student

        model, processor = load_student(path, dtype=dtype, device=device)
        return cls(model, processor, student_processor, student_vocab_size, name=str(path),
                   rows_per_forward=rows_per_forward, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's log-mel features of each utterance (the batch's own if the front ends agree)."""
        student_bins = batch["input_features"].shape[1]
        if student_bins == self.processor.feature_extractor.feature_size:
            return batch["input_features"], batch["input_features_mask"]
        if "audio" not in batch:
            raise ValueError(f"the teacher uses {self.processor.feature_extractor.feature_size} mel bins, the "
                             f"student {student_bins}: the batch must carry raw audio (data.keep_audio=true)")
        return self.processor.features(batch["audio"])

    def _forward(self, embeds_B_L_D, attention_mask_B_L, position_ids_B_L, logits_to_keep: int) -> torch.Tensor:
        return self.model(inputs_embeds=embeds_B_L_D, attention_mask=attention_mask_B_L, position_ids=position_ids_B_L,
                          logits_to_keep=logits_to_keep).logits

    @torch.no_grad()
    def score(self, batch: dict, rollout: Rollout, extra_ids_B_T_E: torch.Tensor | None = None, k: int = 32,
              temperature: float = 1.0, full: bool = False) -> TokenScores:
        """TokenScores of every rollout position (train.teachers.scoring does the rows, forward and gather)."""
        device, dtype = self.device, next(self.model.parameters()).dtype
        feats, mask = self._features(batch)
        # Each utterance's audio once, however many samples the rollout drew from it.
        audio = self.model.model.get_audio_features(feats.to(device, dtype), mask.to(device)).pooler_output
        samples = [int(f) * HOP_LENGTH for f in mask.sum(-1).tolist()]
        per_utt = torch.split(audio, [self.processor.audio_token_count(n) for n in samples])
        source = [int(s) for s in rollout.source_B.tolist()]
        prompts = {i: self.processor.prompt_ids([samples[i]], [batch["languages"][i] if self.language_prompt
                                                               else None])["input_ids"][0] for i in set(source)}
        model = TeacherModel(self.model.get_input_embeddings(), self._forward, self.processor.audio_token_id,
                             self.processor.pad_token_id, device)
        scores, dropped = score_rollout(model, self.token_map, [prompts[i] for i in source],
                                        [per_utt[i] for i in source], rollout.tokens_B_T, rollout.mask_B_T,
                                        self.rows_per_forward, extra_ids_B_T_E, k, temperature, full)
        self.dropped_positions = dropped
        self.dropped_positions_total += dropped
        return scores
