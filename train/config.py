"""Typed configuration: dataclasses are the schema, YAML names an experiment, `key=value` overrides it.

OmegaConf does the parsing and merging (unknown keys and wrong types fail with the full dotted key);
each dataclass's `__post_init__` checks values and cross-field constraints before any model is built.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TypeVar

from omegaconf import DictConfig, OmegaConf
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


# Old dotted key -> new one: a config that still uses an old key is told the new name, not just "not in".
RENAMED_KEYS: dict[str, str] = {"teacher.score_chunk_rows": "teacher.rows_per_forward"}


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
    # Padded tokens per batch: count x longest (prompt incl. audio placeholders + new tokens). New
    # tokens are the transcript's in supervised stages, opd.max_new_tokens x opd.n_samples in OPD.
    # Memory grows with tokens, not seconds: 120 two-second clips fit 240 s but make 120 rollouts.
    max_batch_tokens: Optional[int] = None
    min_seconds: float = 0.1
    max_seconds: float = 30.0
    num_workers: int = 2
    # Put each utterance's language in its prompt. None: as the starting model was trained (its
    # ark_opd_prompt.json), else no. The run's final/ records what it trained with.
    language_prompt: Optional[bool] = None
    keep_audio: bool = False  # pass raw audio in batches (teachers with their own front end need it)

    def __post_init__(self):
        _require(self.max_batch_seconds > 0, "data.max_batch_seconds", f"must be > 0, got {self.max_batch_seconds}")
        _require(self.max_batch_size is None or self.max_batch_size >= 1, "data.max_batch_size",
                 f"must be >= 1, got {self.max_batch_size}")
        _require(self.max_batch_tokens is None or self.max_batch_tokens >= 1, "data.max_batch_tokens",
                 f"must be >= 1, got {self.max_batch_tokens}")
        _require(0 <= self.min_seconds < self.max_seconds, "data.min_seconds",
                 f"must be in [0, data.max_seconds={self.max_seconds}), got {self.min_seconds}")
        _require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        for name in ("train", "dev"):
            for i, source in enumerate(getattr(self, name)):
                _require(bool(source.path), f"data.{name}[{i}].path", "must name a manifest")


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build `schema` from its defaults, then the YAML file at `path`, then dotted `key=value` overrides.
    An error names the key and where it came from: the override that set it, or the file."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
    overrides = [_source_list_override(item) for item in overrides]

    def origin(key: str) -> str:
        given = [item for item in overrides if item.split("=", 1)[0] == key or key.startswith(item.split("=", 1)[0] + ".")]
        if given:
            return f" (from the override {given[-1]!r})"
        return f" in {path}" if path else ""

    def sources():
        if path is None:
            return []
        if not Path(path).is_file():
            raise ConfigError(f"--config {path}: no such file")
        loaded = OmegaConf.load(path)
        for name in ("train", "dev"):  # `data: {train: x.jsonl}`: one manifest, given without the list
            if isinstance(loaded.get("data"), DictConfig) and isinstance(loaded.data.get(name), str):
                loaded.data[name] = [{"path": loaded.data[name]}]
        return [loaded]

    return _validated(schema, sources, list(overrides), origin)


def _source_list_override(item: str) -> str:
    """`data.train=x.jsonl` (a bare path where a list of sources goes) -> `data.train=[{path: x.jsonl}]`."""
    key, value = item.split("=", 1)
    if key in ("data.train", "data.dev") and value and not value.lstrip().startswith("["):
        return f"{key}=[{{path: {value}}}]"
    return item


def config_from_dict(schema: type[T], data: dict) -> T:
    """Same validation as `load_config`, from an in-memory dict."""
    return _validated(schema, lambda: [OmegaConf.create(data)], [], lambda key: "")


def _validated(schema, sources, overrides, origin):
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *sources())
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        lines = str(err).splitlines()
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("full_key:")), "?")
        if key in RENAMED_KEYS:
            raise ConfigError(f"{key}{origin(key)}: renamed to {RENAMED_KEYS[key]}") from None
        raise ConfigError(f"{key}{origin(key)}: {lines[0]}") from None
    except ConfigError as err:
        key, _, rest = str(err).partition(":")
        raise ConfigError(f"{key}{origin(key.split('[', 1)[0])}:{rest}") from None


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_help(schema) -> str:
    """Every key of `schema` with its default and its comment, a section at a time: the epilog of an entry
    point's --help. Read from the dataclasses (and their source's comments), so it cannot go stale."""
    import inspect
    import json
    import textwrap

    def notes(cls) -> dict[str, str]:  # a field's trailing comment, else the comment lines just above it
        found, names = {}, {f.name for f in dataclasses.fields(cls)}
        for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # a subclass's win
            try:
                source = inspect.getsource(klass).splitlines()[1:]
            except (OSError, TypeError):
                continue
            above = []
            for line in source:
                name = line[4:].split(":", 1)[0]
                if line.strip().startswith("#"):
                    above.append(line.strip().lstrip("#").strip())
                    continue
                if line.startswith("    ") and not line.startswith("     ") and name in names:
                    found[name] = line.split("  # ", 1)[1].strip() if "  # " in line else " ".join(above)
                above = []
        return found

    def shown(value) -> str:
        if isinstance(value, list):
            items = [shown(v) for v in value]
            return "[" + ", ".join(items[:2] + ([f"... {len(items)} in all"] if len(items) > 2 else [])) + "]"
        if dataclasses.is_dataclass(value):  # only what differs from the class's defaults
            return "{" + ", ".join(f"{f.name}: {shown(getattr(value, f.name))}" for f in dataclasses.fields(value)
                                   if getattr(value, f.name) != f.default) + "}"
        return "null" if value is None else json.dumps(value) if isinstance(value, bool) or value == "" else str(value)

    lines = ["config keys and their defaults (set any with key=value; --print-config shows the resolved config):"]

    def walk(cls, prefix: str) -> None:
        docs, sections = notes(cls), []
        for f in dataclasses.fields(cls):
            if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                sections.append((f.name, f.default_factory))
                continue
            value = ("(required)" if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                     else shown(f.default if f.default_factory is dataclasses.MISSING else f.default_factory()))
            line = f"  {prefix}{f.name} = {value}"
            if docs.get(f.name):
                line = textwrap.fill(f"{line}  # {docs[f.name]}", 110, subsequent_indent="      # ")
            lines.append(line)
        for name, sub in sections:
            doc = (sub.__doc__ or "").strip()
            doc = "" if doc.startswith(sub.__name__ + "(") else " ".join(doc.split())  # dataclass's own repr
            lines.extend(["", textwrap.fill(f"{prefix}{name}: {doc}" if doc else f"{prefix}{name}:", 110)])
            walk(sub, f"{prefix}{name}.")

    walk(schema, "")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The distillation recipe (train/distill.py)


@dataclass
class StudentConfig:
    """The student: a model config (shape, trainable parts, LoRA), and where its weights start from:
    a whole checkpoint, or the parts (decoder from a causal LM, encoder + adapter from an ASR model)."""

    model: str = "configs/models/tiny.yaml"
    checkpoint: Optional[str] = None  # weights to start from (ark-opd / GlmAsr / ARK dir); shape from there
    init_decoder_from: Optional[str] = None  # a Qwen2/Qwen3 causal-LM dir (overrides the model config's)
    init_encoder_from: Optional[str] = None  # a GlmAsr / ARK / ark-opd dir for encoder + adapter (likewise)
    # A frozen part left at random weights learns nothing and ruins everything after it; refused unless
    # asked for (tests, and demos that distil into a random student on purpose).
    allow_random_frozen: bool = False
    gradient_checkpointing: bool = False  # recompute layer activations in the backward pass (less memory)

    def __post_init__(self):
        for key in ("init_decoder_from", "init_encoder_from"):
            _require(not (self.checkpoint and getattr(self, key)), f"student.{key}",
                     "cannot be combined with student.checkpoint (a whole checkpoint already holds every part)")


@dataclass
class TeacherConfig:
    """The teacher: a checkpoint, or (for demos and tests) a random model of a config made on the fly."""

    kind: str = "same_family"  # same_family | qwen3_asr
    checkpoint: Optional[str] = None
    model: Optional[str] = "configs/models/tiny.yaml"  # used when no checkpoint: random weights
    seed: int = 1234
    init_std: Optional[float] = None  # random teacher only: re-draw weights with this std (peaked outputs)
    dtype: Optional[str] = None  # default: as saved
    # Same-family teachers: each clip's language in the teacher's prompt. None: as the teacher was trained
    # (its ark_opd_prompt.json), else no. A qwen3_asr teacher always forces a language it knows.
    language_prompt: Optional[bool] = None
    max_unmapped: float = 0.05  # refuse to distil if more of the student's tokens have no teacher token
    # Rollout rows per teacher forward: its full-vocabulary logits are rows x tokens x vocabulary.
    rows_per_forward: Optional[int] = None  # None: all rows of a micro-batch at once

    def __post_init__(self):
        _require(self.kind in ("same_family", "qwen3_asr"), "teacher.kind",
                 f"must be same_family or qwen3_asr, got {self.kind!r}")
        _require(self.checkpoint is not None or self.model is not None, "teacher.checkpoint",
                 "give a checkpoint (or a model config for a random teacher)")
        _require(self.kind == "same_family" or self.checkpoint is not None, "teacher.checkpoint",
                 "a qwen3_asr teacher needs a checkpoint")
        _require(self.rows_per_forward is None or self.rows_per_forward >= 1, "teacher.rows_per_forward",
                 f"must be >= 1, got {self.rows_per_forward}")
        _require(self.kind == "same_family" or self.language_prompt is None, "teacher.language_prompt",
                 "a qwen3_asr teacher always forces the language of a clip it knows (its own chat template); "
                 "leave the key unset")


@dataclass
class OPDConfig:
    """Rollouts and the distillation loss."""

    loss: str = "union_topk_kl"  # union_topk_kl (the paper) | jsd | reverse_kl
    k: int = 32
    beta: float = 0.5  # jsd only: 0 = forward KL, 1 = reverse KL
    temperature: float = 1.0  # both distributions' softmax temperature in the loss (union_topk_kl, jsd)
    # The teacher's alone, when set: below 1 sharpens its targets (a counter to the small student's flattened
    # distribution under forward KL); null = `temperature`. The T^2 factor is the student's.
    teacher_temperature: float | None = None
    n_samples: int = 1
    max_new_tokens: int = 256
    do_sample: bool = False  # the paper rolls out greedily
    sample_temperature: float = 1.0
    top_p: float = 1.0
    ce_weight: float = 0.0  # + weight x cross-entropy on reference transcripts, where the batch has them
    # GKD's lambda: share of steps on student samples vs reference transcripts (one coin per step, the
    # same on every rank)
    on_policy_fraction: float = 1.0
    # lambda rises linearly from 0 to on_policy_fraction over these first steps (off- to on-policy); 0 = constant
    on_policy_ramp_steps: int = 0

    def __post_init__(self):
        _require(self.loss in ("union_topk_kl", "jsd", "reverse_kl"), "opd.loss",
                 f"must be union_topk_kl, jsd or reverse_kl, got {self.loss!r}")
        _require(self.k >= 1, "opd.k", f"must be >= 1, got {self.k}")
        _require(0 <= self.beta <= 1, "opd.beta", f"must be in [0, 1], got {self.beta}")
        _require(self.temperature > 0, "opd.temperature", f"must be > 0, got {self.temperature}")
        _require(self.teacher_temperature is None or self.teacher_temperature > 0, "opd.teacher_temperature",
                 f"must be > 0 or null, got {self.teacher_temperature}")
        _require(self.n_samples >= 1, "opd.n_samples", f"must be >= 1, got {self.n_samples}")
        _require(self.max_new_tokens >= 1, "opd.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _require(0 < self.top_p <= 1, "opd.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.ce_weight >= 0, "opd.ce_weight", f"must be >= 0, got {self.ce_weight}")
        _require(0 <= self.on_policy_fraction <= 1, "opd.on_policy_fraction",
                 f"must be in [0, 1], got {self.on_policy_fraction}")
        _require(self.on_policy_ramp_steps >= 0, "opd.on_policy_ramp_steps",
                 f"must be >= 0, got {self.on_policy_ramp_steps}")
        _require(not self.on_policy_ramp_steps or self.on_policy_fraction > 0, "opd.on_policy_ramp_steps",
                 "has no effect with opd.on_policy_fraction=0 (every step is off-policy): leave it at 0")
        # The sampled-token estimator is the reverse KL's gradient only in expectation over the
        # student's own samples; on greedy rollouts it pushes down the argmax token wherever the
        # student is surer than the teacher, and nothing explores (toy run: teacher-argmax
        # agreement 53% -> 0.8% in 250 updates).
        _require(self.loss != "reverse_kl" or self.do_sample, "opd.do_sample",
                 "must be true for opd.loss=reverse_kl (its estimator needs the student's samples)")
        _require(self.loss != "reverse_kl" or self.teacher_temperature is None, "opd.teacher_temperature",
                 "has no effect with opd.loss=reverse_kl (it scores sampled tokens at temperature 1): leave it null")

    @property
    def teacher_T(self) -> float:
        """The temperature the teacher scores at."""
        return self.temperature if self.teacher_temperature is None else self.teacher_temperature


@dataclass
class OptimConfig:
    """AdamW on the trained parts (float32 masters), its schedule (one step per optimizer update, on
    every backend), clipping, and how many micro-batches make one update."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"  # constant | cosine (both after linear warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine only: the lr the cosine ends at, as a fraction of lr
    grad_clip: float = 1.0  # max global gradient norm (every backend, DeepSpeed included); 0 = off
    grad_accum: int = 1  # micro-batches per optimizer update (per process)
    # Positions whose full-vocabulary logits exist at once in the student's loss, forward and backward
    # (each chunk's logits are recomputed in the backward pass): bounds the B x T x V tensors.
    logits_chunk: int = 4096

    def __post_init__(self):
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(self.schedule in ("constant", "cosine"), "optim.schedule",
                 f"must be constant or cosine, got {self.schedule!r}")
        _require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.min_lr_ratio == 0 or self.schedule == "cosine", "optim.min_lr_ratio",
                 f"is the floor of the cosine schedule; optim.schedule is {self.schedule!r}")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        _require(self.grad_accum >= 1, "optim.grad_accum", f"must be >= 1, got {self.grad_accum}")
        _require(len(self.betas) == 2, "optim.betas", f"needs two values, got {self.betas}")
        _require(self.logits_chunk >= 1, "optim.logits_chunk", f"must be >= 1, got {self.logits_chunk}")


