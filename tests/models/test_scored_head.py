"""The head at scored positions only, chunk by chunk: the same values and gradients as full logits,
logits for at most `chunk` positions at a time, recomputed (not stored) for the backward pass."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_clips, tiny_config
from train.models import build_student
from train.models.scored_head import ScoredPositions, score_hidden
from train.opd.losses import token_nll
from train.opd.rollout import Rollout, rescore, rescore_at
from train.supervised import teacher_forced


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunks_give_the_full_logits_values_and_gradients(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False).double()
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 0, 1]], dtype=torch.bool)
    targets = torch.randint(0, 11, (2, 5))
    seen = []

    def per_token(logits, at):
        seen.append(logits.shape[0])
        return token_nll(logits, targets[mask][at])

    values = score_hidden(hidden, head, ScoredPositions.where(mask, per_token, chunk))
    values.sum().backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    full = token_nll(head(hidden), targets)[mask]
    full.sum().backward()
    torch.testing.assert_close(values, full, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[1], head.weight.grad, rtol=0, atol=1e-12)
    n = int(mask.sum())
    chunks = -(-n // chunk)
    assert max(seen) == min(chunk, n)  # never more positions' logits than the chunk
    assert len(seen) == 2 * chunks  # each chunk once forward, once again in backward: never stored
    with torch.no_grad():
        seen.clear()
        score_hidden(hidden, head, ScoredPositions.where(mask, per_token, chunk))
        assert len(seen) == chunks  # no recomputation without gradients


def test_the_student_scores_its_rollout_where_asked(tiny_student):
    model, processor = tiny_student
    batch = processor(make_clips([16000, 7000]))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1000, (2, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    ro = Rollout(tokens, mask, None, torch.arange(2), batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        full = rescore(model, batch, ro)
        at = rescore_at(model, batch, ro, mask, lambda logits, _: logits, chunk=2)
    torch.testing.assert_close(at, full[mask], rtol=1e-5, atol=1e-5)


def test_teacher_forcing_scores_transcript_tokens_only(tiny_student):
    model, processor = tiny_student
    batch = processor(make_clips([16000, 7000]), texts=["hallo welt", "ja"])
    with torch.no_grad():
        nll_N, targets_N = teacher_forced(model, batch, chunk=3)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       input_features=batch["input_features"], input_features_mask=batch["input_features_mask"]).logits
    targets = batch["labels"][:, 1:]
    assert len(nll_N) == int((targets >= 0).sum()) < targets.numel() // 3  # placeholders predict nothing
    torch.testing.assert_close(nll_N, token_nll(logits[:, :-1], targets)[targets >= 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(targets_N, targets[targets >= 0])


def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(tokenizer, monkeypatch):
    """student.gradient_checkpointing: decoder layers run again in the backward pass (their
    activations were not kept), and the gradients do not change."""
    from transformers.models.qwen2 import modeling_qwen2

    count = []  # counted in the class: module hooks do not fire when a checkpointed forward is recomputed
    forward = modeling_qwen2.Qwen2MLP.forward
    monkeypatch.setattr(modeling_qwen2.Qwen2MLP, "forward", lambda self, x: count.append(1) or forward(self, x))
    grads, calls = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, processor = build_student(tiny_config())
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        count.clear()
        batch = processor(make_clips([16000, 7000]), texts=["hallo welt", "ja"])
        nll_N, _ = teacher_forced(model, batch)
        nll_N.sum().backward()
        calls[checkpointing] = len(count)
        grads[checkpointing] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert calls == {False: 2, True: 4}  # two decoder layers
    for key, grad in grads[False].items():
        torch.testing.assert_close(grads[True][key], grad, rtol=1e-5, atol=1e-7, msg=key)
