"""TransformerBlock against torch.nn.TransformerEncoderLayer, and the three
residual wirings computed by hand from the block's own submodules."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from blocklab.nn import Attention, FeedForward, LayerNorm, RMSNorm, TransformerBlock

C, HEADS, HIDDEN = 32, 4, 64


def make_block(residual: str, activation: str = "relu", norm=LayerNorm) -> TransformerBlock:
    def build_norm() -> torch.nn.Module:
        return norm(dim=C, eps=1e-5)

    sandwich = residual == "sandwich"
    block = TransformerBlock(
        attention=Attention(dim=C, num_heads=HEADS, qkv_bias=True, out_bias=True),
        feedforward=FeedForward(dim=C, hidden_dim=HIDDEN, activation=activation, bias=True),
        attn_norm=build_norm(), ffn_norm=build_norm(), residual=residual,
        attn_out_norm=build_norm() if sandwich else None,
        ffn_out_norm=build_norm() if sandwich else None,
    )
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.3)
    return block.eval()


def torch_layer(block: TransformerBlock, activation: str) -> torch.nn.TransformerEncoderLayer:
    layer = torch.nn.TransformerEncoderLayer(
        C, HEADS, dim_feedforward=HIDDEN, dropout=0.0, activation=activation,
        layer_norm_eps=1e-5, batch_first=True, norm_first=block.residual == "pre",
    )
    pairs = [
        (layer.self_attn.in_proj_weight, block.attn.qkv.weight),
        (layer.self_attn.in_proj_bias, block.attn.qkv.bias),
        (layer.self_attn.out_proj.weight, block.attn.out.weight),
        (layer.self_attn.out_proj.bias, block.attn.out.bias),
        (layer.linear1.weight, block.ffn.up.weight),
        (layer.linear1.bias, block.ffn.up.bias),
        (layer.linear2.weight, block.ffn.down.weight),
        (layer.linear2.bias, block.ffn.down.bias),
        (layer.norm1.weight, block.attn_norm.weight),
        (layer.norm1.bias, block.attn_norm.bias),
        (layer.norm2.weight, block.ffn_norm.weight),
        (layer.norm2.bias, block.ffn_norm.bias),
    ]
    with torch.no_grad():
        for theirs, ours in pairs:
            theirs.copy_(ours)
    return layer.eval()


@pytest.mark.parametrize("residual", ["post", "pre"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masked", [False, True])
def test_encoder_layer_torch(residual, activation, masked):
    block = make_block(residual, activation)
    layer = torch_layer(block, activation)
    x = torch.randn(3, 6, C)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool()
    key_mask = mask if masked else None
    out = block(x, causal=False, key_mask=key_mask, token_mask=key_mask)
    expected = layer(x, src_key_padding_mask=None if key_mask is None else ~key_mask)
    # PyTorch's fast path may write anything at padded positions; compare real ones.
    assert_close(out[mask], expected[mask])


def attend(block: TransformerBlock, h: torch.Tensor) -> torch.Tensor:
    return block.attn(h, causal=True)


def test_post_wiring():
    block = make_block("post", "gelu")
    x = torch.randn(2, 5, C)
    h = block.attn_norm(x + attend(block, x))
    expected = block.ffn_norm(h + block.ffn(h))
    assert_close(block(x, causal=True), expected, rtol=0, atol=0)


@pytest.mark.parametrize("norm", [LayerNorm, RMSNorm])
def test_pre_wiring(norm):
    block = make_block("pre", "gelu", norm)
    x = torch.randn(2, 5, C)
    h = x + attend(block, block.attn_norm(x))
    expected = h + block.ffn(block.ffn_norm(h))
    assert_close(block(x, causal=True), expected, rtol=0, atol=0)


def test_sandwich_wiring():
    block = make_block("sandwich", "gelu", RMSNorm)
    x = torch.randn(2, 5, C)
    h = x + block.attn_out_norm(attend(block, block.attn_norm(x)))
    expected = h + block.ffn_out_norm(block.ffn(block.ffn_norm(h)))
    assert_close(block(x, causal=True), expected, rtol=0, atol=0)


def test_wirings_differ():
    torch.manual_seed(1)
    x = torch.randn(2, 5, C)
    outputs = {}
    for residual in ("post", "pre", "sandwich"):
        torch.manual_seed(2)
        outputs[residual] = make_block(residual)(x, causal=True)
    assert not torch.allclose(outputs["post"], outputs["pre"])
    assert not torch.allclose(outputs["pre"], outputs["sandwich"])


def test_without_skip_connections():
    block = make_block("pre")
    block.residual_enabled = False
    x = torch.randn(2, 5, C)
    h = attend(block, block.attn_norm(x))
    expected = block.ffn(block.ffn_norm(h))
    assert_close(block(x, causal=True), expected, rtol=0, atol=0)


def test_rejects_unknown_wiring():
    with pytest.raises(ValueError, match="TransformerBlock.residual: invalid value 'middle'"):
        make_block("middle")


def test_sandwich_needs_output_norms():
    with pytest.raises(ValueError, match="sandwich wiring needs attn_out_norm"):
        TransformerBlock(
            attention=Attention(dim=C, num_heads=HEADS),
            feedforward=FeedForward(dim=C, hidden_dim=HIDDEN),
            attn_norm=LayerNorm(dim=C), ffn_norm=LayerNorm(dim=C), residual="sandwich",
        )
