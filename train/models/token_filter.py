"""The ASR token filter: which ids decoding may emit.

Blocked: every special/added token of the tokenizer except the EOS set, the audio placeholder
(sampling it would break the next step's placeholder scatter), every id at or above
`block_from_id` (later specials), and every id the tokenizer does not have (the padded tail of
the embedding matrix).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


def allowed_token_mask(tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_ids: list[int],
                       audio_token_id: int, block_from_id: int) -> torch.Tensor:
    """allowed_V: True where decoding may emit the id."""
    allowed_V = torch.zeros(vocab_size, dtype=torch.bool)
    allowed_V[: min(block_from_id, vocab_size, len(tokenizer))] = True
    specials = set(tokenizer.all_special_ids)
    specials |= {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    for i in specials:
        if i < vocab_size:
            allowed_V[i] = False
    allowed_V[audio_token_id] = False
    for i in eos_token_ids:
        if i >= vocab_size:
            raise ValueError(f"EOS id {i} is outside the model vocabulary of {vocab_size}")
        allowed_V[i] = True
    return allowed_V


def apply_token_filter(logits_B_V: torch.Tensor, allowed_V: torch.Tensor) -> torch.Tensor:
    """Blocked ids get -inf, so they have probability exactly 0 after softmax."""
    return logits_B_V.masked_fill(~allowed_V.to(logits_B_V.device), float("-inf"))
