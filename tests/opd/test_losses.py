"""Distillation losses against float64 brute force, identities, gathered forms, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from train.opd.losses import (
    generalized_jsd,
    sampled_token_reverse_kl,
    token_logp,
    token_nll,
    union_topk_forward_kl,
    union_topk_forward_kl_from_scores,
)
from train.opd.reduction import token_mean
from train.teachers.base import gather_scores


def _logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _softmax(x):
    e = [math.exp(v - max(x)) for v in x]
    return [v / sum(e) for v in e]


def _brute_union_kl(s_row, t_row, k, temperature, drop_teacher_ids=(), teacher_temperature=None):
    """One position, plain Python: U from sorted indices, renormalised softmax on U, KL(t_U || s_U)."""
    s = [v / temperature for v in s_row.tolist()]
    t = [v / (teacher_temperature or temperature) for v in t_row.tolist()]
    top = lambda xs: set(sorted(range(len(xs)), key=lambda i: -xs[i])[:k])  # noqa: E731
    union = sorted(top(s) | (top(t) - set(drop_teacher_ids)))
    ps, pt = _softmax([s[i] for i in union]), _softmax([t[i] for i in union])
    return temperature**2 * sum(b * math.log(b / a) for a, b in zip(ps, pt) if b > 0)


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (3, 1.0), (5, 2.0), (40, 1.0), (1000, 0.7)])
def test_union_topk_forward_kl_matches_brute_force(k, temperature):
    s, t = _logits(2, 3, 40, seed=1), _logits(2, 3, 40, seed=2)
    got = union_topk_forward_kl(s.float(), t.float(), k, temperature)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    for b in range(2):
        for p in range(3):
            assert got[b, p].item() == pytest.approx(_brute_union_kl(s[b, p], t[b, p], min(k, 40), temperature),
                                                     abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("k, temperature, teacher_temperature", [(3, 1.0, 0.5), (40, 1.0, 0.7), (5, 2.0, 1.0)])
def test_a_teacher_temperature_of_its_own_matches_brute_force(k, temperature, teacher_temperature):
    """Only the teacher's logits are divided by it: below 1 the targets sharpen, the student stays put."""
    s, t = _logits(2, 3, 40, seed=1), _logits(2, 3, 40, seed=2)
    got = union_topk_forward_kl(s, t, k, temperature, teacher_temperature=teacher_temperature)
    for b in range(2):
        for p in range(3):
            want = _brute_union_kl(s[b, p], t[b, p], k, temperature, teacher_temperature=teacher_temperature)
            assert got[b, p].item() == pytest.approx(want, abs=1e-9, rel=1e-9)
    assert not torch.allclose(got, union_topk_forward_kl(s, t, k, temperature))  # it changes the loss
    scores = gather_scores(t, s.argmax(-1), torch.ones(2, 3, dtype=torch.bool), k, teacher_temperature,
                           (s / temperature).topk(k, dim=-1).indices, full=False)
    torch.testing.assert_close(union_topk_forward_kl_from_scores(s, scores, temperature=temperature), got,
                               rtol=1e-6, atol=1e-6)


def test_k_at_least_vocab_is_the_full_forward_kl():
    s, t = _logits(3, 4, 17, seed=3), _logits(3, 4, 17, seed=4)
    full = (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1)
    torch.testing.assert_close(union_topk_forward_kl(s, t, k=17).double(), full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(union_topk_forward_kl(s, t, k=10**6).double(), full, rtol=1e-6, atol=1e-6)


def test_identical_distributions_give_zero():
    s = _logits(2, 5, 30, seed=5)
    assert union_topk_forward_kl(s, s.clone(), k=4).abs().max() < 1e-6
    for beta in (0.0, 0.3, 1.0):
        assert generalized_jsd(s, s.clone(), beta).abs().max() < 1e-6


def test_bad_k_and_beta():
    s = _logits(1, 1, 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        union_topk_forward_kl(s, s, k=0)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, s, beta=1.5)


def _scores_from(teacher_logits, student_logits, k, temperature, tokens=None):
    tokens = tokens if tokens is not None else student_logits.argmax(-1)
    mask = torch.ones(tokens.shape, dtype=torch.bool)
    extra = (student_logits / temperature).topk(min(k, student_logits.shape[-1]), dim=-1).indices
    return gather_scores(teacher_logits, tokens, mask, k, temperature, extra, full=False)


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (4, 1.0), (8, 1.5), (64, 1.0)])
def test_gathered_form_equals_the_reference(k, temperature):
    s, t = _logits(2, 6, 50, seed=6), _logits(2, 6, 50, seed=7)
    scores = _scores_from(t, s, k, temperature)
    torch.testing.assert_close(union_topk_forward_kl_from_scores(s, scores),
                               union_topk_forward_kl(s, t, k, temperature), rtol=1e-6, atol=1e-6)


