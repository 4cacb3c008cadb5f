"""Import and export of the released ARK-ASR checkpoint layout (`model_type: arkasr`).

ARK layout                                         GlmAsr layout (ours)
audio_encoder.whisper.conv{1,2}.*                  model.audio_tower.conv{1,2}.*
audio_encoder.whisper.layers.N.self_attn.{q,k,v}_proj  model.audio_tower.layers.N.self_attn.{q,k,v}_proj
audio_encoder.whisper.layers.N.self_attn.out_proj  model.audio_tower.layers.N.self_attn.o_proj
audio_encoder.whisper.layers.N.self_attn_layer_norm    model.audio_tower.layers.N.input_layernorm
audio_encoder.whisper.layers.N.fc{1,2}             model.audio_tower.layers.N.mlp.fc{1,2}
audio_encoder.whisper.layers.N.final_layer_norm    model.audio_tower.layers.N.post_attention_layernorm
audio_encoder.layer_norm.*                         model.audio_tower.norm.*
audio_encoder.adapting.{0,2}.*                     model.multi_modal_projector.linear_{1,2}.*
model.*                                            model.language_model.*
lm_head.weight                                     lm_head.weight (tied to the embeddings)

The encoder's rotary layout differs, and a wrong layout loads without error and gives garbage.
How we know: ARK's public `modeling_audio.py` (`WhisperSpecialEncoder`, `apply_rotary_pos_emb`)
builds a cos/sin cache of shape [positions, rot_dim/2, 2] over `head_dim // 2` rotary dims and
rotates *interleaved* pairs (x[2i], x[2i+1]) by theta_i = base^(-2i/rot_dim). transformers'
GlmAsr (`modeling_glmasr.apply_rotary_pos_emb`) uses `rotate_half` on the first rot_dim dims: it
pairs (x[i], x[i + rot_dim/2]) with the same theta_i. Permuting each head's q and k output rows
from [0, 1, 2, ..., rot_dim-1] to [0, 2, 4, ..., 1, 3, 5, ...] turns one into the other; applied to
both q and k, the dot products are unchanged. transformers' own GLM-ASR conversion script only
renames keys, so it is no guide here. tests/models/test_ark_layout.py checks this against an
independent float64 implementation of ARK's interleaved encoder.

Keys that ARK checkpoints may carry but the model never uses under RoPE are dropped on import:
`audio_encoder.whisper.embed_positions.weight` (Whisper's absolute table, unused with `use_rope`)
and `audio_encoder.audio_bos_eos_token.weight` (GLM-ASR's unused boundary embeddings).
"""

from __future__ import annotations

import re

import torch

from train.config import (
    AdapterConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    TokensConfig,
)

UNUSED_ARK_KEYS = ("audio_encoder.whisper.embed_positions.weight", "audio_encoder.audio_bos_eos_token.weight")

