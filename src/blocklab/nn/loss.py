"""Cross-entropy of a linear output head, computed chunk by chunk without the full logits.

For N tokens and a vocabulary of V, the plain route materializes (N, V) logits,
their log-softmax and, in the backward, a gradient of the same size: with
N = 2048 and V = 32000 that is 262 MB per tensor, written and read several
times. Here the forward takes ``chunk`` rows at a time: it computes their
logits, the loss, and at once the gradients of the hidden states and of the
head's weight (softmax minus one-hot, times the weight or the hidden states).
Only those two gradients are kept for the backward, which scales them by the
incoming gradient. The matrix products are the same three as in the plain
route, so the FLOPs are unchanged.

Shapes: N tokens, C width, V vocabulary.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100

# Rows per chunk are chosen so that one chunk's logits take about this many
# float32 elements (32 MiB).
CHUNK_ELEMENTS = 1 << 23


def _chunked_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
    need_hidden: bool, need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Return (sum of losses, gradient sums of hidden and weight or None, count of targets)."""
    valid = targets != IGNORE_INDEX  # (N,)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight) if need_weight else None
    loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        part = hidden[rows]  # (n, C)
        # One fused pass for the log-softmax, where logsumexp and a
        # subtraction would take several.
        log_probs = torch.log_softmax((part @ weight.T).float(), dim=-1)  # (n, V)
        part_valid = valid[rows]
        safe_targets = torch.where(part_valid, targets[rows], 0)
        target_log_probs = log_probs.gather(1, safe_targets[:, None])  # (n, 1)
        loss_sum -= torch.where(part_valid, target_log_probs.squeeze(1), 0.0).sum()
        if not (need_hidden or need_weight):
            continue
        # d(sum of losses) / d logits = softmax - one_hot, zero on ignored rows.
        grad_logits = log_probs.exp_()
        grad_logits.scatter_add_(1, safe_targets[:, None], torch.full_like(target_log_probs, -1.0))
        grad_logits.mul_(part_valid[:, None])
        grad_logits = grad_logits.to(hidden.dtype)
        if need_hidden:
            torch.matmul(grad_logits, weight, out=grad_hidden[rows])
        if need_weight:
            grad_weight.addmm_(grad_logits.T, part)
    # An empty target set gives 0 / 1 = 0, where F.cross_entropy gives NaN;
    # a loss of NaN would only poison the training loop's checks.
    denominator = valid.sum().clamp(min=1).to(torch.float32)
    return loss_sum, grad_hidden, grad_weight, denominator


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """Mean cross-entropy of hidden @ weight.T against targets, gradients made in the forward."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
    ) -> torch.Tensor:
        loss_sum, grad_hidden, grad_weight, denominator = _chunked_loss(
            hidden, weight, targets, chunk, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
        )
        ctx.save_for_backward(grad_hidden, grad_weight, denominator)
        return loss_sum / denominator

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        grad_hidden, grad_weight, denominator = ctx.saved_tensors
        scale = grad / denominator
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(scale.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale.to(grad_weight.dtype))
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int | None = None,
) -> torch.Tensor:
    """Return mean cross-entropy of the logits ``hidden @ weight.T`` over targets other than -100.

    Equal, up to float rounding, to ``F.cross_entropy(hidden @ weight.T, targets)``
    with its default ``ignore_index`` of -100, except that no target at all
    gives 0 instead of NaN. The logits are computed in the inputs' dtype and the
    softmax in float32. The backward may be run once.

    Args:
        hidden: (N, C) inputs to the output head.
        weight: (V, C) the head's weight (a bias-free linear layer).
        targets: (N,) class indices, -100 for positions to ignore.
        chunk: rows per chunk (default: about 2^23 / V).

    Raises:
        ValueError: for mismatched shapes or a target outside [0, V).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} "
            "must be (N, C) and (V, C)"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"linear_cross_entropy: targets {tuple(targets.shape)} must be ({hidden.shape[0]},), one per row"
        )
    vocab = weight.shape[0]
    out_of_range = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab))
    if bool(out_of_range.any()):
        bad = int(targets[out_of_range][0])
        raise ValueError(f"linear_cross_entropy: target {bad} is outside the vocabulary [0, {vocab})")
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        # The Function would see needs_input_grad set under no_grad too, and
        # compute gradients that are never used.
        loss_sum, _, _, denominator = _chunked_loss(hidden, weight, targets, int(chunk), False, False)
        return loss_sum / denominator
    return _LinearCrossEntropyFunction.apply(hidden, weight, targets, int(chunk))
