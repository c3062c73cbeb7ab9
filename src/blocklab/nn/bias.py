"""Attention-score biases that encode relative position.

Each module maps query positions (B, T) and key positions (B, S) to an additive
bias (B, H, T, S) in float32. Because the bias is a function of the positions
themselves, not of the tensor indices, left padding and cached decoding give
the same bias as an unpadded full forward.

Shapes: B batch, H heads, T query length, S key length.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def t5_bucket_problem(bidirectional: bool, num_buckets: int, max_distance: int) -> str | None:
    """Return why these T5 bucket settings cannot work, or None when they can.

    Each direction needs at least one exact bucket (num_buckets // 2 of a
    side), and max_distance must exceed that exact range, because the log
    buckets divide by log(max_distance / exact).
    """
    side = num_buckets // 2 if bidirectional else num_buckets
    exact = side // 2
    if exact < 1:
        minimum = 4 if bidirectional else 2
        kind = "bidirectional" if bidirectional else "causal"
        return f"{kind} buckets need num_buckets >= {minimum}"
    if max_distance <= exact:
        return (
            f"max_distance must exceed the {exact} exact buckets that "
            f"num_buckets={num_buckets} gives each direction"
        )
    return None


def _offsets(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """Return i - j for every query position i and key position j, as (B, T, S)."""
    return query_positions[:, :, None].long() - key_positions[:, None, :].long()


class RelativePositionBias(nn.Module):
    """A learned scalar a_{i-j} per head, added to the score of query i and key j.

    Offsets beyond +-``max_distance`` share the bias of the clipped offset, as in
    the clipped relative positions of Shaw et al. 2018 (here a scalar bias per
    head rather than a vector).

    Args:
        num_heads: H.
        max_distance: offsets are clipped to [-max_distance, max_distance].
    """

    def __init__(self, *, num_heads: int, max_distance: int = 128) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.max_distance = max_distance
        self.weight = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """Return the bias (B, H, T, S) in float32."""
        offset = _offsets(query_positions, key_positions)
        index = offset.clamp(-self.max_distance, self.max_distance) + self.max_distance  # (B, T, S)
        bias = self.weight.float()[:, index]  # (H, B, T, S)
        return bias.permute(1, 0, 2, 3)


class T5RelativePositionBias(nn.Module):
    """The bucketed relative bias of T5 (Raffel et al. 2020).

    Half of the buckets hold exact small distances; the rest grow
    logarithmically up to ``max_distance``, and every larger distance shares the
    last bucket. The weight has shape (num_buckets, H), as `transformers`'
    ``relative_attention_bias`` embedding does.

    Args:
        num_heads: H.
        bidirectional: encoder buckets (separate buckets for keys before and after
            the query) or causal buckets (only keys at or before the query).
        num_buckets: total buckets (32 in T5).
        max_distance: distance at which buckets stop growing (128 in T5).

    Raises:
        ValueError: when a direction gets no exact bucket or max_distance does
            not exceed the exact range.
    """

    def __init__(
        self, *, num_heads: int, bidirectional: bool = True, num_buckets: int = 32,
        max_distance: int = 128,
    ) -> None:
        super().__init__()
        problem = t5_bucket_problem(bidirectional, num_buckets, max_distance)
        if problem is not None:
            raise ValueError(
                f"T5RelativePositionBias: invalid num_buckets={num_buckets}, "
                f"max_distance={max_distance}; {problem}"
            )
        self.num_heads = num_heads
        self.bidirectional = bidirectional
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.weight = nn.Parameter(torch.zeros(num_buckets, num_heads))

    @staticmethod
    def bucket(
        relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
        max_distance: int = 128,
    ) -> torch.Tensor:
        """Map key - query offsets to bucket ids in [0, num_buckets).

        Args:
            relative_position: integer tensor of key position minus query position.
            bidirectional: when True, positive offsets get their own half of the
                buckets; when False, positive offsets (future keys) share bucket 0.
            num_buckets: total buckets.
            max_distance: distances at or beyond this fall in the last bucket.

        Returns:
            A long tensor of bucket ids with the shape of ``relative_position``.
        """
        relative_position = relative_position.long()
        base = torch.zeros_like(relative_position)
        if bidirectional:
            num_buckets //= 2
            base = (relative_position > 0).long() * num_buckets
            distance = relative_position.abs()
        else:
            distance = (-relative_position).clamp(min=0)

        exact = num_buckets // 2
        # Distances from `exact` to `max_distance` spread over the remaining
        # buckets on a log scale; clamp(min=1) only keeps log() finite for the
        # small distances that torch.where discards.
        log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
        large = exact + (log_ratio * (num_buckets - exact)).long()
        large = large.clamp(max=num_buckets - 1)
        return base + torch.where(distance < exact, distance, large)

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """Return the bias (B, H, T, S) in float32."""
        relative = -_offsets(query_positions, key_positions)  # key - query, (B, T, S)
        buckets = self.bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        bias = nn.functional.embedding(buckets, self.weight.float())  # (B, T, S, H)
        return bias.permute(0, 3, 1, 2)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Return the ALiBi head slopes of Press et al. 2022 as a float64 (H,) tensor.

    For H a power of two the slopes are the geometric sequence 2^(-8/H),
    2^(-16/H), ..., 2^(-8). Otherwise the slopes of the largest power of two
    below H come first, followed by every other slope of twice that power, as
    the paper's reference code does.
    """
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    power = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(power)
    if power < num_heads:
        slopes += geometric(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes, dtype=torch.float64)


class ALiBi(nn.Module):
    """Attention with linear biases (Press et al. 2022): -slope_h * |i - j|.

    In a causal model only keys j <= i are visible, so the bias is
    -slope_h * (i - j). Bidirectional use applies the symmetric distance.

    Args:
        num_heads: H.
    """

    def __init__(self, *, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        # Kept as a Python constant, not a buffer, so that model.half() cannot
        # round the slopes.
        self._slopes = alibi_slopes(num_heads)

    @property
    def slopes(self) -> torch.Tensor:
        """The (H,) float32 slopes."""
        return self._slopes.float()

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """Return the bias (B, H, T, S) in float32."""
        distance = _offsets(query_positions, key_positions).abs().float()  # (B, T, S)
        slopes = self._slopes.to(device=distance.device, dtype=torch.float32)
        return -slopes[None, :, None, None] * distance[:, None]