@dataclass
class LogConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    tensorboard: bool = False
    project: str = "ark-opd"

    def __post_init__(self):
        _require(self.wandb_mode in ("offline", "online", "disabled"), "log.wandb_mode",
                 f"must be offline, online or disabled, got {self.wandb_mode!r}")


@dataclass
class EvalConfig:
    every: int = 0  # steps between dev evaluations; 0 = only at the end
    # A dev evaluation at step 0, before the first update: the starting model's rates, the first point of the
    # plot, and a candidate for the best step. Not redone by a resumed run; it draws no training randomness.
    on_start: bool = True
    batch_size: int = 16
    max_new_tokens: int = 256
    language_prompt: Optional[bool] = None  # None: as data.language_prompt (dev prompts like training's)
    listening_clips: int = 32  # dev clips for the own- vs swapped-audio loss gap (train/eval/listening.py); 0 = off
    # An error inside a dev evaluation: false = its traceback is printed, an eval_error line goes to metrics.jsonl,
    # and training goes on; true = the run stops with it.
    fail_fast: bool = False


@dataclass
class DecodeConfig:
    """How the student decodes in rollouts and dev evaluation (train/decode/)."""

    engine: str = "auto"  # auto (static on CUDA with whole weights, else eager) | eager | static
    cuda_graphs: bool = True  # static on CUDA: capture each decode step shape once, then replay it
    compile: bool = False  # static: torch.compile the decode step too
    check_every: int = 8  # static: decode steps between host checks for "all rows finished" (and compaction)
    compact: bool = True  # static: move live rows into a smaller batch when finished ones free a bucket
    length_bucket: int = 64  # static: KV cache lengths are multiples of this (fewer shapes, fewer graphs)
    bf16_copy: bool = True  # static, bf16 autocast over float32 masters: decode from a bf16 copy of the weights

    def __post_init__(self):
        _require(self.engine in ("auto", "eager", "static"), "decode.engine",
                 f"must be auto, eager or static, got {self.engine!r}")
        _require(self.check_every >= 1, "decode.check_every", f"must be >= 1, got {self.check_every}")
        _require(self.length_bucket >= 1, "decode.length_bucket", f"must be >= 1, got {self.length_bucket}")


