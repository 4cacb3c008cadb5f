"""ARK-layout checkpoints: an independent float64 ARK encoder agrees with ours, and export round-trips."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.conftest import make_clips
from train.models import load_student, save_student

ENC = dict(d_model=32, heads=4, layers=2, ffn=128, mels=80)
DEC = dict(hidden=32, inter=64, layers=2, heads=4, kv=2, vocab=151936)


def _ark_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under ARK's own key names, written without any of our mapping code."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    d, f, h = ENC["d_model"], ENC["ffn"], DEC["hidden"]
    sd = {
        "audio_encoder.whisper.conv1.weight": r(d, ENC["mels"], 3), "audio_encoder.whisper.conv1.bias": r(d),
        "audio_encoder.whisper.conv2.weight": r(d, d, 3), "audio_encoder.whisper.conv2.bias": r(d),
        "audio_encoder.whisper.embed_positions.weight": r(1500, d),  # present in Whisper, unused under RoPE
        "audio_encoder.layer_norm.weight": 1 + r(d), "audio_encoder.layer_norm.bias": r(d),
        "audio_encoder.adapting.0.weight": r(2 * h, 4 * d), "audio_encoder.adapting.0.bias": r(2 * h),
        "audio_encoder.adapting.2.weight": r(h, 2 * h), "audio_encoder.adapting.2.bias": r(h),
    }
    for n in range(ENC["layers"]):
        p = f"audio_encoder.whisper.layers.{n}."
        sd.update({
            p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.q_proj.bias": r(d),
            p + "self_attn.k_proj.weight": r(d, d),
            p + "self_attn.v_proj.weight": r(d, d), p + "self_attn.v_proj.bias": r(d),
            p + "self_attn.out_proj.weight": r(d, d), p + "self_attn.out_proj.bias": r(d),
            p + "self_attn_layer_norm.weight": 1 + r(d), p + "self_attn_layer_norm.bias": r(d),
            p + "fc1.weight": r(f, d), p + "fc1.bias": r(f), p + "fc2.weight": r(d, f), p + "fc2.bias": r(d),
            p + "final_layer_norm.weight": 1 + r(d), p + "final_layer_norm.bias": r(d),
        })
    qwen = Qwen2ForCausalLM(_qwen2_config())
    for k, v in qwen.state_dict().items():
        sd[k] = (r(*v.shape, std=0.1) if v.ndim > 1 else 1 + r(*v.shape, std=0.1)) if k != "lm_head.weight" else None
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()  # tied, stored as in ARK's files
    return sd


def _qwen2_config() -> Qwen2Config:
    return Qwen2Config(vocab_size=DEC["vocab"], hidden_size=DEC["hidden"], intermediate_size=DEC["inter"],
                       num_hidden_layers=DEC["layers"], num_attention_heads=DEC["heads"],
                       num_key_value_heads=DEC["kv"], rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                       tie_word_embeddings=True, max_position_embeddings=4096, rms_norm_eps=1e-6)


def _ark_config(audio_token_id: int = 151663) -> dict:
    return {
        "model_type": "arkasr", "architectures": ["ArkasrForConditionalGeneration"],
        "whisper_config": {"d_model": ENC["d_model"], "encoder_layers": ENC["layers"],
                           "encoder_attention_heads": ENC["heads"], "encoder_ffn_dim": ENC["ffn"],
                           "num_mel_bins": ENC["mels"]},
        "merge_factor": 4, "use_rope": True, "mlp_adapter_act": "gelu", "audio_token_id": audio_token_id,
        "vocab_size": DEC["vocab"], "hidden_size": DEC["hidden"], "intermediate_size": DEC["inter"],
        "num_hidden_layers": DEC["layers"], "num_attention_heads": DEC["heads"],
        "num_key_value_heads": DEC["kv"], "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "max_position_embeddings": 4096, "tie_word_embeddings": True, "eos_token_id": 151645,
        "pad_token_id": 151643,
    }


@pytest.fixture(scope="module")
def ark_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ark")
    save_file(_ark_state_dict(), path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(_ark_config()))
    tokenizer.save_pretrained(path)
    return path


def _ark_reference_embeds(sd: dict[str, torch.Tensor], feats_M_F: torch.Tensor) -> torch.Tensor:
    """ARK's encoder + adapter in float64, following ARK's public modeling code: Whisper convs,
    pre-LN layers with RoPE on *interleaved* pairs of the first half of each head, final LayerNorm,
    merge 4 frames, Linear-GELU-Linear."""
    w = {k: v.double() for k, v in sd.items()}
    d, heads = ENC["d_model"], ENC["heads"]
    hd, rot = d // heads, (d // heads) // 2
    x = F.gelu(F.conv1d(feats_M_F[None].double(), w["audio_encoder.whisper.conv1.weight"],
                        w["audio_encoder.whisper.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, w["audio_encoder.whisper.conv2.weight"], w["audio_encoder.whisper.conv2.bias"],
                        stride=2, padding=1))
    h = x[0].T
    length = h.shape[0]
    theta = 10000.0 ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * theta[None]  # L x rot/2
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]

    def rope(t):  # t: L x heads x hd; rotate pairs (2i, 2i+1) by angle i
        pairs = t[..., :rot].reshape(length, heads, rot // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).reshape(length, heads, rot)
        return torch.cat([rotated, t[..., rot:]], -1)

    def ln(t, name):
        return F.layer_norm(t, (d,), w[name + ".weight"], w[name + ".bias"], eps=1e-5)

    for n in range(ENC["layers"]):
        p = f"audio_encoder.whisper.layers.{n}."
        y = ln(h, p + "self_attn_layer_norm")
        q = (y @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]).reshape(length, heads, hd)
        k = (y @ w[p + "self_attn.k_proj.weight"].T).reshape(length, heads, hd)
        v = (y @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]).reshape(length, heads, hd)
        q, k = rope(q), rope(k)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd), -1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(length, d)
        h = h + o @ w[p + "self_attn.out_proj.weight"].T + w[p + "self_attn.out_proj.bias"]
        y = ln(h, p + "final_layer_norm")
        y = F.gelu(y @ w[p + "fc1.weight"].T + w[p + "fc1.bias"]) @ w[p + "fc2.weight"].T + w[p + "fc2.bias"]
        h = h + y
    h = ln(h, "audio_encoder.layer_norm")
    usable = (length // 4) * 4
    merged = h[:usable].reshape(usable // 4, 4 * d)
    a0 = F.gelu(merged @ w["audio_encoder.adapting.0.weight"].T + w["audio_encoder.adapting.0.bias"])
    return a0 @ w["audio_encoder.adapting.2.weight"].T + w["audio_encoder.adapting.2.bias"]


def test_imported_encoder_matches_independent_ark_reference(ark_dir):
    model, processor = load_student(ark_dir)
    sd = load_file(ark_dir / "model.safetensors")
    for clip in make_clips([16000, 27000], seed=11):
        feats, mask = processor.features([clip])
        with torch.no_grad():
            ours = model.model.get_audio_features(feats, mask).pooler_output.double()
        ref = _ark_reference_embeds(sd, feats[0])
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_without_the_rotary_permutation_outputs_differ(ark_dir, monkeypatch):
    """Guards the guard: mapping q/k rows as they are loads fine but computes something else."""
    from train.models import ark_layout

    monkeypatch.setattr(ark_layout, "_permute_rows", lambda t, order: t)
    model, processor = load_student(ark_dir)
    feats, mask = processor.features(make_clips([16000], seed=11))
    with torch.no_grad():
        ours = model.model.get_audio_features(feats, mask).pooler_output.double()
    ref = _ark_reference_embeds(load_file(ark_dir / "model.safetensors"), feats[0])
    assert (ours - ref).abs().max() > 1e-2


def test_decoder_matches_transformers_qwen2(ark_dir):
    model, _ = load_student(ark_dir)
    sd = load_file(ark_dir / "model.safetensors")
    qwen = Qwen2ForCausalLM(_qwen2_config())
    qwen.load_state_dict({k: v for k, v in sd.items() if k.startswith(("model.", "lm_head."))})
    ids = torch.tensor([[9707, 1879, 220, 108386, 151645]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, qwen.eval()(input_ids=ids).logits)


def test_export_gives_back_the_identical_state_dict(ark_dir, tmp_path):
    model, processor = load_student(ark_dir)
    out = save_student(model, processor, tmp_path / "again", layout="ark")
    original = load_file(ark_dir / "model.safetensors")
    again = load_file(out / "model.safetensors")
    assert set(again) == set(original) - {"audio_encoder.whisper.embed_positions.weight"}
    for key, value in again.items():
        assert torch.equal(value, original[key]), key
    reloaded, _ = load_student(out)
    ids = torch.tensor([[9707, 1879]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_ark_and_hf_layouts_give_the_same_outputs(ark_dir, tmp_path):
    model, processor = load_student(ark_dir)
    hf_dir = save_student(model, processor, tmp_path / "hf", layout="hf")
    hf_model, _ = load_student(hf_dir)
    batch = processor(make_clips([16000, 6000], seed=12), texts=["hello", "hi there"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(hf_model(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_checkpoint_audio_token_id_is_read_not_assumed(tmp_path, tokenizer):
    save_file(_ark_state_dict(seed=3), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(_ark_config(audio_token_id=151669)))
    tokenizer.save_pretrained(tmp_path)
    model, processor = load_student(tmp_path)
    assert model.config.audio_token_id == 151669
    assert processor.audio_token == "<|observation|>"
    batch = processor(make_clips([16000]))
    assert int((batch["input_ids"] == 151669).sum()) == 12 and not (batch["input_ids"] == 151663).any()
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]


def test_missing_and_unexpected_ark_weights_fail_naming_them(tmp_path, tokenizer):
    sd = _ark_state_dict()
    del sd["audio_encoder.adapting.2.bias"]
    sd["audio_encoder.extra.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(_ark_config()))
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises((KeyError, ValueError), match="audio_encoder.extra.weight"):
        load_student(tmp_path)
    sd.pop("audio_encoder.extra.weight")
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"audio_encoder\.adapting\.2\.bias \(model: model\.multi_modal_projector"):
        load_student(tmp_path)
