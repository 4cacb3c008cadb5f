"""The offline Qwen2.5 + ARK tokenizer: known Qwen2.5 ids, specials at ARK's ids, the on-disk cache."""

from __future__ import annotations

from train.models.tokenizer import ARK_SPECIALS, QWEN25_SPECIALS, build_qwen25_ark_tokenizer


def test_known_qwen25_ids(tokenizer):
    # Ids every Qwen2/2.5 tokenizer gives (public vocabulary): "Hello" 9707, " world" 1879.
    assert tokenizer("Hello world", add_special_tokens=False).input_ids == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645 == tokenizer.eos_token_id
    assert len(tokenizer) == 151670


def test_specials_are_single_tokens_at_fixed_ids(tokenizer):
    for offset, token in enumerate(QWEN25_SPECIALS + ARK_SPECIALS):
        assert tokenizer(token, add_special_tokens=False).input_ids == [151643 + offset], token
    assert tokenizer.convert_tokens_to_ids("<|audio|>") == 151663


def test_round_trip_of_the_19_languages_scripts(tokenizer):
    text = "Grüße, 你好世界, こんにちは, 안녕하세요, žluťoučký kůň, Łódź, ő ű, ä ö õ ü, ą č ę ė į š ų ū ž"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_cache_is_written_and_reused(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("ARK_OPD_CACHE", str(tmp_path))
    built = build_qwen25_ark_tokenizer()
    cached = list(tmp_path.glob("*/tokenizer.json"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.tmp*"))
    again = build_qwen25_ark_tokenizer()
    text = "<|user|>Bonjour à tous<|im_end|>"
    assert again(text).input_ids == built(text).input_ids == tokenizer(text).input_ids
