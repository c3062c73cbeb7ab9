"""The claims check: each textbook claim about Transformer parts, measured.

Every claim is a small numeric experiment on blocklab's own parts. A check
returns a ``Finding``: the setting it ran, the numbers it measured, and a
verdict, which is ``holds``, ``does not hold``, or ``holds only under a
condition`` (with the condition stated). ``CLAIMS`` registers each check
with the verdict recorded as expected, and ``blocklab check`` exits 0 only
when every verdict is an expected one.

The parts a check uses come from a ``Parts`` mapping of factories. Tests
swap in a broken part (``run_claims(parts=...)`` or monkeypatching
``PARTS``) to show that the check notices it.

Shapes: B batch, T length, H heads, D head width, C model width.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from blocklab.config import FFNS, ModelConfig
from blocklab.errors import UsageError
from blocklab.model import Transformer
from blocklab.nn.bias import ALiBi, RelativePositionBias, T5RelativePositionBias
from blocklab.nn.feedforward import FeedForward
from blocklab.nn.norms import BatchNorm, LayerNorm, RMSNorm
from blocklab.nn.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from blocklab.nn.rotary import RotaryEmbedding

logger = logging.getLogger(__name__)

HOLDS = "holds"
FAILS = "does not hold"
CONDITIONAL = "holds only under a condition"
ERROR = "error"  # the check itself raised; never an expected verdict

EXIT_MISMATCH = 1


@dataclass(frozen=True)
class Parts:
    """The factories the checks build parts from; each takes the part's keyword arguments.

    Model-level checks build ``transformer(config)`` and then replace its
    encoding module or FFNs with this mapping's factories, but only where a
    factory differs from blocklab's own class. The default mapping therefore
    measures the model exactly as a user builds it.
    """

    sinusoidal: Callable[..., nn.Module] = SinusoidalPositionalEncoding
    learned: Callable[..., nn.Module] = LearnedPositionalEmbedding
    relative: Callable[..., nn.Module] = RelativePositionBias
    t5: Callable[..., nn.Module] = T5RelativePositionBias
    alibi: Callable[..., nn.Module] = ALiBi
    rotary: Callable[..., nn.Module] = RotaryEmbedding
    layernorm: Callable[..., nn.Module] = LayerNorm
    rmsnorm: Callable[..., nn.Module] = RMSNorm
    batchnorm: Callable[..., nn.Module] = BatchNorm
    feedforward: Callable[..., nn.Module] = FeedForward
    transformer: Callable[[ModelConfig], nn.Module] = Transformer


PARTS = Parts()


@dataclass
class Finding:
    """The outcome of one check: its setting, numbers and verdict.

    Attributes:
        verdict: HOLDS, FAILS or CONDITIONAL.
        setting: the sizes, dtypes and tolerances the check ran with.
        measured: the measured numbers by name (JSON-serialisable).
        summary: the key numbers in one line for the table.
        condition: for CONDITIONAL, the condition under which the claim holds.
    """

    verdict: str
    setting: str
    measured: dict[str, Any]
    summary: str
    condition: str | None = None


@dataclass(frozen=True)
class Claim:
    """A registered claim: its id, text, accepted verdicts and check function."""

    id: str
    text: str
    expected: tuple[str, ...]
    check: Callable[[Parts], Finding]


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the thread count.

    Most checks use tiny tensors, where a second thread only adds overhead, and
    on a loaded 2-core machine two threads made them over 10x slower. The
    timing check is single-threaded too, so that other processes disturb it
    less.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class ClaimResult:
    """A claim with its finding, whether the verdict was expected, and the check's run time."""

    claim: Claim
    finding: Finding
    seconds: float

    @property
    def matches(self) -> bool:
        return self.finding.verdict in self.claim.expected

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.claim.id,
            "claim": self.claim.text,
            "setting": self.finding.setting,
            "measured": self.finding.measured,
            "verdict": self.finding.verdict,
            "condition": self.finding.condition,
            "expected": list(self.claim.expected),
            "matches": self.matches,
            "seconds": round(self.seconds, 3),
        }


# Helpers ---------------------------------------------------------------------


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _sci(value: float) -> str:
    return f"{value:.2g}"


def _build_model(config: ModelConfig, parts: Parts) -> nn.Module:
    """Build ``parts.transformer(config)`` and swap in any overridden encoding or FFN."""
    model = parts.transformer(config)
    c = config
    if c.position == "sinusoidal" and parts.sinusoidal is not SinusoidalPositionalEncoding:
        model.position = parts.sinusoidal(dim=c.d_model)
    elif c.position == "learned" and parts.learned is not LearnedPositionalEmbedding:
        model.position = parts.learned(num_positions=c.max_seq_len, dim=c.d_model)
    elif c.position == "relative" and parts.relative is not RelativePositionBias:
        model.score_bias = parts.relative(num_heads=c.n_heads, max_distance=c.relative_max_distance)
    elif c.position == "t5" and parts.t5 is not T5RelativePositionBias:
        model.score_bias = parts.t5(
            num_heads=c.n_heads, bidirectional=not c.causal, num_buckets=c.t5_num_buckets,
            max_distance=c.t5_max_distance,
        )
    elif c.position == "alibi" and parts.alibi is not ALiBi:
        model.score_bias = parts.alibi(num_heads=c.n_heads)
    elif c.position == "rope" and parts.rotary is not RotaryEmbedding:
        model.rotary = parts.rotary(
            dim=c.rotary_dim, theta=c.rope.theta, interleaved=c.rope.interleaved,
            scaling=c.rope.scaling,
        )
    if parts.feedforward is not FeedForward:
        for block in model.blocks:
            block.ffn = parts.feedforward(
                dim=c.d_model, hidden_dim=c.ffn_dim, activation=c.ffn, bias=c.ffn_bias,
            )
    return model


