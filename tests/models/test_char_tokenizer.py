"""The character vocabulary: specials at fixed ids, every prompt character known, text in any script
round-trips through the processor, and the decoding filter allows characters and EOS only."""

from __future__ import annotations

import unicodedata

import torch

from tests.conftest import make_clips
from train.config import LANGUAGE_NAMES, ModelConfig, config_from_dict, load_config
from train.models import build_student, load_student, save_student
from train.models.char_tokenizer import AUDIO_TOKEN_ID, SPECIALS, build_char_tokenizer, main

TEXTS = ["Hyvä päivä", "문제 지만", "中心死长", "だけらしいが", "Příliš žluťoučký kůň", "Ça va, garçon?"]


def _student(tmp_path, texts=TEXTS):
    main(["--manifest", str(_manifest(tmp_path, texts)), "--out", str(tmp_path / "tok")])
    cfg = load_config(ModelConfig, "configs/models/toy_student.yaml", [f"tokenizer={tmp_path / 'tok'}"])
    torch.manual_seed(0)
    return build_student(cfg)


def _manifest(tmp_path, texts):
    import json

    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"audio": "x.wav", "text": t, "language": "en"}) + "\n" for t in texts))
    return path


def test_specials_first_and_characters_are_nfd():
    tok = build_char_tokenizer(TEXTS)
    assert [tok.convert_tokens_to_ids(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    assert AUDIO_TOKEN_ID == 2
    vocab = tok.get_vocab()
    assert "\ubb38" not in vocab and "\u1106" in vocab  # Korean as jamo (NFD), not syllables
    assert "ä" not in vocab and "a" in vocab and "\u0308" in vocab  # ä = a + combining diaeresis
    ids = tok("문제", add_special_tokens=False).input_ids
    assert len(ids) == len(unicodedata.normalize("NFD", "문제")) and tok.unk_token_id not in ids


def test_every_language_prompt_is_in_the_vocabulary(tmp_path, tokenizer):
    _, processor = _student(tmp_path)
    for language in [None, *LANGUAGE_NAMES]:
        ids = processor.prompt_ids([16000], [language])["input_ids"][0].tolist()
        assert processor.tokenizer.unk_token_id not in ids, language
        assert ids.count(AUDIO_TOKEN_ID) == processor.audio_token_count(16000)


def test_text_round_trips_through_the_processor_in_nfc(tmp_path):
    _, processor = _student(tmp_path)
    for text in TEXTS:
        ids = processor.tokenizer(text, add_special_tokens=False).input_ids
        assert processor.decode(ids + processor.eos_token_ids[:1] + ids) == unicodedata.normalize("NFC", text)


def test_filter_allows_characters_and_eos_only(tmp_path):
    model, processor = _student(tmp_path)
    vocab_size = model.config.text_config.vocab_size
    allowed = processor.allowed_token_mask(vocab_size)
    n = len(processor.tokenizer)
    assert vocab_size > n and not allowed[n:].any()  # the padded tail of the embedding is never decoded
    assert allowed[len(SPECIALS):n].all()
    assert {i for i in range(len(SPECIALS)) if allowed[i]} == set(processor.eos_token_ids)


def test_saved_student_keeps_its_character_vocabulary(tmp_path):
    model, processor = _student(tmp_path)
    save_student(model, processor, tmp_path / "saved")
    again, processor2 = load_student(tmp_path / "saved")
    assert processor2.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert processor2.audio_token_id == AUDIO_TOKEN_ID
    batch = processor2(make_clips([12000]), texts=["Hyvä"])
    assert (batch["labels"] >= 0).sum() == len(unicodedata.normalize("NFD", "Hyvä")) + 1  # + <|im_end|>
    cfg = config_from_dict(ModelConfig, {"tokenizer": str(tmp_path / "saved")})
    assert cfg.tokenizer
