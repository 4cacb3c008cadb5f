"""The ASR token filter blocks non-text specials, the placeholder and the padded vocabulary tail."""

from __future__ import annotations

import torch

from train.models.token_filter import allowed_token_mask, apply_token_filter


def test_allowed_ids(tokenizer):
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|user|>", "<|assistant|>")]
    allowed = allowed_token_mask(tokenizer, 151936, eos, audio_token_id=151663, block_from_id=151670)
    assert allowed.shape == (151936,)
    # Ordinary BPE tokens are allowed, including multi-byte CJK pieces.
    assert allowed[:151643].all()
    # Every added special token is blocked except the EOS set.
    for token_id in range(151643, 151670):
        assert bool(allowed[token_id]) == (token_id in eos), token_id
    assert not allowed[151663]  # the placeholder
    assert not allowed[151643]  # <|endoftext|> is a special, not in the EOS set here
    assert not allowed[151670:].any()  # padded tail of the embedding matrix


def test_threshold_blocks_ordinary_ids_too(tokenizer):
    allowed = allowed_token_mask(tokenizer, 151936, [151645], audio_token_id=151663, block_from_id=100000)
    assert allowed[99999] and not allowed[100000] and allowed[151645]


def test_filtered_logits_give_zero_probability():
    logits = torch.randn(3, 10)
    allowed = torch.tensor([True] * 5 + [False] * 5)
    probs = torch.softmax(apply_token_filter(logits, allowed), -1)
    assert torch.all(probs[:, 5:] == 0)
    torch.testing.assert_close(probs[:, :5], torch.softmax(logits[:, :5], -1))