def _randomize_learned_biases(model: nn.Module, std: float = 1.0) -> None:
    """Give a relative or T5 bias random weights, as if trained.

    Both start at zero in blocklab, and a zero bias is position-blind, so a
    check at initialisation would measure nothing. ALiBi has fixed slopes.
    """
    bias = getattr(model, "score_bias", None)
    weight = getattr(bias, "weight", None)
    if isinstance(weight, nn.Parameter):
        with torch.no_grad():
            weight.normal_(std=std)


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of ``model`` on (B, T + 1) token ids."""
    logits = model(ids[:, :-1]).logits  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _grad_norm(module: nn.Module) -> float:
    squares = [p.grad.double().pow(2).sum() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


# 1. Order blindness -------------------------------------------------------------

ENCODINGS = ("sinusoidal", "learned", "relative", "t5", "alibi", "rope")


def check_order_blind(parts: Parts) -> Finding:
    """Check that attention without positions is permutation-equivariant (Vaswani et al. 2017).

    For a bidirectional model f with no position information and any
    permutation P of the tokens, f(P x) = P f(x), so the mean-pooled vector
    is the same for every ordering of the same tokens. Each encoding must
    break this. The orderings are a word-level "I love Beijing" and its
    reversal, and 16 random tokens under a random permutation.
    """
    vocab = {word: index for index, word in enumerate(("i", "love", "beijing"))}
    sentence = torch.tensor([[vocab["i"], vocab["love"], vocab["beijing"]]])
    reordered = sentence[:, [2, 1, 0]]  # "beijing love i", the same tokens
    random_ids = torch.randint(0, 64, (1, 16))
    permutation = torch.randperm(16)
    threshold = 1e-4

    def pooled_differences(position: str) -> tuple[float, float, float]:
        config = ModelConfig(
            vocab_size=64, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, position=position,
            norm="layernorm", ffn="gelu", causal=False,
        )
        model = _build_model(config, parts).eval()
        _randomize_learned_biases(model)
        with torch.no_grad():
            reversal = _max_abs(
                model(sentence).hidden_states.mean(1), model(reordered).hidden_states.mean(1),
            )
            original = model(random_ids).hidden_states  # (1, T, C)
            permuted = model(random_ids[:, permutation]).hidden_states
        random = _max_abs(original.mean(1), permuted.mean(1))
        equivariance = _max_abs(original[:, permutation], permuted)  # f(Px) vs P f(x)
        return reversal, random, equivariance

    sentence_none, random_none, equivariance_none = pooled_differences("none")
    measured: dict[str, Any] = {
        "none": {
            "reversal": sentence_none,
            "random": random_none,
            "token_equivariance": equivariance_none,
        },
    }
    for position in ENCODINGS:
        reversal_diff, random_diff, _ = pooled_differences(position)
        measured[position] = {"reversal": reversal_diff, "random": random_diff}

    blind = max(sentence_none, random_none, equivariance_none) <= 1e-5
    break_random = all(measured[p]["random"] > threshold for p in ENCODINGS)
    # A bias of -slope * |i - j| is the same for a sequence and its mirror image,
    # so a bidirectional ALiBi model pools the two to the same vector.
    reversal_blind = [p for p in ENCODINGS if measured[p]["reversal"] <= threshold]
    condition = None
    if not (blind and break_random):
        verdict = FAILS
    elif reversal_blind:
        verdict = CONDITIONAL
        condition = (
            f"for orderings other than a reversal: {', '.join(reversal_blind)} cannot tell "
            "a sequence from its reversal, because the bidirectional bias depends on |i - j| only"
        )
    else:
        verdict = HOLDS
    per_encoding = ", ".join(
        f"{p} {_sci(measured[p]['reversal'])} / {_sci(measured[p]['random'])}" for p in ENCODINGS
    )
    summary = (
        f"no positions: max |f(Px) - P f(x)| {_sci(equivariance_none)}; max |pooled(x) - "
        f"pooled(Px)| for a reversal / a random permutation: none {_sci(sentence_none)} / "
        f"{_sci(random_none)}; {per_encoding}"
    )
    setting = (
        'bidirectional 2-layer model, C=64, H=4, float32, eval; "i love beijing" reversed and '
        "16 random tokens permuted; relative/t5 biases random N(0, 1); order-blind if diff "
        f"<= 1e-5, an encoding breaks it if diff > {threshold:g}"
    )
    return Finding(verdict, setting, measured, summary, condition)
    return Finding(verdict, setting, measured, summary)


# 2. Sinusoidal: every position, shift as a rotation -------------------------


def check_sinusoidal_shift(parts: Parts) -> Finding:
    """Check that the sinusoidal encoding (Vaswani et al. 2017) is finite and shifts linearly.

    PE(p, 2i) = sin(p w_i), PE(p, 2i+1) = cos(p w_i) with w_i = 10000^(-2i/C).
    Then [sin((p+k)w), cos((p+k)w)] = [[cos kw, sin kw], [-sin kw, cos kw]]
    [sin pw, cos pw]: PE(p + k) = M_k PE(p) with M_k block-diagonal, one 2x2
    rotation per frequency, built from the formula without looking at p.
    """
    dim = 64
    encoding = parts.sinusoidal(dim=dim)
    far = encoding(torch.tensor([[10**6, 10**9]]))  # (1, 2, C)
    far_finite = bool(torch.isfinite(far).all())
    far_max = float(far.abs().max())

    exponent = torch.arange(dim // 2, dtype=torch.float64) * 2 / dim
    frequencies = 10000.0 ** (-exponent)  # (C/2,)
    positions = torch.arange(0, 4096)
    base = encoding(positions[None])[0].double()  # (P, C)
    errors = {}
    for k in (1, 7, 50, 500):
        cos, sin = torch.cos(k * frequencies), torch.sin(k * frequencies)
        blocks = torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2)
        shift_map = torch.block_diag(*blocks)  # (C, C)
        shifted = encoding((positions + k)[None])[0].double()
        errors[str(k)] = _max_abs(base @ shift_map.T, shifted)
    tolerance = 1e-3
    worst = max(errors.values())
    verdict = HOLDS if far_finite and far_max <= 1.0 and worst <= tolerance else FAILS
    measured = {
        "finite_at_1e6_and_1e9": far_finite, "max_abs_value_far": far_max,
        "max_error_by_shift": errors,
    }
    summary = (
        f"PE(1e6), PE(1e9) finite={far_finite}, max |value| {far_max:.3g}; "
        f"max |M_k PE(p) - PE(p+k)| over p<4096, k in 1,7,50,500: {_sci(worst)}"
    )
    setting = (
        f"C={dim}, float32 part, map built in float64; tolerance {tolerance:g} "
        "(float32 angle rounding)"
    )
    return Finding(verdict, setting, measured, summary)


# 3. Length extrapolation --------------------------------------------------------


def check_length_extrapolation(parts: Parts) -> Finding:
    """Check that a learned table stops at max_seq_len while formula-based encodings run on.

    GPT-2 and BERT look up absolute positions in a (max_seq_len, C) table, so
    a longer input has no encoding. Sinusoidal (a formula), relative and T5
    (clipped or bucketed offsets), ALiBi (-slope * |i - j|) and RoPE (angles
    p * w) are defined at any position.
    """
    max_len = 32
    lengths = (2 * max_len, 4 * max_len)
    measured: dict[str, Any] = {}
    ids_by_length = {length: torch.randint(0, 64, (1, length)) for length in lengths}

    learned_message = None
    config = ModelConfig(
        vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=max_len, position="learned",
    )
    model = _build_model(config, parts).eval()
    try:
        with torch.no_grad():
            model(ids_by_length[lengths[0]])
    except ValueError as error:
        learned_message = str(error)
    measured["learned"] = {"raised": learned_message is not None, "message": learned_message}

    all_finite = True
    for position in ("sinusoidal", "relative", "t5", "alibi", "rope"):
        config = ModelConfig(
            vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=max_len,
            position=position,
        )
        model = _build_model(config, parts).eval()
        _randomize_learned_biases(model)
        finite = {}
        for length in lengths:
            with torch.no_grad():
                logits = model(ids_by_length[length]).logits
            finite[str(length)] = bool(torch.isfinite(logits).all())
        measured[position] = {"finite_by_length": finite}
        all_finite = all_finite and all(finite.values())

    verdict = HOLDS if learned_message is not None and all_finite else FAILS
    message = learned_message if learned_message is not None else "no error raised"
    summary = (
        f"learned at T={lengths[0]}: ValueError {message!r}; sinusoidal, relative, t5, alibi, "
        f"rope finite at T={lengths[0]} and {lengths[1]}: {all_finite}"
    )
    setting = f"causal 1-layer model, C=32, max_seq_len={max_len}, float32"
    return Finding(verdict, setting, measured, summary)


# 4. Relative biases are shift-invariant -----------------------------------------


def check_relative_shift(parts: Parts) -> Finding:
    """Check that a relative score bias is a function of i - j alone (Shaw et al. 2018, T5, ALiBi).

    b(i + s, j + s) = b(i, j) for every shift s, so shifting all positions
    changes no attention score and no model output.
    """
    length = 24
    shifts = (1, 37, 1000)
    positions = torch.arange(length)[None]  # (1, T)
    measured: dict[str, Any] = {}
    worst = 0.0
    for name in ("relative", "t5", "alibi"):
        config = ModelConfig(
            vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, position=name,
            causal=False,
        )
        model = _build_model(config, parts).eval()
        _randomize_learned_biases(model)
        bias_module = model.score_bias
        ids = torch.randint(0, 64, (1, length))
        with torch.no_grad():
            reference_bias = bias_module(positions, positions)
            reference_out = model(ids, position_ids=positions).hidden_states
            bias_diffs, output_diffs = {}, {}
            for shift in shifts:
                moved = positions + shift
                bias_diffs[str(shift)] = _max_abs(bias_module(moved, moved), reference_bias)
                output_diffs[str(shift)] = _max_abs(
                    model(ids, position_ids=moved).hidden_states, reference_out,
                )
        measured[name] = {"max_bias_change": bias_diffs, "max_output_change": output_diffs}
        worst = max(worst, *bias_diffs.values(), *output_diffs.values())
    tolerance = 1e-6
    verdict = HOLDS if worst <= tolerance else FAILS
    per_part = "; ".join(
        f"{name} bias {_sci(max(measured[name]['max_bias_change'].values()))}, "
        f"output {_sci(max(measured[name]['max_output_change'].values()))}"
        for name in ("relative", "t5", "alibi")
    )
    summary = f"max change after shifting all positions by 1, 37, 1000: {per_part}"
    setting = (
        f"bidirectional 2-layer model, C=32, H=4, T={length}, float32, relative/t5 weights "
        f"random N(0, 1); tolerance {tolerance:g}"
    )
    return Finding(verdict, setting, measured, summary)


# 5. RoPE -----------------------------------------------------------------------


def check_rope_relative(parts: Parts) -> Finding:
    """Check that RoPE (Su et al. 2021) keeps norms and gives scores that depend on m - n only.

    Each pair of dimensions is rotated by p * w_i, an orthogonal map, so
    |R_p x| = |x|; and <R_m q, R_n k> = <q, R_(n-m) k>, so shifting both
    positions by s changes no score.
    """
    dim, length = 64, 256
    rotary = parts.rotary(dim=dim)

    def rotate(x: torch.Tensor, start: int) -> torch.Tensor:
        positions = (start + torch.arange(length))[None]  # (1, T)
        cos, sin = rotary(positions)
        return rotary.rotate(x, cos, sin)

    x = torch.randn(1, 4, length, dim)  # (B, H, T, D)
    norm_changes = {}
    for start in (0, 10_000, 1_000_000):
        rotated = rotate(x, start)
        change = (rotated.norm(dim=-1) - x.norm(dim=-1)).abs() / x.norm(dim=-1)
        norm_changes[str(start)] = float(change.max())

    q, k = torch.randn(dim), torch.randn(dim)
    scale = float(q.norm() * k.norm())

    def scores(start: int) -> torch.Tensor:
        # The same q and k placed at every position: scores[m, n] = <R_m q, R_n k>.
        queries = rotate(q.expand(1, 1, length, dim).contiguous(), start)[0, 0]  # (T, D)
        keys = rotate(k.expand(1, 1, length, dim).contiguous(), start)[0, 0]
        return queries @ keys.T  # (T, T)

    reference = scores(0)
    score_changes = {str(s): _max_abs(scores(s), reference) / scale for s in (1, 1000, 4000)}
    norm_tolerance, score_tolerance = 1e-5, 1e-4
    worst_norm = max(norm_changes.values())
    worst_score = max(score_changes.values())
    verdict = HOLDS if worst_norm <= norm_tolerance and worst_score <= score_tolerance else FAILS
    measured = {
        "max_relative_norm_change_by_start": norm_changes,
        "max_score_change_over_qk_norms_by_shift": score_changes,
    }
    summary = (
        f"max relative norm change {_sci(worst_norm)} (positions up to 1e6); max |score(m+s, n+s) "
        f"- score(m, n)| / (|q||k|) {_sci(worst_score)} (m, n < 256, s in 1, 1000, 4000)"
    )
    setting = (
        f"D={dim}, float32; tolerances {norm_tolerance:g} (norm) and {score_tolerance:g} "
        "(score; float32 angles lose about 6e-8 * position radians)"
    )
    return Finding(verdict, setting, measured, summary)


# 6. LayerNorm vs BatchNorm ----------------------------------------------------


def check_norm_batch_independence(parts: Parts) -> Finding:
    """Check that LayerNorm (Ba et al. 2016) normalises each token alone, unlike BatchNorm.

    LayerNorm's statistics are over C for one token, so a sequence's output
    cannot depend on its batch companions or on padding. BatchNorm in
    training mode uses statistics over all tokens of the batch (Ioffe &
    Szegedy 2015), so it does, and it also counts padding unless it is
    masked out, as blocklab's BatchNorm does.
    """
    dim, length, pad = 32, 8, 4
    sequence = torch.randn(1, length, dim)
    companion_a = torch.randn(1, length, dim)
    companion_b = torch.randn(1, length, dim) * 5 + 3
    batch_a = torch.cat((sequence, companion_a))  # (2, T, C)
    batch_b = torch.cat((sequence, companion_b))
    padded = torch.cat((batch_a, torch.zeros(2, pad, dim)), dim=1)  # (2, T + pad, C)
    mask = torch.cat((torch.ones(2, length), torch.zeros(2, pad)), dim=1).bool()

    layernorm = parts.layernorm(dim=dim)
    with torch.no_grad():
        ln_batch = _max_abs(layernorm(batch_a)[0], layernorm(batch_b)[0])
        ln_padding = _max_abs(layernorm(padded, mask)[0, :length], layernorm(batch_a)[0])

    def fresh_batchnorm() -> nn.Module:
        return parts.batchnorm(dim=dim).train()

    def unaware(x: torch.Tensor) -> torch.Tensor:
        # Padding-unaware reference: torch's BatchNorm1d over every position.
        module = nn.BatchNorm1d(dim).train()
        return module(x.reshape(-1, dim)).reshape(x.shape)

    with torch.no_grad():
        bn_batch = _max_abs(fresh_batchnorm()(batch_a)[0], fresh_batchnorm()(batch_b)[0])
        bn_aware_padding = _max_abs(
            fresh_batchnorm()(padded, mask)[0, :length], fresh_batchnorm()(batch_a)[0],
        )
        bn_unaware_padding = _max_abs(unaware(padded)[0, :length], unaware(batch_a)[0])

    measured = {
        "layernorm_batch_change": ln_batch, "layernorm_padding_change": ln_padding,
        "batchnorm_batch_change": bn_batch,
        "batchnorm_padding_change_unaware": bn_unaware_padding,
        "batchnorm_padding_change_masked": bn_aware_padding,
    }
    same, different = 1e-6, 1e-2
    verdict = HOLDS if (
        ln_batch <= same and ln_padding <= same and bn_batch > different
        and bn_unaware_padding > different and bn_aware_padding <= 1e-5
    ) else FAILS
    summary = (
        f"max change of one sequence's output: LayerNorm {_sci(ln_batch)} (other batch), "
        f"{_sci(ln_padding)} (padding); BatchNorm {_sci(bn_batch)} (other batch), "
        f"{_sci(bn_unaware_padding)} (padding, torch BatchNorm1d unmasked), "
        f"{_sci(bn_aware_padding)} (padding, blocklab masked)"
    )
    setting = (
        f"C={dim}, T={length} + {pad} zero padding tokens, float32, training mode; "
        f"independent if <= {same:g} (masked BatchNorm 1e-5), dependent if > {different:g}"
    )
    return Finding(verdict, setting, measured, summary)


# 7. RMSNorm vs LayerNorm ------------------------------------------------------


def check_rmsnorm_equals_layernorm(parts: Parts) -> Finding:
    """Check that RMSNorm (Zhang & Sennrich 2019) equals LayerNorm without bias on zero-mean inputs.

    x / sqrt(mean(x^2) + eps) * g equals (x - mean(x)) / sqrt(var(x) + eps) * g
    whenever mean(x) = 0, because then mean(x^2) = var(x).
    """
    dim = 256
    x = torch.randn(4, 64, dim) * 3 + 1
    x = x - x.mean(-1, keepdim=True)  # zero mean over C
    gain = torch.randn(dim)
    rmsnorm = parts.rmsnorm(dim=dim, eps=1e-5)
    layernorm = parts.layernorm(dim=dim, eps=1e-5, bias=False)
    with torch.no_grad():
        rmsnorm.weight.copy_(gain)
        layernorm.weight.copy_(gain)
        difference = _max_abs(rmsnorm(x), layernorm(x))
        off_centre = _max_abs(rmsnorm(x + 1.0), layernorm(x + 1.0))
    tolerance = 1e-5
    verdict = HOLDS if difference <= tolerance else FAILS
    measured = {"max_difference_zero_mean": difference, "max_difference_mean_one": off_centre}
    summary = (
        f"max |RMSNorm(x) - LayerNorm(x)| {_sci(difference)} on zero-mean x "
        f"({_sci(off_centre)} once the mean is 1)"
    )
    setting = f"C={dim}, eps 1e-5 in both, same random gain, float32; tolerance {tolerance:g}"
    return Finding(verdict, setting, measured, summary)


def _layernorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def time_forward_backward(
    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
    repeats: int, warmup: int = 2,
) -> dict[str, list[float]]:
    """Return the seconds of forward + backward of each function, one per round.

    The functions run interleaved (one round calls each once), so a change in
    machine load hits all of them alike and the ratio within a round stays
    meaningful.
    """
    x = x.detach().requires_grad_(True)
    upstream = torch.randn_like(x)
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(warmup + repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function(x).backward(upstream)
            elapsed = time.perf_counter() - start
            x.grad = None
            if round_index >= warmup:
                samples[name].append(elapsed)
    return samples


def _median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def check_rmsnorm_cheaper(parts: Parts) -> Finding:
    """Time RMSNorm against LayerNorm, which also computes a mean and centres x.

    Zhang & Sennrich 2019 proposed RMSNorm as a cheaper LayerNorm. The saving
    is one reduction and one subtraction per token, which only shows when
    both norms are built from the same operations. A fused LayerNorm kernel
    against an RMSNorm of separate tensor operations compares kernels, not
    formulas, so both comparisons are measured: the blocklab parts as
    shipped, and the two formulas written with the same operations. Each
    ratio is the median over rounds of the ratio within a
    round.
    """
    dim, rounds, warmup = 1024, 41, 5
    eps = 1e-5
    x = torch.randn(2, 256, dim)
    weight = torch.ones(dim, requires_grad=True)
    functions = {
        "blocklab_rmsnorm": parts.rmsnorm(dim=dim, eps=eps),
        "blocklab_layernorm": parts.layernorm(dim=dim, eps=eps, bias=False),
        "torch_rmsnorm": nn.RMSNorm(dim, eps=eps),
        "torch_layernorm": nn.LayerNorm(dim, eps=eps, bias=False),
        "same_ops_rmsnorm": lambda t: _rmsnorm_reference(t, weight, eps),
        "same_ops_layernorm": lambda t: _layernorm_reference(t, weight, eps),
    }
    samples = time_forward_backward(functions, x, repeats=rounds, warmup=warmup)
    ratios = {
        kind: _median_ratio(samples[f"{kind}_rmsnorm"], samples[f"{kind}_layernorm"])
        for kind in ("blocklab", "torch", "same_ops")
    }
    medians_ms = {name: statistics.median(values) * 1e3 for name, values in samples.items()}

    condition = None
    if ratios["blocklab"] < 1.0:
        verdict = HOLDS
    elif ratios["same_ops"] < 1.0:
        verdict = CONDITIONAL
        condition = (
            f"when both norms are built from the same tensor operations "
            f"(RMSNorm {ratios['same_ops']:.2f}x the time); blocklab's RMSNorm takes "
            f"{ratios['blocklab']:.2f}x the time of blocklab's LayerNorm, which calls a "
            "fused kernel"
        )
    else:
        verdict = FAILS
    measured = {"median_ms": medians_ms, "rmsnorm_over_layernorm": ratios}
    summary = (
        f"RMSNorm / LayerNorm forward+backward time: blocklab {ratios['blocklab']:.2f} "
        f"({medians_ms['blocklab_rmsnorm']:.1f} / {medians_ms['blocklab_layernorm']:.1f} ms), "
        f"torch {ratios['torch']:.2f}, same operations {ratios['same_ops']:.2f}"
    )
    setting = (
        f"x (2, 256, {dim}) float32, 1 thread, median of {rounds} interleaved rounds after "
        f"{warmup} warm-up rounds, torch {torch.__version__}"
    )
    return Finding(verdict, setting, measured, summary, condition)


# 8. Residual connections and gradient flow ----------------------------------------


def _first_and_last_layer_grads(config: ModelConfig, parts: Parts, residual: bool,
                                ids: torch.Tensor) -> tuple[float, float]:
    model = _build_model(config, parts)
    for block in model.blocks:
        block.residual_enabled = residual
    _lm_loss(model, ids).backward()
    return _grad_norm(model.blocks[0]), _grad_norm(model.blocks[-1])


def check_residual_gradients(parts: Parts) -> Finding:
    """Check that skip connections carry the gradient to the first layer (He et al. 2016).

    With x_{l+1} = x_l + f(x_l), d x_L / d x_l contains an identity term, so
    the first layer gets a gradient of the same order as the last. Without
    the skip the gradient is a product of L Jacobians and shrinks (or grows)
    geometrically with depth.

    NOTE: in a pre-norm stack without skips, each sublayer output is rescaled
    by the next norm unless its mean square is below the norm's eps. With
    blocklab's depth-scaled initialisation it is below eps = 1e-5, so the
    signal and the gradient vanish. With eps = 1e-12 the same stack's
    first-layer gradient explodes instead. The eps-1e-12 numbers are
    recorded too, and the verdict requires a gap of 100x either way.
    """
    measured: dict[str, Any] = {}
    ok = True
    for depth in (24, 48):
        for eps in (1e-5, 1e-12):
            config = ModelConfig(
                vocab_size=256, d_model=64, n_layers=depth, n_heads=4, max_seq_len=64,
                norm_eps=eps,
            )
            ids = torch.randint(0, 256, (8, 33))
            with_first, with_last = _first_and_last_layer_grads(config, parts, True, ids)
            without_first, without_last = _first_and_last_layer_grads(config, parts, False, ids)
            ratio = without_first / with_first
            measured[f"{depth}_layers_eps_{eps:g}"] = {
                "with_residual": {"first": with_first, "last": with_last},
                "without_residual": {"first": without_first, "last": without_last},
                "first_layer_ratio_without_over_with": ratio,
            }
            flat = 0.2 <= with_first / with_last <= 5.0
            gap = ratio < 1e-2 or ratio > 1e2
            ok = ok and flat and gap
    verdict = HOLDS if ok else FAILS

    def describe(depth: int, eps: float) -> str:
        entry = measured[f"{depth}_layers_eps_{eps:g}"]
        return (
            f"{depth} layers: {_sci(entry['with_residual']['first'])} with, "
            f"{_sci(entry['without_residual']['first'])} without"
        )

    summary = (
        f"first-layer grad norm, eps 1e-5: {describe(24, 1e-5)}; {describe(48, 1e-5)}. "
        f"With eps 1e-12 the no-skip gradient explodes: {describe(24, 1e-12)}; "
        f"{describe(48, 1e-12)}"
    )
    setting = (
        "causal pre-norm LM (RMSNorm, SwiGLU, RoPE), C=64, H=4, blocklab init (std 0.02, "
        "output projections / sqrt(2L)), batch 8 x 32 random tokens; holds if with skips "
        "first/last layer grad norm is within 5x and without skips the first layer differs by 100x"
    )
    return Finding(verdict, setting, measured, summary)


# 9. Post-norm vs pre-norm gradients at initialisation ------------------------------


def _ffn_grad_norms(
    config: ModelConfig, parts: Parts, xavier: bool, seeds: Sequence[int],
) -> list[float]:
    """Return the mean (over seeds) gradient norm of each layer's FFN parameters."""
    totals = [0.0] * config.n_layers
    for seed in seeds:
        torch.manual_seed(seed)
        model = _build_model(config, parts)
        if xavier:
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight)
        ids = torch.randint(0, config.vocab_size, (8, 65))
        _lm_loss(model, ids).backward()
        for index, block in enumerate(model.blocks):
            totals[index] += _grad_norm(block.ffn) / len(seeds)
    return totals


