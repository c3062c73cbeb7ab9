"""The ``blocklab inspect`` command."""

from __future__ import annotations

import json

import pytest

import blocklab as bl
from blocklab.cli import main
from tests.hf import tiny_hf_model

pytest.importorskip("transformers")


@pytest.fixture
def gemma_dir(tmp_path):
    directory = tmp_path / "gemma"
    tiny_hf_model("gemma").save_pretrained(directory, safe_serialization=True)
    return directory


def test_inspect_prints_blocklab_terms(gemma_dir, capsys):
    assert main(["inspect", str(gemma_dir)]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()
                if not line.startswith(("head dim", "d_model")))
    assert rows["family"].startswith("gemma (GemmaForCausalLM)")
    assert rows["position"].startswith("rope (theta 10000")
    assert rows["norm"].startswith("rmsnorm")
    assert "gain 1 + g" in rows["norm"]
    assert rows["residual"] == "pre-norm"
    assert rows["ffn"] == "geglu_tanh, hidden 64"
    assert rows["layers"] == "2"
    assert rows["heads"] == "4 query, 1 key/value (multi-query)"
    assert rows["vocab"] == "96"


def test_inspect_counts_parameters_like_load(gemma_dir, capsys):
    main(["inspect", "--json", str(gemma_dir)])
    data = json.loads(capsys.readouterr().out)
    model = bl.hf.load(gemma_dir)
    assert data["parameters"] == model.num_parameters()
    assert data["config"]["head_dim"] == 16
    assert data["config"]["d_model"] == 32


def test_inspect_reads_no_tensor_data(gemma_dir, monkeypatch, capsys):
    from blocklab.hf.checkpoint import TensorReader

    def refuse(self, name):
        raise AssertionError("inspect must not read tensor data")

    monkeypatch.setattr(TensorReader, "get", refuse)
    assert main(["inspect", str(gemma_dir)]) == 0


def test_inspect_bad_path_exits_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "does not exist" in error


def test_inspect_pickle_checkpoint_exits_2(gemma_dir, capsys):
    (gemma_dir / "model.safetensors").rename(gemma_dir / "pytorch_model.bin")
    assert main(["inspect", str(gemma_dir)]) == 2
    assert "pickle" in capsys.readouterr().err


def test_inspect_config_weights_mismatch_exits_2(gemma_dir, capsys):
    config_path = gemma_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["hidden_size"] = 64
    config_path.write_text(json.dumps(config))

    assert main(["inspect", str(gemma_dir)]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert captured.out == ""
    assert len(error.splitlines()) == 1
    assert "'model.embed_tokens.weight'" in error
    assert "(96, 32)" in error
    assert "(96, 64)" in error


def test_inspect_counts_parameters_from_headers(gemma_dir, monkeypatch, capsys):
    from blocklab.model import Transformer

    def refuse(self, **kwargs):
        raise AssertionError("inspect must count parameters from the safetensors headers")

    monkeypatch.setattr(Transformer, "num_parameters", refuse)
    assert main(["inspect", "--json", str(gemma_dir)]) == 0
    data = json.loads(capsys.readouterr().out)
    monkeypatch.undo()
    assert data["parameters"] == bl.hf.load(gemma_dir).num_parameters()
