"""build_student / load_student / save_student: the student model and its processor, in and out of disk."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, GlmAsrConfig, WhisperFeatureExtractor
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging as hf_logging

from train.config import ModelConfig, PromptConfig, TokensConfig, config_from_dict, load_config
from train.models import ark_layout
from train.models.processor import PROMPT_FILE, ArkProcessor, make_feature_extractor
from train.models.student import StudentForConditionalGeneration, glmasr_config, merge_factor_of
from train.models.tokenizer import ARK_SPECIALS, build_qwen25_ark_tokenizer
from train.models.weights import load_subset, raise_on_loading_info, read_config_json, read_weights

ENCODER_PREFIXES = ("model.audio_tower.", "model.multi_modal_projector.")
DECODER_PREFIXES = ("model.language_model.", "lm_head.")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_model_config(cfg: ModelConfig | dict | str | Path) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, dict):
        return config_from_dict(ModelConfig, cfg)
    return load_config(ModelConfig, cfg)


def build_student(cfg: ModelConfig | dict | str | Path, device: str | torch.device | None = None,
                  fast_init: bool | None = None):
    """(model, processor) from a model config: random init, or weights from `init_*_from` dirs, on `device`
    (default: the CPU).

    `fast_init` (default: on for any device but the CPU) constructs the model on the meta device (no
    memory, no init) and allocates it on `device` once: random weights are drawn there by the model's
    own `_init_weights` rules, the same distributions as transformers' `post_init`, and tensors that
    `init_*_from` fills are never drawn at all. A 3.75 B model then builds in seconds on a GPU, where
    the old path spent minutes in torch's and then transformers' init on the CPU.
    The old path stays the CPU default because the fast one draws other numbers from the same seed
    (the old one runs torch's own init first, then `post_init`'s): seeded CPU builds are what the
    shipped checkpoints/toy/ (scripts/reproduce_toy.sh), the recorded CPU results and the tests that
    rebuild a recipe's initial student were made from, and on the CPU the fast path saves only the
    first of those two passes (~1.5x). Under DeepSpeed's zero.Init (ZeRO-3 with zero3_init_flag),
    which partitions weights as they are made, the old path is always taken."""
    cfg = _as_model_config(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer) if cfg.tokenizer else build_qwen25_ark_tokenizer()
    if len(tokenizer) > cfg.decoder.vocab_size:
        raise ValueError(f"decoder.vocab_size={cfg.decoder.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    processor = ArkProcessor(tokenizer, make_feature_extractor(cfg.encoder.num_mel_bins), cfg.tokens, cfg.prompt,
                             cfg.adapter.merge_factor)
    config = glmasr_config(cfg, processor.eos_token_ids, processor.pad_token_id)
    device = torch.device(device or "cpu")
    if fast_init is None:
        fast_init = device.type != "cpu"
    if fast_init and not is_deepspeed_zero3_enabled():
        loaded = ((ENCODER_PREFIXES if cfg.init_encoder_from else ())
                  + (DECODER_PREFIXES if cfg.init_decoder_from else ()))
        model = _build_on_device(config, cfg, device, left_for_loading=loaded)
    else:
        with device:
            model = StudentForConditionalGeneration._from_config(
                config, attn_implementation=cfg.attn_implementation, dtype=DTYPES[cfg.dtype])
    if cfg.init_encoder_from:
        _init_encoder_from(model, cfg, cfg.init_encoder_from)
    if cfg.init_decoder_from:
        check_lm_tokenizer(tokenizer, cfg.init_decoder_from)
        _init_decoder_from(model, cfg, cfg.init_decoder_from)
    return configure_training(model, cfg), processor


def _build_on_device(config: GlmAsrConfig, cfg: ModelConfig, device: torch.device,
                     left_for_loading: tuple[str, ...] = ()):
    """The model constructed on the meta device, then allocated on `device` and initialised there: every
    tensor by transformers' `_init_weights` rules, except the state-dict entries under `left_for_loading`
    (uninitialised: the caller loads them)."""
    with torch.device("meta"):  # post_init skips its init on the meta device
        model = StudentForConditionalGeneration._from_config(
            config, attn_implementation=cfg.attn_implementation, dtype=DTYPES[cfg.dtype])
    model.to_empty(device=device)
    skipped = {id(t): t for key, t in model.state_dict(keep_vars=True).items() if key.startswith(left_for_loading)}
    for tensor in skipped.values():
        tensor._is_hf_initialized = True  # transformers' init functions leave flagged tensors alone
    # A tied copy (lm_head) takes its source's values, as after post_init, where each sub-model is drawn
    # in its own post_init and tied last: the embedding's draw, padding row zeroed, wins. to_empty may
    # or may not have kept the tie, so skip the copy's module rather than its tensor.
    for key in model.all_tied_weights_keys:
        model.get_submodule(key.rpartition(".")[0])._is_hf_initialized = True
    try:
        # Also recomputes the non-persistent rotary buffers (inv_freq), which to_empty left as garbage.
        model.initialize_weights()
    finally:
        for tensor in skipped.values():
            del tensor._is_hf_initialized
    model.tie_weights()  # to_empty gave tied weights storage of their own
    return model


def check_lm_tokenizer(student_tokenizer, path: str) -> list[str]:
    """The student's tokenizer (the Qwen2.5 BPE with ARK's special tokens from id 151663) must give
    every token the id the causal LM at `path` was trained with, up to the ids ARK takes for its own
    specials; those replace the LM's tokens there (Qwen2.5's <|repo_name|> and <|file_sep|>, Qwen3's
    tool and think tokens), whose embedding rows then learn their new meaning. Raises on the first
    token that differs; returns the LM tokens ARK's specials replace. An LM dir without a tokenizer
    is not checked."""
    if not any((Path(path) / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return []
    lm = _load_tokenizer(Path(path))
    ours, theirs = student_tokenizer.get_vocab(), lm.get_vocab()
    first_ark = ours.get(ARK_SPECIALS[0], len(ours))
    by_id = {i: t for t, i in theirs.items()}
    for token, i in sorted(ours.items(), key=lambda item: item[1]):
        if i >= first_ark:
            break
        if by_id.get(i) != token:
            raise ValueError(f"init_decoder_from={path}: its tokenizer has {by_id.get(i)!r} at id {i}, the student's "
                             f"has {token!r}: the LM was trained with another vocabulary (set the model config's "
                             "`tokenizer` to a matching one)")
    replaced = [f"{by_id[i]!r}@{i}" for i in range(first_ark, first_ark + len(ARK_SPECIALS)) if i in by_id]
    if replaced:
        print(f"init_decoder_from={path}: ARK's special tokens take the ids of the LM's {', '.join(replaced)}")
    return replaced


def _init_encoder_from(model, cfg: ModelConfig, path: str) -> None:
    """Encoder + adapter weights from an ARK, GlmAsr or ark-opd checkpoint dir."""
    source = read_config_json(path)
    if source.get("model_type") == "arkasr":
        weights = read_weights(path, keep=lambda key: key.startswith("audio_encoder."))
        mapped = ark_layout.ark_to_glmasr_state_dict(weights, cfg.encoder)
    elif source.get("model_type") == "glmasr":
        # Older GlmAsr exports lack the leading `model.`: key on the module names themselves.
        encoder_key = re.compile(r"(audio_tower\.|multi_modal_projector\.)(.*)$")
        weights = read_weights(path, keep=lambda key: encoder_key.search(key) is not None)
        mapped = {"model." + "".join(encoder_key.search(k).groups()): v for k, v in weights.items()}
    else:
        raise ValueError(f"{path}/config.json: model_type {source.get('model_type')!r} has no audio encoder "
                         "we can read (expected 'arkasr' or 'glmasr')")
    load_subset(model, mapped, ENCODER_PREFIXES, f"init_encoder_from={path}")


def _init_decoder_from(model, cfg: ModelConfig, path: str) -> None:
    """Decoder weights from a Qwen2/Qwen3 causal-LM checkpoint dir."""
    source = read_config_json(path)
    if source.get("model_type") != cfg.decoder.arch:
        raise ValueError(f"init_decoder_from={path}: model_type is {source.get('model_type')!r}, "
                         f"decoder.arch is {cfg.decoder.arch!r}")
    theta = (source.get("rope_parameters") or {}).get("rope_theta", source.get("rope_theta"))
    if theta is not None and float(theta) != cfg.decoder.rope_theta:
        raise ValueError(f"init_decoder_from={path}: rope_theta is {theta}, decoder.rope_theta is "
                         f"{cfg.decoder.rope_theta}")
    mapped = {}
    for key, value in read_weights(path).items():
        if key.startswith("model."):
            mapped["model.language_model." + key[len("model."):]] = value
        elif key.startswith("lm_head."):
            if not cfg.decoder.tie_word_embeddings:
                mapped[key] = value
        else:
            mapped[key] = value  # reported as unexpected
    tied = {"lm_head.weight"} if cfg.decoder.tie_word_embeddings else set()
    load_subset(model, mapped, DECODER_PREFIXES, f"init_decoder_from={path}", may_be_missing=tied)


def frozen_random_parts(cfg: ModelConfig) -> list[str]:
    """The parts `build_student(cfg)` would leave at random weights although they do not train, each
    named with the key that would give it weights."""
    parts = []
    if not cfg.init_encoder_from:
        if not cfg.train_encoder:
            parts.append("the audio encoder is frozen (train_encoder: false) and would be random: "
                         "set student.init_encoder_from=DIR (a GLM-ASR / ARK-ASR / ark-opd model)")
        if not cfg.train_adapter:
            parts.append("the adapter is frozen (train_adapter: false) and would be random: "
                         "set student.init_encoder_from=DIR (it holds encoder and adapter)")
    if not cfg.init_decoder_from and (not cfg.train_decoder or cfg.lora.enabled):
        frozen = "only its LoRA adapters train" if cfg.lora.enabled else "train_decoder: false"
        parts.append(f"the decoder is frozen ({frozen}) and would be random: "
                     "set student.init_decoder_from=DIR (a Qwen2/Qwen3 causal LM)")
    return parts


def configure_training(model, cfg: ModelConfig):
    """Freeze or train encoder / adapter / decoder as configured; wrap the decoder in LoRA if enabled."""
    model.model.audio_tower.requires_grad_(cfg.train_encoder)
    model.model.multi_modal_projector.requires_grad_(cfg.train_adapter)
    model.model.language_model.requires_grad_(cfg.train_decoder)
    model.lm_head.requires_grad_(cfg.train_decoder)
    if not cfg.lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    names = "|".join(re.escape(m) for m in cfg.lora.target_modules)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, bias="none",
                      target_modules=rf".*language_model\..*\.({names})$")
    peft_model = get_peft_model(model, lora)
    # peft freezes every base weight; the adapter (and the encoder, if asked) still train in full.
    model.model.multi_modal_projector.requires_grad_(cfg.train_adapter)
    model.model.audio_tower.requires_grad_(cfg.train_encoder)
    return peft_model


def model_config_from_glmasr(config: GlmAsrConfig, tokens: TokensConfig, prompt: PromptConfig) -> ModelConfig:
    """Our ModelConfig back from a transformers GlmAsrConfig (the inverse of `glmasr_config`)."""
    a, t = config.audio_config, config.text_config
    rope_a, rope_t = a.rope_parameters, t.rope_parameters
    return config_from_dict(ModelConfig, {
        "encoder": {"hidden_size": a.hidden_size, "num_layers": a.num_hidden_layers,
                    "num_heads": a.num_attention_heads, "ffn_dim": a.intermediate_size,
                    "num_mel_bins": a.num_mel_bins, "rope_theta": rope_a["rope_theta"],
                    "partial_rotary_factor": rope_a.get("partial_rotary_factor", 0.5),
                    "max_positions": a.max_position_embeddings},
        "adapter": {"merge_factor": merge_factor_of(config), "hidden_size": 2 * t.hidden_size,
                    "activation": config.projector_hidden_act},
        "decoder": {"arch": t.model_type, "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                    "intermediate_size": t.intermediate_size, "num_layers": t.num_hidden_layers,
                    "num_heads": t.num_attention_heads, "num_kv_heads": t.num_key_value_heads,
                    "head_dim": getattr(t, "head_dim", None) if t.model_type == "qwen3" else None,
                    "rope_theta": rope_t["rope_theta"], "max_position_embeddings": t.max_position_embeddings,
                    "rms_norm_eps": t.rms_norm_eps, "tie_word_embeddings": bool(config.tie_word_embeddings)},
        "tokens": {"audio_token_id": config.audio_token_id, "block_from_id": tokens.block_from_id,
                   "eos_tokens": list(tokens.eos_tokens)},
        "prompt": {"instruction": prompt.instruction, "language_instruction": prompt.language_instruction},
    })


def _load_tokenizer(path: Path):
    # Never trust_remote_code: a checkpoint whose tokenizer class is remote still ships tokenizer.json.
    # AutoTokenizer also parses config.json; for an ARK dir (model_type "arkasr", unknown to
    # transformers) it warns, then rightly falls back to tokenizer_config.json: keep that quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError):
        from transformers import PreTrainedTokenizerFast

        if not (path / "tokenizer.json").exists():
            raise
        return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_processor(path: Path, audio_token_id: int, num_mel_bins: int, merge_factor: int) -> ArkProcessor:
    tokenizer = _load_tokenizer(path)
    if (path / "preprocessor_config.json").exists():
        feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
    else:
        feature_extractor = make_feature_extractor(num_mel_bins)
    tokens, prompt, language_prompt = TokensConfig(audio_token_id=audio_token_id), PromptConfig(), None
    if (path / PROMPT_FILE).exists():
        saved = json.loads((path / PROMPT_FILE).read_text())
        tokens = config_from_dict(TokensConfig, saved["tokens"])
        prompt = config_from_dict(PromptConfig, saved["prompt"])
        language_prompt = saved.get("language_prompt")
        if language_prompt not in (None, True, False):
            raise ValueError(f"{path / PROMPT_FILE}: language_prompt must be true or false, got {language_prompt!r}")
    # The checkpoint's own audio token id wins over anything remembered elsewhere.
    tokens = replace(tokens, audio_token_id=audio_token_id)
    return ArkProcessor(tokenizer, feature_extractor, tokens, prompt, merge_factor, language_prompt)


def load_student(path: str | Path, dtype: str | torch.dtype | None = None, attn_implementation: str = "sdpa",
                 device: str | torch.device | None = None):
    """(model, processor) from an ark-opd / GlmAsr HF directory or a released ARK-layout directory.
    The weights go straight onto `device` (default: the CPU): transformers builds the model on the meta
    device and draws no random weights for what it loads. Under DeepSpeed's zero.Init pass no device."""
    path = Path(path)
    raw = read_config_json(path)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    placement = {"device_map": torch.device(device)} if device is not None else {}
    if raw.get("model_type") == "arkasr":
        cfg = ark_layout.model_config_from_ark(raw, where=str(path / "config.json"))
        processor = _load_processor(path, cfg.tokens.audio_token_id, cfg.encoder.num_mel_bins,
                                    cfg.adapter.merge_factor)
        cfg = replace(cfg, tokens=replace(processor.tokens, block_from_id=cfg.tokens.block_from_id))
        config = glmasr_config(cfg, processor.eos_token_ids, processor.pad_token_id)
        state_dict = ark_layout.ark_to_glmasr_state_dict(read_weights(path), cfg.encoder)
        model, info = StudentForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state_dict, output_loading_info=True,
            attn_implementation=attn_implementation, dtype=torch_dtype, **placement)
    elif raw.get("model_type") == "glmasr":
        config = GlmAsrConfig.from_pretrained(path)
        processor = _load_processor(path, config.audio_token_id, config.audio_config.num_mel_bins,
                                    merge_factor_of(config))
        model, info = StudentForConditionalGeneration.from_pretrained(
            path, output_loading_info=True, attn_implementation=attn_implementation, dtype=torch_dtype, **placement)
    else:
        raise ValueError(f"{path}/config.json: model_type {raw.get('model_type')!r} is neither 'glmasr' nor 'arkasr'")
    file_name = ark_layout.glmasr_key_to_ark if raw.get("model_type") == "arkasr" else None
    raise_on_loading_info(info, str(path), file_name)
    model.eval()
    return model, processor


