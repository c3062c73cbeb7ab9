"""End-to-end tests of ``blocklab compare``: the quick study, resumption and bad input."""

from __future__ import annotations

import json
import math

import pytest

from blocklab import cli
from blocklab.compare import DEFAULT_VALUES, build_plan, parse_vary
from blocklab.errors import UsageError


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "positions"
    code = cli.main(["compare", str(out), "--quick", "--no-progress"])
    return code, out


@pytest.mark.slow
def test_quick_study_exit_code(quick_study):
    code, _ = quick_study
    assert code == 0


@pytest.mark.slow
def test_quick_study_files_exist(quick_study):
    _, out = quick_study
    for name in ("report.md", "results.json", "study.json", "loss_vs_steps.png",
                 "perplexity_vs_length.png", "throughput_memory.png"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow
def test_quick_study_results_match_runs(quick_study):
    _, out = quick_study
    results = json.loads((out / "results.json").read_text())
    labels = [variant["label"] for variant in results["variants"]]
    assert labels == list(DEFAULT_VALUES)
    for variant in results["variants"]:
        arm = json.loads((out / "runs" / f"{variant['label']}-seed0" / "result.json").read_text())
        # The aggregated numbers are the arm's measured numbers (one seed).
        assert variant["final_val_loss"] == arm["final_val_loss"]
        assert math.isfinite(variant["final_val_loss"])
        assert variant["tokens_per_s"] == arm["tokens_per_s"]
        assert variant["tokens_per_s"] > 0
        assert variant["peak_memory_mb"] >= arm["baseline_memory_mb"]
        assert variant["num_parameters"] == arm["num_parameters"]


@pytest.mark.slow
def test_quick_study_learned_lengths_na(quick_study):
    _, out = quick_study
    results = json.loads((out / "results.json").read_text())
    learned = next(v for v in results["variants"] if v["label"] == "learned")
    assert learned["lengths"][0]["perplexity"] is not None
    assert all(entry["perplexity"] is None for entry in learned["lengths"][1:])
    assert "learned positions stop at" in learned["lengths"][1]["note"]
    rope = next(v for v in results["variants"] if v["label"] == "rope")
    assert all(entry["perplexity"] is not None for entry in rope["lengths"])


@pytest.mark.slow
def test_quick_study_report_holds_numbers(quick_study):
    _, out = quick_study
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for variant in results["variants"]:
        assert f"| {variant['label']} |" in report
        assert f"{variant['lengths'][0]['loss']:.3f}" in report
    assert "loss_vs_steps.png" in report
    assert results["environment"]["torch"] in report


@pytest.mark.slow
def test_quick_study_rerun_skips_finished(quick_study, capsys):
    _, out = quick_study
    before = (out / "runs" / "rope-seed0" / "result.json").stat().st_mtime_ns
    code = cli.main(["compare", str(out), "--quick", "--no-progress"])
    assert code == 0
    assert (out / "runs" / "rope-seed0" / "result.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_quick_study_generate_from_arm(quick_study, capsys):
    _, out = quick_study
    code = cli.main(["generate", str(out / "runs" / "rope-seed0" / "run"), "--prompt", "The ",
                     "--max-new-tokens", "8"])
    assert code == 0


@pytest.mark.parametrize(
    "argument, fragment",
    [
        ("--vary=colour=red,blue", "unknown config field 'colour'"),
        ("--vary=norm=layernorm,groupnorm", "groupnorm"),
        ("--vary=norm=layernorm", "at least two values"),
        ("--vary=norm", "expected FIELD=v1,v2"),
        ("--vary=norm=layernorm,layernorm", "appears twice"),
        ("--vary=d_model=64,-3", "d_model"),
        ("--vary=rope.theta=10000,1e4", "same value as an earlier one"),
        ("--vary=lr=0.001,-1", "--vary lr=-1"),
        ("--tokenizer=bpe:abc", "bpe:abc"),
        ("--set=train.seq_len=1000000", "fewer than one training sequence"),
    ],
)
def test_bad_vary_exit_code(argument, fragment, tmp_path, capsys):
    code = cli.main(["compare", str(tmp_path / "out"), "--quick", argument])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_set_conflicts_with_vary(tmp_path, capsys):
    code = cli.main(["compare", str(tmp_path / "out"), "--quick", "--vary", "norm=rmsnorm,layernorm",
                     "--set", "norm=scalenorm"])
    assert code == 2
    assert "conflicts with --vary norm" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_flag_conflicts_with_vary(tmp_path, capsys):
    code = cli.main(["compare", str(tmp_path / "out"), "--quick", "--vary", "steps=10,20", "--steps", "5"])
    assert code == 2
    assert "--steps 5 conflicts with --vary steps" in capsys.readouterr().err


def test_plan_keeps_user_max_seq_len():
    plan = build_plan(vary="position=learned,rope", seeds=1, quick=True, preset=None,
                      settings=["max_seq_len=64"], flags={})
    assert all(arm.model["max_seq_len"] == 64 for arm in plan.arms)


def test_plan_varied_seq_len_sets_table():
    plan = build_plan(vary="seq_len=16,64", seeds=1, quick=True, preset=None,
                      settings=["position=\"learned\""], flags={})
    assert [arm.model["max_seq_len"] for arm in plan.arms] == [16, 64]
    assert [arm.eval_lengths[0] for arm in plan.arms] == [16, 64]
    assert plan.arms[1].eval_lengths == [64, 128, 256, 512]


def test_output_path_is_file(tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    code = cli.main(["compare", str(target), "--quick", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "is a file" in err
    assert target.read_text() == "keep me"


def test_output_dir_not_a_study(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    code = cli.main(["compare", str(tmp_path), "--quick", "--no-progress"])
    assert code == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_bad_seeds(tmp_path, capsys):
    code = cli.main(["compare", str(tmp_path / "out"), "--quick", "--seeds", "0"])
    assert code == 2
    assert "--seeds" in capsys.readouterr().err


def test_parse_vary_values():
    field, values = parse_vary("d_model=64,128")
    assert field == "d_model"
    assert values == [64, 128]


def test_plan_shares_everything_but_field():
    plan = build_plan(vary="ffn=relu,gelu,swiglu", seeds=2, quick=True, preset=None, settings=[], flags={})
    assert len(plan.arms) == 6
    for arm in plan.arms:
        model = dict(arm.model)
        assert model.pop("ffn") == arm.value
        first = dict(plan.arms[0].model)
        first.pop("ffn")
        assert model == first
    assert sorted({arm.seed for arm in plan.arms}) == [0, 1]


def test_plan_residual_adds_no_warmup_arms():
    plan = build_plan(vary="residual=post,pre", seeds=1, quick=True, preset=None, settings=[], flags={})
    labels = [arm.label for arm in plan.arms]
    assert labels == ["post", "post, no warmup", "pre", "pre, no warmup"]
    no_warmup = [arm for arm in plan.arms if "no warmup" in arm.label]
    assert all(arm.train["warmup_steps"] == 0 for arm in no_warmup)
    assert all(arm.train["log_layer_grad_norms"] for arm in plan.arms)


def test_plan_unknown_preset():
    with pytest.raises(UsageError, match="unknown preset"):
        build_plan(vary=None, seeds=1, quick=True, preset="gpt5", settings=[], flags={})


def test_plan_gated_ffn_equal_params():
    from blocklab.config import ModelConfig
    from blocklab.model import Transformer

    plan = build_plan(vary="ffn=relu,swiglu", seeds=1, quick=True, preset=None, settings=[], flags={})
    counts = [Transformer(ModelConfig.from_dict(arm.model)).num_parameters() for arm in plan.arms]
    assert abs(counts[0] - counts[1]) / counts[0] < 0.03


@pytest.mark.slow
def test_interrupt_then_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "study"
    command = [sys.executable, "-m", "blocklab", "compare", str(out), "--quick", "--no-progress",
               "--vary", "position=none,rope", "--steps", "60", "--set", "train.save_every=2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = out / "runs" / "none-seed0" / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if checkpoints.is_dir() and any(path.name != "step_000000" for path in checkpoints.iterdir()):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "re-run the same command to resume" in err
    assert not (out / "runs" / "none-seed0" / "result.json").exists()

    # The resumed study finishes, and its arm continued from the saved step.
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert finished.returncode == 0, finished.stderr
    result = json.loads((out / "runs" / "none-seed0" / "result.json").read_text())
    assert result["steps"] == 60
    # The time and tokens cover all 60 steps (quick profile: 8 x 32 tokens a step), not only the resumed ones.
    assert result["train_tokens"] == 60 * 8 * 32
    assert result["tokens_per_s"] == pytest.approx(result["train_tokens"] / result["train_time_s"])


@pytest.mark.slow
def test_trained_arm_without_result_is_finished(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["compare", str(out), "--quick", "--no-progress", "--vary", "position=none,rope", "--steps", "4"]
    assert cli.main(args) == 0
    result_path = out / "runs" / "none-seed0" / "result.json"
    before = json.loads(result_path.read_text())
    # As if the arm was interrupted after training but before result.json was written.
    result_path.unlink()
    capsys.readouterr()

    assert cli.main(args) == 0, capsys.readouterr().err
    after = json.loads(result_path.read_text())
    assert after["steps"] == 4
    assert after["train_tokens"] == 4 * 8 * 32
    assert after["train_time_s"] == pytest.approx(before["train_time_s"])
    assert after["tokens_per_s"] == pytest.approx(before["tokens_per_s"])
    assert after["final_loss"] == before["final_loss"]
    assert after["lengths"] == before["lengths"]


@pytest.mark.slow
def test_residual_study_reports_grad_norms(tmp_path):
    out = tmp_path / "residual"
    code = cli.main(["compare", str(out), "--quick", "--no-progress", "--vary", "residual=post,pre",
                     "--steps", "6"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [v["label"] for v in results["variants"]] == ["post", "post, no warmup", "pre", "pre, no warmup"]
    assert results["train"]["steps"] == 6
    for variant in results["variants"]:
        assert len(variant["init_layer_grad_norms"]) == results["model"]["n_layers"]
        assert all(norm > 0 for norm in variant["init_layer_grad_norms"])
        assert variant["train_layer_grad_norms"] is not None
    report = (out / "report.md").read_text()
    assert "## Gradient norms per block" in report
    assert (out / "layer_grad_norms.png").stat().st_size > 0


def test_learned_table_shorter_than_seq_len(tmp_path, capsys):
    code = cli.main(["compare", str(tmp_path / "out"), "--quick", "--vary", "position=learned,rope",
                     "--set", "max_seq_len=16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "longer than the learned position table" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("delay", [2.0, 4.0])
def test_interrupt_while_arm_starts_prints_no_traceback(tmp_path, delay):
    """A Ctrl-C while an arm's process is still loading modules or data ends in one line."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "study"
    process = subprocess.Popen(
        [sys.executable, "-m", "blocklab", "compare", str(out), "--quick", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("blocklab compare: interrupted")