def check_postnorm_gradients(parts: Parts) -> Finding:
    """Compare post-norm and pre-norm gradients per layer at initialisation (Xiong et al. 2020).

    Xiong et al. 2020 argue that with Xavier initialisation post-norm's
    gradients are largest at the layers near the output and pre-norm's are
    not, which is why post-norm needs a learning-rate warmup. The check
    measures each layer's FFN gradient norm in a 12-layer causal LM
    under Xavier initialisation and under blocklab's default one.
    """
    layers = 12
    seeds = (0, 1, 2)
    measured: dict[str, Any] = {}
    holds_in = {}
    for init in ("xavier", "blocklab"):
        ratios = {}
        for residual in ("post", "pre"):
            config = ModelConfig(
                vocab_size=256, d_model=64, n_layers=layers, n_heads=4, max_seq_len=64,
                position="sinusoidal", norm="layernorm", residual=residual, ffn="relu",
            )
            norms = _ffn_grad_norms(config, parts, init == "xavier", seeds)
            ratios[residual] = norms[-1] / norms[0]
            measured[f"{init}_{residual}"] = {
                "per_layer": norms, "last_over_first": ratios[residual],
            }
        holds_in[init] = ratios["post"] >= 1.3 and ratios["pre"] <= 1.1
    if holds_in["xavier"] and holds_in["blocklab"]:
        verdict, condition = HOLDS, None
    elif holds_in["xavier"]:
        verdict = CONDITIONAL
        condition = (
            "with Xavier initialisation, as in Xiong et al.; blocklab's depth-scaled "
            "initialisation keeps post-norm's gradients flat too"
        )
    else:
        verdict, condition = FAILS, None

    def ratio(init: str, residual: str) -> str:
        return f"{measured[f'{init}_{residual}']['last_over_first']:.2f}"

    summary = (
        f"last/first layer FFN grad norm, Xavier init: post {ratio('xavier', 'post')}, "
        f"pre {ratio('xavier', 'pre')}; blocklab init: post {ratio('blocklab', 'post')}, "
        f"pre {ratio('blocklab', 'pre')}"
    )
    setting = (
        f"{layers}-layer causal LM, C=64, H=4, LayerNorm, ReLU FFN, sinusoidal, LM loss on "
        f"8 x 64 random tokens, mean of {len(seeds)} seeds; grows if ratio >= 1.3, "
        "does not grow if <= 1.1"
    )
    return Finding(verdict, setting, measured, summary, condition)