def test_gathered_form_drops_unmapped_teacher_ids():
    s, t = _logits(1, 2, 30, seed=8), _logits(1, 2, 30, seed=9)
    scores = _scores_from(t, s, 5, 1.0)
    dropped = scores.topk_ids_B_T_K[0, 0, 0].item()
    scores.topk_ids_B_T_K[0, 0, 0] = -1  # the teacher's favourite has no student equivalent
    got = union_topk_forward_kl_from_scores(s, scores)
    student_top = set((s[0, 0]).topk(5).indices.tolist())
    drop = () if dropped in student_top else (dropped,)
    assert got[0, 0].item() == pytest.approx(_brute_union_kl(s[0, 0], t[0, 0], 5, 1.0, drop), abs=1e-6)
    assert got[0, 1].item() == pytest.approx(_brute_union_kl(s[0, 1], t[0, 1], 5, 1.0), abs=1e-6)


def _brute_jsd(s_row, t_row, beta, temperature):
    ps, pt = _softmax([v / temperature for v in s_row.tolist()]), _softmax([v / temperature for v in t_row.tolist()])
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)  # noqa: E731
    if beta == 0:
        return kl(pt, ps)
    if beta == 1:
        return kl(ps, pt)
    m = [beta * b + (1 - beta) * a for a, b in zip(ps, pt)]
    return beta * kl(pt, m) + (1 - beta) * kl(ps, m)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_brute_force(beta, temperature):
    s, t = _logits(2, 3, 25, seed=10), _logits(2, 3, 25, seed=11)
    got = generalized_jsd(s, t, beta, temperature)
    for b in range(2):
        for p in range(3):
            assert got[b, p].item() == pytest.approx(_brute_jsd(s[b, p], t[b, p], beta, temperature), abs=1e-6)


def test_jsd_endpoints_are_the_two_kls_and_chunking_changes_nothing():
    s, t = _logits(3, 5, 20, seed=12), _logits(3, 5, 20, seed=13)
    forward = union_topk_forward_kl(s, t, k=20)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), forward, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), union_topk_forward_kl(t, s, k=20), rtol=1e-6, atol=1e-6)
    whole = generalized_jsd(s, t, 0.4, chunk_tokens=10**6)
    for chunk in (1, 4, 7):
        torch.testing.assert_close(generalized_jsd(s, t, 0.4, chunk_tokens=chunk), whole, rtol=0, atol=1e-7)


def test_chunked_jsd_gradients_equal_unchunked():
    s, t = _logits(2, 6, 12, seed=14), _logits(2, 6, 12, seed=15)
    grads = []
    for chunk in (10**6, 5):
        x = s.clone().requires_grad_(True)
        generalized_jsd(x, t, 0.5, chunk_tokens=chunk).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def test_gradcheck():
    s, t = _logits(1, 3, 7, seed=16, scale=1.0), _logits(1, 3, 7, seed=17, scale=1.0)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: union_topk_forward_kl(x, t, 3), (s,), eps=1e-6, atol=1e-6)
    for beta in (0.0, 0.5, 1.0):
        assert torch.autograd.gradcheck(lambda x, b=beta: generalized_jsd(x, t, b, chunk_tokens=2), (s,),
                                        eps=1e-6, atol=1e-6)
    # The sampled reverse KL stops the gradient through its advantage, so finite differences (which
    # move the advantage too) cannot check it; its policy gradient is checked in closed form below.
    tokens = torch.tensor([[1, 4, 6]])
    assert torch.autograd.gradcheck(lambda x: token_logp(x, tokens), (s,), eps=1e-6, atol=1e-6)


