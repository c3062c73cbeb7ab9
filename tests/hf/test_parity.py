"""Output parity with `transformers` in both directions, on padded batches.

Each test builds a tiny random model, moves it across (a transformers
checkpoint into blocklab.hf.load, or blocklab.hf.save into from_pretrained),
runs both on the same padded batch and compares real-token outputs in
float32 to within 1e-4.
"""

from __future__ import annotations

import pytest
import torch

import blocklab as bl
from blocklab.errors import UsageError
from tests.hf import (
    ENCODERS,
    FAMILIES,
    ROPE_SCALINGS,
    VOCAB,
    assert_outputs_close,
    blocklab_forward,
    hf_forward,
    hf_model_class,
    max_difference,
    padded_batch,
    randomize_,
    tiny_hf_model,
)

pytest.importorskip("transformers")

SMALL = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)

# (preset, overrides) of a blocklab config that each family expresses.
BLOCKLAB_CONFIGS = {
    "gpt2": ("gpt2", {}),
    "bert": ("bert", dict(lm_head=False)),
    "llama": ("llama", dict(n_kv_heads=2)),
    "mistral": ("llama", dict(n_kv_heads=2)),
    "qwen2": ("qwen2", {}),
    "bloom": ("bloom", {}),
    "t5": ("t5", dict(lm_head=False, head_dim=16, t5_num_buckets=8, t5_max_distance=16)),
    "gemma": ("gemma", dict(head_dim=16)),
}


def _load_from_transformers(family, tmp_path, **overrides):
    reference = tiny_hf_model(family, **overrides)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    return reference, bl.hf.load(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_matches_transformers(family, tmp_path):
    reference, model = _load_from_transformers(family, tmp_path)
    ids, mask = padded_batch(family)

    expected = hf_forward(reference, family, ids, mask)
    actual = blocklab_forward(model, family, ids, mask)

    assert model.hf_family == family
    assert_outputs_close(expected, actual, mask)


@pytest.mark.parametrize("scaling", sorted(ROPE_SCALINGS))
def test_load_llama_rope_scaling(scaling, tmp_path):
    # Dynamic scaling only acts past max_position_embeddings, so that case
    # gets a short table and a batch longer than it.
    max_positions = 16 if scaling == "dynamic" else 64
    parameters = {"rope_theta": 10000.0, **ROPE_SCALINGS[scaling]}
    reference, model = _load_from_transformers(
        "llama", tmp_path, rope_parameters=parameters, max_position_embeddings=max_positions,
    )
    ids, mask = padded_batch("llama", length=24)
    expected = hf_forward(reference, "llama", ids, mask)

    assert model.config.rope.scaling.type == scaling
    assert_outputs_close(expected, blocklab_forward(model, "llama", ids, mask), mask)

    # The scaling must matter for this batch, or the comparison shows nothing.
    unscaled = bl.Transformer(model.config.replace(rope=dict(theta=10000.0))).eval()
    unscaled.load_state_dict(model.state_dict())
    assert max_difference(expected, blocklab_forward(unscaled, "llama", ids, mask), mask) > 1e-3


def test_load_bert_without_pooler(tmp_path):
    import transformers

    reference = randomize_(transformers.BertModel(
        tiny_hf_model("bert").config, add_pooling_layer=False)).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model = bl.hf.load(tmp_path)
    ids, mask = padded_batch("bert")

    assert model.config.pooler is False
    assert model.config.lm_head is False
    assert_outputs_close(hf_forward(reference, "bert", ids, mask),
                         blocklab_forward(model, "bert", ids, mask), mask)


def test_load_t5_gated_gelu(tmp_path):
    reference, model = _load_from_transformers("t5", tmp_path, feed_forward_proj="gated-gelu")
    ids, mask = padded_batch("t5")

    assert model.config.ffn == "geglu_tanh"
    assert_outputs_close(hf_forward(reference, "t5", ids, mask),
                         blocklab_forward(model, "t5", ids, mask), mask)


def test_load_base_model_has_no_head(tmp_path):
    import transformers

    reference = randomize_(transformers.LlamaModel(tiny_hf_model("llama").config)).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model = bl.hf.load(tmp_path)
    ids, mask = padded_batch("llama")
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask,
                             position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        actual = model(ids, attention_mask=mask).hidden_states

    assert model.lm_head is None
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)


def test_load_in_bfloat16(tmp_path):
    _, model = _load_from_transformers("llama", tmp_path)
    reference = bl.hf.load(tmp_path, dtype="float32")
    half = bl.hf.load(tmp_path, dtype=torch.bfloat16)

    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(half.embed.weight, reference.embed.weight.bfloat16(), atol=0, rtol=0)