# 10. The FFN is position-wise ----------------------------------------------------


def check_ffn_per_token(parts: Parts) -> Finding:
    """Check that the FFN acts on each position separately (Vaswani et al. 2017).

    FFN(x)_i depends on x_i alone, so changing token j changes the output at
    j and nowhere else.
    """
    dim, length, changed = 32, 8, 3
    measured: dict[str, Any] = {}
    worst_elsewhere, weakest_at_j = 0.0, math.inf
    for activation in FFNS:
        ffn = parts.feedforward(dim=dim, hidden_dim=64, activation=activation, bias=True)
        x = torch.randn(2, length, dim)
        y = x.clone()
        y[:, changed] = torch.randn(2, dim)
        with torch.no_grad():
            change = (ffn(y) - ffn(x)).abs().amax(-1)  # (B, T)
        elsewhere = float(torch.cat((change[:, :changed], change[:, changed + 1:]), 1).max())
        at_j = float(change[:, changed].min())
        measured[activation] = {"max_change_elsewhere": elsewhere, "min_change_at_j": at_j}
        worst_elsewhere = max(worst_elsewhere, elsewhere)
        weakest_at_j = min(weakest_at_j, at_j)
    verdict = HOLDS if worst_elsewhere <= 1e-7 and weakest_at_j > 1e-4 else FAILS
    summary = (
        f"changing token j={changed}: max output change at i != j {_sci(worst_elsewhere)}, "
        f"at j at least {_sci(weakest_at_j)} (all {len(FFNS)} activations)"
    )
    setting = (
        f"C={dim}, F=64, T={length}, batch 2, float32, with biases; "
        "i != j must stay within 1e-7"
    )
    return Finding(verdict, setting, measured, summary)


