"""The train, eval and generate commands: options, configs and one-line errors."""

from __future__ import annotations

import json

import pytest

from blocklab import runs
from blocklab.cli import main
from blocklab.train import parse_value, resolve_configs

TINY = ["--set", "d_model=32", "--set", "n_layers=2", "--set", "n_heads=2", "--seq-len", "32",
        "--batch-size", "8", "--eval-every", "0", "--save-every", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    names = sorted(topics)[:20]
    path.write_text("".join(json.dumps({"text": topics[name][:2000]}) + "\n" for name in names))
    return str(path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "2", *TINY]) == 0
    return run_dir


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("blocklab ")]
    assert len(errors) == 1, err
    return errors[0]


def snapshot(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_set_values_are_parsed():
    assert parse_value("256") == 256
    assert parse_value("5e5") == 500000.0
    assert parse_value("500_000") == 500000
    assert parse_value("true") is True
    assert parse_value("null") is None
    assert parse_value("alibi") == "alibi"
    assert parse_value('"none"') == "none"


def test_config_layers(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[model]\npreset = "gpt2"\nd_model = 64\n[model.rope]\ntheta = 5000.0\n'
        "[train]\nsteps = 7\nlr = 0.01\n"
    )
    model, train_config = resolve_configs(
        config_file=str(config), settings=["n_heads=8", "train.lr=0.02", "rope.theta=500000"],
        flags={"steps": 9, "seed": None},
    )
    assert model.position == "learned"
    assert model.d_model == 64
    assert model.n_heads == 8
    assert model.rope.theta == 500000
    assert train_config.lr == 0.02
    assert train_config.steps == 9
    assert train_config.seed == 0


def test_train_eval_generate_commands(trained_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--lengths", "16,32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["length"] for row in report["results"]] == [16, 32]
    assert all(row["loss"] > 0 for row in report["results"])
    assert main(["generate", str(trained_run), "--prompt", "The ", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("The ")


def test_resume_with_changed_config_is_rejected(trained_run, capsys):
    before = snapshot(trained_run)
    assert main(["train", str(trained_run), "--resume", "--steps", "5", "--no-progress"]) == 2
    assert "train.steps is 5 here but 2 in the run" in error_line(capsys)
    assert snapshot(trained_run) == before


def test_resume_without_changes_continues(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    args = ["train", str(run_dir), "--data", corpus_file, "--steps", "3", *TINY]
    assert main([*args, "--stop-at-step", "2"]) == 0
    assert main(["train", str(run_dir), "--resume", "--no-progress"]) == 0
    assert runs.list_checkpoints(run_dir)[-1] == 3
    assert "completed at step 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, c: ["--data", str(d / "missing.txt")], "corpus path not found"),
        (lambda d, c: ["--data", str(d / "empty.txt")], "is empty"),
        (lambda d, c: ["--data", str(d / "short.txt")], "fewer than one training sequence"),
        (lambda d, c: ["--data", c, "--preset", "gpt5"], "unknown preset 'gpt5'"),
        (lambda d, c: ["--data", c, "--set", "position=spiral"], "ModelConfig.position: invalid value 'spiral'"),
        (lambda d, c: ["--data", c, "--set", "colour=blue"], "unknown config field 'colour'"),
        (lambda d, c: ["--data", c, "--set", "rope.colour=1"], "unknown model field"),
        (lambda d, c: ["--data", c, "--set", "d_model=-4"], "ModelConfig.d_model: invalid value -4"),
        (lambda d, c: ["--data", c, "--lr", "-1"], "TrainConfig.lr: invalid value -1.0"),
        (lambda d, c: ["--data", c, "--set", "d_model"], "expected KEY=VALUE"),
        (lambda d, c: ["--data", c, "--resume", "--overwrite"], "--resume and --overwrite conflict"),
        (lambda d, c: ["--data", c, "--config", str(d / "missing.toml")], "config file not found"),
        (lambda d, c: ["--data", c, "--config", str(d / "bad.toml")], "unknown table [optimizer]"),
        (lambda d, c: ["--data", c, "--preset", "bert"], "needs a causal model"),
        (lambda d, c: ["--data", c, "--tokenizer", "bpe:x"], "invalid BPE vocabulary size"),
        (lambda d, c: ["--data", c, "--batch-size", "6", "--grad-accum", "4"], "must be divisible"),
    ],
)
def test_train_bad_input(tmp_path, corpus_file, capsys, make_args, message):
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "short.txt").write_text("tiny text")
    (tmp_path / "bad.toml").write_text("[optimizer]\nlr = 1\n")
    run_dir = tmp_path / "run"
    args = ["train", str(run_dir), *TINY, "--steps", "1", *make_args(tmp_path, corpus_file)]
    assert main(args) == 2
    line = error_line(capsys)
    assert line.startswith("blocklab train: error: ")
    assert message in line
    assert not run_dir.exists()


def test_existing_directories_are_kept(tmp_path, trained_run, corpus_file, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["train", str(other), "--data", corpus_file, *TINY, "--overwrite"]) == 2
    assert "is not a blocklab run" in error_line(capsys)
    assert (other / "keep.txt").read_text() == "mine"

    before = snapshot(trained_run)
    assert main(["train", str(trained_run), "--data", corpus_file, *TINY]) == 2
    assert "already contains a run" in error_line(capsys)
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_not_a_run(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nothing")]) == 2
    assert "run directory not found" in error_line(capsys)
    assert main([command, str(tmp_path)]) == 2
    assert "not a run directory" in error_line(capsys)
    assert main(["train", str(tmp_path), "--resume"]) == 2
    assert "not a run directory" in error_line(capsys)


def test_damaged_checkpoint(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "1", *TINY]) == 0
    model_file = runs.checkpoint_dir(run_dir, 1) / runs.MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:100])
    for args in (["eval", str(run_dir)], ["generate", str(run_dir)], ["train", str(run_dir), "--resume"]):
        assert main(args) == 2
        assert "is damaged" in error_line(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lengths", "16,abc"], "invalid length 'abc'"),
        (["--lengths", "32", "--stride", "64"], "--stride 64 is invalid for length 32"),
        (["--lengths", "0"], "lengths must be positive"),
    ],
)
def test_eval_bad_input(trained_run, capsys, args, message):
    assert main(["eval", str(trained_run), *args]) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "-1"], "--temperature: invalid value -1.0"),
        (["--top-p", "1.5"], "--top-p: invalid value 1.5"),
        (["--top-k", "0"], "--top-k: invalid value 0"),
    ],
)
def test_generate_bad_input(trained_run, capsys, args, message):
    assert main(["generate", str(trained_run), *args]) == 2
    assert message in error_line(capsys)
