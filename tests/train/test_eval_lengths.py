"""Which lengths ``blocklab eval`` measures by default, and how it reports lengths it cannot score."""

from __future__ import annotations

import json

import pytest

from blocklab.cli import main
from blocklab.config import ModelConfig
from blocklab.evaluate import DEFAULT_LENGTHS, default_lengths
from blocklab.train import TrainConfig, train


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    names = sorted(topics)[:40]
    path.write_text("".join(json.dumps({"text": topics[name][:4000]}) + "\n" for name in names))
    return str(path)


def train_tiny(run_dir, corpus_file, *, position: str, max_seq_len: int, seq_len: int = 32):
    model = ModelConfig.preset("gpt2", d_model=32, n_layers=1, n_heads=2, position=position, max_seq_len=max_seq_len)
    config = TrainConfig(data=corpus_file, seq_len=seq_len, batch_size=4, steps=1, eval_every=0, eval_batches=1,
                         device="cpu")
    train(model, config, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def short_table_run(tmp_path_factory, corpus_file):
    """Learned positions with a 32-row table, shorter than every length in DEFAULT_LENGTHS."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "learned32", corpus_file, position="learned", max_seq_len=32)


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *map(str, args), "--max-windows", "2", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_default_lengths_cover_training_and_table():
    learned = ModelConfig.preset("gpt2", max_seq_len=48)
    assert default_lengths(learned, TrainConfig(seq_len=32)) == [32, 48, *DEFAULT_LENGTHS]
    rope = ModelConfig.preset("llama", max_seq_len=48)
    assert default_lengths(rope, TrainConfig(seq_len=32)) == [32, *DEFAULT_LENGTHS]
    assert default_lengths(rope, TrainConfig(seq_len=256)) == list(DEFAULT_LENGTHS)
    assert default_lengths(rope, TrainConfig(seq_len=300)) == [128, 256, 300, 512, 1024]


def test_short_learned_table_scores_its_lengths(short_table_run, capsys):
    report = eval_json(capsys, short_table_run)
    rows = {row["length"]: row for row in report["results"]}
    assert sorted(rows) == [32, *DEFAULT_LENGTHS]
    assert rows[32]["loss"] is not None
    assert rows[32]["perplexity"] > 1
    for length in DEFAULT_LENGTHS:
        assert rows[length]["loss"] is None, length
        assert rows[length]["note"] == "learned positions stop at 32", length


def test_table_names_unscorable_lengths(short_table_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(short_table_run), "--max-windows", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    scored = [line for line in lines if line.split()[:1] == ["32"]]
    assert len(scored) == 1
    assert "not scorable" not in scored[0]
    assert "    1024  not scorable: learned positions stop at 32" in lines


def test_learned_table_longer_than_training(tmp_path, corpus_file, capsys):
    run_dir = train_tiny(tmp_path / "run", corpus_file, position="learned", max_seq_len=48)
    rows = {row["length"]: row for row in eval_json(capsys, run_dir)["results"]}
    assert rows[32]["loss"] is not None
    assert rows[48]["loss"] is not None
    assert rows[128]["loss"] is None


def test_rope_scores_every_default_length(tmp_path, corpus_file, capsys):
    run_dir = train_tiny(tmp_path / "run", corpus_file, position="rope", max_seq_len=32)
    rows = eval_json(capsys, run_dir)["results"]
    assert [row["length"] for row in rows] == [32, *DEFAULT_LENGTHS]
    assert all(row["loss"] is not None for row in rows)


def test_stride_drops_shorter_default_lengths(short_table_run, capsys):
    capsys.readouterr()
    code = main(["eval", str(short_table_run), "--stride", "64", "--max-windows", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("blocklab eval: error: ")
    assert len(err.splitlines()) == 1
    assert "--lengths" in err


def test_only_unscorable_lengths_is_an_error(short_table_run, capsys):
    capsys.readouterr()
    code = main(["eval", str(short_table_run), "--lengths", "64,128"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert "no length in 64,128 can be scored" in err
    assert "learned positions stop at 32" in err
    assert "at most 32" in err