# 11. SwiGLU is gated -------------------------------------------------------------


def check_swiglu_gated(parts: Parts) -> Finding:
    """Check that SwiGLU is (SiLU(x W) * (x V)) W2 (Shazeer 2020), the form LLaMA uses.

    It is not the Swish activation x * SiLU(x) applied in a two-matrix FFN.
    The check compares blocklab's SwiGLU with a float64 hand computation of
    the gated form, with `transformers`' LlamaMLP holding the same weights
    (when transformers is installed), and with the two misreadings:
    (h * SiLU(h)) W2 and SiLU(h) W2 with h = x V.
    """
    dim, hidden = 32, 96
    ffn = parts.feedforward(dim=dim, hidden_dim=hidden, activation="swiglu", bias=False)
    x = torch.randn(2, 5, dim)
    with torch.no_grad():
        out = ffn(x)
        gate_w = ffn.gate.weight.double()
        up_w = ffn.up.weight.double()
        down_w = ffn.down.weight.double()
        x64 = x.double()
        gated = (F.silu(x64 @ gate_w.T) * (x64 @ up_w.T)) @ down_w.T
        h = x64 @ up_w.T
        swish_form = (h * F.silu(h)) @ down_w.T
        plain_silu = F.silu(h) @ down_w.T

    measured: dict[str, Any] = {
        "max_diff_vs_gated_float64": _max_abs(out, gated),
        "max_diff_vs_x_times_silu_x": _max_abs(out, swish_form),
        "max_diff_vs_plain_silu_ffn": _max_abs(out, plain_silu),
        "output_scale": float(gated.abs().max()),
    }
    try:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaMLP
    except ImportError:
        llama_diff = None
        reference = "float64 hand computation only (transformers not installed)"
    else:
        llama = LlamaMLP(LlamaConfig(hidden_size=dim, intermediate_size=hidden, hidden_act="silu"))
        with torch.no_grad():
            llama.gate_proj.weight.copy_(ffn.gate.weight)
            llama.up_proj.weight.copy_(ffn.up.weight)
            llama.down_proj.weight.copy_(ffn.down.weight)
            llama_diff = _max_abs(out, llama(x))
        import transformers

        reference = f"transformers {transformers.__version__} LlamaMLP and float64 hand computation"
    measured["max_diff_vs_llama_mlp"] = llama_diff

    tolerance = 1e-5
    scale = measured["output_scale"]
    matches_gated = measured["max_diff_vs_gated_float64"] <= tolerance
    matches_llama = llama_diff is None or llama_diff <= tolerance
    nearest_misreading = min(
        measured["max_diff_vs_x_times_silu_x"], measured["max_diff_vs_plain_silu_ffn"],
    )
    differs = nearest_misreading > 0.1 * scale
    verdict = HOLDS if matches_gated and matches_llama and differs else FAILS
    llama_text = "n/a" if llama_diff is None else _sci(llama_diff)
    summary = (
        f"blocklab swiglu vs gated float64 {_sci(measured['max_diff_vs_gated_float64'])}, "
        f"vs LlamaMLP {llama_text}; vs (h * SiLU(h)) W2 "
        f"{_sci(measured['max_diff_vs_x_times_silu_x'])}, vs SiLU(h) W2 "
        f"{_sci(measured['max_diff_vs_plain_silu_ffn'])} (output max {_sci(scale)})"
    )
    setting = (
        f"C={dim}, F={hidden}, no biases, float32; reference: {reference}; same if <= "
        f"{tolerance:g}, different if > 10% of the output max"
    )
    return Finding(verdict, setting, measured, summary)


