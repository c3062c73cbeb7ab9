"""Tests of the training loop: resume, checkpoints, schedule, failures, callbacks."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch

from blocklab import runs
from blocklab.config import ModelConfig
from blocklab.data import load_tokenizer
from blocklab.errors import UsageError
from blocklab.train import (
    NonFiniteLossError,
    TrainConfig,
    learning_rate,
    load_run,
    prepare_data,
    train,
)


def tiny_model(**overrides) -> ModelConfig:
    return ModelConfig.preset("llama", d_model=32, n_layers=2, n_heads=2, max_seq_len=64, **overrides)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    names = sorted(topics)[:30]
    path.write_text("".join(json.dumps({"text": topics[name][:3000]}) + "\n" for name in names))
    return str(path)


def tiny_train(corpus_file: str, **overrides) -> TrainConfig:
    settings = dict(
        data=corpus_file, seq_len=32, batch_size=8, steps=6, lr=3e-3, warmup_steps=2,
        eval_every=3, eval_batches=1, save_every=3, log_every=1, device="cpu",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def losses(history):
    return [record["loss"] for record in history]


def test_resume_reproduces_losses_exactly(tmp_path, corpus_file):
    config = tiny_train(corpus_file, steps=6, save_every=0)
    straight = train(tiny_model(dropout=0.1), config, tmp_path / "straight", progress=False)
    half = train(tiny_model(dropout=0.1), config, tmp_path / "split", progress=False, stop_at_step=3)
    assert half.status == "stopped"
    assert half.step == 3
    resumed = train(tiny_model(dropout=0.1), config, tmp_path / "split", resume=True, progress=False)
    assert resumed.status == "completed"
    assert len(losses(straight.history)) == 6
    assert losses(resumed.history) == losses(straight.history)
    on_disk = runs.read_metrics(tmp_path / "split")
    assert [r["step"] for r in on_disk] == [1, 2, 3, 4, 5, 6]
    assert losses(on_disk) == losses(straight.history)


def test_learning_rate_schedule():
    config = TrainConfig(lr=1.0, warmup_steps=4, steps=14, min_lr_ratio=0.1)
    assert learning_rate(0, config) == pytest.approx(0.25)
    assert learning_rate(3, config) == pytest.approx(1.0)
    assert learning_rate(9, config) == pytest.approx(0.55)
    assert learning_rate(14, config) == pytest.approx(0.1)
    values = [learning_rate(step, config) for step in range(3, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_grad_accum_matches_full_batch(tmp_path, corpus_file):
    full = train(tiny_model(), tiny_train(corpus_file, steps=3), tmp_path / "full", progress=False)
    accum = train(tiny_model(), tiny_train(corpus_file, steps=3, grad_accum=4), tmp_path / "accum", progress=False)
    assert losses(accum.history) == pytest.approx(losses(full.history), rel=1e-5)


def test_failed_save_keeps_previous_checkpoint(tmp_path, corpus_file, monkeypatch):
    run_dir = tmp_path / "run"
    train(tiny_model(), tiny_train(corpus_file, steps=3), run_dir, progress=False)
    before = load_run(run_dir)
    real_save = safetensors.torch.save_file
    calls = []

    def save_then_fail(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the optimizer file: model file written, then the "kill"
            with open(path, "wb") as file:
                file.write(b"\0" * 10)
            raise OSError("simulated crash during save")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_fail)
    checkpoint = runs.load_checkpoint(run_dir)
    with pytest.raises(OSError, match="simulated crash"):
        runs.save_checkpoint(run_dir, 4, model=checkpoint.model, optimizer=checkpoint.optimizer)
    monkeypatch.undo()

    assert runs.list_checkpoints(run_dir)[-1] == 3
    after = load_run(run_dir)
    assert after.step == 3
    for name, tensor in before.model.state_dict().items():
        assert torch.equal(tensor, after.model.state_dict()[name]), name
    hidden = [p.name for p in (run_dir / runs.CHECKPOINTS_DIR).iterdir() if p.name.startswith(".")]
    assert hidden == []


def test_leftover_temporary_dir_is_ignored(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    train(tiny_model(), tiny_train(corpus_file, steps=3), run_dir, progress=False)
    partial = run_dir / runs.CHECKPOINTS_DIR / ".step_000009.abc.tmp"
    partial.mkdir()
    (partial / runs.MODEL_FILE).write_bytes(b"\0" * 100)
    assert load_run(run_dir).step == 3


def test_truncated_checkpoint_is_reported(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    train(tiny_model(), tiny_train(corpus_file, steps=3), run_dir, progress=False)
    model_file = runs.checkpoint_dir(run_dir, 3) / runs.MODEL_FILE
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="is damaged"):
        load_run(run_dir)


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    config = tiny_train(corpus_file, steps=20, lr=1e30, warmup_steps=0, grad_clip=0.0, save_every=1)
    with pytest.raises(NonFiniteLossError, match="training stopped and the last good checkpoint") as info:
        train(tiny_model(), config, run_dir, progress=False)
    last = runs.list_checkpoints(run_dir)[-1]
    bad_step = int(str(info.value).split(" at step ")[1].split(";")[0])
    assert last == bad_step - 1
    loaded = load_run(run_dir)
    assert loaded.step == last


def test_callbacks_and_layer_grad_norms(tmp_path, corpus_file):
    seen = []
    config = tiny_train(corpus_file, steps=2, log_layer_grad_norms=True)
    result = train(tiny_model(), config, tmp_path / "run", progress=False, callbacks=[seen.append])
    assert [record["step"] for record in seen] == [1, 2]
    for record in seen:
        assert len(record["layer_grad_norms"]) == 2
        assert all(norm > 0 and math.isfinite(norm) for norm in record["layer_grad_norms"])
    assert result.history == seen
    assert result.tokens_per_s > 0
    assert result.peak_memory_mb > 0


def test_bf16_and_final_validation(tmp_path, corpus_file):
    result = train(tiny_model(), tiny_train(corpus_file, steps=2, bf16=True), tmp_path / "run", progress=False)
    assert result.final_val_loss is not None
    assert math.isfinite(result.final_val_loss)
    assert result.history[-1]["val_loss"] == result.final_val_loss


@pytest.mark.parametrize("spec", ["bytes", "bpe:300"])
def test_tokenizer_round_trip_through_run(tmp_path, corpus_file, spec):
    run_dir = tmp_path / "run"
    train(tiny_model(), tiny_train(corpus_file, steps=1, tokenizer=spec), run_dir, progress=False)
    tokenizer = load_tokenizer(run_dir / runs.TOKENIZER_DIR)
    loaded = load_run(run_dir)
    assert loaded.model_config.vocab_size == tokenizer.vocab_size
    text = "def f(x):\n    return x ** 2  # é, 漢字, emoji 🙂\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_run_record_has_split_and_hash(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    train(tiny_model(), tiny_train(corpus_file, steps=1), run_dir, progress=False)
    record = runs.read_run_record(run_dir)
    data = prepare_data(tiny_train(corpus_file))
    assert record["data"]["sha256"] == data.record["sha256"]
    assert record["data"]["split"]["val_indices"] == data.record["split"]["val_indices"]
    assert record["data"]["split"]["val_indices"]
    assert record["train"]["steps"] == 1


def test_existing_run_is_not_overwritten(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    train(tiny_model(), tiny_train(corpus_file, steps=1), run_dir, progress=False)
    before = (run_dir / runs.RUN_FILE).read_bytes()
    with pytest.raises(UsageError, match="already contains a run"):
        train(tiny_model(), tiny_train(corpus_file, steps=2), run_dir, progress=False)
    assert (run_dir / runs.RUN_FILE).read_bytes() == before
    result = train(tiny_model(), tiny_train(corpus_file, steps=2), run_dir, progress=False, overwrite=True)
    assert result.step == 2
    assert runs.read_run_record(run_dir)["train"]["steps"] == 2
