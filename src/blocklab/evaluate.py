"""Validation perplexity by context length, and the ``blocklab eval`` command.

The validation text of a run is cut into windows of each requested length;
every token after the first is scored exactly once (see
``blocklab.data.eval_windows``). Non-overlapping windows are the default.
With a stride S smaller than the length L each window after the first scores
only its last S tokens, so every scored token sees at least L - S tokens of
context. Loss is the mean cross-entropy in nats per token and perplexity is
exp(loss).

A model with learned absolute positions has no vectors past its table, so
lengths above ``max_seq_len`` are reported as not scorable rather than
failing. Every other position encoding runs at any length, trained there or not.

The command's default lengths are ``DEFAULT_LENGTHS`` plus the run's training
length and, for learned positions, the table's length, so that a run whose
table is shorter than 128 still gets numbers at the lengths it can score.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blocklab import runs
from blocklab.config import ModelConfig
from blocklab.data import eval_windows
from blocklab.errors import UsageError

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS = (128, 256, 512, 1024)


@dataclass
class LengthResult:
    """Validation loss at one context length.

    Attributes:
        length: window length in tokens.
        loss: mean loss in nats per scored token; None when not applicable.
        perplexity: exp(loss); None when not applicable.
        tokens: number of scored tokens.
        windows: number of windows evaluated.
        note: why the length was skipped, e.g. ``learned positions stop at 256``.
    """

    length: int
    loss: float | None
    perplexity: float | None
    tokens: int = 0
    windows: int = 0
    note: str | None = None


def default_lengths(model_config: ModelConfig, train_config: Any) -> list[int]:
    """Return the lengths ``blocklab eval`` measures when --lengths is not given.

    They are ``DEFAULT_LENGTHS``, the run's training length (``seq_len``) and,
    with learned positions, ``max_seq_len``, the longest length the table
    covers, in ascending order.
    """
    lengths = set(DEFAULT_LENGTHS) | {train_config.seq_len}
    if model_config.position == "learned":
        lengths.add(model_config.max_seq_len)
    return sorted(lengths)


def length_limit(config: ModelConfig) -> tuple[int | None, str | None]:
    """Return the longest input a model can run at and the reason, or (None, None) for no limit."""
    if config.position == "learned":
        return config.max_seq_len, f"learned positions stop at {config.max_seq_len}"
    return None, None


@torch.no_grad()
def evaluate_lengths(
    model: nn.Module,
    tokens: torch.Tensor,
    lengths: list[int] | tuple[int, ...],
    *,
    stride: int | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
    device: str | torch.device | None = None,
) -> list[LengthResult]:
    """Measure validation loss and perplexity at each context length.

    Args:
        model: a causal blocklab Transformer (its ``config`` gives the length limit).
        tokens: the 1-D validation token stream.
        lengths: window lengths to evaluate.
        stride: distance between window starts; None means the window length
            (non-overlapping windows). It must not exceed any length.
        batch_size: windows per forward pass.
        max_windows: evaluate at most this many windows per length.
        device: where to run; defaults to the model's device.

    Returns:
        One LengthResult per length, in the given order. A length the model
        cannot run at, or that the validation text is too short for, has loss
        None and a note.

    Raises:
        UsageError: for a non-positive length or a stride longer than a length.
    """
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise UsageError(f"invalid context length {length!r}; expected positive integers such as 128,256")
        if stride is not None and not 1 <= stride <= length:
            raise UsageError(
                f"--stride {stride} is invalid for length {length}; use a stride from 1 to the shortest length"
            )
    if device is None:
        device = next(model.parameters()).device
    limit, reason = length_limit(model.config)
    was_training = model.training
    model.eval()
    results = []
    try:
        for length in lengths:
            if limit is not None and length > limit:
                results.append(LengthResult(length, None, None, note=reason))
                continue
            if tokens.numel() < length + 1:
                note = f"validation text has {tokens.numel()} tokens, fewer than one window of {length + 1}"
                results.append(LengthResult(length, None, None, note=note))
                continue
            results.append(_evaluate_length(model, tokens, length, stride, batch_size, max_windows, device))
    finally:
        model.train(was_training)
    return results


def _evaluate_length(
    model: nn.Module, tokens: torch.Tensor, length: int, stride: int | None, batch_size: int,
    max_windows: int | None, device: str | torch.device,
) -> LengthResult:
    total = 0.0
    count = 0
    windows = 0
    batches = eval_windows(tokens, length, stride=stride, max_windows=max_windows, batch_size=batch_size)
    for inputs, targets, mask in batches:
        logits = model(inputs.to(device)).logits  # (b, T, V)
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(), reduction="none")
        mask = mask.to(device).flatten()
        total += float(losses[mask].double().sum())
        count += int(mask.sum())
        windows += inputs.shape[0]
    loss = total / max(count, 1)
    return LengthResult(length, loss, math.exp(min(loss, 700.0)), tokens=count, windows=windows)


@dataclass
class RunEvaluation:
    """The result of ``evaluate_run``: where it came from and one row per length."""

    run_dir: str
    step: int
    data: str
    stride: int | None
    val_tokens: int
    results: list[LengthResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    lengths: list[int] | tuple[int, ...] | None = None,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
    device: str = "cpu",
    data: str | None = None,
    step: int | None = None,
) -> RunEvaluation:
    """Load a run and evaluate it on its validation text at each length.

    Args:
        run_dir: a run directory written by ``blocklab train``.
        lengths: window lengths. None means ``default_lengths`` of the run,
            without those shorter than ``stride``.
        stride, batch_size, max_windows: as in ``evaluate_lengths``.
        device: where to run the model.
        data: evaluate on this corpus's validation split instead of the run's.
        step: the checkpoint to load; the latest by default.

    Raises:
        UsageError: for a missing or damaged run, invalid lengths, or a
            stride longer than every default length.
    """
    from blocklab.train import load_run, load_validation_tokens

    loaded = load_run(run_dir, step=step, device=device)
    if lengths is None:
        lengths = _run_default_lengths(loaded.model_config, loaded.train_config, stride)
    record = runs.read_run_record(run_dir)
    tokens = load_validation_tokens(record, loaded.tokenizer, data=data)
    results = evaluate_lengths(
        loaded.model, tokens, lengths, stride=stride, batch_size=batch_size, max_windows=max_windows, device=device,
    )
    return RunEvaluation(
        run_dir=str(run_dir), step=loaded.step, data=data or record["data"]["source"], stride=stride,
        val_tokens=int(tokens.numel()), results=results,
    )


def _run_default_lengths(model_config: ModelConfig, train_config: Any, stride: int | None) -> list[int]:
    lengths = default_lengths(model_config, train_config)
    if stride is None:
        return lengths
    usable = [length for length in lengths if length >= stride]
    if not usable:
        raise UsageError(
            f"--stride {stride} is longer than every default length ({_join(lengths)}); "
            f"pass --lengths with lengths of at least {stride}, or a shorter --stride"
        )
    return usable


def _join(lengths: list[int] | tuple[int, ...]) -> str:
    return ",".join(map(str, lengths))


def check_scorable(evaluation: RunEvaluation, model_config: ModelConfig, lengths_text: str) -> None:
    """Raise UsageError when no requested length could be scored, naming the reason and the fix.

    Args:
        evaluation: the finished evaluation.
        model_config: the run's model, for its length limit.
        lengths_text: how the lengths were given, such as ``64,128``.
    """
    if any(result.loss is not None for result in evaluation.results):
        return
    first = evaluation.results[0]
    limit, _ = length_limit(model_config)
    if limit is not None and all(result.length > limit for result in evaluation.results):
        advice = f"pass --lengths of at most {limit}"
        if evaluation.stride is not None and evaluation.stride > limit:
            advice += f" and a --stride of at most {limit}"
    else:
        advice = "pass shorter --lengths, or evaluate on more text with --data"
    raise UsageError(f"no length in {lengths_text} can be scored: {first.note}; {advice}")


def format_table(evaluation: RunEvaluation) -> str:
    """Render an evaluation as a plain-text table."""
    windows = "non-overlapping windows" if evaluation.stride is None else f"sliding windows, stride {evaluation.stride}"
    lines = [
        f"run {evaluation.run_dir} at step {evaluation.step}; validation text of {evaluation.data}: "
        f"{evaluation.val_tokens:,} tokens, {windows}",
        f"{'length':>8}  {'loss':>8}  {'perplexity':>10}  {'tokens':>10}",
    ]
    for result in evaluation.results:
        if result.loss is None:
            lines.append(f"{result.length:>8}  not scorable: {result.note}")
        else:
            lines.append(
                f"{result.length:>8}  {result.loss:>8.4f}  {result.perplexity:>10.3f}  {result.tokens:>10,}"
            )
    return "\n".join(lines)


def parse_lengths(text: str) -> list[int]:
    """Parse ``128,256,512`` into a list of positive integers."""
    lengths = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise UsageError(f"--lengths: empty item in {text!r}; pass integers separated by single commas")
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"--lengths: invalid length {part!r}; expected integers such as 128,256,512") from None
        if value < 1:
            raise UsageError(f"--lengths: invalid length {value}; lengths must be positive")
        lengths.append(value)
    if not lengths:
        raise UsageError(f"--lengths: no length in {text!r}; pass integers such as 128,256,512")
    return lengths


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run directory written by `blocklab train`")
    parser.add_argument("--lengths",
                        help="comma-separated context lengths in tokens (default: "
                             + _join(DEFAULT_LENGTHS) + ", the run's training length and, for learned "
                             "positions, max_seq_len)")
    parser.add_argument("--stride", type=int, help="sliding windows with this stride in tokens (default: none)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default %(default)s)")
    parser.add_argument("--max-windows", type=int, help="evaluate at most this many windows per length")
    parser.add_argument("--data", help="evaluate on the validation split of this corpus instead of the run's")
    parser.add_argument("--step", type=int, help="checkpoint step to load (default: the latest)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run_command(args: argparse.Namespace) -> int:
    lengths = parse_lengths(args.lengths) if args.lengths is not None else None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: invalid value {args.batch_size}; expected an integer >= 1")
    if args.max_windows is not None and args.max_windows < 1:
        raise UsageError(f"--max-windows: invalid value {args.max_windows}; expected an integer >= 1")
    from blocklab.distributed import resolve_device

    device = resolve_device(args.device)
    runs.require_run_dir(Path(args.run_dir))
    evaluation = evaluate_run(
        args.run_dir, lengths, stride=args.stride, batch_size=args.batch_size, max_windows=args.max_windows,
        device=str(device), data=args.data, step=args.step,
    )
    lengths_text = args.lengths if lengths is not None else (
        f"the default lengths ({_join([result.length for result in evaluation.results])})"
    )
    model_config = ModelConfig.from_dict(runs.read_run_record(args.run_dir)["model"])
    check_scorable(evaluation, model_config, lengths_text)
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
    else:
        print(format_table(evaluation))
    return 0
