"""Tests of ``blocklab bench``: it runs at tiny sizes, and blocklab and each
reference compute the same result. No test asserts a speed."""

from __future__ import annotations

import json

import pytest
import torch

import blocklab as bl
from blocklab import bench
from blocklab.cli import main

QUICK = bench.BenchSettings(quick=True, reps=2, warmup=1)

needs_transformers = pytest.mark.skipif(
    bench.transformers_version() is None, reason="transformers is not installed"
)


def _only(name: str) -> bench.BenchmarkResult:
    (result,) = bench.run_benchmarks([name], QUICK)
    return result


@pytest.mark.parametrize("name", ["rmsnorm", "rope", "feedforward", "decoder_layer", "encoder_layer"])
def test_part_agrees_with_references(name):
    result = _only(name)
    assert result.comparisons, "no reference ran"
    for comparison in result.comparisons:
        assert comparison.speedup_total > 0
        if comparison.agreement is not None:
            assert comparison.agreement < 1e-4, comparison.reference


@needs_transformers
def test_rmsnorm_compares_all_references():
    result = _only("rmsnorm")
    names = [c.reference for c in result.comparisons]
    assert names == ["transformers.LlamaRMSNorm", "torch.nn.RMSNorm", "torch.nn.LayerNorm"]
    layer_norm = result.comparisons[-1]
    assert layer_norm.agreement is None  # a different function: timed, not compared


@needs_transformers
def test_train_step_matches_llama_and_reports_mfu():
    result = _only("train_step")
    (comparison,) = result.comparisons
    assert comparison.reference == "transformers.LlamaForCausalLM"
    assert comparison.agreement < 1e-5
    assert result.matmul_peak_gflops > 0
    assert 0 < result.blocklab.mfu
    assert result.blocklab.tokens_per_s > 0
    assert result.blocklab.peak_memory_mib > 0


@needs_transformers
def test_generate_produces_the_same_tokens():
    result = _only("generate")
    (comparison,) = result.comparisons
    assert result.agreement_metric == "mismatched_tokens"
    assert comparison.agreement == 0
    assert result.blocklab.backward_ms is None


def test_peak_memory_counts_allocations():
    size = 1 << 20  # floats: 4 MiB
    kept = []

    def allocate() -> torch.Tensor:
        kept.append(torch.ones(size))
        return torch.zeros(())

    implementation = bench.Implementation(name="blocklab", forward=allocate)
    peak = bench._peak_memory_mib(implementation, None, False, torch.device("cpu"))
    assert peak == pytest.approx(4.0, abs=0.01)


def test_flops_per_token_formula():
    config = bl.ModelConfig.preset("llama", vocab_size=100, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
    model = bl.Transformer(config)
    per_block = 32 * 3 * 32 + 32 * 32 + 3 * 32 * config.ffn_dim  # qkv, out, gate/up/down
    weights = 2 * per_block + 32 * 100  # blocks and the output head
    assert bench.matmul_flops_per_token(model) == 6 * weights + 12 * 2 * 16 * 32


def test_max_abs_diff_sees_a_difference():
    a = [torch.zeros(3), torch.ones(2)]
    b = [torch.zeros(3), torch.tensor([1.0, 1.5])]
    assert bench._max_abs_diff(a, b) == 0.5
    assert bench._max_abs_diff(a, a) == 0.0


def test_cli_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    code = main(["bench", "--quick", "--reps", "2", "--only", "rmsnorm,rope", "--json", str(path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rmsnorm" in printed
    assert "fwd+bwd" in printed
    record = json.loads(path.read_text())
    assert record["command"].startswith("blocklab bench --only rmsnorm,rope --reps 2")
    assert record["environment"]["torch"] == torch.__version__
    assert [b["name"] for b in record["benchmarks"]] == ["rmsnorm", "rope"]
    assert record["benchmarks"][0]["blocklab"]["total_ms"] > 0


def test_cli_rejects_unknown_benchmark(capsys):
    assert main(["bench", "--only", "rmsnorm,nope"]) == 2
    error = capsys.readouterr().err
    assert "unknown benchmark 'nope'" in error
    assert "rmsnorm" in error


def test_cli_rejects_zero_reps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--reps", "0"])
    assert exit_info.value.code == 2
    assert "--reps" in capsys.readouterr().err


def test_quick_run_judges_no_goal():
    result = _only("rmsnorm")
    assert all(comparison.goal is None for comparison in result.comparisons)
    assert all(comparison.goal_met is None for comparison in result.comparisons)


def test_profiler_start_stop_lines_silenced(capfd):
    _only("rmsnorm")
    _, err = capfd.readouterr()
    assert "USDT" not in err