def test_sampled_token_reverse_kl_value_and_policy_gradient():
    logits = _logits(2, 4, 9, seed=18).requires_grad_(True)
    teacher = _logits(2, 4, 9, seed=19)
    tokens = torch.randint(0, 9, (2, 4), generator=torch.Generator().manual_seed(0))
    s_logp = token_logp(logits, tokens)
    t_logp = token_logp(teacher, tokens)
    loss = sampled_token_reverse_kl(s_logp, t_logp, s_logp.detach())
    torch.testing.assert_close(loss.double(), (s_logp - t_logp).double(), rtol=1e-6, atol=1e-6)
    loss.sum().backward()
    # expected gradient: sum over positions of -A * d log p_s / d logits, A = -(log p_s - log p_t)
    probs = torch.softmax(logits.detach(), -1)
    onehot = torch.nn.functional.one_hot(tokens, 9).double()
    advantage = -(s_logp.detach() - t_logp).double()
    expected = -advantage[..., None] * (onehot - probs)
    torch.testing.assert_close(logits.grad.double(), expected, rtol=1e-5, atol=1e-6)
    # off-policy: the importance ratio scales the gradient
    x = logits.detach().clone().requires_grad_(True)
    lp = token_logp(x, tokens)
    sampling = lp.detach() - 0.5  # the sampler gave these tokens less mass: ratio e^0.5
    sampled_token_reverse_kl(lp, t_logp, sampling).sum().backward()
    torch.testing.assert_close(x.grad.double(), math.exp(0.5) * expected, rtol=1e-5, atol=1e-6)


def test_token_nll_and_masked_mean():
    logits = _logits(2, 3, 6, seed=20)
    targets = torch.tensor([[1, 2, -100], [0, -100, -100]])
    nll = token_nll(logits, targets)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 6), targets.reshape(-1), reduction="sum",
                                            ignore_index=-100) / 3
    mask = targets >= 0
    torch.testing.assert_close(token_mean(nll, mask, global_tokens=3.0).double(), ref, rtol=1e-6, atol=1e-6)
    # masked positions never reach the mean, whatever they hold
    poisoned = nll.clone()
    poisoned[~mask] = float("nan")
    assert torch.isfinite(token_mean(poisoned, mask, 3.0))


def test_reverse_kl_is_nan_safe_at_unrepresentable_positions():
    logits = _logits(1, 3, 6, seed=21).requires_grad_(True)
    allowed = torch.tensor([True, True, True, True, False, False])
    tokens = torch.tensor([[1, 5, 2]])  # token 5 is blocked by the filter: log p = -inf (padding after EOS)
    s_logp = token_logp(logits, tokens, allowed)
    t_logp = torch.tensor([[-1.0, float("-inf"), -2.0]], dtype=torch.float64)
    loss = sampled_token_reverse_kl(s_logp, t_logp, s_logp.detach())
    assert torch.isfinite(loss).all() and loss[0, 1] == 0
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss, temperature, teacher_temperature", [
    ("union_topk_kl", 1.0, 0.5), ("union_topk_kl", 2.0, None), ("jsd", 2.0, None), ("jsd", 1.0, 0.5),
])
def test_the_recipes_loss_applies_each_temperature_where_the_config_says(loss, temperature, teacher_temperature):
    """train/opd/step.py: the teacher scores at opd.teacher_T, the student's logits are divided by
    opd.temperature; the same numbers as the reference loss given both full logits."""
    from train.config import OPDConfig
    from train.opd.step import ScoredTokens, distillation_loss

    opd = OPDConfig(loss=loss, k=4, beta=0.3, temperature=temperature, teacher_temperature=teacher_temperature)
    s, t = _logits(1, 6, 30, seed=10), _logits(1, 6, 30, seed=11)
    tokens, mask = s.argmax(-1), torch.ones(1, 6, dtype=torch.bool)
    scores = gather_scores(t, tokens, mask, opd.k, opd.teacher_T, (s / temperature).topk(opd.k, dim=-1).indices,
                           full=loss == "jsd")
    got = distillation_loss(s[0], ScoredTokens(tokens[0], None, scores.select(mask)), opd, None)
    t_scaled = t * temperature / opd.teacher_T  # the reference divides both by `temperature`
    want = (union_topk_forward_kl(s, t_scaled, opd.k, temperature) if loss == "union_topk_kl"
            else generalized_jsd(s, t_scaled, opd.beta, temperature))
    torch.testing.assert_close(got, want[0], rtol=1e-6, atol=1e-6)
