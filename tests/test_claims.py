"""Tests for `blocklab check`: the verdicts, the measured directions, and broken parts."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
import torch

from blocklab import claims
from blocklab.cli import main
from blocklab.nn.feedforward import FeedForward
from blocklab.nn.rotary import RotaryEmbedding


class NoisyRotary(RotaryEmbedding):
    """RoPE whose angles use p + 0.5 sin(p): still a rotation, no longer relative."""

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, _ = self.frequencies(position_ids)
        positions = position_ids.float()
        angles = (positions + 0.5 * torch.sin(positions))[..., None] * inv_freq
        return angles.cos(), angles.sin()


class MixingFeedForward(FeedForward):
    """An FFN that adds the sequence mean to every token before the usual FFN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + x.mean(1, keepdim=True))


class RaisingRotary(RotaryEmbedding):
    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("rotary exploded")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Run every claim once through the CLI; return (exit code, JSON, entries by id, stdout)."""
    path = tmp_path_factory.mktemp("check") / "claims.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["check", "--json", str(path)])
    document = json.loads(path.read_text())
    return code, document, {entry["id"]: entry for entry in document["claims"]}, stdout.getvalue()


def test_check_covers_every_claim(full_run):
    _, document, by_id, stdout = full_run
    assert list(by_id) == [claim.id for claim in claims.CLAIMS]
    for claim_id in by_id:
        assert f"[{claim_id}]" in stdout
    assert document["seed"] == 0
    for entry in by_id.values():
        assert entry["claim"]
        assert entry["setting"]
        assert entry["measured"]


def test_check_exit_code_matches_verdicts(full_run):
    code, document, by_id, _ = full_run
    all_expected = all(entry["matches"] for entry in by_id.values())
    assert document["all_expected"] == all_expected
    assert code == (0 if all_expected else 1)


@pytest.mark.parametrize(
    "claim_id",
    [claim.id for claim in claims.CLAIMS if claim.id != "rmsnorm-cheaper"],
)
def test_check_verdict_is_expected(full_run, claim_id):
    # rmsnorm-cheaper is a timing and is tested against its own rule below.
    entry = full_run[2][claim_id]
    assert entry["verdict"] in entry["expected"], entry
    assert entry["matches"]


def test_order_blind_numbers(full_run):
    measured = full_run[2]["order-blind"]["measured"]
    assert measured["none"]["token_equivariance"] <= 1e-5
    assert measured["none"]["random"] <= 1e-5
    assert measured["none"]["reversal"] <= 1e-5
    for position in claims.ENCODINGS:
        assert measured[position]["random"] > 1e-4, position
    # Symmetric ALiBi cannot tell a sequence from its mirror image.
    assert measured["alibi"]["reversal"] <= 1e-5
    assert "alibi" in full_run[2]["order-blind"]["condition"]


def test_sinusoidal_shift_numbers(full_run):
    measured = full_run[2]["sinusoidal-shift"]["measured"]
    assert measured["finite_at_1e6_and_1e9"] is True
    assert measured["max_abs_value_far"] <= 1.0
    assert max(measured["max_error_by_shift"].values()) <= 1e-3


def test_length_extrapolation_numbers(full_run):
    measured = full_run[2]["length-extrapolation"]["measured"]
    assert measured["learned"]["raised"] is True
    assert "outside the table of 32 positions" in measured["learned"]["message"]
    for position in ("sinusoidal", "relative", "t5", "alibi", "rope"):
        assert all(measured[position]["finite_by_length"].values()), position


def test_relative_shift_numbers(full_run):
    measured = full_run[2]["relative-shift"]["measured"]
    for name in ("relative", "t5", "alibi"):
        assert max(measured[name]["max_bias_change"].values()) <= 1e-6
        assert max(measured[name]["max_output_change"].values()) <= 1e-6


def test_rope_relative_numbers(full_run):
    measured = full_run[2]["rope-relative"]["measured"]
    assert max(measured["max_relative_norm_change_by_start"].values()) <= 1e-5
    assert max(measured["max_score_change_over_qk_norms_by_shift"].values()) <= 1e-4


def test_norm_batch_independence_numbers(full_run):
    measured = full_run[2]["norm-batch-independence"]["measured"]
    assert measured["layernorm_batch_change"] <= 1e-6
    assert measured["layernorm_padding_change"] <= 1e-6
    assert measured["batchnorm_batch_change"] > 1e-2
    assert measured["batchnorm_padding_change_unaware"] > 1e-2
    assert measured["batchnorm_padding_change_masked"] <= 1e-5


def test_rmsnorm_equals_layernorm_numbers(full_run):
    measured = full_run[2]["rmsnorm-equals-layernorm"]["measured"]
    assert measured["max_difference_zero_mean"] <= 1e-5
    assert measured["max_difference_mean_one"] > 1e-2


def test_rmsnorm_cheaper_verdict_follows_ratios(full_run):
    entry = full_run[2]["rmsnorm-cheaper"]
    ratios = entry["measured"]["rmsnorm_over_layernorm"]
    for value in ratios.values():
        assert value > 0
    if ratios["blocklab"] < 1:
        assert entry["verdict"] == claims.HOLDS
    elif ratios["same_ops"] < 1:
        assert entry["verdict"] == claims.CONDITIONAL
        assert "same tensor operations" in entry["condition"]
    else:
        assert entry["verdict"] == claims.FAILS


def test_residual_gradient_numbers(full_run):
    measured = full_run[2]["residual-gradients"]["measured"]
    for depth in (24, 48):
        vanishing = measured[f"{depth}_layers_eps_1e-05"]
        with_skip = vanishing["with_residual"]["first"]
        assert with_skip > 0.01
        assert vanishing["without_residual"]["first"] < with_skip / 100
        exploding = measured[f"{depth}_layers_eps_1e-12"]
        assert exploding["without_residual"]["first"] > exploding["with_residual"]["first"] * 100


def test_postnorm_gradient_numbers(full_run):
    measured = full_run[2]["postnorm-gradients"]["measured"]
    post = measured["xavier_post"]["last_over_first"]
    pre = measured["xavier_pre"]["last_over_first"]
    assert post > pre
    assert post >= 1.3
    assert len(measured["xavier_post"]["per_layer"]) == 12


def test_ffn_and_swiglu_numbers(full_run):
    ffn = full_run[2]["ffn-per-token"]["measured"]
    for activation, entry in ffn.items():
        assert entry["max_change_elsewhere"] == 0.0, activation
        assert entry["min_change_at_j"] > 1e-4, activation
    swiglu = full_run[2]["swiglu-gated"]["measured"]
    assert swiglu["max_diff_vs_gated_float64"] <= 1e-5
    assert swiglu["max_diff_vs_llama_mlp"] is not None
    assert swiglu["max_diff_vs_llama_mlp"] <= 1e-5
    assert swiglu["max_diff_vs_x_times_silu_x"] > 0.1 * swiglu["output_scale"]


def test_noisy_rotary_fails_check(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(claims, "PARTS", dataclasses.replace(claims.PARTS, rotary=NoisyRotary))
    path = tmp_path / "out.json"
    code = main(["check", "--only", "rope-relative", "--json", str(path)])
    assert code == 1
    entry = json.loads(path.read_text())["claims"][0]
    assert entry["verdict"] == claims.FAILS
    assert max(entry["measured"]["max_score_change_over_qk_norms_by_shift"].values()) > 1e-2
    # Still a rotation, so the norm part is unharmed.
    assert max(entry["measured"]["max_relative_norm_change_by_start"].values()) <= 1e-5
    assert "UNEXPECTED" in capsys.readouterr().out


def test_mixing_ffn_fails_check(monkeypatch):
    broken = dataclasses.replace(claims.PARTS, feedforward=MixingFeedForward)
    monkeypatch.setattr(claims, "PARTS", broken)
    assert main(["check", "--only", "ffn-per-token"]) == 1
    result = claims.run_claims(["ffn-per-token"])[0]
    assert result.finding.verdict == claims.FAILS
    assert not result.matches
    assert result.finding.measured["swiglu"]["max_change_elsewhere"] > 1e-3


def test_injected_rotary_reaches_model():
    parts = dataclasses.replace(claims.PARTS, rotary=NoisyRotary)
    config = claims.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2)
    model = claims._build_model(config, parts)
    assert isinstance(model.rotary, NoisyRotary)
    default = claims._build_model(config, claims.PARTS)
    assert type(default.rotary) is RotaryEmbedding


def test_raising_part_gives_error_verdict():
    parts = dataclasses.replace(claims.PARTS, rotary=RaisingRotary)
    result = claims.run_claims(["rope-relative"], parts=parts)[0]
    assert result.finding.verdict == claims.ERROR
    assert "rotary exploded" in result.finding.measured["error"]
    assert not result.matches


@pytest.mark.parametrize(
    ("blocklab_ratio", "same_ops_ratio", "verdict"),
    [(0.5, 0.5, claims.HOLDS), (3.0, 0.7, claims.CONDITIONAL), (3.0, 1.5, claims.FAILS)],
)
def test_rmsnorm_cheaper_rule(monkeypatch, blocklab_ratio, same_ops_ratio, verdict):
    def fake_timing(functions, x, repeats, warmup=2):
        seconds = {
            "blocklab_rmsnorm": blocklab_ratio, "blocklab_layernorm": 1.0,
            "torch_rmsnorm": 2.0, "torch_layernorm": 1.0,
            "same_ops_rmsnorm": same_ops_ratio, "same_ops_layernorm": 1.0,
        }
        assert set(functions) == set(seconds)
        return {name: [seconds[name]] * repeats for name in functions}

    monkeypatch.setattr(claims, "time_forward_backward", fake_timing)
    finding = claims.check_rmsnorm_cheaper(claims.PARTS)
    assert finding.verdict == verdict
    assert finding.measured["rmsnorm_over_layernorm"]["blocklab"] == pytest.approx(blocklab_ratio)
    assert (finding.condition is not None) == (verdict == claims.CONDITIONAL)


def test_same_seed_same_numbers():
    first = claims.run_claims(["order-blind", "swiglu-gated"], seed=3)
    second = claims.run_claims(["order-blind", "swiglu-gated"], seed=3)
    for a, b in zip(first, second):
        assert a.finding.measured == b.finding.measured


def test_unknown_claim_id_is_usage_error(capsys):
    assert main(["check", "--only", "rope-relative,no-such-claim"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unknown claim id 'no-such-claim'" in err[0]


def test_empty_only_is_usage_error(capsys):
    assert main(["check", "--only", ","]) == 2
    assert "no claim ids" in capsys.readouterr().err


def test_json_path_errors(tmp_path, capsys):
    assert main(["check", "--only", "ffn-per-token", "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    missing = tmp_path / "missing" / "out.json"
    assert main(["check", "--only", "ffn-per-token", "--json", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_list_prints_ids(capsys):
    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    for claim in claims.CLAIMS:
        assert claim.id in out


def test_registry_is_consistent():
    ids = [claim.id for claim in claims.CLAIMS]
    assert len(ids) == len(set(ids))
    for claim in claims.CLAIMS:
        assert claim.check.__doc__, claim.id
        assert claim.expected
        assert claims.ERROR not in claim.expected
        assert set(claim.expected) <= {claims.HOLDS, claims.FAILS, claims.CONDITIONAL}