# Registry ---------------------------------------------------------------------

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "order-blind",
        "Without position information, self-attention cannot tell word order: reorderings of "
        "the same tokens pool to the same vector, and every encoding breaks this.",
        (CONDITIONAL,), check_order_blind,
    ),
    Claim(
        "sinusoidal-shift",
        "The sinusoidal encoding is defined at every position, and PE(pos + k) is a fixed "
        "linear map (a 2x2 rotation per frequency) of PE(pos).",
        (HOLDS,), check_sinusoidal_shift,
    ),
    Claim(
        "length-extrapolation",
        "A learned position table cannot encode positions past its length, while sinusoidal, "
        "relative, T5, ALiBi and RoPE models run there.",
        (HOLDS,), check_length_extrapolation,
    ),
    Claim(
        "relative-shift",
        "A relative bias depends only on i - j: shifting all positions changes no score "
        "(relative, T5, ALiBi).",
        (HOLDS,), check_relative_shift,
    ),
    Claim(
        "rope-relative",
        "RoPE keeps vector norms, and the score of a query at m with a key at n depends only "
        "on m - n.",
        (HOLDS,), check_rope_relative,
    ),
    Claim(
        "norm-batch-independence",
        "LayerNorm's output for a sequence does not depend on the rest of the batch or on "
        "padding; BatchNorm's does, and on padding unless it masks it.",
        (HOLDS,), check_norm_batch_independence,
    ),
    Claim(
        "rmsnorm-equals-layernorm",
        "RMSNorm equals LayerNorm without bias on zero-mean inputs.",
        (HOLDS,), check_rmsnorm_equals_layernorm,
    ),
    # Measured with torch 2.13 on one thread of a shared 2-core CPU: blocklab's
    # RMSNorm took 2-8x the time of its fused LayerNorm, and the same-operations
    # RMSNorm 0.6-0.9x (up to 1.0 while other processes loaded the machine 4x).
    # A faster RMSNorm kernel would turn the verdict into "holds", which is
    # also consistent with the claim. Only "does not hold" (RMSNorm slower even
    # with the same operations) is a mismatch.
    Claim(
        "rmsnorm-cheaper",
        "RMSNorm costs less than LayerNorm (forward and backward).",
        (CONDITIONAL, HOLDS), check_rmsnorm_cheaper,
    ),
    Claim(
        "residual-gradients",
        "Residual connections keep gradients alive: in a deep stack the first layer's gradient "
        "stays at the scale of the last layer's, and without them it vanishes or explodes.",
        (HOLDS,), check_residual_gradients,
    ),
    Claim(
        "postnorm-gradients",
        "At initialisation post-norm's per-layer gradient norms grow toward the output while "
        "pre-norm's do not, which is why post-norm needs warmup.",
        (CONDITIONAL,), check_postnorm_gradients,
    ),
    Claim(
        "ffn-per-token",
        "The FFN acts on each token alone: changing token j changes no FFN output at i != j.",
        (HOLDS,), check_ffn_per_token,
    ),
    Claim(
        "swiglu-gated",
        "SwiGLU is the gated form (SiLU(xW) * xV) W2, as LLaMA defines it, not x * SiLU(x).",
        (HOLDS,), check_swiglu_gated,
    ),
)

