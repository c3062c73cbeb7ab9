"""Greedy decoding with the KV cache against transformers' generate."""

from __future__ import annotations

import pytest
import torch

import blocklab as bl
from tests.hf import VOCAB, tiny_hf_model

pytest.importorskip("transformers")

NEW_TOKENS = 12
PROMPT_LENGTHS = (7, 4, 2)


def _prompts(seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=generator) for length in PROMPT_LENGTHS]


def _left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(prompt) for prompt in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _hf_greedy(reference, ids, mask):
    with torch.no_grad():
        return reference.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None,
        )


@pytest.fixture(params=["llama", "gpt2"])
def pair(request, tmp_path):
    # A larger initial spread gives logits with clear maxima, so float32
    # rounding cannot flip a greedy choice between near-equal tokens.
    reference = tiny_hf_model(request.param)
    with torch.no_grad():
        for parameter in reference.parameters():
            if parameter.dim() == 2:
                parameter.mul_(4.0)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    return reference, bl.hf.load(tmp_path)


def test_greedy_matches_transformers(pair):
    reference, model = pair
    for prompt in _prompts():
        ids = prompt[None]
        expected = _hf_greedy(reference, ids, torch.ones_like(ids))

        actual = bl.generate(model, ids, max_new_tokens=NEW_TOKENS)

        assert actual.tolist() == expected.tolist()


def test_left_padded_batch_matches_transformers(pair):
    reference, model = pair
    ids, mask = _left_padded(_prompts())
    expected = _hf_greedy(reference, ids, mask)

    actual = bl.generate(model, ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)

    assert actual.tolist() == expected.tolist()


def test_left_padded_batch_matches_each_prompt_alone(pair):
    _, model = pair
    prompts = _prompts()
    ids, mask = _left_padded(prompts)

    batch = bl.generate(model, ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)

    for row, prompt in enumerate(prompts):
        alone = bl.generate(model, prompt[None], max_new_tokens=NEW_TOKENS)
        assert batch[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist()


def test_greedy_tokens_are_not_constant(pair):
    # Guards the tests above against a model that always emits one token.
    _, model = pair
    tokens = bl.generate(model, _prompts()[0][None], max_new_tokens=NEW_TOKENS)
    assert len(set(tokens[0, -NEW_TOKENS:].tolist())) > 1


def test_sliding_window_decoding_matches_transformers(tmp_path):
    reference = tiny_hf_model("mistral", sliding_window=4)
    with torch.no_grad():
        for parameter in reference.parameters():
            if parameter.dim() == 2:
                parameter.mul_(4.0)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model = bl.hf.load(tmp_path)
    ids, mask = _left_padded(_prompts())
    expected = _hf_greedy(reference, ids, mask)

    actual = bl.generate(model, ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)
    full = bl.Transformer(model.config.replace(sliding_window=None)).eval()
    full.load_state_dict(model.state_dict())
    unwindowed = bl.generate(full, ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)

    assert actual.tolist() == expected.tolist()
    # The window must change the tokens, or the check above shows nothing.
    assert unwindowed.tolist() != expected.tolist()
