"""Shared fixtures for the blocklab tests: a fixed seed and tiny model configs."""

from __future__ import annotations

import pytest
import torch

import blocklab as bl

# Tiny sizes keep each forward pass cheap on a CPU.
TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    """Return a factory for a tiny ModelConfig with fields overridden by keyword."""

    def build(**overrides) -> bl.ModelConfig:
        return bl.ModelConfig(**{**TINY, **overrides})

    return build


@pytest.fixture
def tiny_model(tiny_config):
    """Return a factory for an eval-mode Transformer on a tiny config.

    Score-bias weights start with std init_std (0.02), too small for position
    effects to stand out from rounding, so the factory redraws them with std 0.5.
    """

    def build(dtype: torch.dtype = torch.float32, **overrides) -> bl.Transformer:
        model = bl.Transformer(tiny_config(**overrides)).eval()
        if model.score_bias is not None:
            for parameter in model.score_bias.parameters():
                torch.nn.init.normal_(parameter, std=0.5)
        return model.to(dtype)

    return build
