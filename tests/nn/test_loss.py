"""Chunked linear cross-entropy against F.cross_entropy on full logits, and the model's targets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.testing import assert_close

from blocklab.nn.loss import linear_cross_entropy


def reference(hidden, weight, targets):
    """Return loss and gradients of plain float64 cross-entropy on full logits."""
    hidden64 = hidden.detach().double().requires_grad_()
    weight64 = weight.detach().double().requires_grad_()
    loss = F.cross_entropy(hidden64 @ weight64.T, targets)
    loss.backward()
    return loss.detach(), hidden64.grad, weight64.grad


@pytest.mark.parametrize("chunk", [1, 5, 64, None])
def test_matches_full_logits(chunk):
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::4] = -100
    loss = linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    loss.backward()
    expected, grad_hidden, grad_weight = reference(hidden, weight, targets)
    assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert_close(hidden.grad.double(), grad_hidden, rtol=1e-4, atol=1e-6)
    assert_close(weight.grad.double(), grad_weight, rtol=1e-4, atol=1e-6)


def test_scales_by_incoming_gradient():
    hidden = torch.randn(8, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    targets = torch.randint(0, 6, (8,))
    (linear_cross_entropy(hidden, weight, targets, chunk=3) * 2.5).backward()
    _, grad_hidden, grad_weight = reference(hidden, weight, targets)
    assert_close(hidden.grad.double(), 2.5 * grad_hidden, rtol=1e-4, atol=1e-6)
    assert_close(weight.grad.double(), 2.5 * grad_weight, rtol=1e-4, atol=1e-6)


def test_only_weight_needs_gradient():
    hidden = torch.randn(9, 4)
    weight = torch.randn(7, 4, requires_grad=True)
    targets = torch.randint(0, 7, (9,))
    linear_cross_entropy(hidden, weight, targets, chunk=2).backward()
    _, _, grad_weight = reference(hidden, weight, targets)
    assert hidden.grad is None
    assert_close(weight.grad.double(), grad_weight, rtol=1e-4, atol=1e-6)


def test_no_gradient_mode():
    hidden, weight = torch.randn(9, 4), torch.randn(7, 4, requires_grad=True)
    targets = torch.randint(0, 7, (9,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, chunk=4)
    assert loss.grad_fn is None
    assert_close(loss.double(), reference(hidden, weight, targets)[0], rtol=1e-5, atol=1e-6)


def test_all_targets_ignored_gives_zero():
    hidden = torch.randn(3, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(hidden.grad) == 0
    assert torch.count_nonzero(weight.grad) == 0


def test_rejects_bad_inputs():
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="target 5 is outside the vocabulary"):
        linear_cross_entropy(hidden, weight, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="one per row"):
        linear_cross_entropy(hidden, weight, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"must be \(N, C\) and \(V, C\)"):
        linear_cross_entropy(hidden, torch.randn(5, 3), torch.tensor([0, 1, 2]))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 30), vocab=st.integers(1, 40), chunk=st.integers(1, 35), seed=st.integers(0, 2**31 - 1))
def test_any_chunking_gives_same_loss(rows, vocab, chunk, seed):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, 6, generator=generator) * 3
    weight = torch.randn(vocab, 6, generator=generator)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    loss = linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    assert_close(loss.double(), reference(hidden, weight, targets)[0], rtol=1e-5, atol=1e-5)


# The model's targets argument ------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_model_targets_match_logits_loss(tiny_model, tied):
    model = tiny_model(tie_embeddings=tied).train()
    ids = torch.randint(0, 64, (3, 12))
    targets = torch.cat((ids[:, 1:], torch.full((3, 1), -100)), dim=1)
    out = model(ids, targets=targets)
    assert out.logits is None
    out.loss.backward()
    fused = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    logits = model(ids).logits
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    expected.backward()
    assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(fused, (p.grad for p in model.parameters())):
        assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_model_targets_under_autocast(tiny_model):
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, targets=ids)
    assert out.logits is not None
    assert out.loss.dtype == torch.float32
    assert_close(out.loss, F.cross_entropy(out.logits.float().flatten(0, 1), ids.flatten()))


def test_model_targets_rejected(tiny_model):
    ids = torch.randint(0, 64, (2, 8))
    with pytest.raises(ValueError, match="does not match input_ids"):
        tiny_model()(ids, targets=ids[:, :4])
    with pytest.raises(ValueError, match="no output head"):
        tiny_model(lm_head=False, tie_embeddings=False)(ids, targets=ids)
