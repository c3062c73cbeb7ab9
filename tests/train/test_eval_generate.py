"""Perplexity by context length and streamed generation from a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from blocklab.cli import main
from blocklab.config import ModelConfig
from blocklab.data import ByteTokenizer
from blocklab.evaluate import evaluate_lengths, evaluate_run, format_table
from blocklab.generate_cli import TextStream, generate_text
from blocklab.model import Transformer
from blocklab.train import TrainConfig, load_run, train


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    names = sorted(topics)[:40]
    path.write_text("".join(json.dumps({"text": topics[name][:4000]}) + "\n" for name in names))
    return str(path)


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("runs") / "gpt2"
    model = ModelConfig.preset("gpt2", d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    config = TrainConfig(data=corpus_file, seq_len=32, batch_size=8, steps=4, eval_every=0, eval_batches=1,
                         device="cpu")
    train(model, config, run_dir, progress=False)
    return run_dir


def test_learned_positions_not_applicable_past_table(learned_run, capsys):
    evaluation = evaluate_run(learned_run, [32, 64, 128], max_windows=4)
    by_length = {row.length: row for row in evaluation.results}
    assert by_length[32].loss is not None
    assert by_length[64].loss is not None
    assert by_length[128].loss is None
    assert by_length[128].note == "learned positions stop at 64"
    assert "not scorable: learned positions stop at 64" in format_table(evaluation)

    assert main(["eval", str(learned_run), "--lengths", "32,128", "--max-windows", "2"]) == 0
    out = capsys.readouterr().out
    assert "not scorable: learned positions stop at 64" in out


def test_lengths_score_every_token_once():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama", d_model=32, n_layers=1, n_heads=2, vocab_size=20)).eval()
    tokens = torch.randint(0, 20, (301,))
    results = evaluate_lengths(model, tokens, [16, 50, 400])
    assert [row.tokens for row in results[:2]] == [300, 300]
    assert results[2].loss is None
    assert "fewer than one window" in results[2].note
    sliding = evaluate_lengths(model, tokens, [16], stride=4)[0]
    assert sliding.tokens == 300
    assert sliding.windows > results[0].windows
    for row in results[:2] + [sliding]:
        assert math.isclose(row.perplexity, math.exp(row.loss))


def test_non_overlapping_loss_equals_direct_computation():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama", d_model=32, n_layers=1, n_heads=2, vocab_size=20)).eval()
    tokens = torch.randint(0, 20, (33,))
    row = evaluate_lengths(model, tokens, [32])[0]
    with torch.no_grad():
        logits = model(tokens[None, :-1]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits, tokens[1:]).item()
    assert row.loss == pytest.approx(expected, rel=1e-6)


def test_text_stream_holds_partial_utf8():
    tokenizer = ByteTokenizer()
    stream = TextStream(tokenizer.decode)
    pieces = [stream.push(byte) for byte in "aé漢🙂".encode()]
    assert pieces[0] == "a"
    assert "".join(pieces) + stream.finish() == "aé漢🙂"
    assert all("\ufffd" not in piece for piece in pieces)


def test_text_stream_gives_up_on_invalid_bytes():
    stream = TextStream(ByteTokenizer().decode)
    pieces = [stream.push(b) for b in (0xFF, 0x41, 0x42, 0x43, 0x44, 0x45)]
    assert "".join(pieces) + stream.finish() == "\ufffdABCDE"


def test_generation_greedy_and_seeded(learned_run):
    model, tokenizer, *_ = load_run(learned_run)
    greedy = "".join(generate_text(model, tokenizer, "The ", max_new_tokens=12))
    assert greedy == "".join(generate_text(model, tokenizer, "The ", max_new_tokens=12))
    sampled = [
        "".join(generate_text(model, tokenizer, "The ", max_new_tokens=12, temperature=1.0, top_k=50, seed=seed))
        for seed in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1]
    assert len(tokenizer.encode(greedy)) <= 12


def test_generation_stops_at_learned_table(learned_run, caplog):
    model, tokenizer, *_ = load_run(learned_run)
    text = "".join(generate_text(model, tokenizer, "x" * 60, max_new_tokens=50, temperature=1.0, seed=0))
    assert len(text) <= 5  # 64 - 60 + 1 tokens fit, at most one character per byte token
    assert "learned positions stop at 64" in caplog.text


def test_generate_rejects_huge_seed(capsys):
    from blocklab import cli

    code = cli.main(["generate", "no-such-run", "--seed", "99999999999999999999"])
    captured = capsys.readouterr()
    assert code == 2
    assert "--seed" in captured.err
    assert captured.out == ""


def test_edited_run_record_is_one_line_error(learned_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(learned_run, copy)
    record = json.loads((copy / "run.json").read_text())
    record["model"]["d_model"] = 48
    (copy / "run.json").write_text(json.dumps(record))
    for argv in (["eval", str(copy), "--lengths", "32"], ["generate", str(copy), "--prompt", "a"],
                 ["train", str(copy), "--resume"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "has shape" in err, argv
        assert "Traceback" not in err, argv
        assert len(err.strip().splitlines()) == 1, err


def test_edited_tie_embeddings_is_one_line_error(corpus_file, tmp_path, capsys):
    run_dir = tmp_path / "untied"
    model = ModelConfig.preset("llama", d_model=32, n_layers=1, n_heads=2, max_seq_len=64)
    config = TrainConfig(data=corpus_file, seq_len=32, batch_size=4, steps=2, eval_every=0, eval_batches=1,
                         device="cpu")
    train(model, config, run_dir, progress=False)
    record = json.loads((run_dir / "run.json").read_text())
    assert not record["model"]["tie_embeddings"]
    record["model"]["tie_embeddings"] = True
    (run_dir / "run.json").write_text(json.dumps(record))
    for argv in (["eval", str(run_dir), "--lengths", "32"], ["train", str(run_dir), "--resume"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "tie_embeddings" in err, argv
        assert "Traceback" not in err, argv
        assert len(err.strip().splitlines()) == 1, err
