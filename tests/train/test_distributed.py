"""Two-process CPU training under torchrun (gloo) against one process.

Both runs see the same global batch at every step, so their losses differ only
by floating-point summation order: gradients are averaged across ranks by an
all-reduce instead of inside one matrix product. Over a few steps that drift
stays far below 1e-4 relative, the tolerance used here. A wrong batch split or
a missing gradient average changes the loss by whole percents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from blocklab import runs
from blocklab.config import ModelConfig
from blocklab.train import TrainConfig, load_run, train

pytestmark = pytest.mark.slow

STEPS = 4
TOLERANCE = 1e-4
MODEL_SETTINGS = ["d_model=32", "n_layers=2", "n_heads=2", "max_seq_len=64"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    names = sorted(topics)[:30]
    path.write_text("".join(json.dumps({"text": topics[name][:3000]}) + "\n" for name in names))
    return str(path)


def train_args(run_dir, corpus_file, steps=STEPS):
    args = [str(run_dir), "--data", corpus_file, "--steps", str(steps), "--seq-len", "32", "--batch-size", "8",
            "--grad-accum", "2", "--eval-every", "2", "--save-every", "2", "--log-every", "1",
            "--device", "cpu", "--no-progress"]
    for setting in MODEL_SETTINGS:
        args += ["--set", setting]
    return args


def torchrun(args, tmp_path):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "blocklab", "train", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if result.returncode != 0:
        tracebacks = [line for line in result.stderr.splitlines() if line.startswith("[rank")]
        pytest.fail("torchrun failed:\n" + "\n".join(tracebacks[-40:] or result.stderr.splitlines()[-40:]))
    return result


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    model = ModelConfig.preset("llama", d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    config = TrainConfig(data=corpus_file, steps=STEPS, seq_len=32, batch_size=8, grad_accum=2, eval_every=2,
                         save_every=2, log_every=1, device="cpu")
    train(model, config, run_dir, progress=False)
    return run_dir


def losses(run_dir, key="loss"):
    return [record[key] for record in runs.read_metrics(run_dir) if key in record]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_follow_one(tmp_path, corpus_file, single_run, mode):
    run_dir = tmp_path / mode
    args = train_args(run_dir, corpus_file) + (["--fsdp"] if mode == "fsdp" else [])
    torchrun(args, tmp_path)

    record = runs.read_run_record(run_dir)
    assert record["world_size"] == 2
    assert len(losses(run_dir)) == STEPS
    assert losses(run_dir) == pytest.approx(losses(single_run), rel=TOLERANCE)
    assert losses(run_dir, "val_loss") == pytest.approx(losses(single_run, "val_loss"), rel=TOLERANCE)

    # The two-process checkpoint contains full tensors and loads in one process.
    distributed_model = load_run(run_dir).model.state_dict()
    single_model = load_run(single_run).model.state_dict()
    assert distributed_model.keys() == single_model.keys()
    for name, tensor in single_model.items():
        torch.testing.assert_close(distributed_model[name], tensor, rtol=1e-3, atol=1e-5, msg=name)


def test_single_process_checkpoint_resumes_in_two(tmp_path, corpus_file, single_run):
    run_dir = tmp_path / "mixed"
    model = ModelConfig.preset("llama", d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    config = TrainConfig(data=corpus_file, steps=STEPS, seq_len=32, batch_size=8, grad_accum=2, eval_every=2,
                         save_every=2, log_every=1, device="cpu")
    train(model, config, run_dir, progress=False, stop_at_step=2)
    torchrun([str(run_dir), "--resume", "--no-progress", "--fsdp"], tmp_path)
    assert runs.list_checkpoints(run_dir)[-1] == STEPS
    assert losses(run_dir) == pytest.approx(losses(single_run), rel=TOLERANCE)

    # And back: the FSDP checkpoint, optimizer state included, resumes in one process.
    longer = tmp_path / "back"
    train(model, config.replace(steps=STEPS + 2), longer, progress=False, stop_at_step=2)
    torchrun([str(longer), "--resume", "--no-progress", "--stop-at-step", "4"], tmp_path)
    result = train(model, config.replace(steps=STEPS + 2), longer, resume=True, progress=False)
    assert result.step == STEPS + 2
    straight = train(model, config.replace(steps=STEPS + 2), tmp_path / "straight", progress=False)
    assert [r["loss"] for r in result.history] == pytest.approx(
        [r["loss"] for r in straight.history], rel=TOLERANCE
    )
