"""Token ids between a student and a teacher tokenizer: same token string, same token.

    tmap = TokenMap.for_student(student_processor, teacher_tokenizer, student_vocab_size, teacher_vocab_size)
    teacher_ids = tmap.to_teacher(rollout.tokens_B_T)      # -1 where the teacher has no such token
    scores = tmap.gather_scores(teacher_logits_B_T_Vt, rollout.tokens_B_T, rollout.mask_B_T, k=32, ...)

Tokens match by their string in `get_vocab()` (added/special tokens by their content), so a Qwen3
teacher and a Qwen2.5+ARK student share their 151,643 BPE ids and `<|im_end|>`, while ARK's own
specials have no plain equivalent. Every id of the student's EOS set is aliased to the teacher's
end-of-turn token, so the teacher scores the student's end of transcript whichever EOS it chose.
In distributions (top-k, extra ids) a teacher token stands for ONE student id, its own (the one
with the same string): otherwise the teacher's end-of-turn mass would be counted once per alias.
This module is the one place where ids cross between vocabularies.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from train.teachers.base import TokenScores, gather_scores, logp_at, logsumexp_B_T, topk_logp

DEFAULT_MAX_UNMAPPED_SHARE = 0.05


def _name(tokenizer: PreTrainedTokenizerBase, name: str | None) -> str:
    return name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _map_table(source_vocab: dict[str, int], target_vocab: dict[str, int], size: int) -> torch.Tensor:
    """table[i] = the target id of the token whose source id is i; -1 where none (or i has no token)."""
    table = torch.full((size,), -1, dtype=torch.long)
    pairs = [(i, target_vocab[tok]) for tok, i in source_vocab.items() if i < size and tok in target_vocab]
    if pairs:
        ids = torch.tensor(pairs, dtype=torch.long)
        table[ids[:, 0]] = ids[:, 1]
    return table


class TokenMap:
    """student_to_teacher (len = student model vocab) and teacher_to_student (len = teacher model vocab),
    -1 where a token has no equivalent; ids past a tokenizer's end (embedding padding) map to -1.

    `decodable_V` (the student's ASR token filter) defines `unmapped_share`: the share of ids the
    student can emit that the teacher cannot score. Above `max_unmapped_share` the constructor
    raises: with a foreign vocabulary, distillation would silently drop most positions.
    """

    def __init__(self, student_tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase,
                 student_vocab_size: int, teacher_vocab_size: int, student_eos_ids=(),
                 teacher_eos_token: str = "<|im_end|>", decodable_V: torch.Tensor | None = None,
                 max_unmapped_share: float = DEFAULT_MAX_UNMAPPED_SHARE, student_name: str | None = None,
                 teacher_name: str | None = None):
        self.student_name = _name(student_tokenizer, student_name)
        self.teacher_name = _name(teacher_tokenizer, teacher_name)
        self.student_vocab_size, self.teacher_vocab_size = student_vocab_size, teacher_vocab_size
        student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        for who, vocab, size in (("student", student_vocab, student_vocab_size),
                                 ("teacher", teacher_vocab, teacher_vocab_size)):
            if max(vocab.values()) >= size:
                raise ValueError(f"{who} tokenizer has ids up to {max(vocab.values())}, beyond its model "
                                 f"vocabulary of {size}")
        self.is_identity = student_vocab == teacher_vocab and student_vocab_size == teacher_vocab_size
        self.eos_aliases: dict[int, int] = {}
        self.teacher_eos_id = teacher_vocab.get(teacher_eos_token, teacher_tokenizer.eos_token_id)
        if self.is_identity:
            # Same vocabulary, same model family: the ids already mean the same thing, EOS set included.
            self.student_to_teacher = torch.arange(student_vocab_size)
            self.teacher_to_student = torch.arange(teacher_vocab_size)
        else:
            self.student_to_teacher = _map_table(student_vocab, teacher_vocab, student_vocab_size)
            self.teacher_to_student = _map_table(teacher_vocab, student_vocab, teacher_vocab_size)
            if self.teacher_eos_id is not None:
                for i in student_eos_ids:
                    self.student_to_teacher[i] = self.teacher_eos_id
                    self.eos_aliases[int(i)] = int(self.teacher_eos_id)

        if decodable_V is None:
            decodable_V = torch.zeros(student_vocab_size, dtype=torch.bool)
            decodable_V[sorted(student_vocab.values())] = True
        decodable_V = decodable_V.to(torch.bool).cpu()
        if decodable_V.numel() != student_vocab_size:
            raise ValueError(f"decodable_V has {decodable_V.numel()} entries, the student vocabulary "
                             f"{student_vocab_size}")
        self.num_decodable = int(decodable_V.sum())
        self.unmapped_decodable_ids = torch.nonzero(decodable_V & (self.student_to_teacher < 0)).flatten()
        self.unmapped_share = len(self.unmapped_decodable_ids) / max(self.num_decodable, 1)
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}
        if self.unmapped_share > max_unmapped_share:
            raise ValueError(
                f"student tokenizer {self.student_name} and teacher tokenizer {self.teacher_name}: "
                f"{self.unmapped_share:.2%} of the student's decodable ids ({len(self.unmapped_decodable_ids)} of "
                f"{self.num_decodable}) have no teacher token with the same string, above the limit of "
                f"{max_unmapped_share:.2%}. The teacher cannot score those tokens; pick a teacher with the same "
                "base vocabulary (or raise the config key teacher.max_unmapped knowingly).")
        if student_eos_ids and self.teacher_eos_id is None:
            raise ValueError(f"teacher tokenizer {self.teacher_name} has no {teacher_eos_token} and no eos token: "
                             "nothing to score the student's end of transcript with")

    @classmethod
    def for_student(cls, processor, teacher_tokenizer: PreTrainedTokenizerBase, student_vocab_size: int,
                    teacher_vocab_size: int, **kwargs) -> "TokenMap":
        """From the student's ArkProcessor: its tokenizer, EOS set and ASR token filter."""
        return cls(processor.tokenizer, teacher_tokenizer, student_vocab_size, teacher_vocab_size,
                   student_eos_ids=processor.eos_token_ids,
                   decodable_V=processor.allowed_token_mask(student_vocab_size), **kwargs)

    # ---- ids each way ----------------------------------------------------------------------
    def _table(self, which: str, device: torch.device) -> torch.Tensor:
        key = (which, device)
        if key not in self._tables:
            self._tables[key] = getattr(self, which).to(device)
        return self._tables[key]

    def _map(self, ids: torch.Tensor, which: str) -> torch.Tensor:
        table = self._table(which, ids.device)
        valid = (ids >= 0) & (ids < table.numel())
        return torch.where(valid, table[ids.clamp(0, table.numel() - 1)], torch.full_like(ids, -1))

    def to_teacher(self, student_ids: torch.Tensor) -> torch.Tensor:
        """Teacher ids of student ids (EOS set aliased); -1 where the teacher has no such token."""
        return self._map(student_ids, "student_to_teacher")

    def to_student(self, teacher_ids: torch.Tensor) -> torch.Tensor:
        """Student ids of teacher ids; -1 where the student has no such token."""
        return self._map(teacher_ids, "teacher_to_student")

    # ---- scores ----------------------------------------------------------------------------
    def gather_scores(self, logits_B_T_Vt: torch.Tensor, tokens_B_T: torch.Tensor, mask_B_T: torch.Tensor, k: int,
                      temperature: float = 1.0, extra_ids_B_T_E: torch.Tensor | None = None,
                      full: bool = False) -> tuple[TokenScores, int]:
        """TokenScores in the student's vocabulary from teacher logits aligned with the rollout, and the
        number of rollout positions dropped because the sampled token has no teacher equivalent.

        Log-probs are over the teacher's FULL vocabulary (value - logsumexp), gathered at mapped ids:
        scattering into the student's vocabulary and normalising there would renormalise over a
        subset (the teacher's mass on its own specials would vanish) and count EOS aliases twice.
        Dropped positions have sampled_logp 0 and are False in mask_B_T. A sampled EOS alias is scored as
        the teacher's end of turn; as an extra id it gets -inf (the teacher's own id carries that mass).
        """
        if self.is_identity:
            return gather_scores(logits_B_T_Vt, tokens_B_T, mask_B_T, k, temperature, extra_ids_B_T_E, full), 0
        if full:
            raise ValueError(f"full-vocabulary log-probs need identical vocabularies; student {self.student_name} "
                             f"and teacher {self.teacher_name} differ: use top-k and extra ids instead")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        lse1_B_T = logsumexp_B_T(logits_B_T_Vt)
        lseT_B_T = lse1_B_T if temperature == 1.0 else logsumexp_B_T(logits_B_T_Vt, temperature)
        teacher_tokens_B_T = self.to_teacher(tokens_B_T)
        mappable_B_T = teacher_tokens_B_T >= 0
        sampled = logp_at(logits_B_T_Vt, teacher_tokens_B_T.clamp(min=0)[..., None], lse1_B_T).squeeze(-1)
        sampled = sampled.masked_fill(~mappable_B_T, 0.0)
        top_logp, top_teacher_ids = topk_logp(logits_B_T_Vt, k, lseT_B_T, temperature)
        extra_logp = None
        if extra_ids_B_T_E is not None:
            teacher_extra = self.to_teacher(extra_ids_B_T_E)
            # An EOS alias (<|user|> -> <|im_end|>) is not the student id of <|im_end|>: -inf, as if absent.
            own = (teacher_extra >= 0) & (self.to_student(teacher_extra) == extra_ids_B_T_E)
            extra_logp = logp_at(logits_B_T_Vt, teacher_extra.clamp(min=0), lseT_B_T, temperature)
            extra_logp = extra_logp.masked_fill(~own, float("-inf"))
        dropped = int((mask_B_T.bool() & ~mappable_B_T).sum())
        scores = TokenScores(sampled_logp_B_T=sampled, topk_ids_B_T_K=self.to_student(top_teacher_ids),
                             topk_logp_B_T_K=top_logp, mask_B_T=mask_B_T.bool() & mappable_B_T,
                             extra_ids_B_T_E=extra_ids_B_T_E, extra_logp_B_T_E=extra_logp, temperature=temperature)
        return scores, dropped

    def summary(self) -> dict:
        """What the map did, for logs: identity or not, EOS aliases, the unmapped share of decodable ids."""
        return {"student": self.student_name, "teacher": self.teacher_name, "identity": self.is_identity,
                "student_vocab_size": self.student_vocab_size, "teacher_vocab_size": self.teacher_vocab_size,
                "mapped_student_ids": int((self.student_to_teacher >= 0).sum()),
                "teacher_eos_id": self.teacher_eos_id, "eos_aliases": dict(self.eos_aliases),
                "decodable": self.num_decodable, "unmapped_decodable": len(self.unmapped_decodable_ids),
                "unmapped_share": self.unmapped_share}
