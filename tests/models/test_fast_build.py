"""build_student's fast path (meta device, then one allocation and init on the target device) against
the old path (torch's init, then transformers' post_init, on the CPU), and load_student straight to a device."""

from __future__ import annotations

import math
import types

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers import initialization as hf_init

from tests.conftest import make_clips, tiny_config
from train.models import build_student, load_student, save_student

ENCODER = ("model.audio_tower.", "model.multi_modal_projector.")


@pytest.fixture(autouse=True)
def _cached_tokenizer(tokenizer, monkeypatch):
    """The session's tokenizer instead of a fresh one (2.5 s) for every build."""
    monkeypatch.setattr("train.models.build.build_qwen25_ark_tokenizer", lambda: tokenizer)


@pytest.fixture
def drawn(monkeypatch):
    """Storage pointers of the tensors transformers' init draws random values into (normal_)."""
    pointers = []
    real = hf_init.TORCH_INIT_FUNCTIONS["normal_"]

    def spy(tensor, *args, **kwargs):
        pointers.append(tensor.data_ptr())
        return real(tensor, *args, **kwargs)

    monkeypatch.setitem(hf_init.TORCH_INIT_FUNCTIONS, "normal_", spy)
    return pointers


def _build(fast: bool, seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_student(tiny_config(**changes), fast_init=fast)


def test_nothing_left_on_meta_and_seeded_builds_repeat():
    model, _ = _build(True, dtype="bfloat16")
    old, _ = _build(False, dtype="bfloat16")
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {t.device for t in tensors.values()} == {torch.device("cpu")}
    assert {n: t.dtype for n, t in tensors.items()} == \
        {n: t.dtype for n, t in (dict(old.named_parameters()) | dict(old.named_buffers())).items()}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == \
        {n: p.requires_grad for n, p in old.named_parameters()}  # configure_training ran
    again, _ = _build(True, dtype="bfloat16")
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_forward_equals_the_old_path_given_the_same_weights():
    """The non-persistent rotary buffers, garbage after to_empty, are recomputed: same weights, same logits."""
    old, processor = _build(False)
    new, _ = _build(True)
    for (name, a), (_, b) in zip(old.named_buffers(), new.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    new.load_state_dict(old.state_dict())
    batch = processor(make_clips([16000, 7000]), texts=["hello world", "x"])
    batch = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(old.eval()(**batch).logits, new.eval()(**batch).logits)


@pytest.mark.parametrize("decoder", [{}, {"tie_word_embeddings": False}, {"arch": "qwen3", "head_dim": 16}])
def test_init_follows_the_old_paths_rules(decoder, drawn):
    old, processor = _build(False, decoder=decoder)
    drawn.clear()
    new, _ = _build(True, seed=1, decoder=decoder)
    old_sd, new_sd = old.state_dict(), new.state_dict()
    for key, a in old_sd.items():
        b = new_sd[key]
        if bool((a == a.flatten()[0]).all()):  # norms one, biases zero
            assert torch.equal(a, b), key
        else:  # N(0, 0.02^2): the std agrees within sampling error (a few % on the larger tensors)
            assert not torch.equal(a, b), key
            tolerance = 0.02 + 4 / math.sqrt(a.numel())
            assert abs(b.std().item() / a.std().item() - 1) < tolerance, key
            assert abs(b.mean().item()) < 4 * 0.02 / math.sqrt(b.numel()), key
    embed, old_embed = new.model.language_model.embed_tokens.weight, old.model.language_model.embed_tokens.weight
    assert not embed[processor.pad_token_id].any() and not old_embed[processor.pad_token_id].any()  # zero in both
    tied = decoder.get("tie_word_embeddings", True)
    assert (new.lm_head.weight is embed) == tied and (old.lm_head.weight is old_embed) == tied
    # every weight drawn once, a tied lm_head not at all
    assert sorted(drawn) == sorted({p.data_ptr() for p in new.parameters() if p.ndim >= 2})


def _lm_dir(tmp_path):
    torch.manual_seed(3)
    lm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True))
    lm.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm", lm


def test_init_from_loads_exact_weights_and_draws_only_the_rest(tmp_path, drawn):
    source, processor = _build(False, seed=2)
    save_student(source, processor, tmp_path / "student")
    lm_path, lm = _lm_dir(tmp_path)
    drawn.clear()
    model, _ = _build(True, init_encoder_from=str(tmp_path / "student"), init_decoder_from=str(lm_path))
    assert not drawn  # everything came from the checkpoints
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith(ENCODER):
            assert torch.equal(state[key], value), key
    for key, value in lm.state_dict().items():
        assert torch.equal(state[key.replace("model.", "model.language_model.", 1)], value), key
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight

    drawn.clear()
    model, _ = _build(True, init_decoder_from=str(lm_path))
    encoder = {p.data_ptr() for n, p in model.named_parameters() if n.startswith(ENCODER) and p.ndim >= 2}
    assert sorted(drawn) == sorted(encoder)  # the decoder was never drawn
    assert torch.equal(model.model.language_model.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert abs(model.model.audio_tower.layers[0].mlp.fc1.weight.std().item() / 0.02 - 1) < 0.2


def test_zero3_construction_keeps_the_old_path(monkeypatch):
    """Under zero.Init the weights are partitioned as they are made: no meta build, whatever is asked."""
    monkeypatch.setattr("train.models.build.is_deepspeed_zero3_enabled", lambda: True)
    monkeypatch.setattr("train.models.build._build_on_device", lambda *a, **k: pytest.fail("fast path under ZeRO-3"))
    model, _ = _build(True)
    old, _ = _build(False)
    for key, value in old.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    from train.recipe import build_device

    accelerator = types.SimpleNamespace(device=torch.device("cpu"))
    monkeypatch.setattr("train.recipe.is_deepspeed_zero3_enabled", lambda: True)
    assert build_device(accelerator) is None
    monkeypatch.setattr("train.recipe.is_deepspeed_zero3_enabled", lambda: False)
    assert build_device(accelerator) == torch.device("cpu")


def test_load_student_draws_nothing(tmp_path, drawn, tokenizer, monkeypatch):
    monkeypatch.setattr("train.models.build._load_tokenizer", lambda path: tokenizer)  # weights are the point
    source, processor = _build(False, seed=2)
    save_student(source, processor, tmp_path / "hf")
    save_student(source, processor, tmp_path / "ark", layout="ark")
    for layout in ("hf", "ark"):
        drawn.clear()
        model, _ = load_student(tmp_path / layout, device="cpu")
        assert not drawn, layout
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (layout, key)


@pytest.mark.gpu
def test_fast_build_on_the_gpu():
    torch.manual_seed(0)
    model, _ = build_student(tiny_config(), device="cuda")  # fast by default off the CPU
    assert {t.device.type for t in list(model.parameters()) + list(model.buffers())} == {"cuda"}
    old, _ = _build(False)
    assert abs(model.lm_head.weight.std().item() / old.lm_head.weight.std().item() - 1) < 0.01
    for (name, a), (_, b) in zip(old.named_buffers(), model.named_buffers(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-6, atol=0, msg=name)
