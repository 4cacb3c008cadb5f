"""Typed configuration: dataclasses are the schema, YAML names an experiment, `key=value` overrides it.

OmegaConf does the parsing and merging (unknown keys and wrong types fail with the full dotted key);
each dataclass's `__post_init__` checks values and cross-field constraints before any model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

# ISO 639-1 code -> English name, for the language-tagged prompt and for teachers that take a
# language name. The 19 dev-set languages first; any other code must be added here to be used.
LANGUAGE_NAMES: dict[str, str] = {
    "zh": "Chinese", "en": "English", "de": "German", "ja": "Japanese", "fr": "French",
    "ko": "Korean", "es": "Spanish", "pl": "Polish", "it": "Italian", "ro": "Romanian",
    "hu": "Hungarian", "cs": "Czech", "nl": "Dutch", "fi": "Finnish", "hr": "Croatian",
    "sk": "Slovak", "sl": "Slovenian", "et": "Estonian", "lt": "Lithuanian",
    "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "tr": "Turkish", "sv": "Swedish",
    "da": "Danish", "el": "Greek", "uk": "Ukrainian", "vi": "Vietnamese", "id": "Indonesian",
    "th": "Thai", "hi": "Hindi", "yue": "Cantonese",
}


DEV_LANGUAGES = ("zh", "en", "de", "ja", "fr", "ko", "es", "pl", "it", "ro", "hu", "cs", "nl", "fi", "hr", "sk",
                 "sl", "et", "lt")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class EncoderConfig:
    """Whisper-style audio encoder with partial RoPE (transformers' GlmAsrEncoder)."""

    hidden_size: int = 1280  # d_model
    num_layers: int = 32
    num_heads: int = 20
    ffn_dim: int = 5120  # FFN width; GlmAsr also merges frames by reshaping to this width
    num_mel_bins: int = 128
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5  # share of each head's dims that RoPE rotates (ARK: half)
    max_positions: int = 1500  # frames after the stride-2 conv (30 s)

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "ffn_dim", "num_mel_bins", "max_positions"):
            _require(getattr(self, name) > 0, f"encoder.{name}", f"must be > 0, got {getattr(self, name)}")
        _require(self.hidden_size % self.num_heads == 0, "encoder.num_heads",
                 f"must divide encoder.hidden_size={self.hidden_size}, got {self.num_heads}")
        rot = (self.hidden_size // self.num_heads) * self.partial_rotary_factor
        _require(0 < self.partial_rotary_factor <= 1 and rot == int(rot) and int(rot) % 2 == 0,
                 "encoder.partial_rotary_factor",
                 f"must give an even number of rotary dims per head, got {rot}")


@dataclass
class AdapterConfig:
    """LayerNorm -> merge `merge_factor` frames -> Linear -> act -> Linear to the decoder width."""

    merge_factor: int = 4
    hidden_size: int = 4096  # GlmAsr's projector is 2 x decoder hidden wide
    activation: str = "gelu"

    def __post_init__(self):
        _require(self.merge_factor >= 1, "adapter.merge_factor", f"must be >= 1, got {self.merge_factor}")
        _require(self.activation in ("gelu", "relu", "silu"), "adapter.activation",
                 f"must be gelu, relu or silu, got {self.activation!r}")


@dataclass
class DecoderConfig:
    """Qwen2 / Qwen3 causal LM shape."""

    arch: str = "qwen2"  # qwen2 | qwen3
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_layers: int = 36
    num_heads: int = 16
    num_kv_heads: int = 2
    head_dim: Optional[int] = None  # Qwen3 sets it explicitly (128); Qwen2 derives hidden/heads
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True

    def __post_init__(self):
        _require(self.arch in ("qwen2", "qwen3"), "decoder.arch", f"must be qwen2 or qwen3, got {self.arch!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_position_embeddings"):
            _require(getattr(self, name) > 0, f"decoder.{name}", f"must be > 0, got {getattr(self, name)}")
        _require(self.num_heads % self.num_kv_heads == 0, "decoder.num_kv_heads",
                 f"must divide decoder.num_heads={self.num_heads}, got {self.num_kv_heads}")
        if self.head_dim is None:
            _require(self.hidden_size % self.num_heads == 0, "decoder.num_heads",
                     f"must divide decoder.hidden_size={self.hidden_size} (or set decoder.head_dim)")


@dataclass
class TokensConfig:
    """Special-token facts the model and the decoding filter need."""

    audio_token_id: int = 151663  # the <|audio|> placeholder; an ARK checkpoint's own value wins
    block_from_id: int = 151670  # decoding never emits an id at or above this
    eos_tokens: list[str] = field(default_factory=lambda: ["<|im_end|>", "<|user|>", "<|assistant|>"])


@dataclass
class PromptConfig:
    """Instruction text inside the ARK prompt; `{language}` is replaced by the language's English name."""

    instruction: str = "Please transcribe this audio."
    language_instruction: str = "Please transcribe this audio in {language}."

    def __post_init__(self):
        _require("{language}" in self.language_instruction, "prompt.language_instruction",
                 "must contain the {language} field")


@dataclass
class LoraConfig:
    """Optional LoRA on the decoder (peft); adapter stays fully trainable."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def __post_init__(self):
        _require(self.r > 0, "lora.r", f"must be > 0, got {self.r}")
        _require(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        _require(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")


@dataclass
class ModelConfig:
    """Everything `build_student` needs: shapes, tokens, prompt, initialisation, which parts train."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tokenizer: Optional[str] = None  # HF tokenizer dir; None = bundled Qwen2.5 vocabulary + ARK specials
    init_decoder_from: Optional[str] = None  # Qwen2/Qwen3 checkpoint dir for the decoder weights
    init_encoder_from: Optional[str] = None  # GlmAsr / ARK / ark-opd dir for encoder + adapter weights
    train_encoder: bool = False
    train_adapter: bool = True
    train_decoder: bool = True
    attn_implementation: str = "sdpa"  # sdpa | eager
    dtype: str = "float32"  # float32 | bfloat16 | float16

    def __post_init__(self):
        enc, ad, dec = self.encoder, self.adapter, self.decoder
        _require(enc.ffn_dim == ad.merge_factor * enc.hidden_size, "adapter.merge_factor",
                 f"GlmAsr merges frames by reshaping to encoder.ffn_dim, so encoder.ffn_dim ({enc.ffn_dim}) "
                 f"must equal adapter.merge_factor ({ad.merge_factor}) x encoder.hidden_size ({enc.hidden_size})")
        _require(ad.hidden_size == 2 * dec.hidden_size, "adapter.hidden_size",
                 f"GlmAsr's projector is 2 x decoder.hidden_size = {2 * dec.hidden_size} wide, got {ad.hidden_size}")
        _require(0 <= self.tokens.audio_token_id < dec.vocab_size, "tokens.audio_token_id",
                 f"must be inside the vocabulary [0, {dec.vocab_size}), got {self.tokens.audio_token_id}")
        _require(0 < self.tokens.block_from_id <= dec.vocab_size, "tokens.block_from_id",
                 f"must be in (0, decoder.vocab_size={dec.vocab_size}], got {self.tokens.block_from_id}")
        _require(self.attn_implementation in ("sdpa", "eager"), "attn_implementation",
                 f"must be sdpa or eager, got {self.attn_implementation!r}")
        _require(self.dtype in ("float32", "bfloat16", "float16"), "dtype",
                 f"must be float32, bfloat16 or float16, got {self.dtype!r}")
        _require(not (self.lora.enabled and self.train_decoder is False), "lora.enabled",
                 "LoRA trains the decoder; it needs train_decoder=true")


@dataclass
class SourceConfig:
    """One manifest and its weight in the mix: 2.0 = each utterance twice an epoch, 0.5 = a random half."""

    path: str = ""  # JSONL file, saved dataset dir[#split], or hf:REPO[:CONFIG]:SPLIT
    weight: float = 1.0
    language: Optional[str] = None  # for datasets without a language field
    text_column: Optional[str] = None  # for datasets: which column holds the transcript

    def __post_init__(self):
        _require(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")


@dataclass
class DataConfig:
    """Manifests to read, how to batch them, and which clips to skip."""

    train: list[SourceConfig] = field(default_factory=list)
    # The 19 FLEURS dev sets written by data_recipes/fleurs/prepare.py; the toy setup uses its own dev split.
    dev: list[SourceConfig] = field(default_factory=lambda: [
        SourceConfig(path=f"data/fleurs/dev/{code}.jsonl") for code in DEV_LANGUAGES])
    max_batch_seconds: float = 240.0  # padded audio per batch: count x longest clip
    max_batch_size: Optional[int] = None
    min_seconds: float = 0.1
    max_seconds: float = 30.0
    num_workers: int = 2
    language_prompt: bool = False  # put each utterance's language in its prompt
    keep_audio: bool = False  # pass raw audio in batches (teachers with their own front end need it)

    def __post_init__(self):
        _require(self.max_batch_seconds > 0, "data.max_batch_seconds", f"must be > 0, got {self.max_batch_seconds}")
        _require(self.max_batch_size is None or self.max_batch_size >= 1, "data.max_batch_size",
                 f"must be >= 1, got {self.max_batch_size}")
        _require(0 <= self.min_seconds < self.max_seconds, "data.min_seconds",
                 f"must be in [0, data.max_seconds={self.max_seconds}), got {self.min_seconds}")
        _require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        for name in ("train", "dev"):
            for i, source in enumerate(getattr(self, name)):
                _require(bool(source.path), f"data.{name}[{i}].path", "must name a manifest")


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build `schema` from its defaults, then the YAML file at `path`, then dotted `key=value` overrides."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
    where = f" in {path}" if path else ""
    if overrides:
        where += f" (overrides: {' '.join(overrides)})"
    return _validated(schema, lambda: [OmegaConf.load(path)] if path is not None else [],
                      list(overrides), where)


def config_from_dict(schema: type[T], data: dict) -> T:
    """Same validation as `load_config`, from an in-memory dict."""
    return _validated(schema, lambda: [OmegaConf.create(data)], [], "")


def _validated(schema, sources, overrides, where):
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *sources())
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        lines = str(err).splitlines()
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("full_key:")), "?")
        raise ConfigError(f"{key}{where}: {lines[0]}") from None
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
