"""The train, eval and generate commands: options, configs and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch

from blocklab import runs
from blocklab import train as train_module
from blocklab.cli import main
from blocklab.errors import UsageError
from blocklab.train import parse_value, resolve_configs

from tests.train.helpers import error_line, snapshot

TINY = ["--set", "d_model=32", "--set", "n_layers=2", "--set", "n_heads=2", "--seq-len", "32",
        "--batch-size", "8", "--eval-every", "0", "--save-every", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "2", *TINY]) == 0
    return run_dir


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
        flags={"batch_size": 9, "seed": None},
    )
    assert model.position == "learned"
    assert model.d_model == 64
    assert model.n_heads == 8
    assert model.rope.theta == 500000
    assert train_config.lr == 0.02
    assert train_config.steps == 7
    assert train_config.batch_size == 9
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
        (lambda d, c: ["--data", c, "--lr", "1e300"], "TrainConfig.lr: invalid value 1e+300"),
        (lambda d, c: ["--data", c, "--seed", "99999999999999999999"], "TrainConfig.seed: invalid value"),
        # 10**12 floats per embedding row exceed any address space, so the allocation fails at once.
        (lambda d, c: ["--data", c, "--set", "d_model=1000000000000"], "cannot allocate the model"),
        (lambda d, c: ["--data", c, "--steps", "2", "--set", "steps=3"], "--steps 2 conflicts with --set steps=3"),
        (lambda d, c: ["--data", c, "--config", str(d)], "is a directory"),
        (lambda d, c: ["--data", c, "--stop-at-step", "0"], "--stop-at-step: invalid value 0"),
    ],
)
def test_train_bad_input(tmp_path, corpus_file, capsys, make_args, message):
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "short.txt").write_text("tiny text")
    (tmp_path / "bad.toml").write_text("[optimizer]\nlr = 1\n")
    run_dir = tmp_path / "run"
    extra = make_args(tmp_path, corpus_file)
    tiny = list(TINY)
    if any(argument.startswith("d_model=") for argument in extra):
        # A field set twice is an error of its own, so the case's d_model replaces the tiny one.
        index = tiny.index("d_model=32")
        del tiny[index - 1:index + 1]
    args = ["train", str(run_dir), *tiny, "--steps", "1", *extra]
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
        (["--lengths", "64,,128"], "empty item"),
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
        (["--temperature", "nan"], "--temperature: invalid value nan"),
        (["--temperature", "inf"], "--temperature: invalid value inf"),
    ],
)
def test_generate_bad_input(trained_run, capsys, args, message):
    assert main(["generate", str(trained_run), *args]) == 2
    assert message in error_line(capsys)


def test_run_dir_lock_rejects_second_process(tmp_path, trained_run, corpus_file, capsys):
    run_dir = tmp_path / "run"
    with runs.lock_run_dir(run_dir):
        assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "1", *TINY]) == 2
        line = error_line(capsys)
        assert f"is in use by another blocklab process (pid {os.getpid()})" in line
        assert not run_dir.exists()
    with runs.lock_run_dir(trained_run):
        before = snapshot(trained_run)
        assert main(["train", str(trained_run), "--resume", "--no-progress", "--stop-at-step", "1"]) == 2
        assert "is in use by another blocklab process" in error_line(capsys)
        assert snapshot(trained_run) == before
    assert not (tmp_path / ".run.lock").exists()


def test_run_dir_lock_released_after_error(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(run_dir), "--data", str(tmp_path / "missing.txt"), *TINY]) == 2
    capsys.readouterr()
    assert not (tmp_path / ".run.lock").exists()
    with runs.lock_run_dir(run_dir):
        pass


def test_run_created_meanwhile_is_kept(tmp_path, trained_run, corpus_file, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    build = train_module._build_model

    def build_after_another_run_appears(*args, **kwargs):
        shutil.copytree(trained_run, run_dir)
        return build(*args, **kwargs)

    monkeypatch.setattr(train_module, "_build_model", build_after_another_run_appears)
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "1", *TINY]) == 2
    assert "already contains a run" in error_line(capsys)
    assert snapshot(run_dir).keys() == {run_dir / p.relative_to(trained_run) for p in snapshot(trained_run)}


def test_failed_first_step_can_be_rerun(tmp_path, corpus_file, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = ["train", str(run_dir), "--data", corpus_file, "--steps", "1", *TINY]

    real_step = torch.optim.AdamW.step
    calls = []

    def overflow_in_training(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the state initialisation of the step-0 checkpoint
            return real_step(self, *args, **kwargs)
        raise RuntimeError("value cannot be converted to type float without overflow")

    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", overflow_in_training)
        assert main(args) == 2
    assert "lower --lr" in error_line(capsys)
    assert not run_dir.exists()  # no step completed, so the new run's files are removed
    assert main(args) == 0
    assert runs.list_checkpoints(run_dir)[-1] == 1


def test_warmup_longer_than_run_warns(tmp_path, corpus_file, caplog):
    with caplog.at_level(logging.WARNING, logger="blocklab.train"):
        assert main(["train", str(tmp_path / "run"), "--data", corpus_file, "--steps", "1", *TINY]) == 0
    warnings = [record.getMessage() for record in caplog.records if "warmup_steps" in record.getMessage()]
    assert warnings == ["warmup_steps 50 is more than steps 1, so the learning rate never reaches lr 0.003; "
                        "set warmup_steps to at most 1 to reach it"]


def test_flag_conflicts_with_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nsteps = 7\nseed = 1\n")
    with pytest.raises(UsageError, match="--steps 9 conflicts with steps = 7 in config file"):
        resolve_configs(config_file=str(config), flags={"steps": 9})
    with pytest.raises(UsageError, match="--bf16 conflicts with --set bf16=false; pass one"):
        resolve_configs(settings=["bf16=false"], flags={"bf16": True})
    _, same = resolve_configs(config_file=str(config), settings=["train.seed=1"], flags={"steps": 7, "seed": 1})
    assert same.steps == 7
    assert same.seed == 1


def test_run_dir_under_a_file(tmp_path, corpus_file, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert main(["train", str(blocker / "run"), "--data", corpus_file, *TINY]) == 2
    line = error_line(capsys)
    assert f"{str(blocker)!r} is a file, not a directory" in line
    assert "Errno" not in line
    assert blocker.read_text() == "mine"


def test_missing_tokenizer_message(tmp_path, trained_run, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    shutil.rmtree(run_dir / runs.TOKENIZER_DIR)
    for args in (["generate", str(run_dir)], ["train", str(run_dir), "--resume", "--stop-at-step", "1"]):
        assert main(args) == 2
        line = error_line(capsys)
        assert "is missing or empty, so the run may be damaged" in line
        assert "Tokenizer.save" not in line


def test_resume_of_finished_run_prints_note(tmp_path, trained_run, corpus_file, capsys):
    capsys.readouterr()
    before = snapshot(trained_run)
    assert main(["train", str(trained_run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"run {trained_run} already finished at step 2 of 2; nothing to do" in out
    assert "tokens/s" not in out
    assert snapshot(trained_run) == before

    stopped = tmp_path / "stopped"
    assert main(["train", str(stopped), "--data", corpus_file, "--steps", "3", "--stop-at-step", "1", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", str(stopped), "--resume", "--stop-at-step", "1"]) == 0
    assert "is already at step 1 of 3, which reaches --stop-at-step 1; nothing to do" in capsys.readouterr().out


def test_run_files_have_default_modes(trained_run):
    umask = os.umask(0o022)
    os.umask(umask)
    checkpoint = runs.checkpoint_dir(trained_run, 2)
    for path in (trained_run / runs.RUN_FILE, checkpoint / runs.STATE_FILE, trained_run / runs.METRICS_FILE):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert checkpoint.stat().st_mode & 0o777 == 0o777 & ~umask
    runs.truncate_metrics(trained_run, 2)
    assert (trained_run / runs.METRICS_FILE).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("runs") / "learned"
    args = ["train", str(run_dir), "--data", corpus_file, "--steps", "1", "--preset", "gpt2",
            "--set", "max_seq_len=32", *TINY]
    assert main(args) == 0
    return run_dir


def test_generate_prompt_too_long_prints_nothing(learned_run, capsys):
    capsys.readouterr()
    assert main(["generate", str(learned_run), "--prompt", "a" * 33]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == ("blocklab generate: error: the prompt has 33 tokens but learned positions "
                                    "stop at 32; use a prompt of at most 32 tokens")


def test_generate_prompt_filling_positions(learned_run, capsys, caplog):
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="blocklab.generate_cli"):
        assert main(["generate", str(learned_run), "--prompt", "a" * 32, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("a" * 32)
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == ["learned positions stop at 32, so at most 1 new tokens follow this 32-token prompt; "
                        "generating 1"]


def test_train_out_of_memory_one_line(tmp_path, capsys):
    from blocklab import cli

    code = cli.main(["train", str(tmp_path / "run"), "--steps", "2", "--set", "d_model=32", "--set",
                     "n_layers=1", "--seq-len", "32", "--batch-size", "100000000000", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "out of memory" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