CLAIMS_BY_ID = {claim.id: claim for claim in CLAIMS}


def select_claims(ids: Sequence[str] | None) -> list[Claim]:
    """Return the claims with these ids in registry order, or all for None.

    Raises:
        UsageError: for an unknown id or an empty selection.
    """
    if ids is None:
        return list(CLAIMS)
    unknown = [claim_id for claim_id in ids if claim_id not in CLAIMS_BY_ID]
    if unknown:
        raise UsageError(
            f"--only: unknown claim id {unknown[0]!r}; known ids are {', '.join(CLAIMS_BY_ID)}"
        )
    if not ids:
        raise UsageError("--only: no claim ids given; pass ids separated by commas")
    requested = set(ids)
    return [claim for claim in CLAIMS if claim.id in requested]


def run_claims(
    ids: Sequence[str] | None = None, *, seed: int = 0, parts: Parts | None = None,
) -> list[ClaimResult]:
    """Run the selected checks and return their results in registry order.

    Each check starts from ``torch.manual_seed(seed)``, so a claim's numbers
    do not depend on which other claims run. A check that raises is recorded
    with the ERROR verdict, which no claim expects.

    Args:
        ids: claim ids, or None for all.
        seed: the random seed of every check.
        parts: the part factories; None means the module's ``PARTS``.
    """
    parts = PARTS if parts is None else parts
    from tqdm import tqdm

    results = []
    claims = select_claims(ids)
    for claim in tqdm(claims, desc="claims", unit="claim", disable=None, leave=False):
        logger.debug("checking %s", claim.id)
        torch.manual_seed(seed)
        start = time.perf_counter()
        try:
            with _single_thread():
                finding = claim.check(parts)
        except Exception as error:  # noqa: BLE001 - one broken part must not hide the others
            logger.debug("check %s raised", claim.id, exc_info=True)
            message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
            finding = Finding(ERROR, "", {"error": message}, f"the check raised {message}")
        results.append(ClaimResult(claim, finding, time.perf_counter() - start))
    return results


