"""A run's totals across resumes, and what a start that fails before its first step leaves behind."""

from __future__ import annotations

import json

import pytest

from blocklab import runs
from blocklab import train as train_module
from blocklab.cli import main
from blocklab.config import ModelConfig
from blocklab.train import TrainConfig, train

from tests.train.helpers import error_line, snapshot

TINY = ["--set", "d_model=32", "--set", "n_layers=1", "--set", "n_heads=2", "--seq-len", "32",
        "--batch-size", "8", "--eval-every", "0", "--save-every", "0", "--no-progress", "--device", "cpu"]
TOKENS_PER_STEP = 8 * 32
ALLOCATION_ERROR = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes"


def tiny_model() -> ModelConfig:
    return ModelConfig.preset("llama", d_model=32, n_layers=1, n_heads=2, max_seq_len=64)


def tiny_train(corpus_file: str, **overrides) -> TrainConfig:
    settings = dict(data=corpus_file, seq_len=32, batch_size=8, steps=6, warmup_steps=1, eval_every=0,
                    eval_batches=1, save_every=0, log_every=1, device="cpu")
    return TrainConfig(**{**settings, **overrides})


# --- training time and tokens across resumes ------------------------------------------------


def test_resumed_result_covers_whole_run(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    first = train(tiny_model(), tiny_train(corpus_file), run_dir, progress=False, stop_at_step=2)
    assert first.train_tokens == 2 * TOKENS_PER_STEP
    state = json.loads((runs.checkpoint_dir(run_dir, 2) / runs.STATE_FILE).read_text())
    assert state["extra"]["train_tokens"] == 2 * TOKENS_PER_STEP
    assert state["extra"]["train_time_s"] == pytest.approx(first.train_time_s)

    resumed = train(tiny_model(), tiny_train(corpus_file), run_dir, progress=False, resume=True)
    assert resumed.status == "completed"
    assert resumed.train_tokens == 6 * TOKENS_PER_STEP
    assert resumed.train_time_s > first.train_time_s
    assert resumed.tokens_per_s == pytest.approx(resumed.train_tokens / resumed.train_time_s)


def test_finished_run_reports_recorded_totals(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    done = train(tiny_model(), tiny_train(corpus_file, steps=2), run_dir, progress=False)
    again = train(tiny_model(), tiny_train(corpus_file, steps=2), run_dir, progress=False, resume=True)
    assert again.status == "finished"
    assert again.train_tokens == done.train_tokens
    assert again.train_time_s == pytest.approx(done.train_time_s)
    assert again.tokens_per_s == pytest.approx(done.tokens_per_s)


def test_old_checkpoint_without_totals_resumes(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    train(tiny_model(), tiny_train(corpus_file), run_dir, progress=False, stop_at_step=2)
    state_path = runs.checkpoint_dir(run_dir, 2) / runs.STATE_FILE
    state = json.loads(state_path.read_text())
    del state["extra"]["train_time_s"]
    del state["extra"]["train_tokens"]
    state_path.write_text(json.dumps(state))

    resumed = train(tiny_model(), tiny_train(corpus_file), run_dir, progress=False, resume=True)
    assert resumed.status == "completed"
    # Steps before the resume have no recorded time, so only steps 3 to 6 count.
    assert resumed.train_tokens == 4 * TOKENS_PER_STEP
    assert resumed.tokens_per_s == pytest.approx(resumed.train_tokens / resumed.train_time_s)


# --- a failed first step -------------------------------------------------------------------


@pytest.fixture
def failing_first_step(monkeypatch):
    """Make every training step fail as an out-of-memory allocation of the first batch does."""
    calls = []

    def fail(self, step):
        calls.append(step)
        raise RuntimeError(ALLOCATION_ERROR)

    monkeypatch.setattr(train_module._Trainer, "_train_step", fail)
    return calls


def test_failed_first_step_removes_new_run(tmp_path, corpus_file, failing_first_step, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    run_dir = tmp_path / "new" / "nested" / "run"
    code = main(["train", str(run_dir), "--data", corpus_file, "--steps", "2", *TINY])
    line = error_line(capsys)
    assert code == 2
    assert "out of memory" in line
    assert failing_first_step == [0]
    assert not (tmp_path / "new").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_failed_first_step_keeps_empty_dir(tmp_path, corpus_file, failing_first_step, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "2", *TINY]) == 2
    assert "out of memory" in error_line(capsys)
    assert run_dir.is_dir()
    assert list(run_dir.iterdir()) == []


def test_failed_first_step_restores_overwritten_run(tmp_path, corpus_file, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["train", str(run_dir), "--data", corpus_file, "--steps", "2", *TINY]) == 0
    before = snapshot(run_dir)
    capsys.readouterr()

    def fail(self, step):
        raise MemoryError()

    monkeypatch.setattr(train_module._Trainer, "_train_step", fail)
    code = main(["train", str(run_dir), "--data", corpus_file, "--steps", "3", "--overwrite", *TINY])
    assert code == 2
    assert "out of memory" in error_line(capsys)
    assert snapshot(run_dir) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]
    monkeypatch.undo()
    assert main(["train", str(run_dir), "--resume", "--no-progress"]) == 0
    assert "already finished at step 2" in capsys.readouterr().out


def test_failed_first_step_in_library_call(tmp_path, corpus_file, failing_first_step):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="can't allocate"):
        train(tiny_model(), tiny_train(corpus_file), run_dir, progress=False)
    assert not run_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_after_first_step_keeps_run(tmp_path, corpus_file, monkeypatch):
    run_dir = tmp_path / "run"
    real_step = train_module._Trainer._train_step

    def fail_second(self, step):
        if step == 1:
            raise RuntimeError(ALLOCATION_ERROR)
        return real_step(self, step)

    monkeypatch.setattr(train_module._Trainer, "_train_step", fail_second)
    with pytest.raises(RuntimeError, match="can't allocate"):
        train(tiny_model(), tiny_train(corpus_file), run_dir, progress=False)
    assert runs.is_run_dir(run_dir)
    assert [record["step"] for record in runs.read_metrics(run_dir)] == [1]
