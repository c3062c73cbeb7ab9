"""Explicit settings that the commands must not drop: vocab_size and repeated --set keys."""

from __future__ import annotations

import pytest

from blocklab import runs
from blocklab.cli import main
from blocklab.errors import UsageError
from blocklab.train import resolve_configs

from tests.train.helpers import error_line, snapshot

TINY = ["--set", "d_model=32", "--set", "n_layers=1", "--set", "n_heads=2", "--seq-len", "32",
        "--batch-size", "8", "--eval-every", "0", "--save-every", "0", "--no-progress", "--device", "cpu"]

# The byte tokenizer has 256 byte values and one end-of-text id.
BYTES_VOCAB = 257


# --- vocab_size --------------------------------------------------------------------------


def test_train_vocab_size_conflict(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", str(run_dir), "--data", corpus_file, "--steps", "1", "--set", "vocab_size=300", *TINY])
    line = error_line(capsys)
    assert code == 2
    assert "--set vocab_size=300" in line
    assert f"{BYTES_VOCAB} tokens" in line
    assert "'bytes'" in line
    assert "drop the setting" in line
    assert not run_dir.exists()


def test_train_vocab_size_conflict_from_file(tmp_path, corpus_file, capsys):
    config = tmp_path / "model.toml"
    config.write_text("[model]\nvocab_size = 500\n")
    run_dir = tmp_path / "run"
    code = main(["train", str(run_dir), "--data", corpus_file, "--steps", "1", "--config", str(config), *TINY])
    line = error_line(capsys)
    assert code == 2
    assert f"vocab_size = 500 in config file {str(config)!r}" in line
    assert f"{BYTES_VOCAB} tokens" in line
    assert not run_dir.exists()


def test_train_vocab_size_equal_to_tokenizer(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", str(run_dir), "--data", corpus_file, "--steps", "1",
                 "--set", f"model.vocab_size={BYTES_VOCAB}", *TINY])
    assert code == 0, capsys.readouterr().err
    assert runs.read_run_record(run_dir)["model"]["vocab_size"] == BYTES_VOCAB


def test_train_default_vocab_size_follows_tokenizer(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "1", *TINY]) == 0
    assert runs.read_run_record(run_dir)["model"]["vocab_size"] == BYTES_VOCAB


def test_resume_vocab_size_conflict(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "2", "--stop-at-step", "1", *TINY]) == 0
    capsys.readouterr()
    before = snapshot(run_dir)
    code = main(["train", str(run_dir), "--resume", "--no-progress", "--set", "vocab_size=300"])
    line = error_line(capsys)
    assert code == 2
    assert "--set vocab_size=300" in line
    assert f"{BYTES_VOCAB} tokens" in line
    assert snapshot(run_dir) == before

    code = main(["train", str(run_dir), "--resume", "--no-progress", "--set", f"vocab_size={BYTES_VOCAB}"])
    assert code == 0, capsys.readouterr().err
    assert runs.list_checkpoints(run_dir)[-1] == 2


def test_compare_vocab_size_conflict(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compare", str(out), "--quick", "--no-progress", "--set", "vocab_size=300"])
    line = error_line(capsys)
    assert code == 2
    assert "--set vocab_size=300" in line
    assert f"{BYTES_VOCAB} tokens" in line
    assert not out.exists()


def test_compare_vary_vocab_size_conflict(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compare", str(out), "--quick", "--no-progress", "--vary", f"vocab_size={BYTES_VOCAB},300"])
    line = error_line(capsys)
    assert code == 2
    assert "--vary vocab_size=300" in line
    assert f"{BYTES_VOCAB} tokens" in line
    assert not out.exists()


# --- repeated --set keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, key",
    [
        (["steps=2", "steps=3"], "steps"),
        (["steps=2", "steps=2"], "steps"),
        (["steps=2", "train.steps=3"], "steps"),
        (["d_model=64", "model.d_model=64"], "d_model"),
        (["rope.theta=1000", "model.rope.theta=2000"], "rope.theta"),
        (['rope={"theta": 1000.0}', "rope.theta=2000"], "rope.theta"),
        (["rope.theta=2000", 'rope={"theta": 1000.0}'], "rope"),
    ],
)
def test_repeated_setting_is_rejected(settings, key):
    with pytest.raises(UsageError) as info:
        resolve_configs(settings=settings)
    message = str(info.value)
    assert f"--set {settings[1]}" in message
    assert f"--set {settings[0]}" in message
    assert f"sets {key!r}" in message
    assert "pass each field once" in message


def test_distinct_settings_are_kept():
    model, train_config = resolve_configs(settings=["rope.theta=2000", "rope.interleaved=true", "steps=3",
                                                    "seq_len=16"])
    assert model.rope.theta == 2000
    assert model.rope.interleaved is True
    assert train_config.steps == 3
    assert train_config.seq_len == 16


def test_train_repeated_setting(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", str(run_dir), "--data", corpus_file, "--set", "steps=2", "--set", "steps=3", *TINY])
    line = error_line(capsys)
    assert code == 2
    assert "'steps'" in line
    assert not run_dir.exists()


def test_compare_repeated_setting(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compare", str(out), "--quick", "--set", "d_model=32", "--set", "d_model=48"])
    line = error_line(capsys)
    assert code == 2
    assert "'d_model'" in line
    assert not out.exists()
