"""Placeholder counts, the exact prompt text, language tags, per-clip features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_clips
from train.config import PromptConfig, TokensConfig
from train.models.processor import ArkProcessor, audio_token_count, make_feature_extractor


@pytest.fixture(scope="module")
def processor(tokenizer):
    return ArkProcessor(tokenizer, make_feature_extractor(80))


def _conv_then_merge(num_samples: int) -> int:
    """Independent count: run the actual conv shapes (k=3,p=1,s=1 then k=3,p=1,s=2) and merge 4."""
    frames = num_samples // 160
    x = torch.zeros(1, 1, frames)
    x = torch.nn.functional.conv1d(x, torch.zeros(1, 1, 3), padding=1)
    x = torch.nn.functional.conv1d(x, torch.zeros(1, 1, 3), padding=1, stride=2)
    return max(x.shape[-1] // 4, 1)


def test_placeholder_count_formula():
    assert audio_token_count(16000) == 12
    assert audio_token_count(30 * 16000) == 375
    assert audio_token_count(0) == 1
    for n in [1120, 1279, 1280, 2559, 2560, 12345, 16159, 16160, 99999, 480000]:
        assert audio_token_count(n) == _conv_then_merge(n), n


def test_prompt_is_exact(processor):
    expected = ("<|user|><|begin_of_audio|>" + "<|audio|>" * 12 + "<|end_of_audio|>"
                "Please transcribe this audio.<|assistant|>")
    assert processor.prompt(16000) == expected
    assert processor.target("hello") == "hello<|im_end|>"
    assert processor.audio_token_count(16000) == 12


def test_prompt_tokens_are_single_special_ids(processor, tokenizer):
    ids = processor.encode(processor.prompt(16000))
    assert ids[:2] == [tokenizer.convert_tokens_to_ids("<|user|>"), tokenizer.convert_tokens_to_ids("<|begin_of_audio|>")]
    assert ids.count(151663) == 12
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert "\n" not in processor.prompt(16000)


def test_language_tagged_prompt(processor):
    assert processor.prompt(16000, "de").endswith("Please transcribe this audio in German.<|assistant|>")
    assert processor.prompt(16000, "zh").endswith("in Chinese.<|assistant|>")
    with pytest.raises(ValueError, match="'xx'"):
        processor.prompt(16000, "xx")


def test_custom_language_template(tokenizer):
    proc = ArkProcessor(tokenizer, make_feature_extractor(80),
                        prompt=PromptConfig(language_instruction="Transcribe in {language}, do not translate."))
    assert proc.prompt(16000, "fr").endswith("Transcribe in French, do not translate.<|assistant|>")


def test_audio_token_id_must_exist_in_tokenizer(tokenizer):
    for bad in (5, 10**7):  # an ordinary BPE token; an id outside the tokenizer
        with pytest.raises(ValueError, match=f"audio_token_id={bad}"):
            ArkProcessor(tokenizer, make_feature_extractor(80), tokens=TokensConfig(audio_token_id=bad))


def test_features_do_not_depend_on_batch(processor):
    clips = make_clips([16000, 7000, 40000])
    feats, mask = processor.features(clips)
    assert feats.shape == (3, 80, 250)
    assert mask.sum(-1).tolist() == [100, 43, 250]
    for i, clip in enumerate(clips):
        alone, alone_mask = processor.features([clip])
        n = int(alone_mask.sum())
        torch.testing.assert_close(feats[i, :, :n], alone[0, :, :n], rtol=0, atol=0)
        assert torch.all(feats[i, :, n:] == 0)


def test_generation_batch_is_left_padded_and_counts_match(processor):
    clips = make_clips([16000, 7000])
    batch = processor(clips, languages=[None, "de"])
    ids, attn = batch["input_ids"], batch["attention_mask"]
    assert attn[:, -1].all() and not attn[1, 0]  # right-aligned prompts
    for row, clip in zip(ids, clips):
        assert int((row == 151663).sum()) == processor.audio_token_count(len(clip))


def test_training_batch_labels_cover_only_target(processor, tokenizer):
    clips = make_clips([16000, 7000])
    batch = processor(clips, texts=["hello world", "hi"])
    for row_ids, row_labels, text in zip(batch["input_ids"], batch["labels"], ["hello world", "hi"]):
        target = row_labels[row_labels != -100]
        assert tokenizer.decode(target) == text + "<|im_end|>"
        start = int((row_labels != -100).nonzero()[0])
        assert row_ids[start - 1] == tokenizer.convert_tokens_to_ids("<|assistant|>")


def test_short_clip_gets_one_placeholder_and_features(processor):
    batch = processor([np.zeros(100, dtype=np.float32)])
    assert int((batch["input_ids"] == 151663).sum()) == 1
    assert int(batch["input_features_mask"].sum()) == 7


def test_unknown_eos_token_fails_naming_it(tokenizer):
    with pytest.raises(ValueError, match=r"tokens.eos_tokens: \['<\|stop\|>'\]"):
        ArkProcessor(tokenizer, make_feature_extractor(80), tokens=TokensConfig(eos_tokens=["<|im_end|>", "<|stop|>"]))
