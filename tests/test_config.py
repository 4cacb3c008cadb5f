"""Config loading: YAML + dotted overrides, unknown keys and bad values fail naming the key."""

from __future__ import annotations

import pytest

from train.config import ConfigError, DistillConfig, ModelConfig, config_help, config_to_yaml, load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("encoder:\n  num_layers: 3\ndecoder:\n  arch: qwen3\n  head_dim: 64\n")
    cfg = load_config(ModelConfig, path, ["encoder.num_layers=5", "lora.enabled=true",
                                          "tokens.eos_tokens=[<|im_end|>]"])
    assert cfg.encoder.num_layers == 5 and cfg.decoder.arch == "qwen3" and cfg.decoder.head_dim == 64
    assert cfg.lora.enabled and cfg.tokens.eos_tokens == ["<|im_end|>"]
    assert isinstance(cfg.lora.target_modules, list)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(ModelConfig, None, ["encoder.num_layers=3"])
    path = tmp_path / "out.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(ModelConfig, path) == cfg


@pytest.mark.parametrize("override, key", [
    ("encoder.num_layer=3", "encoder.num_layer"),
    ("encoder.num_layers=three", "encoder.num_layers"),
    ("adapter.merge_factor=0", "adapter.merge_factor"),
    ("adapter.hidden_size=100", "adapter.hidden_size"),
    ("tokens.audio_token_id=151936", "tokens.audio_token_id"),
    ("tokens.block_from_id=0", "tokens.block_from_id"),
    ("decoder.num_kv_heads=3", "decoder.num_kv_heads"),
    ("encoder.partial_rotary_factor=0.3", "encoder.partial_rotary_factor"),
    ("prompt.language_instruction=Transcribe.", "prompt.language_instruction"),
    ("attn_implementation=flash", "attn_implementation"),
    ("lora.r=0", "lora.r"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ModelConfig, None, [override])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(ModelConfig, None, ["encoder.num_layers"])


def test_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("decoder:\n  vocab: 10\n")
    with pytest.raises(ConfigError, match=r"decoder\.vocab in .*bad\.yaml"):
        load_config(ModelConfig, path)


def test_bare_no_means_no_mixed_precision(tmp_path):
    """YAML 1.1 reads `no` as false, on the command line and in a file alike."""
    cfg = load_config(DistillConfig, "configs/distill/tiny_random_teacher.yaml", ["mixed_precision=no"])
    assert cfg.mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\ndata:\n  train:\n    - path: x.jsonl\n")
    assert load_config(DistillConfig, path).mixed_precision == "no"


def test_an_error_says_whether_the_key_came_from_the_file_or_an_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.001\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"optim\.warmup in .*run\.yaml"):
        load_config(DistillConfig, path)
    with pytest.raises(ConfigError, match=r"optim\.grad_accum \(from the override 'optim\.grad_accum=0'\): must be >= 1"):
        load_config(DistillConfig, "configs/distill/tiny_random_teacher.yaml", ["optim.grad_accum=0"])
    with pytest.raises(ConfigError, match=r"optim\.betaz \(from the override 'optim\.betaz=1'\)"):
        load_config(DistillConfig, "configs/distill/tiny_random_teacher.yaml", ["optim.betaz=1"])
    with pytest.raises(ConfigError, match=r"--config .*nope\.yaml: no such file"):
        load_config(DistillConfig, tmp_path / "nope.yaml")


def test_one_manifest_may_be_given_without_the_list(tmp_path):
    """`data.train=x.jsonl` (and `train: x.jsonl` in a file) mean a list of one source."""
    cfg = load_config(DistillConfig, "configs/distill/tiny_random_teacher.yaml",
                      ["data.train=a/train.jsonl", "data.dev=a/dev.jsonl"])
    assert [s.path for s in cfg.data.train] == ["a/train.jsonl"] and [s.path for s in cfg.data.dev] == ["a/dev.jsonl"]
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train: b/train.jsonl\n")
    assert [s.path for s in load_config(DistillConfig, path).data.train] == ["b/train.jsonl"]
    listed = load_config(DistillConfig, "configs/distill/tiny_random_teacher.yaml", ["data.train=[{path: c.jsonl}]"])
    assert [s.path for s in listed.data.train] == ["c.jsonl"]


def test_config_help_lists_every_key_with_its_default_and_comment():
    """The --help epilog of the recipes, made from the dataclasses: nested sections, defaults as YAML
    writes them, the field's trailing comment or the comment above it, list defaults shortened."""
    text = config_help(ModelConfig)
    for line in ("  encoder.num_layers = 32", "  tokenizer = null  # HF tokenizer dir; None = bundled Qwen2.5",
                 "  lora.enabled = false", "  train_adapter = true", "  tokens.eos_tokens = [<|im_end|>, <|user|>, "):
        assert f"\n{line}" in text, line
    assert "\nencoder: Whisper-style audio encoder" in text  # a section, with its class's docstring
    distill = config_help(DistillConfig)
    assert ("\n  data.dev = [{path: data/fleurs/dev/zh.jsonl}, {path: data/fleurs/dev/en.jsonl}, ... 19 in all]"
            in distill)
    assert "\n  data.max_batch_tokens = null  # Padded tokens per batch" in distill  # the comment above the field
    assert "\n  output_dir = runs/distill-toy\n" in distill  # the subclass's default, not RunConfig's


@pytest.mark.parametrize("overrides, key", [
    (["opd.teacher_temperature=0"], "opd.teacher_temperature"),
    (["opd.loss=reverse_kl", "opd.do_sample=true", "opd.teacher_temperature=0.5"], "opd.teacher_temperature"),
])
def test_bad_opd_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(DistillConfig, "configs/distill/tiny_random_teacher.yaml", overrides)