@dataclass
class CheckpointConfig:
    every: int = 50
    keep_last: int = 2  # older checkpoints are removed only once a newer one is written whole and recorded
    # A checkpoint that cannot be written (a full disk, say; its partial files are removed, older ones stay):
    # stop = the run ends with the path, the error and the space needed; continue = it says so and trains on,
    # retrying at the next checkpoint.
    on_error: str = "stop"

    def __post_init__(self):
        _require(self.every >= 1, "checkpoint.every", f"must be >= 1, got {self.every}")
        _require(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")
        _require(self.on_error in ("stop", "continue"), "checkpoint.on_error",
                 f"must be stop or continue, got {self.on_error!r}")


# Signals a run cannot catch (they kill at once); the others can be listed in faults.signals.
UNCATCHABLE_SIGNALS = ("SIGKILL", "SIGSTOP")


@dataclass
class FaultsConfig:
    """Preemption and dead ranks (train/preemption.py)."""

    # Signals that stop a run cleanly: the step in progress is finished, a checkpoint is written at it, and the
    # run exits with status 75 (resume=auto goes on from there). SIGTERM: what SLURM, Kubernetes and spot
    # reclaimers send before they kill; SIGUSR1: SLURM's `--signal=USR1@SECONDS` warning. [] = off.
    signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    # Seconds a collective (all-reduce, barrier) waits for the other ranks before it fails: a dead or hung rank
    # ends the run with an error instead of holding the others until the job's wall time. It must exceed the
    # longest a healthy rank waits for another (rank 0 writing a checkpoint or the final model, uneven rollouts).
    collective_timeout_s: int = 1800

    def __post_init__(self):
        for name in self.signals:
            _require(isinstance(getattr(signal, str(name), None), signal.Signals) and str(name).startswith("SIG"),
                     "faults.signals", f"{name!r} is not a signal name (e.g. SIGTERM, SIGUSR1)")
            _require(name not in UNCATCHABLE_SIGNALS, "faults.signals", f"{name} cannot be caught")
        _require(len(set(self.signals)) == len(self.signals), "faults.signals", f"lists a signal twice: {self.signals}")
        _require(self.collective_timeout_s >= 1, "faults.collective_timeout_s",
                 f"must be >= 1 second, got {self.collective_timeout_s}")


@dataclass
class RunConfig:
    """What every training recipe has: run folder, seed, steps, resume, student, data, optimiser, logging."""

    output_dir: str = "runs/run"
    seed: int = 0
    max_steps: int = 200
    resume: str = "auto"  # auto (newest complete checkpoint in output_dir) | never | a checkpoint dir
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    max_nonfinite_in_a_row: int = 5  # NaN/inf losses skip their step; this many in a row stop the run
    # Compute precision of the trained student (train/engine.py): auto = the model config's dtype
    # (bfloat16 -> bf16); bf16 = float32 masters computed in bfloat16; no = float32 throughout.
    mixed_precision: str = "auto"

    def __post_init__(self):
        _require(self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        if self.mixed_precision in ("False", "false"):  # YAML 1.1 reads a bare `no` as false
            self.mixed_precision = "no"
        _require(self.mixed_precision in ("auto", "no", "bf16"), "mixed_precision",
                 f"must be auto, no or bf16, got {self.mixed_precision!r}"
                 + (" (fp16 training needs dynamic loss scaling, which this engine does not do: use bf16)"
                    if self.mixed_precision == "fp16" else ""))
        _require(self.max_nonfinite_in_a_row >= 1, "max_nonfinite_in_a_row",
                 f"must be >= 1, got {self.max_nonfinite_in_a_row}")
        _require(bool(self.data.train), "data.train", "needs at least one manifest")


@dataclass
class DistillConfig(RunConfig):
    """On-policy distillation; `python train/distill.py --config FILE key=value ...`."""

    output_dir: str = "runs/distill-toy"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    opd: OPDConfig = field(default_factory=OPDConfig)


@dataclass
class CTCConfig:
    """Auxiliary CTC loss on the audio branch (train/models/ctc.py): helps a student trained from
    scratch start listening. Loss = decoder NLL + weight x CTC, both per transcript token."""

    weight: float = 0.0  # 0 = no CTC head
    source: str = "encoder"  # encoder (50 frames/s) | adapter (12.5 frames/s)

    def __post_init__(self):
        _require(self.weight >= 0, "ctc.weight", f"must be >= 0, got {self.weight}")
        _require(self.source in ("encoder", "adapter"), "ctc.source",
                 f"must be encoder or adapter, got {self.source!r}")


@dataclass
class SFTConfig(RunConfig):
    """Supervised training on transcripts (base SFT, or TD on pseudo-labels); `python train/sft.py ...`."""

    output_dir: str = "runs/sft"
    ctc: CTCConfig = field(default_factory=CTCConfig)
