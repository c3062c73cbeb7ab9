"""Decoding with the KV cache: greedy, temperature, top-k and top-p sampling.

The prompt runs once through the model; every new token then costs one
forward of length 1 against the cache. A batch of prompts of different
lengths is left-padded, and positions come from the attention mask, so each
prompt gets the tokens it would get alone.

Shapes: B batch, T prompt length, N new tokens, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from blocklab.decode import LeanDecoder


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: invalid value {max_new_tokens}; expected an integer >= 0")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"temperature: invalid value {temperature}; expected a finite number >= 0 (0 is greedy)"
        )
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k: invalid value {top_k}; expected an integer >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p: invalid value {top_p}; expected a number in (0, 1]")


def next_token(
    logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
    top_p: float | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token from (B, V) logits; temperature 0 is greedy (argmax).

    top-k keeps the k most likely tokens; top-p keeps the smallest set whose
    probability reaches p (Holtzman et al. 2020). Both filter before sampling.
    """
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """Raise ValueError for an empty prompt or a mask with padding after real tokens."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids: invalid shape {tuple(input_ids.shape)}; expected (batch, length) with length >= 1"
        )
    if attention_mask is not None and attention_mask.shape == input_ids.shape and attention_mask.shape[1] > 1:
        mask = attention_mask.bool()
        right_padded = (mask[:, :-1] & ~mask[:, 1:]).any(-1)  # a real token followed by padding
        if bool(right_padded.any()):
            row = int(right_padded.nonzero()[0, 0])
            raise ValueError(
                f"attention_mask: row {row} has padding after its tokens; decoding continues from the "
                "last position, so pad prompts on the left"
            )


def stream_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    lean_step: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield each step's new tokens (B,) as they are decoded.

    Sequences that produced ``eos_id`` keep yielding ``eos_id``; the iteration
    stops when every sequence has finished or after ``max_new_tokens`` steps.
    ``lean_step`` decodes with ``blocklab.decode.LeanDecoder`` when the model
    and batch allow it (same results, fewer operators per token).
    """
    _check_sampling(temperature, top_k, top_p, max_new_tokens)
    _check_prompts(input_ids, attention_mask)
    if max_new_tokens == 0 or input_ids.shape[0] == 0:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
            cache = out.cache
            lean = (
                LeanDecoder.build(model, cache, attention_mask, input_ids.shape[1] + max_new_tokens)
                if lean_step else None
            )
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            logits = out.logits[:, -1]  # (B, V)
            for step in range(max_new_tokens):
                token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                   generator=generator)
                if eos_id is not None:
                    token = torch.where(finished, torch.full_like(token, eos_id), token)
                    finished = finished | (token == eos_id)
                yield token
                if step + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
                    return
                if lean is not None:
                    logits = lean.step(token)
                else:
                    logits = model(token[:, None], cache=cache).logits[:, -1]
    finally:
        model.train(was_training)


def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    lean_step: bool = True,
) -> torch.Tensor:
    """Extend each prompt by up to ``max_new_tokens`` tokens; greedy by default.

    Args:
        model: a causal blocklab Transformer.
        input_ids: (B, T) prompts, left-padded when their lengths differ.
        attention_mask: (B, T) with 1 for real tokens.
        max_new_tokens: N.
        temperature: 0 for greedy decoding, otherwise the sampling temperature.
        top_k, top_p: optional sampling filters.
        eos_id: stop a sequence at this token (it is padded with eos_id after).
        generator: random generator for reproducible sampling.
        on_token: called with each step's (B,) tokens, for streaming.
        lean_step: use the lean single-token step where it applies (see
            ``stream_tokens``); False always runs ``model.forward``.

    Returns:
        (B, T + n) token ids, n <= N.

    Raises:
        ValueError: for invalid sampling settings or a non-causal model.
    """
    if not getattr(getattr(model, "config", None), "causal", True):
        raise ValueError("generate: the model is bidirectional (causal=False); decoding needs a causal model")
    _check_prompts(input_ids, attention_mask)
    if input_ids.shape[0] == 0:
        _check_sampling(temperature, top_k, top_p, max_new_tokens)
        return input_ids.new_zeros((0, input_ids.shape[1] + max_new_tokens))
    steps = []
    for token in stream_tokens(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, eos_id=eos_id, generator=generator, lean_step=lean_step,
    ):
        steps.append(token)
        if on_token is not None:
            on_token(token)
    if not steps:
        return input_ids
    return torch.cat((input_ids, torch.stack(steps, dim=1)), dim=1)