def test_load_keeps_checkpoint_dtype(tmp_path):
    reference = tiny_hf_model("gpt2").to(torch.bfloat16)
    reference.save_pretrained(tmp_path, safe_serialization=True)

    model = bl.hf.load(tmp_path)

    assert model.embed.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_save_loads_in_transformers(family, tmp_path):
    preset, overrides = BLOCKLAB_CONFIGS[family]
    config = bl.ModelConfig.preset(preset, **SMALL, **overrides)
    model = randomize_(bl.Transformer(config)).eval()
    bl.hf.save(model, tmp_path, family=family)

    reference = hf_model_class(family, head=config.lm_head).from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    ids, mask = padded_batch(family)

    assert reference.config.model_type == family
    assert_outputs_close(hf_forward(reference, family, ids, mask),
                         blocklab_forward(model, family, ids, mask), mask)


@pytest.mark.parametrize("scaling", sorted(ROPE_SCALINGS))
def test_save_llama_rope_scaling(scaling, tmp_path):
    _, loaded = _load_from_transformers(
        "llama", tmp_path / "source",
        rope_parameters={"rope_theta": 10000.0, **ROPE_SCALINGS[scaling]},
        max_position_embeddings=16 if scaling == "dynamic" else 64,
    )
    bl.hf.save(loaded, tmp_path / "saved")
    reference = hf_model_class("llama").from_pretrained(
        tmp_path / "saved", attn_implementation="eager").eval()
    ids, mask = padded_batch("llama", length=24)

    assert_outputs_close(hf_forward(reference, "llama", ids, mask),
                         blocklab_forward(loaded, "llama", ids, mask), mask)


def test_save_without_head(tmp_path):
    config = bl.ModelConfig.preset("llama", **SMALL, lm_head=False)
    model = randomize_(bl.Transformer(config)).eval()
    bl.hf.save(model, tmp_path)

    reloaded = bl.hf.load(tmp_path)

    assert reloaded.lm_head is None
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, atol=0, rtol=0)


@pytest.mark.parametrize("family", sorted(set(BLOCKLAB_CONFIGS) - {"mistral"}))
def test_save_picks_family_from_config(family, tmp_path):
    preset, overrides = BLOCKLAB_CONFIGS[family]
    model = bl.Transformer(bl.ModelConfig.preset(preset, **SMALL, **overrides))

    bl.hf.save(model, tmp_path)

    assert bl.hf.inspect(tmp_path).family == family


def test_round_trip_keeps_every_tensor(tmp_path):
    _, loaded = _load_from_transformers("bloom", tmp_path / "a")
    bl.hf.save(loaded, tmp_path / "b")
    again = bl.hf.load(tmp_path / "b")

    assert again.config == loaded.config
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, atol=0, rtol=0)


@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_padding_does_not_leak(family, tmp_path):
    _, model = _load_from_transformers(family, tmp_path)
    ids, mask = padded_batch(family)
    full = blocklab_forward(model, family, ids, mask)
    alone = blocklab_forward(model, family, ids[2:, :5], mask[2:, :5])

    key = "hidden_states"
    torch.testing.assert_close(full[key][2, :5], alone[key][0], atol=1e-5, rtol=0)


def test_mistral_sliding_window(tmp_path):
    reference, model = _load_from_transformers("mistral", tmp_path / "source", sliding_window=4)
    ids, mask = padded_batch("mistral", length=12)
    expected = hf_forward(reference, "mistral", ids, mask)

    assert model.config.sliding_window == 4
    assert_outputs_close(expected, blocklab_forward(model, "mistral", ids, mask), mask)

    # Without the window the outputs differ, so the comparison above shows it works.
    full = bl.Transformer(model.config.replace(sliding_window=None)).eval()
    full.load_state_dict(model.state_dict())
    assert max_difference(expected, blocklab_forward(full, "mistral", ids, mask), mask) > 1e-3

    bl.hf.save(model, tmp_path / "saved")
    again = hf_model_class("mistral").from_pretrained(
        tmp_path / "saved", attn_implementation="eager").eval()
    assert again.config.sliding_window == 4
    assert_outputs_close(hf_forward(again, "mistral", ids, mask),
                         blocklab_forward(model, "mistral", ids, mask), mask)


def test_sliding_window_blocks_llama_save(tmp_path):
    config = bl.ModelConfig.preset("llama", **SMALL, sliding_window=8)
    with pytest.raises(UsageError, match="sliding_window=8"):
        bl.hf.save(bl.Transformer(config), tmp_path, family="llama")
