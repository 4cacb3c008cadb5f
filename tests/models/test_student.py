"""The student model: padded frames masked in the encoder, batch invariance, trainable parts, LoRA."""

from __future__ import annotations

import pytest
import torch
from transformers.models.glmasr.modeling_glmasr import GlmAsrEncoder

from tests.conftest import make_clips, sharpen, tiny_config
from train.models import build_student, generate

LENGTHS = [16000, 5230, 33333, 1000, 48000, 23999, 8000, 12345]  # 1 s, 0.3 s, 2.1 s, 60 ms, 3 s, ...


def _unpadded_reference(model, feats_M_F):
    """transformers' own (unmasked) GlmAsrEncoder on exactly the clip's frames, then merge + projector."""
    tower = model.model.audio_tower
    hidden = GlmAsrEncoder.forward(tower, feats_M_F[None]).last_hidden_state[0]
    usable = (hidden.shape[0] // 4) * 4
    merged = hidden[:usable].reshape(usable // 4, -1)
    return model.model.multi_modal_projector(merged)


def test_masked_encoder_equals_unpadded_reference(tiny_student):
    model, processor = tiny_student
    clips = make_clips(LENGTHS)
    feats, mask = processor.features(clips)
    with torch.no_grad():
        batched = model.model.get_audio_features(feats, mask).pooler_output
        offset = 0
        for i, clip in enumerate(clips):
            n_frames = int(mask[i].sum())
            ref = _unpadded_reference(model, feats[i, :, :n_frames])
            n = processor.audio_token_count(len(clip))
            assert ref.shape[0] == n
            torch.testing.assert_close(batched[offset: offset + n], ref, rtol=1e-5, atol=1e-5)
            offset += n
        assert offset == batched.shape[0]


def test_unmasked_glmasr_would_change_with_batch(tiny_student):
    """The reason for the mask: transformers' encoder on a padded batch differs from the clip alone."""
    model, processor = tiny_student
    feats, mask = processor.features(make_clips([8000, 48000]))
    with torch.no_grad():
        padded = GlmAsrEncoder.forward(model.model.audio_tower, feats).last_hidden_state[0, :25]
        alone = GlmAsrEncoder.forward(model.model.audio_tower, feats[:1, :, :50]).last_hidden_state[0, :25]
    assert (padded - alone).abs().max() > 1e-3


def test_greedy_transcripts_and_logprobs_do_not_depend_on_batch(tiny_student):
    model, processor = tiny_student
    clips = make_clips(LENGTHS, seed=1)
    allowed = processor.allowed_token_mask(model.config.text_config.vocab_size)
    eos, pad = processor.eos_token_ids, processor.pad_token_id
    together = generate(model, processor(clips), allowed, eos, pad, max_new_tokens=16)
    assert len({tuple(r[:4].tolist()) for r in together.tokens_B_T}) > 1, "degenerate model: same output for all"
    for i, clip in enumerate(clips):
        alone = generate(model, processor([clip]), allowed, eos, pad, max_new_tokens=16)
        n = int(alone.mask_B_T[0].sum())
        assert torch.equal(together.tokens_B_T[i, :n], alone.tokens_B_T[0, :n]), f"clip {i}"
        assert int(together.mask_B_T[i].sum()) == n
        torch.testing.assert_close(together.logprobs_B_T[i, :n], alone.logprobs_B_T[0, :n], rtol=1e-4, atol=1e-4)


def test_teacher_forced_loss_does_not_depend_on_batch(tiny_student):
    model, processor = tiny_student
    clips = make_clips(LENGTHS[:4], seed=2)
    texts = ["hello world", "guten Tag", "你好世界", "x"]
    with torch.no_grad():
        batch = processor(clips, texts=texts)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i in range(len(clips)):
            one = processor([clips[i]], texts=[texts[i]])
            logits_one = model(**{k: v for k, v in one.items() if k != "labels"}).logits
            n = one["input_ids"].shape[1]
            torch.testing.assert_close(logits[i, :n], logits_one[0], rtol=1e-4, atol=1e-4)


def test_default_trainable_parts(tokenizer):
    model, _ = build_student(tiny_config())
    assert not any(p.requires_grad for p in model.model.audio_tower.parameters())
    assert all(p.requires_grad for p in model.model.multi_modal_projector.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())


def test_trainable_parts_follow_config(tokenizer):
    model, _ = build_student(tiny_config(train_encoder=True, train_decoder=False))
    assert all(p.requires_grad for p in model.model.audio_tower.parameters())
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    assert not model.lm_head.weight.requires_grad


def test_lora_wraps_decoder_only_and_merges(tokenizer):
    from peft import PeftModel

    torch.manual_seed(0)
    model, processor = build_student(tiny_config(lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}))
    assert isinstance(model, PeftModel)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "language_model" in n for n in trainable)
    assert not any("audio_tower" in n for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable)
    assert not any("lora" in n for n, _ in model.named_parameters() if "audio_tower" in n)
    base_params = {n for n in trainable if "lora" not in n}
    assert all("multi_modal_projector" in n for n in base_params)

    # Make the LoRA update non-zero, then check that merging keeps the function.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = processor(make_clips([16000, 9000]), texts=["a b", "c"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        with_lora = model(**inputs).logits
        with model.disable_adapter():
            without = model(**inputs).logits
        merged = model.merge_and_unload()
        after_merge = merged(**inputs).logits
    assert (with_lora - without).abs().max() > 1e-3
    torch.testing.assert_close(after_merge, with_lora, rtol=1e-4, atol=1e-4)


def test_lora_training_step_updates_only_trainable(tokenizer):
    torch.manual_seed(0)
    model, processor = build_student(tiny_config(lora={"enabled": True, "r": 4, "dropout": 0.0}))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = processor(make_clips([16000]), texts=["hello"])
    model.train()
    model(**batch).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(("lora_" in n) or ("multi_modal_projector" in n) for n in changed)
    assert any("multi_modal_projector" in n for n in changed)


@pytest.mark.parametrize("arch", ["qwen3"])
def test_qwen3_decoder_builds_and_generates(tokenizer, arch):
    model, processor = build_student(tiny_config(decoder={"arch": arch, "head_dim": 16}))
    assert model.config.text_config.model_type == arch
    assert model.config.text_config.head_dim == 16
    out = generate(sharpen(model).eval(), processor(make_clips([16000])),
                   processor.allowed_token_mask(model.config.text_config.vocab_size),
                   processor.eos_token_ids, processor.pad_token_id, max_new_tokens=4)
    assert out.tokens_B_T.shape[0] == 1


def test_text_config_values_are_the_ones_given(tokenizer):
    """GlmAsrConfig keeps GLM's llama defaults for keys a dict leaves out; ours are all explicit."""
    model, processor = build_student(tiny_config())
    text = model.config.text_config
    assert text.model_type == "qwen2"
    assert text.rope_parameters["rope_theta"] == 1e6
    assert text.max_position_embeddings == 4096
    assert sorted(text.eos_token_id) == sorted(processor.eos_token_ids)
    assert 151645 in text.eos_token_id and 59246 not in text.eos_token_id
    assert model.config.audio_config.rope_parameters["partial_rotary_factor"] == 0.5
