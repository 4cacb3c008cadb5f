"""The student: transformers' GlmAsr (RoPE Whisper encoder -> merge-4 MLP adapter -> Qwen decoder),
with the one change batching needs: padded mel frames are masked inside the audio encoder.

GlmAsr's encoder takes no padding mask, so a clip padded to the longest in its batch attends to
(and its convolutions read) the padding, and its transcript changes with its batch. Here the
convolutions see zeros past each clip exactly as they would at the clip's own edge, and attention
ignores padded frames: a clip's audio embeddings are the same alone or in any padded batch.
The weights and their names are GlmAsr's, so a saved student loads in plain transformers too.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, GlmAsrConfig, GlmAsrEncoderConfig, Qwen2Config, Qwen3Config
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.glmasr.modeling_glmasr import (
    GlmAsrEncoder,
    GlmAsrForConditionalGeneration,
    GlmAsrModel,
    GlmAsrMultiModalProjector,
    GlmAsrPreTrainedModel,
)

from train.config import ModelConfig
from train.models.scored_head import ScoredPositions, score_hidden
from train.models.processor import audio_token_count_from_frames


def merge_factor_of(config: GlmAsrConfig) -> int:
    """GlmAsr merges frames by reshaping to the encoder FFN width: that ratio is the merge factor."""
    return config.audio_config.intermediate_size // config.audio_config.hidden_size


def conv_lengths(num_frames: torch.Tensor) -> torch.Tensor:
    """Frames after conv1 (stride 1) and conv2 (stride 2, padding 1): ceil(F / 2)."""
    return (num_frames + 1) // 2


class MaskedGlmAsrEncoder(GlmAsrEncoder):
    """GlmAsrEncoder whose convolutions and attention ignore padded mel frames."""

    def forward(self, input_features, input_features_mask=None, **kwargs):
        if input_features_mask is None:
            return super().forward(input_features, **kwargs)
        mask_B_F = input_features_mask.to(input_features.dtype)
        # Zero past each clip so both convs see what their own zero padding would give at its edge.
        hidden = nn.functional.gelu(self.conv1(input_features * mask_B_F[:, None, :]))
        hidden = nn.functional.gelu(self.conv2(hidden * mask_B_F[:, None, :]))
        hidden = hidden.transpose(1, 2)
        num_frames = conv_lengths(input_features_mask.sum(-1))
        valid_B_L = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < num_frames[:, None]
        # Additive mask on keys only: padded queries still attend to real frames (no NaN rows).
        bias = torch.zeros(valid_B_L.shape, dtype=hidden.dtype, device=hidden.device)
        bias = bias.masked_fill(~valid_B_L, torch.finfo(hidden.dtype).min)[:, None, None, :]
        positions = self.rotary_emb(hidden, position_ids=torch.arange(hidden.shape[1], device=hidden.device)[None])
        for layer in self.layers:
            hidden = layer(hidden, position_embeddings=positions, attention_mask=bias)
        hidden = self.norm(hidden)
        return BaseModelOutputWithPooling(last_hidden_state=hidden)


class StudentModel(GlmAsrModel):
    """GlmAsrModel with the masked encoder and a merge factor read from the config."""

    def __init__(self, config: GlmAsrConfig):
        GlmAsrPreTrainedModel.__init__(self, config)
        self.audio_tower = MaskedGlmAsrEncoder(config.audio_config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.multi_modal_projector = GlmAsrMultiModalProjector(config)
        self.post_init()

    def get_audio_features(self, input_features, input_features_mask=None, **kwargs):
        """Audio embeddings, one per placeholder: `pooler_output` holds the valid rows of all clips."""
        batch, _, num_frames = input_features.shape
        if input_features_mask is None:
            input_features_mask = torch.ones(batch, num_frames, dtype=torch.long, device=input_features.device)
        merge = merge_factor_of(self.config)
        # The merge step reshapes whole groups of frames: pad (masked) to a multiple of 2 x merge.
        extra = (-num_frames) % (2 * merge)
        if extra:
            input_features = nn.functional.pad(input_features, (0, extra))
            input_features_mask = nn.functional.pad(input_features_mask, (0, extra))
        out = self.audio_tower(input_features, input_features_mask=input_features_mask)
        hidden_B_L_D = out.last_hidden_state
        merged = hidden_B_L_D.reshape(batch, hidden_B_L_D.shape[1] // merge, -1)
        audio_embeds = self.multi_modal_projector(merged)
        counts = audio_token_count_from_frames(input_features_mask.sum(-1), merge)
        valid = torch.arange(audio_embeds.shape[1], device=counts.device)[None, :] < counts[:, None]
        out.pooler_output = audio_embeds[valid.to(audio_embeds.device)]
        return out


class StudentForConditionalGeneration(GlmAsrForConditionalGeneration):
    """GlmAsrForConditionalGeneration over `StudentModel`; same weights, same forward signature, plus
    `scored=`: the head and a per-token function at chosen positions only (train/models/scored_head.py)."""

    def __init__(self, config: GlmAsrConfig):
        GlmAsrPreTrainedModel.__init__(self, config)
        self.model = StudentModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def forward(self, *args, scored: ScoredPositions | None = None, **kwargs):
        """With `scored`: `scored.per_token` at its positions (values_N), not logits at every position."""
        if scored is None:
            return super().forward(*args, **kwargs)
        kwargs.pop("logits_to_keep", None)
        hidden_B_S_D = self.model(*args, **kwargs).last_hidden_state
        return score_hidden(hidden_B_S_D, self.lm_head, scored)


def glmasr_config(cfg: ModelConfig, eos_token_ids: list[int] | None = None, pad_token_id: int | None = None
                  ) -> GlmAsrConfig:
    """A transformers GlmAsrConfig from our ModelConfig; every text-config field is given explicitly
    (GlmAsrConfig otherwise keeps GLM's llama defaults for keys a dict leaves out)."""
    enc, dec = cfg.encoder, cfg.decoder
    audio = GlmAsrEncoderConfig(
        hidden_size=enc.hidden_size, intermediate_size=enc.ffn_dim, num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads, num_key_value_heads=enc.num_heads, num_mel_bins=enc.num_mel_bins,
        max_position_embeddings=enc.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": enc.rope_theta,
                         "partial_rotary_factor": enc.partial_rotary_factor})
    text_cls = Qwen2Config if dec.arch == "qwen2" else Qwen3Config
    extra = {"head_dim": dec.head_dim} if dec.head_dim is not None else {}
    text = text_cls(
        vocab_size=dec.vocab_size, hidden_size=dec.hidden_size, intermediate_size=dec.intermediate_size,
        num_hidden_layers=dec.num_layers, num_attention_heads=dec.num_heads, num_key_value_heads=dec.num_kv_heads,
        max_position_embeddings=dec.max_position_embeddings, rms_norm_eps=dec.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": dec.rope_theta},
        tie_word_embeddings=dec.tie_word_embeddings, eos_token_id=eos_token_ids, pad_token_id=pad_token_id,
        bos_token_id=None, use_cache=True, **extra)
    return GlmAsrConfig(audio_config=audio, text_config=text, audio_token_id=cfg.tokens.audio_token_id,
                        projector_hidden_act=cfg.adapter.activation,
                        tie_word_embeddings=dec.tie_word_embeddings)
