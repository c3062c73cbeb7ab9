"""Token streams and the batches drawn from them for training and evaluation.

``encode_documents`` joins documents into one 1-D stream of token ids.
``random_batches`` draws training windows from it at random, in an order that a
resumed run can reproduce. ``eval_windows`` walks it so that every token after
the first is scored exactly once.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from blocklab.data.corpora import DataError
from blocklab.data.tokenizers import Tokenizer

logger = logging.getLogger(__name__)

#: Documents passed to ``Tokenizer.encode_batch`` at a time.
_ENCODE_CHUNK_DOCUMENTS = 256


def encode_documents(
    documents: Sequence[str], tokenizer: Tokenizer, *, progress: bool = False
) -> torch.Tensor:
    """Encode documents into one stream with the end-of-text id after each document.

    Args:
        documents: The texts to encode, in order.
        tokenizer: The tokenizer to use.
        progress: Whether to show a tqdm progress bar over documents.

    Returns:
        A 1-D int64 tensor of token ids.
    """
    eos = tokenizer.eos_id
    pieces: list[np.ndarray] = []
    bar = tqdm(
        total=len(documents), unit="doc", desc="tokenizing", disable=not progress
    )
    with bar:
        for start in range(0, len(documents), _ENCODE_CHUNK_DOCUMENTS):
            chunk = list(documents[start : start + _ENCODE_CHUNK_DOCUMENTS])
            for ids in tokenizer.encode_batch(chunk):
                # np.fromiter is several times faster than torch.tensor on a list.
                with_eos = itertools.chain(ids, (eos,))
                pieces.append(np.fromiter(with_eos, dtype=np.int64, count=len(ids) + 1))
            bar.update(len(chunk))
    if not pieces:
        return torch.empty(0, dtype=torch.int64)
    stream = torch.from_numpy(np.concatenate(pieces))
    logger.debug("encoded %d documents into %d tokens", len(documents), stream.numel())
    return stream


def sample_batch(
    tokens: torch.Tensor, batch_size: int, seq_len: int, *, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw training batch number ``step`` from a token stream.

    The window starts are drawn uniformly from every position where a window of
    ``seq_len + 1`` tokens fits, by a ``torch.Generator`` whose seed is derived
    from a SHA-256 hash of ``(seed, step)``. The batch therefore depends only on
    the stream, the shape, ``seed`` and ``step``, never on earlier draws.

    Args:
        tokens: 1-D integer tensor of token ids.
        batch_size: Number of windows (B).
        seq_len: Tokens per window (T).
        seed: Seed of the batch order.
        step: Index of the batch, from 0.

    Returns:
        ``(inputs, targets)``, both int64 of shape (B, T) on the device of
        ``tokens``, where ``targets[:, i]`` is the token after ``inputs[:, i]``.

    Raises:
        DataError: If an argument is invalid or the stream has fewer than
            ``seq_len + 1`` tokens.
    """
    _check_stream(tokens, seq_len, purpose="training")
    _check_positive("batch size", batch_size)
    _check_non_negative("step", step)
    generator = torch.Generator().manual_seed(_derive_seed(seed, step))
    num_starts = tokens.numel() - seq_len
    starts = torch.randint(0, num_starts, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    windows = tokens[(starts[:, None] + offsets).to(tokens.device)].long()
    return windows[:, :-1], windows[:, 1:]


def random_batches(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    start_step: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield training batches forever, starting at batch number ``start_step``.

    Batch k is ``sample_batch(..., step=k)``, so an iterator created with
    ``start_step=k`` yields the same batches as a fresh iterator does from its
    k-th batch on. A resumed training run uses this to continue with the batches
    the uninterrupted run would have drawn.

    Args:
        tokens: 1-D integer tensor of token ids.
        batch_size: Number of windows per batch (B).
        seq_len: Tokens per window (T).
        seed: Seed of the batch order.
        start_step: Number of the first batch to yield.

    Returns:
        An endless iterator of ``(inputs, targets)`` pairs of shape (B, T).

    Raises:
        DataError: If an argument is invalid or the stream has fewer than
            ``seq_len + 1`` tokens. The check runs at the call, not at the first
            ``next``.
    """
    _check_stream(tokens, seq_len, purpose="training")
    _check_positive("batch size", batch_size)
    _check_non_negative("start step", start_step)
    return _batch_iterator(tokens, batch_size, seq_len, seed, start_step)


def _batch_iterator(
    tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int, start_step: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    step = start_step
    while True:
        yield sample_batch(tokens, batch_size, seq_len, seed=seed, step=step)
        step += 1


def eval_windows(
    tokens: torch.Tensor,
    seq_len: int,
    *,
    stride: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 8,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield evaluation batches that score every token of the stream exactly once.

    A stream of N tokens has N - 1 targets: each token after the first is
    predicted from the tokens before it. Windows of ``seq_len`` inputs start at
    0, ``stride``, 2 * ``stride``, and so on, and a last window is aligned to the
    end of the stream when the others do not reach it. Each window's loss mask
    is True only for targets that no earlier window scored. With the default
    ``stride = seq_len`` the windows do not overlap, except possibly the last.
    With a smaller stride each window after the first scores only its last
    ``stride`` targets, so those predictions see at least ``seq_len - stride``
    tokens of context (the usual strided-perplexity scheme).

    Summing the masked losses and dividing by ``mask.sum()`` over all batches
    gives the mean loss per token.

    Args:
        tokens: 1-D integer tensor of token ids.
        seq_len: Tokens per window (T).
        stride: Distance between window starts, from 1 to ``seq_len``. Defaults to
            ``seq_len``.
        max_windows: Stop after this many windows. Tokens after them are then not
            scored. Defaults to no limit.
        batch_size: Maximum number of windows per batch.

    Returns:
        An iterator of ``(inputs, targets, loss_mask)``: inputs and targets are
        int64 of shape (b, T), loss_mask is bool of shape (b, T), and b is at most
        ``batch_size``.

    Raises:
        DataError: If an argument is invalid or the stream has fewer than
            ``seq_len + 1`` tokens. The check runs at the call.
    """
    _check_stream(tokens, seq_len, purpose="evaluation")
    stride = seq_len if stride is None else stride
    if (
        isinstance(stride, bool)
        or not isinstance(stride, int)
        or not 1 <= stride <= seq_len
    ):
        raise DataError(
            f"evaluation stride must be an integer from 1 to the sequence length "
            f"{seq_len}, got {stride!r}"
        )
    if max_windows is not None:
        _check_positive("max windows", max_windows)
    _check_positive("batch size", batch_size)
    plan = eval_window_plan(tokens.numel(), seq_len, stride)
    if max_windows is not None:
        plan = plan[:max_windows]
    return _window_batches(tokens, seq_len, plan, batch_size)


def eval_window_plan(
    num_tokens: int, seq_len: int, stride: int
) -> list[tuple[int, int]]:
    """List the windows that ``eval_windows`` yields for a stream.

    Args:
        num_tokens: Length of the token stream (N), at least ``seq_len + 1``.
        seq_len: Tokens per window (T).
        stride: Distance between window starts, from 1 to T.

    Returns:
        ``(start, first_scored)`` pairs: the window covers inputs
        ``tokens[start : start + T]``, and its positions from ``first_scored`` to
        T - 1 are scored.
    """
    plan: list[tuple[int, int]] = []
    scored_until = 0  # Targets tokens[1 : scored_until + 1] are already scored.
    last_target = num_tokens - 1
    start = 0
    while start + seq_len <= last_target:
        plan.append((start, scored_until - start))
        scored_until = start + seq_len
        start += stride
    if scored_until < last_target:
        start = last_target - seq_len
        plan.append((start, scored_until - start))
    return plan


def _window_batches(
    tokens: torch.Tensor, seq_len: int, plan: list[tuple[int, int]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    offsets = torch.arange(seq_len + 1, device=tokens.device)
    positions = torch.arange(seq_len, device=tokens.device)
    for first in range(0, len(plan), batch_size):
        chunk = plan[first : first + batch_size]
        starts = torch.tensor([start for start, _ in chunk], device=tokens.device)
        first_scored = torch.tensor(
            [offset for _, offset in chunk], device=tokens.device
        )
        windows = tokens[starts[:, None] + offsets].long()
        loss_mask = positions[None, :] >= first_scored[:, None]
        yield windows[:, :-1], windows[:, 1:], loss_mask


def _derive_seed(seed: int, step: int) -> int:
    digest = hashlib.sha256(f"blocklab-batches\x00{seed}\x00{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # manual_seed needs < 2**63.


def _check_stream(tokens: torch.Tensor, seq_len: int, *, purpose: str) -> None:
    _check_positive("sequence length", seq_len)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        raise DataError(
            f"token stream must be a 1-D tensor, got "
            f"{getattr(tokens, 'shape', type(tokens).__name__)}"
        )
    if (
        tokens.dtype.is_floating_point
        or tokens.dtype.is_complex
        or tokens.dtype == torch.bool
    ):
        raise DataError(
            f"token stream must contain integer ids, got dtype {tokens.dtype}"
        )
    count = tokens.numel()
    if count >= seq_len + 1:
        return
    if purpose == "training":
        raise DataError(
            f"corpus has {count} tokens, fewer than one training sequence of "
            f"{seq_len + 1}; use a shorter --seq-len or more text"
        )
    raise DataError(
        f"validation text has {count} tokens, fewer than one evaluation window of "
        f"{seq_len + 1}; use a shorter --seq-len, a larger validation fraction or "
        "more text"
    )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")


def _check_non_negative(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{name} must be a non-negative integer, got {value!r}")
