"""HF-layout checkpoints: round trip, plain-transformers loading, strictness, initialising from other dirs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoFeatureExtractor,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GlmAsrForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tests.conftest import make_clips, tiny_config
from train.config import ConfigError
from train.models import build_student, load_student, save_student


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_student):
    model, processor = tiny_student
    return save_student(model, processor, tmp_path_factory.mktemp("hf") / "student")


def _inputs(processor, lengths=(16000, 6000), seed=0):
    batch = processor(make_clips(list(lengths), seed=seed), texts=["hello", "guten Tag"][: len(lengths)])
    return {k: v for k, v in batch.items() if k != "labels"}


def test_hf_round_trip(saved, tiny_student):
    model, processor = tiny_student
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (saved / name).exists(), name
    loaded, loaded_processor = load_student(saved)
    inputs = _inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    assert loaded_processor.prompt(16000, "de") == processor.prompt(16000, "de")
    assert loaded_processor.eos_token_ids == processor.eos_token_ids


def test_plain_transformers_reads_it_without_remote_code(saved, tiny_student):
    model, processor = tiny_student
    auto = AutoModelForSeq2SeqLM.from_pretrained(saved, trust_remote_code=False).eval()
    assert type(auto) is GlmAsrForConditionalGeneration
    AutoTokenizer.from_pretrained(saved, trust_remote_code=False)
    assert AutoFeatureExtractor.from_pretrained(saved).feature_size == 80
    # One clip whose frame count fills whole merge groups: no padding, so no masking either.
    inputs = _inputs(processor, lengths=(16640,))  # 104 frames -> 52 -> 13 placeholders, none left over
    with torch.no_grad():
        torch.testing.assert_close(auto(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_missing_or_unexpected_weights_fail_naming_them(saved, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    weights = load_file(broken / "model.safetensors")
    weights.pop("model.audio_tower.layers.1.mlp.fc2.weight")
    weights["model.audio_tower.surplus.weight"] = torch.zeros(2)
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_student(broken)
    assert "model.audio_tower.layers.1.mlp.fc2.weight" in str(err.value)
    assert "model.audio_tower.surplus.weight" in str(err.value)


def test_lora_model_saves_merged(tokenizer, tmp_path):
    torch.manual_seed(0)
    model, processor = build_student(tiny_config(lora={"enabled": True, "r": 4, "dropout": 0.0}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    inputs = _inputs(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    out = save_student(model, processor, tmp_path / "merged")
    assert not any("lora" in k for k in load_file(out / "model.safetensors"))
    loaded, _ = load_student(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the live peft model is untouched by saving
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)


def _qwen_dir(tmp_path, arch: str, **changes):
    cls_cfg, cls_model = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    shape = dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True)
    if arch == "qwen3":
        shape["head_dim"] = 16
    shape.update(changes)
    torch.manual_seed(1)
    lm = cls_model(cls_cfg(**shape))
    path = tmp_path / f"{arch}-lm"
    lm.save_pretrained(path)
    return path, lm


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_decoder_initialised_from_a_qwen_checkpoint(tokenizer, tmp_path, arch):
    path, lm = _qwen_dir(tmp_path, arch)
    extra = {"head_dim": 16} if arch == "qwen3" else {}
    model, _ = build_student(tiny_config(decoder={"arch": arch, **extra}, init_decoder_from=str(path)))
    ids = torch.tensor([[9707, 1879, 220, 108386]])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, lm.eval()(input_ids=ids).logits)


def test_decoder_checkpoint_of_another_shape_fails(tokenizer, tmp_path):
    path, _ = _qwen_dir(tmp_path, "qwen2", intermediate_size=96)
    with pytest.raises(ValueError, match=r"mlp\.gate_proj\.weight \(96, 32\) != \(64, 32\)"):
        build_student(tiny_config(init_decoder_from=str(path)))
    with pytest.raises(ValueError, match="model_type is 'qwen2', decoder.arch is 'qwen3'"):
        build_student(tiny_config(decoder={"arch": "qwen3", "head_dim": 16}, init_decoder_from=str(path)))


def test_encoder_initialised_from_a_student_checkpoint(saved, tiny_student, tokenizer):
    model, processor = tiny_student
    fresh, _ = build_student(tiny_config(init_encoder_from=str(saved)))
    for key, value in model.state_dict().items():
        if key.startswith(("model.audio_tower.", "model.multi_modal_projector.")):
            assert torch.equal(fresh.state_dict()[key], value), key
    assert not torch.equal(fresh.model.language_model.embed_tokens.weight,
                           model.model.language_model.embed_tokens.weight)


def test_encoder_initialised_from_an_ark_checkpoint(tiny_student, tokenizer, tmp_path):
    model, processor = tiny_student
    ark = save_student(model, processor, tmp_path / "ark", layout="ark")
    fresh, _ = build_student(tiny_config(init_encoder_from=str(ark)))
    feats, mask = processor.features(make_clips([16000, 5000]))
    with torch.no_grad():
        torch.testing.assert_close(fresh.model.get_audio_features(feats, mask).pooler_output,
                                   model.model.get_audio_features(feats, mask).pooler_output, rtol=0, atol=0)


def test_encoder_of_another_width_fails(saved, tokenizer):
    cfg = tiny_config(init_encoder_from=str(saved))
    cfg["encoder"].update({"hidden_size": 64, "ffn_dim": 256})
    with pytest.raises(ValueError, match=r"init_encoder_from=.*wrong shapes"):
        build_student(cfg)


def test_bad_model_configs_fail_naming_the_key(tokenizer):
    cases = [
        ({"adapter": {"merge_factor": 0}}, "adapter.merge_factor"),
        ({"adapter": {"hidden_size": 48}}, "adapter.hidden_size"),
        ({"tokens": {"audio_token_id": 200000}}, "tokens.audio_token_id"),
        ({"encoder": {"num_heads": 5}}, "encoder.num_heads"),
        ({"decoder": {"arch": "llama"}}, "decoder.arch"),
        ({"encoder": {"hidden": 3}}, "encoder.hidden"),
        ({"dtype": "fp8"}, "dtype"),
    ]
    for change, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_student(tiny_config(**change))


def test_saved_config_has_no_remote_code(saved):
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["model_type"] == "glmasr" and "auto_map" not in cfg
    assert cfg["architectures"] == ["GlmAsrForConditionalGeneration"]