# Output -------------------------------------------------------------------------


def _wrap_row(cells: Sequence[str], widths: Sequence[int]) -> list[str]:
    wrapped = [textwrap.wrap(cell, width) or [""] for cell, width in zip(cells, widths)]
    height = max(len(lines) for lines in wrapped)
    lines = []
    for row in range(height):
        parts = [
            (column[row] if row < len(column) else "").ljust(width)
            for column, width in zip(wrapped, widths)
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def format_table(results: Sequence[ClaimResult]) -> str:
    """Format the results as a text table: claim, what was measured, verdict."""
    widths = (36, 62, 30)
    lines = _wrap_row(("claim", "measured (setting)", "verdict"), widths)
    lines.append("  ".join("-" * width for width in widths))
    for result in results:
        finding = result.finding
        verdict = finding.verdict
        if finding.condition:
            verdict += f": {finding.condition}"
        if result.matches:
            status = "as expected"
        else:
            status = "UNEXPECTED, expected " + " or ".join(result.claim.expected)
        measured = finding.summary + (f" ({finding.setting})" if finding.setting else "")
        lines += _wrap_row(
            (f"[{result.claim.id}] {result.claim.text}", measured, f"{verdict} [{status}]"), widths,
        )
        lines.append("")
    return "\n".join(lines).rstrip()


def write_json(path: Path, results: Sequence[ClaimResult], seed: int, seconds: float) -> None:
    """Write the measurements to ``path`` through a temporary file in the same folder."""
    document = {
        "seed": seed,
        "torch_version": torch.__version__,
        "seconds": round(seconds, 3),
        "all_expected": all(result.matches for result in results),
        "claims": [result.to_dict() for result in results],
    }
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# Command line -------------------------------------------------------------------


def _parse_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_json_path(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"--json: {path} is a directory; pass a file path")
    if not path.parent.is_dir():
        raise UsageError(
            f"--json: folder {path.parent} does not exist; create it or pass another path"
        )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` options."""
    parser.add_argument(
        "--only", metavar="ID[,ID]", help="run only these claims (comma-separated ids; see --list)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of every check (default 0)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the measurements to this JSON file",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the claim ids and texts, then exit",
    )


def run_command(args: argparse.Namespace) -> int:
    """Run the checks, print the table, and return 0 when every verdict is expected, else 1."""
    if args.list:
        for claim in CLAIMS:
            print(f"{claim.id}: {claim.text}")
        return 0
    ids = None if args.only is None else _parse_ids(args.only)
    claims = select_claims(ids)  # rejects unknown ids before any work
    if args.json is not None:
        _check_json_path(args.json)

    start = time.perf_counter()
    results = run_claims([claim.id for claim in claims], seed=args.seed)
    seconds = time.perf_counter() - start
    print(format_table(results))
    unexpected = [result.claim.id for result in results if not result.matches]
    print()
    if unexpected:
        print(f"{len(unexpected)} of {len(results)} verdicts differ from the expected ones: "
              f"{', '.join(unexpected)} ({seconds:.1f} s)")
    else:
        print(f"all {len(results)} verdicts as expected ({seconds:.1f} s)")
    sys.stdout.flush()
    if args.json is not None:
        write_json(args.json, results, args.seed, seconds)
    return EXIT_MISMATCH if unexpected else 0
