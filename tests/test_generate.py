"""generate(): greedy and sampled decoding with the cache, checked against
full forwards without a cache."""

from __future__ import annotations

import math

import pytest
import torch

import blocklab as bl

ENCODINGS = ["none", "learned", "t5", "alibi", "rope"]


@pytest.fixture
def model(tiny_model):
    return tiny_model(position="rope", n_kv_heads=2)


def greedy_by_hand(model: bl.Transformer, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Append argmax tokens one at a time, re-running the whole sequence each step."""
    tokens = prompt.clone()
    with torch.no_grad():
        for _ in range(steps):
            logits = model(tokens).logits[:, -1]
            tokens = torch.cat((tokens, logits.argmax(-1, keepdim=True)), dim=1)
    return tokens


@pytest.mark.parametrize("position", ENCODINGS)
def test_greedy_by_hand(tiny_model, position):
    model = tiny_model(position=position)
    prompt = torch.randint(0, 64, (2, 5))
    out = bl.generate(model, prompt, max_new_tokens=8)
    assert out.shape == (2, 13)
    assert torch.equal(out, greedy_by_hand(model, prompt, 8))


@pytest.mark.parametrize("position", ENCODINGS)
def test_left_padded_prompts(tiny_model, position):
    model = tiny_model(position=position)
    prompts = [torch.randint(0, 64, (n,)) for n in (6, 2, 4)]
    width = 6
    batch = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        batch[i, width - len(prompt):] = prompt
        mask[i, width - len(prompt):] = 1
    out = bl.generate(model, batch, attention_mask=mask, max_new_tokens=6)
    for i, prompt in enumerate(prompts):
        alone = bl.generate(model, prompt[None], max_new_tokens=6)
        assert torch.equal(out[i, width:], alone[0, len(prompt):]), f"prompt {i}"


def test_top_k_one_is_greedy(model):
    prompt = torch.randint(0, 64, (2, 4))
    greedy = bl.generate(model, prompt, max_new_tokens=6)
    sampled = bl.generate(model, prompt, max_new_tokens=6, temperature=1.0, top_k=1,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, greedy)


def test_tiny_top_p_is_greedy(model):
    prompt = torch.randint(0, 64, (2, 4))
    greedy = bl.generate(model, prompt, max_new_tokens=6)
    sampled = bl.generate(model, prompt, max_new_tokens=6, temperature=0.7, top_p=1e-6,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, greedy)


def test_seeded_sampling_reproducible(model):
    prompt = torch.randint(0, 64, (2, 4))

    def sample(seed: int) -> torch.Tensor:
        return bl.generate(model, prompt, max_new_tokens=10, temperature=1.5, top_k=40,
                           top_p=0.95, generator=torch.Generator().manual_seed(seed))

    first, again, other = sample(11), sample(11), sample(12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_eos_pads_finished(model):
    prompt = torch.randint(0, 64, (2, 4))
    greedy = bl.generate(model, prompt, max_new_tokens=6)
    eos = int(greedy[0, 5])  # the second new token of row 0
    out = bl.generate(model, prompt, max_new_tokens=6, eos_id=eos)
    assert out.shape[1] <= 10
    row = out[0, 4:].tolist()
    stop = row.index(eos)
    assert row[:stop + 1] == greedy[0, 4:4 + stop + 1].tolist()
    assert all(token == eos for token in row[stop:])


def test_streaming_callback(model):
    prompt = torch.randint(0, 64, (1, 3))
    seen = []
    out = bl.generate(model, prompt, max_new_tokens=4, on_token=seen.append)
    assert torch.equal(torch.stack(seen, dim=1), out[:, 3:])


def test_zero_new_tokens(model):
    prompt = torch.randint(0, 64, (1, 3))
    assert torch.equal(bl.generate(model, prompt, max_new_tokens=0), prompt)


def test_keeps_training_mode(model):
    model.train()
    bl.generate(model, torch.randint(0, 64, (1, 3)), max_new_tokens=2)
    assert model.training


INVALID = [
    (dict(temperature=-1.0), "temperature: invalid value -1.0"),
    (dict(temperature=math.nan), "temperature: invalid value nan"),
    (dict(temperature=1.0, top_k=0), "top_k: invalid value 0"),
    (dict(temperature=1.0, top_k=2.5), "top_k: invalid value 2.5"),
    (dict(temperature=1.0, top_p=0.0), "top_p: invalid value 0.0"),
    (dict(temperature=1.0, top_p=1.5), "top_p: invalid value 1.5"),
    (dict(max_new_tokens=-1), "max_new_tokens: invalid value -1"),
    (dict(max_new_tokens=2.5), "max_new_tokens: invalid value 2.5"),
]


@pytest.mark.parametrize("kwargs,message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_sampling(model, kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        bl.generate(model, torch.randint(0, 64, (1, 3)), **kwargs)


def test_rejects_encoder(tiny_model):
    with pytest.raises(ValueError, match="bidirectional"):
        bl.generate(tiny_model(causal=False), torch.randint(0, 64, (1, 3)))


def test_rejects_right_padding(tiny_model):
    model = tiny_model(position="rope")
    ids = torch.randint(0, 64, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with pytest.raises(ValueError, match="row 1 has padding after its tokens"):
        bl.generate(model, ids, mask, max_new_tokens=2)


def test_rejects_empty_prompt(tiny_model):
    with pytest.raises(ValueError, match="length >= 1"):
        bl.generate(tiny_model(position="rope"), torch.zeros((2, 0), dtype=torch.long), max_new_tokens=2)


@pytest.mark.parametrize("lean_step", [True, False])
def test_empty_batch(tiny_model, lean_step):
    out = bl.generate(tiny_model(position="rope"), torch.zeros((0, 5), dtype=torch.long), max_new_tokens=3,
                      lean_step=lean_step)
    assert out.shape == (0, 8)
