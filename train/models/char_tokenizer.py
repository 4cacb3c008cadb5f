"""A character vocabulary with the ARK prompt's special tokens, for models trained from scratch.

    python -m train.models.char_tokenizer --manifest data/toy_tts/train.jsonl --out runs/toy/tokenizer

A tiny decoder learns 600 characters far sooner than 150k BPE pieces (ENVIRONMENT.md: a character
vocabulary and a CTC head took a 0.94 M model to 1.7 % dev CER in 18 CPU-minutes). Text is NFD-
normalised before it is split: Latin diacritics and Korean syllables become base letters plus
combining marks / jamo (about 70 symbols for Korean instead of 11,000 syllables), and decoding
composes them back (NFC) in `ArkProcessor.decode`.

The special tokens come first, at fixed ids, so a model config can name them without knowing the
character inventory: `<|audio|>` is id 2 and every character sorts after id 7. It is a Hugging
Face fast tokenizer (the `tokenizers` library's WordLevel model over single characters), saved
and loaded like any other; `load_student` reads it from the model folder.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from train.cli import HelpFormatter
from train.config import LANGUAGE_NAMES, PromptConfig

SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|audio|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|user|>",
            "<|assistant|>", "<unk>"]
AUDIO_TOKEN_ID = SPECIALS.index("<|audio|>")


def prompt_characters(prompt: PromptConfig | None = None) -> set[str]:
    """Every character the ARK prompt can contain, language-tagged or not."""
    prompt = prompt or PromptConfig()
    texts = [prompt.instruction] + [prompt.language_instruction.format(language=n) for n in LANGUAGE_NAMES.values()]
    return set(unicodedata.normalize("NFD", "".join(texts)))


def build_char_tokenizer(texts, prompt: PromptConfig | None = None) -> PreTrainedTokenizerFast:
    """Specials at ids 0-7, then every character of `texts` (NFD) and of the prompt, sorted."""
    chars = set(prompt_characters(prompt))
    for text in texts:
        chars.update(unicodedata.normalize("NFD", text))
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.NFD()
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()  # characters back to back, spaces are their own tokens
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:7]})
    for i, token in enumerate(SPECIALS):
        if tok.convert_tokens_to_ids(token) != i:
            raise RuntimeError(f"special token {token} landed at id {tok.convert_tokens_to_ids(token)}, expected {i}")
    return tok


def manifest_texts(paths: list[str]):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line).get("text") or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--manifest", action="append", required=True, help="labelled manifests; repeat for several")
    parser.add_argument("--out", required=True, help="folder to save the tokenizer in")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    tok = build_char_tokenizer(manifest_texts(args.manifest))
    tok.save_pretrained(args.out)
    print(f"{len(tok)} tokens ({len(tok) - len(SPECIALS)} characters) -> {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
