"""Tests for encoding documents into a stream and drawing batches from it."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blocklab.data.batches import (
    encode_documents,
    eval_window_plan,
    eval_windows,
    random_batches,
    sample_batch,
)
from blocklab.data.corpora import DataError
from blocklab.data.tokenizers import BPETokenizer, ByteTokenizer

# --- encode_documents -----------------------------------------------------------------


def test_encode_documents_appends_eos():
    stream = encode_documents(["ab", "é"], ByteTokenizer())
    assert stream.dtype == torch.int64
    assert stream.dim() == 1
    assert stream.tolist() == [97, 98, 256, 0xC3, 0xA9, 256]


def test_encode_documents_empty_list():
    stream = encode_documents([], ByteTokenizer())
    assert stream.shape == (0,)
    assert stream.dtype == torch.int64


def test_encode_documents_bpe_matches_encode(capsys):
    documents = ["the cat sat on the mat", "a dog 🐕", "the end"] * 100
    tokenizer = BPETokenizer.train(documents, 300)
    stream = encode_documents(documents, tokenizer, progress=True)
    expected = []
    for document in documents:
        expected += tokenizer.encode(document) + [tokenizer.eos_id]
    assert stream.tolist() == expected
    assert int((stream == tokenizer.eos_id).sum()) == len(documents)
    assert "tokenizing" in capsys.readouterr().err


def test_encode_documents_no_progress_output(capsys):
    encode_documents(["text"], ByteTokenizer())
    assert capsys.readouterr().err == ""


# --- training batches -----------------------------------------------------------------

STREAM = torch.arange(1000)


def test_batch_shapes_and_shift():
    inputs, targets = sample_batch(STREAM, 4, 16, seed=0, step=0)
    assert inputs.shape == (4, 16)
    assert targets.shape == (4, 16)
    assert inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    # In an arange stream every window is consecutive, so each target is input + 1.
    assert torch.equal(targets, inputs + 1)
    assert torch.equal(inputs - inputs[:, :1], torch.arange(16).expand(4, 16))


def test_batches_are_deterministic():
    first = list(itertools.islice(random_batches(STREAM, 4, 8, seed=5), 5))
    second = list(itertools.islice(random_batches(STREAM, 4, 8, seed=5), 5))
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2)
        assert torch.equal(y1, y2)


def test_batches_differ_by_seed_and_step():
    batch_seed0 = sample_batch(STREAM, 8, 8, seed=0, step=0)[0]
    assert not torch.equal(batch_seed0, sample_batch(STREAM, 8, 8, seed=1, step=0)[0])
    assert not torch.equal(batch_seed0, sample_batch(STREAM, 8, 8, seed=0, step=1)[0])


def test_resume_gives_the_same_batches():
    fresh = list(itertools.islice(random_batches(STREAM, 4, 8, seed=2), 10))
    resumed = list(
        itertools.islice(random_batches(STREAM, 4, 8, seed=2, start_step=6), 4)
    )
    for (x1, y1), (x2, y2) in zip(fresh[6:], resumed, strict=True):
        assert torch.equal(x1, x2)
        assert torch.equal(y1, y2)


def test_batches_ignore_global_rng():
    torch.manual_seed(1)
    first = sample_batch(STREAM, 4, 8, seed=0, step=3)[0]
    torch.manual_seed(2)
    torch.rand(100)
    assert torch.equal(first, sample_batch(STREAM, 4, 8, seed=0, step=3)[0])


def test_batches_cover_every_start():
    stream = torch.arange(12)  # Windows of 5 tokens can start at 0..7.
    starts = set()
    for inputs, _ in itertools.islice(random_batches(stream, 64, 4, seed=0), 4):
        starts.update(inputs[:, 0].tolist())
    assert starts == set(range(8))


def test_batches_accept_exact_length_stream():
    inputs, targets = sample_batch(torch.arange(9), 3, 8, seed=0, step=0)
    assert torch.equal(inputs, torch.arange(8).expand(3, 8))
    assert torch.equal(targets, torch.arange(1, 9).expand(3, 8))


def test_batches_keep_int32_values():
    stream = torch.arange(100, dtype=torch.int32)
    inputs, _ = sample_batch(stream, 2, 4, seed=0, step=0)
    assert inputs.dtype == torch.int64


def test_short_stream_message():
    with pytest.raises(DataError) as info:
        random_batches(torch.arange(8), 2, 8, seed=0)
    message = str(info.value)
    assert "corpus has 8 tokens" in message
    assert "training sequence of 9" in message
    assert "--seq-len" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch size must be a positive integer, got 0"),
        ({"seq_len": -1}, "sequence length must be a positive integer, got -1"),
        ({"start_step": -2}, "start step must be a non-negative integer, got -2"),
    ],
)
def test_invalid_batch_arguments(kwargs, match):
    arguments = {"batch_size": 2, "seq_len": 4, "start_step": 0} | kwargs
    with pytest.raises(DataError, match=match):
        random_batches(STREAM, seed=0, **arguments)


def test_invalid_stream():
    with pytest.raises(DataError, match="1-D tensor"):
        sample_batch(torch.zeros(4, 4, dtype=torch.long), 1, 2, seed=0, step=0)
    with pytest.raises(DataError, match="integer ids"):
        sample_batch(torch.zeros(10), 1, 2, seed=0, step=0)


# --- evaluation windows ---------------------------------------------------------------


def _scored_targets(num_tokens, seq_len, **kwargs):
    """Return the scored target values of an arange stream, in scoring order."""
    scored = []
    for inputs, targets, mask in eval_windows(
        torch.arange(num_tokens), seq_len, **kwargs
    ):
        assert inputs.shape == targets.shape == mask.shape
        assert mask.dtype == torch.bool
        assert torch.equal(targets, inputs + 1)
        scored += targets[mask].tolist()
    return scored


@pytest.mark.parametrize("num_tokens", [9, 10, 16, 17, 100, 101])
def test_eval_windows_default_stride_scores_once(num_tokens):
    scored = _scored_targets(num_tokens, 8)
    assert sorted(scored) == list(range(1, num_tokens))


@pytest.mark.parametrize("stride", [1, 3, 5, 8])
@pytest.mark.parametrize("num_tokens", [9, 10, 23, 50])
def test_eval_windows_sliding_stride_scores_once(num_tokens, stride):
    scored = _scored_targets(num_tokens, 8, stride=stride, batch_size=3)
    assert sorted(scored) == list(range(1, num_tokens))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20), st.data())
def test_eval_window_plan_scores_every_target_once(seq_len, data):
    num_tokens = data.draw(st.integers(seq_len + 1, 120))
    stride = data.draw(st.integers(1, seq_len))
    counts = [0] * num_tokens
    for start, first_scored in eval_window_plan(num_tokens, seq_len, stride):
        assert 0 <= start <= num_tokens - seq_len - 1
        assert 0 <= first_scored < seq_len
        for position in range(first_scored, seq_len):
            counts[start + position + 1] += 1
    assert counts == [0] + [1] * (num_tokens - 1)


def test_eval_windows_default_does_not_overlap():
    plan = eval_window_plan(33, 8, 8)
    assert plan == [(0, 0), (8, 0), (16, 0), (24, 0)]
    plan = eval_window_plan(30, 8, 8)
    assert plan == [(0, 0), (8, 0), (16, 0), (21, 3)]


def test_eval_windows_sliding_context():
    plan = eval_window_plan(40, 8, 2)
    assert plan[0] == (0, 0)
    # Every later window scores at most its last `stride` targets.
    for _, first_scored in plan[1:]:
        assert first_scored >= 8 - 2


def test_eval_windows_max_windows():
    batches = list(eval_windows(torch.arange(100), 8, max_windows=3, batch_size=2))
    assert [inputs.shape[0] for inputs, _, _ in batches] == [2, 1]
    assert sum(int(mask.sum()) for _, _, mask in batches) == 24


def test_eval_windows_short_stream():
    with pytest.raises(DataError, match="validation text has 5 tokens") as info:
        eval_windows(torch.arange(5), 8)
    assert "window of 9" in str(info.value)


@pytest.mark.parametrize("stride", [0, 9, -1])
def test_eval_windows_invalid_stride(stride):
    with pytest.raises(DataError, match=f"got {stride}"):
        eval_windows(torch.arange(100), 8, stride=stride)
