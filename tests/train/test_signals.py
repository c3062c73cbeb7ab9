"""Ctrl-C (SIGINT) during training saves a checkpoint and exits cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from blocklab import runs
from blocklab.train import load_run

pytestmark = pytest.mark.slow


def test_sigint_saves_checkpoint(tmp_path):
    from pydoc_data.topics import topics

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": topics[name][:3000]}) + "\n" for name in sorted(topics)[:30]))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "blocklab", "train", str(run_dir), "--data", str(corpus), "--steps", "100000",
               "--seq-len", "32", "--batch-size", "4", "--set", "d_model=32", "--set", "n_layers=1",
               "--set", "n_heads=2", "--log-every", "1", "--eval-every", "0", "--save-every", "0",
               "--no-progress", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / runs.METRICS_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)

    assert process.returncode == 130, err[-2000:]
    assert "interrupted at step" in out
    assert "--resume" in err
    last_step = runs.read_metrics(run_dir)[-1]["step"]
    assert runs.list_checkpoints(run_dir)[-1] == last_step
    assert load_run(run_dir).step == last_step
    assert "Traceback" not in err