# (ARK pattern, GlmAsr pattern); `{n}` is the layer index.
_LAYER_RENAMES = [
    ("self_attn.q_proj", "self_attn.q_proj"),
    ("self_attn.k_proj", "self_attn.k_proj"),
    ("self_attn.v_proj", "self_attn.v_proj"),
    ("self_attn.out_proj", "self_attn.o_proj"),
    ("self_attn_layer_norm", "input_layernorm"),
    ("final_layer_norm", "post_attention_layernorm"),
    ("fc1", "mlp.fc1"),
    ("fc2", "mlp.fc2"),
]
_PREFIX_RENAMES = [
    ("audio_encoder.whisper.conv1.", "model.audio_tower.conv1."),
    ("audio_encoder.whisper.conv2.", "model.audio_tower.conv2."),
    ("audio_encoder.layer_norm.", "model.audio_tower.norm."),
    ("audio_encoder.adapting.0.", "model.multi_modal_projector.linear_1."),
    ("audio_encoder.adapting.2.", "model.multi_modal_projector.linear_2."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
]
_ARK_LAYER = re.compile(r"^audio_encoder\.whisper\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_GLM_LAYER = re.compile(r"^model\.audio_tower\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def interleaved_to_half_split(num_heads: int, head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Row order that turns ARK's interleaved q/k rows into GlmAsr's rotate_half rows, per head."""
    within = torch.cat([torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2),
                        torch.arange(rotary_dim, head_dim)])
    return torch.cat([h * head_dim + within for h in range(num_heads)])


def _permute_rows(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, order).contiguous()


_ARK_SIDE = ("audio_encoder.whisper.layers", _ARK_LAYER, "ARK")
_GLM_SIDE = ("model.audio_tower.layers", _GLM_LAYER, "GlmAsr")


def _rename(key: str, source, target, to_ark: bool) -> str:
    """One key across the table above; `to_ark` picks the direction of every (ARK, GlmAsr) pair."""
    (_, layer_re, source_name), (target_layers, _, _) = source, target
    flip = (lambda pair: pair[::-1]) if to_ark else (lambda pair: pair)
    m = layer_re.match(key)
    if m:
        n, name, kind = m.groups()
        for src, dst in map(flip, _LAYER_RENAMES):
            if name == src:
                return f"{target_layers}.{n}.{dst}.{kind}"
        raise KeyError(f"unknown {source_name} encoder weight {key!r}")
    for src, dst in map(flip, _PREFIX_RENAMES):
        if key.startswith(src):
            return dst + key[len(src):]
    raise KeyError(f"unknown {source_name} weight {key!r}")


def ark_key_to_glmasr(key: str) -> str:
    return _rename(key, _ARK_SIDE, _GLM_SIDE, to_ark=False)


def glmasr_key_to_ark(key: str) -> str:
    return _rename(key, _GLM_SIDE, _ARK_SIDE, to_ark=True)


def _rotary_rows(cfg: EncoderConfig) -> torch.Tensor:
    head_dim = cfg.hidden_size // cfg.num_heads
    return interleaved_to_half_split(cfg.num_heads, head_dim, int(head_dim * cfg.partial_rotary_factor))


def ark_to_glmasr_state_dict(ark_sd: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
    """ARK weights -> GlmAsr names, q/k rows permuted from interleaved to half-split RoPE."""
    order = _rotary_rows(enc)
    out = {}
    for key, value in ark_sd.items():
        if key in UNUSED_ARK_KEYS:
            continue
        new = ark_key_to_glmasr(key)
        if re.search(r"audio_tower\.layers\.\d+\.self_attn\.(q|k)_proj\.", new):
            value = _permute_rows(value, order)
        out[new] = value
    return out


def glmasr_to_ark_state_dict(sd: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
    """Inverse of `ark_to_glmasr_state_dict`."""
    inverse = torch.argsort(_rotary_rows(enc))
    out = {}
    for key, value in sd.items():
        if re.search(r"audio_tower\.layers\.\d+\.self_attn\.(q|k)_proj\.", key):
            value = _permute_rows(value, inverse)
        out[glmasr_key_to_ark(key)] = value.contiguous()
    return out


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise ValueError(f"{where}: ARK config has no {key!r}")
    return d[key]


def model_config_from_ark(ark: dict, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig from an ARK `config.json` (Qwen2 fields at top level, nested `whisper_config`)."""
    if ark.get("model_type") != "arkasr":
        raise ValueError(f"{where}: model_type is {ark.get('model_type')!r}, expected 'arkasr'")
    if not ark.get("use_rope", True):
        raise ValueError(f"{where}: use_rope=false (absolute positions) is not an ARK-ASR encoder we support")
    w = _need(ark, "whisper_config", where)
    d_model = _need(w, "d_model", f"{where} whisper_config")
    merge = int(ark.get("merge_factor", 4))
    hidden = _need(ark, "hidden_size", where)
    rope = ark.get("rope_parameters") or {}
    cfg = ModelConfig(
        encoder=EncoderConfig(
            hidden_size=d_model, num_layers=_need(w, "encoder_layers", f"{where} whisper_config"),
            num_heads=_need(w, "encoder_attention_heads", f"{where} whisper_config"),
            ffn_dim=_need(w, "encoder_ffn_dim", f"{where} whisper_config"),
            num_mel_bins=w.get("num_mel_bins", 128),
            rope_theta=10000.0 * float(ark.get("rope_ratio", 1)),
            partial_rotary_factor=0.5, max_positions=int(ark.get("max_whisper_length", 1500))),
        adapter=AdapterConfig(merge_factor=merge, hidden_size=2 * hidden,
                              activation=ark.get("mlp_adapter_act", "gelu")),
        decoder=DecoderConfig(
            arch="qwen2", vocab_size=_need(ark, "vocab_size", where), hidden_size=hidden,
            intermediate_size=_need(ark, "intermediate_size", where),
            num_layers=_need(ark, "num_hidden_layers", where), num_heads=_need(ark, "num_attention_heads", where),
            num_kv_heads=ark.get("num_key_value_heads", ark["num_attention_heads"]),
            rope_theta=float(rope.get("rope_theta", ark.get("rope_theta", 1000000.0))),
            max_position_embeddings=ark.get("max_position_embeddings", 32768),
            rms_norm_eps=ark.get("rms_norm_eps", 1e-6), tie_word_embeddings=ark.get("tie_word_embeddings", True)),
        tokens=TokensConfig(audio_token_id=int(_need(ark, "audio_token_id", where)),
                            block_from_id=min(int(ark.get("block_from_id", 151670)), ark["vocab_size"])),
    )
    return cfg


def ark_config_from_model_config(cfg: ModelConfig, eos_token_id, pad_token_id) -> dict:
    """An ARK `config.json` for our model; only Qwen2 decoders exist in the ARK layout."""
    enc, dec = cfg.encoder, cfg.decoder
    if dec.arch != "qwen2":
        raise ValueError(f"the ARK layout has a Qwen2 decoder; decoder.arch is {dec.arch!r}")
    if enc.partial_rotary_factor != 0.5:
        raise ValueError("the ARK layout rotates half of each head's dims; encoder.partial_rotary_factor must be 0.5")
    return {
        "architectures": ["ArkasrForConditionalGeneration"],
        "model_type": "arkasr",
        "whisper_config": {
            "d_model": enc.hidden_size, "encoder_layers": enc.num_layers,
            "encoder_attention_heads": enc.num_heads, "encoder_ffn_dim": enc.ffn_dim,
            "num_mel_bins": enc.num_mel_bins, "max_source_positions": enc.max_positions,
            "activation_function": "gelu",
        },
        "merge_factor": cfg.adapter.merge_factor,
        "use_rope": True,
        "rope_ratio": enc.rope_theta / 10000.0,
        "max_whisper_length": enc.max_positions,
        "mlp_adapter_act": cfg.adapter.activation,
        "adapter_type": "mlp",
        "audio_token_id": cfg.tokens.audio_token_id,
        "block_from_id": cfg.tokens.block_from_id,
        "vocab_size": dec.vocab_size, "hidden_size": dec.hidden_size, "intermediate_size": dec.intermediate_size,
        "num_hidden_layers": dec.num_layers, "num_attention_heads": dec.num_heads,
        "num_key_value_heads": dec.num_kv_heads, "hidden_act": "silu",
        "max_position_embeddings": dec.max_position_embeddings, "rms_norm_eps": dec.rms_norm_eps,
        "rope_theta": dec.rope_theta, "tie_word_embeddings": dec.tie_word_embeddings,
        "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
        "torch_dtype": cfg.dtype,
    }