def _plain_model(model):
    """The underlying GlmAsr model, with LoRA merged into a copy if the model is a peft wrapper."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def save_student(model, processor: ArkProcessor, path: str | Path, layout: str = "hf",
                 state_dict: dict | None = None) -> Path:
    """Write a checkpoint dir that `load_student` reads: layout "hf" (GlmAsr, plain transformers can load
    it) or "ark" (the released ARK-ASR layout). `state_dict`: weights gathered elsewhere (ZeRO-3)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if state_dict is not None and any("lora_" in k for k in state_dict):
        state_dict = None  # a LoRA wrapper's own keys: merge from the live model instead
    model = _plain_model(model)
    if state_dict is not None and model.config.tie_word_embeddings:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}  # tied: the embedding is it
    if layout == "hf":
        model.save_pretrained(path, state_dict=state_dict)
        # transformers records our subclass's name; name the stock class so any tool can map it.
        config_file = path / "config.json"
        saved = json.loads(config_file.read_text())
        saved["architectures"] = ["GlmAsrForConditionalGeneration"]
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    elif layout == "ark":
        cfg = model_config_from_glmasr(model.config, processor.tokens, processor.prompt_cfg)
        cfg = replace(cfg, dtype=str(model.dtype).removeprefix("torch."))
        ark_sd = ark_layout.glmasr_to_ark_state_dict(
            {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()}, cfg.encoder)
        # Tied lm_head and embeddings share storage; safetensors needs them as separate tensors.
        save_file({k: v.clone() for k, v in ark_sd.items()}, path / "model.safetensors", metadata={"format": "pt"})
        ark_cfg = ark_layout.ark_config_from_model_config(cfg, processor.eos_token_ids,
                                                          processor.pad_token_id)
        (path / "config.json").write_text(json.dumps(ark_cfg, indent=2) + "\n")
    else:
        raise ValueError(f"layout must be 'hf' or 'ark', got {layout!r}")
    processor.save_pretrained(path)
    return path
