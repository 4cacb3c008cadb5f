"""Rollouts: the student transcribes a batch on-policy (KV cache, ASR token filter, no gradient),
and later re-scores its own tokens with gradient.

Rollout rows are utterances repeated `n_samples` times; `source_B` says which utterance of the
batch each row came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from train.models.generation import generate, left_padded_positions
from train.models.scored_head import ScoredPositions


@dataclass
class Rollout:
    """tokens_B_T: sampled ids, pad after EOS; mask_B_T: True up to and including EOS;
    logprobs_B_T: the student's log-probs of them at sampling time (filtered, temperature 1);
    source_B: the batch row each rollout row came from; prompt_ids_B_S / prompt_mask_B_S: each row's
    left-padded prompt; student_topk_ids_B_T_K: the student's top-k ids at each step (for the union loss)."""

    tokens_B_T: torch.Tensor
    mask_B_T: torch.Tensor
    logprobs_B_T: torch.Tensor
    source_B: torch.Tensor
    prompt_ids_B_S: torch.Tensor
    prompt_mask_B_S: torch.Tensor
    student_topk_ids_B_T_K: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.mask_B_T.sum())


def clip_sample_keys(seed: int, ids: list[str], n_samples: int) -> torch.Tensor:
    """One int64 sampling key per rollout row (clip-major, as `rollout` lays them out), from the seed,
    the clip's id and the sample's index only: a clip draws the same samples in any batch layout."""
    keys = []
    for clip in ids:
        for k in range(n_samples):
            digest = hashlib.blake2b(f"{seed}/{clip}/{k}".encode(), digest_size=8).digest()
            keys.append(int.from_bytes(digest, "little", signed=True))
    return torch.tensor(keys, dtype=torch.long)


def _model_inputs(batch: dict, source_B: torch.Tensor, device, dtype) -> dict:
    return {"input_features": batch["input_features"][source_B].to(device, dtype),
            "input_features_mask": batch["input_features_mask"][source_B].to(device)}


@torch.no_grad()
def rollout(model, processor, batch: dict, n_samples: int = 1, max_new_tokens: int = 256, do_sample: bool = False,
            temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None,
            topk: int | None = None, all_done=None, sample_seed: int | None = None, decoder=None) -> Rollout:
    """Sample `n_samples` transcripts per utterance of `batch` (a collator batch) with the student.
    With `sample_seed`, each clip's samples are keyed by (sample_seed, its id, sample index) instead
    of drawn from `generator` (see `clip_sample_keys`). `decoder`: a train.decode engine (default: the
    eager reference loop)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    source_B = torch.arange(batch["prompt_ids"].shape[0]).repeat_interleave(n_samples)
    prompt_ids = batch["prompt_ids"][source_B].to(device)
    prompt_mask = batch["prompt_mask"][source_B].to(device)
    keys = None
    if do_sample and sample_seed is not None:
        keys = clip_sample_keys(sample_seed, [str(i) for i in batch["ids"]], n_samples)
    was_training = model.training
    model.eval()
    try:
        decode = decoder.generate if decoder is not None else generate
        out = decode(model, {"input_ids": prompt_ids, "attention_mask": prompt_mask,
                             **_model_inputs(batch, source_B, device, dtype)},
                     processor.allowed_token_mask(model.config.text_config.vocab_size), processor.eos_token_ids,
                     processor.pad_token_id, max_new_tokens=max_new_tokens, do_sample=do_sample,
                     temperature=temperature, top_p=top_p, generator=generator, return_topk=topk,
                     all_done=all_done, sample_keys_B=keys)
    finally:
        model.train(was_training)
    return Rollout(tokens_B_T=out.tokens_B_T, mask_B_T=out.mask_B_T, logprobs_B_T=out.logprobs_B_T,
                   source_B=source_B.to(device), prompt_ids_B_S=prompt_ids, prompt_mask_B_S=prompt_mask,
                   student_topk_ids_B_T_K=out.topk_ids_B_T_K)


def _rollout_inputs(model, batch: dict, rollout: Rollout) -> dict:
    """The student's inputs for one forward over each row's prompt + sampled tokens."""
    param = next(model.parameters())
    ids = torch.cat([rollout.prompt_ids_B_S, rollout.tokens_B_T], dim=1)
    mask = torch.cat([rollout.prompt_mask_B_S, rollout.mask_B_T.long()], dim=1)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": left_padded_positions(mask),
            **_model_inputs(batch, rollout.source_B.cpu(), param.device, param.dtype)}


def rescore(model, batch: dict, rollout: Rollout) -> torch.Tensor:
    """Student logits_B_T_V at each rollout position (the distribution each sampled token was drawn
    from): one forward over prompt + sampled tokens. Full logits: for diagnostics; training scores
    only the positions it needs with `rescore_at`."""
    new = rollout.tokens_B_T.shape[1]
    out = model(**_rollout_inputs(model, batch, rollout), logits_to_keep=new + 1)
    # The last new+1 positions run from the prompt's last token (which predicts token 0) to the last
    # sampled token (which predicts nothing we score): drop that one.
    return out.logits[:, :new]


def rescore_at(model, batch: dict, rollout: Rollout, mask_B_T: torch.Tensor,
               per_token: Callable[[torch.Tensor, slice], torch.Tensor], chunk: int) -> torch.Tensor:
    """`per_token(logits_n_V, positions)` at the rollout positions where `mask_B_T` is true (N of
    them, row by row), with gradient when enabled; logits exist for `chunk` positions at a time."""
    prompt_width = rollout.prompt_ids_B_S.shape[1]  # column S-1+t predicts token t
    scored = ScoredPositions.where(mask_B_T, per_token, chunk, offset=prompt_width - 1)
    return model(**_rollout_inputs(model, batch, rollout), scored=scored)
