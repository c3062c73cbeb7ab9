"""The Transformer: presets, heads, causality, position properties, cached and
left-padded decoding against the plain forward, and reduced precision."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import blocklab as bl
from blocklab.nn import KVCache

ENCODINGS = {
    "none": dict(position="none"),
    "sinusoidal": dict(position="sinusoidal"),
    "learned": dict(position="learned"),
    "relative": dict(position="relative", relative_max_distance=4),
    "t5": dict(position="t5", t5_num_buckets=8, t5_max_distance=16),
    "alibi": dict(position="alibi"),
    "rope": dict(position="rope"),
    "rope_interleaved_partial": dict(
        position="rope", rope={"interleaved": True, "partial_fraction": 0.5}
    ),
    "rope_linear": dict(position="rope", rope={"scaling": {"type": "linear", "factor": 2.0}}),
    "rope_ntk": dict(position="rope", rope={"scaling": {"type": "ntk", "factor": 2.0}}),
    "rope_dynamic": dict(position="rope", rope={"scaling": {
        "type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 64}}),
    "rope_yarn": dict(position="rope", rope={"scaling": {
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}}),
    "rope_llama3": dict(position="rope", rope={"scaling": {
        "type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8}}),
}
POSITIONED = [name for name in ENCODINGS if name != "none"]
BASE = dict(norm="layernorm", ffn="gelu", residual="pre", n_kv_heads=2)


def ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length))


# Presets and heads ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["vaswani", "gpt2", "bert", "llama", "qwen2", "bloom", "t5", "gemma"])
def test_preset_runs(name):
    config = bl.ModelConfig.preset(name, vocab_size=50, d_model=32, n_layers=2, max_seq_len=16)
    model = bl.Transformer(config).eval()
    out = model(torch.randint(0, 50, (2, 7)))
    assert out.logits.shape == (2, 7, 50)
    assert out.hidden_states.shape == (2, 7, 32)
    assert torch.isfinite(out.logits).all()
    assert (out.pooled is not None) == config.pooler


def test_preset_fields():
    assert bl.ModelConfig.preset("bert").causal is False
    assert bl.ModelConfig.preset("llama").ffn == "swiglu"
    assert bl.ModelConfig.preset("qwen2").kv_heads == 2
    assert bl.ModelConfig.preset("gemma").rmsnorm_unit_offset is True
    assert bl.ModelConfig.preset("vaswani").residual == "post"


def test_tied_head_shares_storage(tiny_model):
    model = tiny_model(tie_embeddings=True)
    assert model.lm_head.weight is model.embed.weight
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    with torch.no_grad():
        model.embed.weight[3, 0] = 7.0
    assert model.lm_head.weight[3, 0].item() == 7.0


def test_untied_head_separate(tiny_model):
    tied = tiny_model(tie_embeddings=True)
    model = tiny_model(tie_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()
    assert model.num_parameters() == tied.num_parameters() + 64 * 32


def test_tied_head_logits(tiny_model):
    model = tiny_model(tie_embeddings=True)
    out = model(ids(1, 5))
    assert_close(out.logits, out.hidden_states @ model.embed.weight.T)


def test_no_head(tiny_model):
    out = tiny_model(lm_head=False)(ids(1, 5))
    assert out.logits is None


@pytest.mark.parametrize("causal", [True, False])
def test_causal_vs_encoder(tiny_model, causal):
    model = tiny_model(causal=causal, **BASE)
    x = ids(1, 8)
    changed = x.clone()
    changed[0, 6:] = (x[0, 6:] + 1) % 64
    before = model(x).hidden_states[:, :6]
    after = model(changed).hidden_states[:, :6]
    if causal:
        assert_close(after, before, rtol=0, atol=1e-6)
    else:
        assert not torch.allclose(after, before, atol=1e-4)


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_future_tokens_hidden(tiny_model, name):
    model = tiny_model(**BASE, **ENCODINGS[name])
    x = ids(2, 10)
    before = model(x).logits
    for t in (1, 4, 9):
        changed = x.clone()
        changed[:, t:] = (x[:, t:] + 5) % 64
        after = model(changed).logits
        assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-5)


# Permutation equivariance -----------------------------------------------------------


def permuted_outputs(model: bl.Transformer) -> tuple[torch.Tensor, torch.Tensor]:
    x = ids(2, 9)
    order = torch.tensor([4, 0, 8, 2, 7, 1, 3, 6, 5])
    out = model(x).hidden_states
    permuted = model(x[:, order]).hidden_states
    return out[:, order], permuted


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_nope_encoder_equivariant(tiny_model, norm):
    # float64 keeps summation-order differences near 1e-15.
    model = tiny_model(torch.float64, **{**BASE, "norm": norm}, position="none", causal=False)
    expected, permuted = permuted_outputs(model)
    assert_close(permuted, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", POSITIONED)
def test_encoding_breaks_equivariance(tiny_model, name):
    model = tiny_model(torch.float64, **BASE, **ENCODINGS[name], causal=False)
    expected, permuted = permuted_outputs(model)
    assert (permuted - expected).abs().max() > 1e-6


# Cached decoding --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_cache_token_by_token(tiny_model, name):
    model = tiny_model(**BASE, **ENCODINGS[name])
    x = ids(2, 12)
    full = model(x).logits
    out = model(x[:, :5], use_cache=True)
    steps = [out.logits]
    for t in range(5, 12):
        out = model(x[:, t:t + 1], cache=out.cache)
        steps.append(out.logits)
    assert len(out.cache) == 12
    assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_cache_in_chunks(tiny_model, name):
    model = tiny_model(**BASE, **ENCODINGS[name])
    x = ids(2, 12)
    full = model(x).logits
    cache = KVCache(num_layers=2)
    chunks = [model(x[:, a:b], cache=cache).logits for a, b in ((0, 3), (3, 4), (4, 9), (9, 12))]
    assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cache_returned_only_on_request(tiny_model):
    model = tiny_model()
    assert model(ids(1, 3)).cache is None
    assert isinstance(model(ids(1, 3), use_cache=True).cache, KVCache)


# Left padding ---------------------------------------------------------------------


def left_padded(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    rows = [ids(1, n)[0] for n in lengths]
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return batch, mask, rows


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", list(ENCODINGS))
def test_left_padding(tiny_model, name, causal):
    model = tiny_model(**BASE, **ENCODINGS[name], causal=causal)
    batch, mask, rows = left_padded([9, 4, 6], 9)
    out = model(batch, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        assert_close(out[i, 9 - len(row):], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_left_padding_cached(tiny_model, name):
    model = tiny_model(**BASE, **ENCODINGS[name])
    batch, mask, rows = left_padded([7, 3], 7)
    extra = ids(2, 4)
    out = model(batch, attention_mask=mask, use_cache=True)
    steps = []
    for t in range(4):
        out = model(extra[:, t:t + 1], cache=out.cache)
        steps.append(out.logits[:, 0])
    for i, row in enumerate(rows):
        alone = model(torch.cat((row, extra[i]))[None]).logits[0, len(row):]
        assert_close(torch.stack([s[i] for s in steps]), alone, rtol=1e-5, atol=1e-5)


def test_batchnorm_padding_length(tiny_model):
    # Training-mode statistics come from real tokens only, so extra padding
    # changes nothing at the real tokens.
    model = tiny_model(norm="batchnorm", causal=False, position="learned").train()
    batch, mask, _ = left_padded([5, 3], 5)
    wider = torch.cat((torch.zeros(2, 4, dtype=torch.long), batch), dim=1)
    wider_mask = torch.cat((torch.zeros(2, 4, dtype=torch.long), mask), dim=1)
    out = model(batch, attention_mask=mask).hidden_states
    out_wide = model(wider, attention_mask=wider_mask).hidden_states[:, 4:]
    real = mask.bool()
    assert_close(out_wide[real], out[real], rtol=1e-5, atol=1e-5)


# Reduced precision ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["none", "learned", "t5", "alibi", "rope", "rope_yarn"])
def test_half_model_close(tiny_model, dtype, name):
    model = tiny_model(**{**BASE, **ENCODINGS[name], "norm": "rmsnorm", "ffn": "swiglu"})
    batch, mask, _ = left_padded([8, 5], 8)
    expected = model(batch, attention_mask=mask).logits
    out = model.to(dtype)(batch, attention_mask=mask).logits
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # The logits here are of order 0.1; half precision keeps about 3 digits.
    tolerance = 2e-3 if dtype == torch.float16 else 1e-2
    real = mask.bool()
    assert_close(out.float()[real], expected[real], rtol=tolerance, atol=tolerance)


# Learned and sinusoidal limits ---------------------------------------------------------


def test_learned_input_too_long(tiny_model):
    model = tiny_model(position="learned", max_seq_len=8)
    with pytest.raises(ValueError, match="position 8 is outside the table of 8 positions"):
        model(ids(1, 9))


def test_learned_cache_too_long(tiny_model):
    model = tiny_model(position="learned", max_seq_len=8)
    out = model(ids(1, 6), use_cache=True)
    out = model(ids(1, 2), cache=out.cache)
    with pytest.raises(ValueError, match=r"position 8 .*max_seq_len"):
        model(ids(1, 1), cache=out.cache)
    # The failed call left the cache as it was.
    assert len(out.cache) == 8
    assert out.cache.key_mask.shape == (1, 8)


def test_learned_fits_table(tiny_model):
    model = tiny_model(position="learned", max_seq_len=8)
    assert torch.isfinite(model(ids(2, 8)).logits).all()


def test_sinusoidal_past_max_seq_len(tiny_model):
    model = tiny_model(position="sinusoidal", max_seq_len=8)
    x = ids(1, 30)
    out = model(x).logits
    assert out.shape == (1, 30, 64)
    assert torch.isfinite(out).all()
    # Past the trained length the model still distinguishes positions.
    repeated = model(torch.full((1, 30), 5)).hidden_states[0]
    assert (repeated[20] - repeated[25]).abs().max() > 1e-4


# Input checks ----------------------------------------------------------------------------


def test_rejects_out_of_vocab(tiny_model):
    with pytest.raises(ValueError, match="token id 64 is outside the vocabulary of 64"):
        tiny_model()(torch.tensor([[1, 64]]))


def test_rejects_mask_shape(tiny_model):
    with pytest.raises(ValueError, match="attention_mask: shape"):
        tiny_model()(ids(2, 4), attention_mask=torch.ones(2, 5))


def test_rejects_flat_input(tiny_model):
    with pytest.raises(ValueError, match="input_ids: invalid shape"):
        tiny_model()(torch.tensor([1, 2, 3]))


def test_forward_traces_without_graph_breaks():
    import torch._dynamo

    config = bl.ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2)
    model = bl.Transformer(config)
    ids = torch.randint(0, 50, (2, 8))
    explanation = torch._dynamo.explain(model)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_loss_traces_without_graph_breaks():
    import torch._dynamo

    config = bl.ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2)
    model = bl.Transformer(config).train()
    ids = torch.randint(0, 50, (2, 8))
    explanation = torch._dynamo.explain(model)(ids, targets=ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
