"""The lean decoding step against Transformer.forward with the same weights and cache."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import blocklab as bl
from blocklab.decode import LeanDecoder
from blocklab.generate import generate
from blocklab.nn import kernels

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)

CASES = {
    "llama": dict(),
    "qwen2": dict(),
    "gemma": dict(),
    "gpt2": dict(),
    "vaswani": dict(),
    "sandwich": dict(residual="sandwich"),
    "mqa": dict(n_kv_heads=1),
    "interleaved": dict(rope=dict(interleaved=True)),
    "partial_rope": dict(rope=dict(partial_fraction=0.5)),
    "dynamic_rope": dict(rope=dict(scaling=dict(type="dynamic", factor=2.0, original_max_position_embeddings=8))),
    "no_position": dict(position="none"),
    "sliding_window": dict(sliding_window=10),  # crossed mid-decode
    "layernorm_relu": dict(norm="layernorm", ffn="relu"),
    "batchnorm": dict(norm="batchnorm"),
    # Wide enough (256 x 704 weights) for the few-row kernels.
    "wide": dict(d_model=256, n_layers=1, vocab_size=300),
}


def build(name: str) -> bl.Transformer:
    preset = name if name in bl.PRESETS else "llama"
    model = bl.Transformer(bl.ModelConfig.preset(preset, **{**TINY, **CASES[name]})).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def prefill(model: bl.Transformer, prompt: torch.Tensor) -> bl.KVCache:
    with torch.no_grad():
        return model(prompt, use_cache=True).cache


@pytest.mark.parametrize("name", sorted(CASES))
def test_step_logits_match_forward(name):
    model = build(name)
    prompt = torch.randint(0, 64, (2, 6))
    general_cache, lean_cache = prefill(model, prompt), prefill(model, prompt)
    lean = LeanDecoder.build(model, lean_cache, None, max_length=20)
    assert lean is not None
    if name == "wide" and kernels.load() is not None:
        assert lean.layers[0].swiglu_kernel
        assert lean.lm_head.fused
    token = torch.randint(0, 64, (2,))
    with torch.no_grad():
        for _ in range(12):
            expected = model(token[:, None], cache=general_cache).logits[:, -1]
            got = lean.step(token)
            assert_close(got, expected, rtol=1e-5, atol=1e-5)
            token = expected.argmax(-1)
    assert len(lean_cache) == len(general_cache)
    assert torch.equal(lean_cache.key_positions, general_cache.key_positions)
    assert torch.equal(lean_cache.key_mask, general_cache.key_mask)


@pytest.mark.parametrize("name", ["llama", "gpt2", "sliding_window"])
def test_generate_tokens_match(name):
    model = build(name)
    prompt = torch.randint(0, 64, (3, 7))
    lean = generate(model, prompt, max_new_tokens=20)
    general = generate(model, prompt, max_new_tokens=20, lean_step=False)
    assert torch.equal(lean, general)


def test_general_path_continues_lean_cache():
    model = build("llama")
    prompt = torch.randint(0, 64, (1, 5))
    general_cache, lean_cache = prefill(model, prompt), prefill(model, prompt)
    lean = LeanDecoder.build(model, lean_cache, None, max_length=10)
    token = torch.tensor([3])
    with torch.no_grad():
        lean.step(token)
        model(token[:, None], cache=general_cache)
        after_lean = model(token[:, None], cache=lean_cache).logits
        after_general = model(token[:, None], cache=general_cache).logits
    assert_close(after_lean, after_general, rtol=1e-5, atol=1e-5)


def test_learned_positions_past_table_raise():
    model = build("gpt2")
    prompt = torch.randint(0, 64, (1, 63))
    lean = LeanDecoder.build(model, prefill(model, prompt), None, max_length=70)
    with torch.no_grad():
        lean.step(torch.tensor([1]))  # position 63, the table's last row
        with pytest.raises(ValueError, match="64"):
            lean.step(torch.tensor([1]))


def test_build_declines_unsupported():
    prompt = torch.randint(0, 64, (2, 6))
    llama = build("llama")
    padded = torch.ones_like(prompt)
    padded[0, 0] = 0
    with torch.no_grad():
        padded_cache = llama(prompt, attention_mask=padded, use_cache=True).cache
    assert LeanDecoder.build(llama, padded_cache, padded, max_length=10) is None
    alibi = bl.Transformer(bl.ModelConfig.preset("bloom", **TINY)).eval()
    assert LeanDecoder.build(alibi, prefill(alibi, prompt), None, max_length=10) is None
    llama.train()
    assert LeanDecoder.build(llama, prefill(llama, prompt), None, max_length=10) is None
    assert LeanDecoder.build(llama, None, None, max_length=10) is None
