"""ModelConfig validation: random configs either work or fail at construction
with a ValueError naming the field, and the exact messages for common mistakes."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blocklab as bl
from blocklab.config import FFNS, NORMS, POSITIONS, RESIDUALS, RopeConfig, RopeScaling

# For each field: (valid values, invalid values). Valid values still combine
# into impossible shapes (d_model 12 with 8 heads), which must also fail.
CHOICES = {
    "vocab_size": ([1, 16], [0, -3, 2.5, True]),
    "d_model": ([8, 12, 16, 24], [0, -8, 16.0]),
    "n_layers": ([1, 2], [0]),
    "n_heads": ([1, 2, 3, 4], [0]),
    "n_kv_heads": ([None, 1, 2, 3], [0]),
    "head_dim": ([None, 2, 3, 4, 8], [0]),
    "max_seq_len": ([1, 4, 16], [0]),
    "position": (list(POSITIONS), ["xpos", ""]),
    "norm": (list(NORMS), ["groupnorm"]),
    "residual": (list(RESIDUALS), ["peri"]),
    "ffn": (list(FFNS), ["tanh"]),
    "causal": ([True, False], [1]),
    "d_ff": ([None, 1, 8], [0]),
    "ffn_multiple_of": ([1, 8], [0]),
    "norm_eps": ([1e-5, 1e-6], [0.0, -1e-5, math.nan, math.inf]),
    "norm_bias": ([None, True, False], ["yes"]),
    "rmsnorm_unit_offset": ([False, True], [None]),
    "rmsnorm_cast": (["cast_then_scale", "scale_then_cast"], ["fp32"]),
    "qkv_bias": ([False, True], [None]),
    "out_bias": ([False, True], [0]),
    "ffn_bias": ([False, True], ["no"]),
    "attn_scale": ([None, 1.0, 0.5], [0.0, -1.0]),
    "sliding_window": ([None, None, 2], [0]),
    "embed_norm": ([False, True], [None]),
    "final_norm": ([None, True, False], [0]),
    "scale_embeddings": ([False, True], [None]),
    "tie_embeddings": ([False, True], [None]),
    "lm_head": ([True, False], [None]),
    "type_vocab_size": ([0, 2], [-1]),
    "pooler": ([False, True], [None]),
    "dropout": ([0.0, 0.1], [1.0, -0.1, 1.5]),
    "attn_dropout": ([0.0, 0.1], [1.0, -0.1]),
    "rope": (
        [
            {},
            {"theta": 500.0},
            {"interleaved": True},
            {"partial_fraction": 0.5},
            {"scaling": {"type": "linear", "factor": 2.0}},
            {"scaling": {"type": "ntk", "factor": 3.0}},
            {"scaling": {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4}},
            {"scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}},
            {"scaling": {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8}},
        ],
        [
            {"theta": 1.0},
            {"partial_fraction": 0.0},
            {"partial_fraction": 1.5},
            {"scaling": {"type": "ntk", "factor": 0.5}},
            {"scaling": {"type": "dynamic", "factor": 2.0}},
            {"scaling": {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8,
                         "low_freq_factor": 4.0}},
            {"scaling": {"type": "xpos"}},
            {"scaling": "linear"},
            {"bogus": 1},
        ],
    ),
    "relative_max_distance": ([1, 4], [0]),
    "t5_num_buckets": ([2, 3, 4, 8, 32], [1]),
    "t5_max_distance": ([1, 2, 3, 8, 128], [0]),
    "init_std": ([0.02, 1.0], [0.0, -1.0]),
}

FIELD_NAMES = {
    "ModelConfig": {f.name for f in dataclasses.fields(bl.ModelConfig)},
    "RopeConfig": {f.name for f in dataclasses.fields(RopeConfig)},
    "RopeScaling": {f.name for f in dataclasses.fields(RopeScaling)},
}
MESSAGE = re.compile(r"^(ModelConfig|RopeConfig|RopeScaling)\.(\w+): ")
UNKNOWN = re.compile(r"^(ModelConfig|RopeConfig|RopeScaling): unknown field '(\w+)'")


def named_field(message: str) -> tuple[str, str] | None:
    match = MESSAGE.match(message) or UNKNOWN.match(message)
    return None if match is None else (match.group(1), match.group(2))


@st.composite
def configs(draw) -> dict:
    """Draw every field from its valid values, then make up to two of them invalid."""
    fields = {name: draw(st.sampled_from(valid)) for name, (valid, _) in CHOICES.items()}
    broken = draw(st.lists(st.sampled_from(sorted(CHOICES)), max_size=2, unique=True))
    for name in broken:
        fields[name] = draw(st.sampled_from(CHOICES[name][1]))
    return fields


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=configs(), length=st.integers(1, 6))
def test_random_config(fields, length):
    torch.manual_seed(0)
    try:
        config = bl.ModelConfig(**fields)
    except ValueError as error:
        named = named_field(str(error))
        assert named is not None, f"the message names no field: {error}"
        owner, field = named
        if not str(error).startswith(f"{owner}: unknown field"):
            assert field in FIELD_NAMES[owner], f"{field} is not a field of {owner}: {error}"
        return

    model = bl.Transformer(config)
    input_ids = torch.randint(0, config.vocab_size, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, 0] = 0
    if config.position == "learned" and length > config.max_seq_len:
        with pytest.raises(ValueError, match="max_seq_len"):
            model(input_ids, attention_mask=mask)
        return

    out = model.train()(input_ids, attention_mask=mask)
    loss = out.hidden_states.float().pow(2).mean()
    if out.logits is not None:
        loss = loss + out.logits.float().logsumexp(-1).mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name

    out = model.eval()(input_ids, attention_mask=mask)
    assert torch.isfinite(out.hidden_states).all()
    if config.lm_head:
        assert out.logits.shape == (2, length, config.vocab_size)
        assert torch.isfinite(out.logits).all()
    else:
        assert out.logits is None


# Exact messages for common mistakes ------------------------------------------

KNOWN = ", ".join(sorted(FIELD_NAMES["ModelConfig"]))

MESSAGES = [
    (
        dict(d_model=30, n_heads=4),
        "ModelConfig.n_heads: invalid value 4; d_model (30) must be divisible by n_heads, "
        "or set head_dim",
    ),
    (
        dict(d_model=12, n_heads=4, position="rope"),
        "ModelConfig.head_dim: invalid value 3; RoPE needs an even rotary dimension of at "
        "least 2, and head_dim * rope.partial_fraction gives 3",
    ),
    (
        dict(n_heads=4, n_kv_heads=3),
        "ModelConfig.n_kv_heads: invalid value 3; n_heads (4) must be a multiple of n_kv_heads",
    ),
    (
        dict(n_heads=2, n_kv_heads=4),
        "ModelConfig.n_kv_heads: invalid value 4; n_heads (2) must be a multiple of n_kv_heads",
    ),
    (
        dict(position="xpos"),
        "ModelConfig.position: invalid value 'xpos'; expected one of none, sinusoidal, "
        "learned, relative, t5, alibi, rope",
    ),
    (
        dict(norm="groupnorm"),
        "ModelConfig.norm: invalid value 'groupnorm'; expected one of layernorm, rmsnorm, "
        "batchnorm, scalenorm",
    ),
    (
        dict(ffn="tanh"),
        "ModelConfig.ffn: invalid value 'tanh'; expected one of relu, gelu, gelu_tanh, silu, "
        "swiglu, geglu, geglu_tanh, reglu",
    ),
    (
        dict(residual="peri"),
        "ModelConfig.residual: invalid value 'peri'; expected one of post, pre, sandwich",
    ),
    (dict(dropout=-0.1), "ModelConfig.dropout: invalid value -0.1; expected a probability in [0, 1)"),
    (dict(dropout=1.0), "ModelConfig.dropout: invalid value 1.0; expected a probability in [0, 1)"),
    (
        dict(attn_dropout=-0.5),
        "ModelConfig.attn_dropout: invalid value -0.5; expected a probability in [0, 1)",
    ),
    (dict(vocab_size=0), "ModelConfig.vocab_size: invalid value 0; expected an integer >= 1"),
    (dict(d_model=64.0), "ModelConfig.d_model: invalid value 64.0; expected an integer >= 1"),
    (
        dict(position="t5", causal=False, t5_num_buckets=3),
        "ModelConfig.t5_num_buckets: invalid value 3; expected at least 4 with causal=False",
    ),
    (
        dict(position="t5", t5_num_buckets=16, t5_max_distance=8),
        "ModelConfig.t5_max_distance: invalid value 8; expected more than 8, the exact "
        "buckets per direction that t5_num_buckets=16 gives",
    ),
    (
        dict(rope={"theta": 10000.0, "scaling": {"type": "yarn", "factor": 4.0}}),
        "RopeScaling.original_max_position_embeddings: missing for type 'yarn'; set it to "
        "the context length the model was trained at",
    ),
    (
        dict(rope={"scaling": {"type": "xpos"}}),
        "RopeScaling.type: invalid value 'xpos'; expected one of linear, ntk, dynamic, yarn, llama3",
    ),
]


@pytest.mark.parametrize("fields,message", MESSAGES, ids=[m[1].split(":")[0] for m in MESSAGES])
def test_exact_message(fields, message):
    with pytest.raises(ValueError) as error:
        bl.ModelConfig(**fields)
    assert str(error.value) == message


def test_unknown_field_from_dict():
    with pytest.raises(ValueError) as error:
        bl.ModelConfig.from_dict({"d_modle": 64})
    assert str(error.value) == f"ModelConfig: unknown field 'd_modle'; known fields are {KNOWN}"


def test_unknown_field_replace():
    with pytest.raises(ValueError) as error:
        bl.ModelConfig().replace(n_head=2)
    assert str(error.value) == f"ModelConfig: unknown field 'n_head'; known fields are {KNOWN}"


def test_unknown_field_preset():
    with pytest.raises(ValueError) as error:
        bl.ModelConfig.preset("llama", layers=2)
    assert str(error.value) == f"ModelConfig: unknown field 'layers'; known fields are {KNOWN}"


def test_unknown_rope_field():
    with pytest.raises(ValueError) as error:
        bl.ModelConfig(rope={"base": 500.0})
    assert str(error.value) == (
        "RopeConfig: unknown field 'base'; known fields are interleaved, partial_fraction, "
        "scaling, theta"
    )


def test_unknown_preset():
    with pytest.raises(ValueError) as error:
        bl.ModelConfig.preset("gpt3")
    assert str(error.value) == (
        "ModelConfig.preset: unknown preset 'gpt3'; expected one of "
        + ", ".join(bl.PRESETS)
    )


# Construction-time checks and round trips -------------------------------------


def test_shapes_fail_before_model():
    # The config itself raises; no Transformer or forward is needed to find out.
    for fields in (dict(d_model=30, n_heads=4), dict(n_heads=4, n_kv_heads=3),
                   dict(d_model=12, n_heads=4, position="rope")):
        with pytest.raises(ValueError):
            bl.ModelConfig(**fields)


def test_replace_validates():
    config = bl.ModelConfig(d_model=32, n_heads=4)
    with pytest.raises(ValueError, match="ModelConfig.n_heads"):
        config.replace(n_heads=5)


def test_dict_round_trip():
    config = bl.ModelConfig.preset(
        "qwen2", d_model=64, rope={"theta": 5e5, "scaling": {"type": "yarn", "factor": 2.0,
                                                              "original_max_position_embeddings": 32}},
    )
    again = bl.ModelConfig.from_dict(config.to_dict())
    assert again == config
    assert isinstance(again.rope.scaling, RopeScaling)


def test_head_dim_overrides_split():
    config = bl.ModelConfig(d_model=30, n_heads=4, head_dim=8)
    assert config.dim_per_head == 8


@pytest.mark.parametrize("name", list(bl.PRESETS))
def test_preset_overrides(name):
    config = bl.ModelConfig.preset(name, d_model=48, n_layers=1, vocab_size=50)
    assert config.d_model == 48
    assert config.n_layers == 1
    assert config.vocab_size == 50
