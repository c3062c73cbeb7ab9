"""The parts of a Transformer, each usable on its own."""

from blocklab.nn.attention import Attention
from blocklab.nn.bias import ALiBi, RelativePositionBias, T5RelativePositionBias, alibi_slopes
from blocklab.nn.block import TransformerBlock
from blocklab.nn.cache import KVCache
from blocklab.nn.feedforward import FeedForward
from blocklab.nn.loss import linear_cross_entropy
from blocklab.nn.norms import BatchNorm, LayerNorm, RMSNorm, ScaleNorm, build_norm
from blocklab.nn.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, sinusoidal_table
from blocklab.nn.rotary import SCALINGS, RotaryEmbedding, apply_rotary, inverse_frequencies

__all__ = [
    "ALiBi",
    "Attention",
    "BatchNorm",
    "FeedForward",
    "KVCache",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "SCALINGS",
    "ScaleNorm",
    "SinusoidalPositionalEncoding",
    "T5RelativePositionBias",
    "TransformerBlock",
    "alibi_slopes",
    "apply_rotary",
    "build_norm",
    "inverse_frequencies",
    "linear_cross_entropy",
    "sinusoidal_table",
]
