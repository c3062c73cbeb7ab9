"""Helpers for the Hugging Face interop tests: tiny random models of every
family built from `transformers`' own config classes (nothing is downloaded),
padded batches, and output comparison on real tokens only."""

from __future__ import annotations

import inspect

import torch

import blocklab as bl

VOCAB = 96
TOLERANCE = 1e-4

CAUSAL = ("gpt2", "llama", "mistral", "qwen2", "bloom", "gemma")
ENCODERS = ("bert", "t5")
FAMILIES = CAUSAL + ENCODERS

ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    # max_position_embeddings is 16 in that case, so a 24-token batch rescales.
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0},
}


def hf_config(family: str, **overrides):
    """Return a tiny `transformers` config of ``family``."""
    import transformers

    common = dict(vocab_size=VOCAB, attn_implementation="eager", pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    if family == "gpt2":
        fields = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)
        cls = transformers.GPT2Config
    elif family == "bert":
        fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
        cls = transformers.BertConfig
    elif family in ("llama", "mistral", "qwen2"):
        fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
        cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
    elif family == "bloom":
        fields = dict(hidden_size=32, n_layer=2, n_head=4)
        cls = transformers.BloomConfig
    elif family == "t5":
        fields = dict(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16)
        cls = transformers.T5Config
    elif family == "gemma":
        fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64,
                      max_position_embeddings=64)
        cls = transformers.GemmaConfig
    else:
        raise KeyError(family)
    return cls(**{**common, **fields, **overrides})


def hf_model_class(family: str, head: bool = True):
    import transformers

    if family == "bert":
        return transformers.BertModel
    if family == "t5":
        return transformers.T5EncoderModel
    return transformers.AutoModelForCausalLM if head else transformers.AutoModel


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values, so that norms and biases matter too.

    Norm gains are drawn around 1 and everything else around 0.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.1
            is_gain = parameter.dim() == 1 and name.endswith("weight")
            parameter.copy_(noise + 1.0 if is_gain else noise)
    return model


def tiny_hf_model(family: str, seed: int = 0, **overrides):
    """Build a random `transformers` model of ``family`` in eval mode."""
    torch.manual_seed(seed)
    config = hf_config(family, **overrides)
    cls = hf_model_class(family)
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return randomize_(model, seed).eval()


def padded_batch(family: str, length: int = 9, seed: int = 1):
    """Return (input_ids, attention_mask) of three rows with 0, 2 and 4 padding tokens.

    Causal families pad on the left, encoders on the right.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, length), generator=generator)
    mask = torch.ones(3, length, dtype=torch.long)
    for row, padding in enumerate((0, 2, 4)):
        if padding == 0:
            continue
        if family in ENCODERS:
            mask[row, length - padding:] = 0
        else:
            mask[row, :padding] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def hf_forward(model, family: str, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run a `transformers` model; return logits or hidden states (and the pooler output)."""
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if "position_ids" in inspect.signature(model.forward).parameters and family not in ENCODERS:
        # transformers counts positions from the first column unless position_ids
        # are passed, while blocklab counts them from the first real token.
        kwargs["position_ids"] = positions(mask)
    if family == "bert":
        kwargs["token_type_ids"] = token_types(ids)
    with torch.no_grad():
        out = model(**kwargs)
    result = {}
    if getattr(out, "logits", None) is not None:
        result["logits"] = out.logits
    else:
        result["hidden_states"] = out.last_hidden_state
    if getattr(out, "pooler_output", None) is not None:
        result["pooled"] = out.pooler_output
    return result


def token_types(ids: torch.Tensor) -> torch.Tensor:
    """Segment 0 for the first three tokens, 1 after, whatever the length."""
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    return types


def blocklab_forward(model: bl.Transformer, family: str, ids: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, torch.Tensor]:
    kwargs = dict(attention_mask=mask)
    if family == "bert":
        kwargs["token_type_ids"] = token_types(ids)
    with torch.no_grad():
        out = model(ids, **kwargs)
    result = {}
    if out.logits is not None:
        result["logits"] = out.logits
    else:
        result["hidden_states"] = out.hidden_states
    if out.pooled is not None:
        result["pooled"] = out.pooled
    return result


def real_tokens(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the positions of real tokens: (B, T, ...) -> (N, ...); a pooled (B, C) stays."""
    if tensor.dim() == 2:
        return tensor
    return tensor[mask.bool()]


def max_difference(expected: dict, actual: dict, mask: torch.Tensor) -> float:
    assert set(expected) == set(actual), (sorted(expected), sorted(actual))
    return max(
        float((real_tokens(expected[key], mask) - real_tokens(actual[key], mask)).abs().max())
        for key in expected
    )


def assert_outputs_close(expected: dict, actual: dict, mask: torch.Tensor) -> None:
    assert set(expected) == set(actual), (sorted(expected), sorted(actual))
    for key in expected:
        torch.testing.assert_close(
            real_tokens(actual[key], mask), real_tokens(expected[key], mask),
            atol=TOLERANCE, rtol=0, msg=lambda text, key=key: f"{key}: {text}",
        )
