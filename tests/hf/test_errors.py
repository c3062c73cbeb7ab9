"""Bad checkpoints and bad save requests: each raises one clear UsageError."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import blocklab as bl
from blocklab.errors import UsageError
from tests.hf import tiny_hf_model

pytest.importorskip("transformers")


@pytest.fixture
def llama_dir(tmp_path):
    directory = tmp_path / "llama"
    tiny_hf_model("llama").save_pretrained(directory, safe_serialization=True)
    return directory


def _rewrite_weights(directory, change):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _rewrite_config(directory, change):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_path_does_not_exist(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        bl.hf.load(tmp_path / "missing")


def test_path_is_a_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        bl.hf.load(path)


def test_missing_config(llama_dir):
    (llama_dir / "config.json").unlink()
    with pytest.raises(UsageError, match="missing config.json"):
        bl.hf.load(llama_dir)


def test_invalid_config_json(llama_dir):
    (llama_dir / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot parse .* as JSON"):
        bl.hf.load(llama_dir)


def test_unknown_model_type_lists_supported(llama_dir):
    _rewrite_config(llama_dir, lambda data: data.update(model_type="falcon"))
    with pytest.raises(UsageError) as error:
        bl.hf.load(llama_dir)
    message = str(error.value)
    assert "'falcon'" in message
    for family in ("bert", "bloom", "gemma", "gpt2", "llama", "mistral", "qwen2", "t5"):
        assert family in message


def test_missing_tensor_is_named(llama_dir):
    _rewrite_weights(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(UsageError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        bl.hf.load(llama_dir)


def test_extra_tensor_is_named(llama_dir):
    _rewrite_weights(llama_dir, lambda t: t.update({"model.layers.0.extra.weight": torch.ones(3)}))
    with pytest.raises(UsageError, match=r"unexpected tensor 'model\.layers\.0\.extra\.weight'"):
        bl.hf.load(llama_dir)


def test_shape_mismatch_names_both_shapes(llama_dir):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 32)

    _rewrite_weights(llama_dir, shrink)
    with pytest.raises(UsageError) as error:
        bl.hf.load(llama_dir)
    message = str(error.value)
    assert "'model.layers.0.self_attn.k_proj.weight'" in message
    assert "(8, 32)" in message
    assert "(16, 32)" in message



def test_inspect_shape_mismatch_matches_load(llama_dir):
    _rewrite_config(llama_dir, lambda data: data.update(hidden_size=64))
    with pytest.raises(UsageError) as load_error:
        bl.hf.load(llama_dir)
    with pytest.raises(UsageError) as inspect_error:
        bl.hf.inspect(llama_dir)
    message = str(inspect_error.value)
    assert message == str(load_error.value)
    assert "'model.embed_tokens.weight'" in message
    assert "(96, 32)" in message
    assert "(96, 64)" in message


def test_inspect_names_unexpected_tensor(llama_dir):
    _rewrite_weights(llama_dir, lambda t: t.update({"model.layers.0.extra.weight": torch.ones(3)}))
    with pytest.raises(UsageError, match=r"unexpected tensor 'model\.layers\.0\.extra\.weight'"):
        bl.hf.inspect(llama_dir)

def test_pickle_checkpoint_is_rejected(llama_dir):
    (llama_dir / "model.safetensors").rename(llama_dir / "pytorch_model.bin")
    with pytest.raises(UsageError) as error:
        bl.hf.load(llama_dir)
    message = str(error.value)
    assert "pytorch_model.bin" in message
    assert "execute arbitrary code" in message
    assert "save_pretrained(out_dir, safe_serialization=True)" in message


def test_pickle_is_never_opened(llama_dir, monkeypatch):
    (llama_dir / "model.safetensors").rename(llama_dir / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not run")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(UsageError):
        bl.hf.load(llama_dir)


def test_no_weights_at_all(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="no weights in"):
        bl.hf.load(llama_dir)


def test_corrupt_safetensors(llama_dir):
    (llama_dir / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UsageError, match="cannot read safetensors file"):
        bl.hf.load(llama_dir)


def test_unsupported_rope_type(llama_dir):
    _rewrite_config(llama_dir, lambda data: data["rope_parameters"].update(rope_type="longrope"))
    with pytest.raises(UsageError, match="rope_type='longrope' is not supported"):
        bl.hf.load(llama_dir)


def test_remote_code_config_is_not_run(llama_dir):
    # auto_map names Python files to import; blocklab reads the JSON only.
    (llama_dir / "modeling_evil.py").write_text("raise SystemExit('executed')\n")
    _rewrite_config(llama_dir, lambda data: data.update(auto_map={"AutoModel": "modeling_evil.Evil"}))
    model = bl.hf.load(llama_dir)
    assert model.hf_family == "llama"


def _shard(directory):
    tensors = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, part in halves.items():
        save_file({name: tensors[name] for name in part}, directory / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_sharded_checkpoint_loads(llama_dir, tmp_path):
    whole = bl.hf.load(llama_dir)
    _shard(llama_dir)
    sharded = bl.hf.load(llama_dir)
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[name], tensor, atol=0, rtol=0)


def test_shard_outside_directory_is_rejected(llama_dir):
    index = _shard(llama_dir)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere.safetensors"
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="invalid shard name '../elsewhere.safetensors'"):
        bl.hf.load(llama_dir)


def test_save_unexpressible_config_names_field(tmp_path):
    config = bl.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, norm="batchnorm")
    with pytest.raises(UsageError, match="norm='rmsnorm' \\(got 'batchnorm'\\)"):
        bl.hf.save(bl.Transformer(config), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_save_with_family_names_blocking_field(tmp_path):
    config = bl.ModelConfig.preset("llama", d_model=32, n_layers=1, residual="sandwich")
    with pytest.raises(UsageError, match="cannot save as llama: residual='sandwich'"):
        bl.hf.save(bl.Transformer(config), tmp_path, family="llama")


def test_save_interleaved_rope_is_blocked(tmp_path):
    config = bl.ModelConfig.preset("llama", d_model=32, n_layers=1, rope=dict(interleaved=True))
    with pytest.raises(UsageError, match="rope.interleaved=True"):
        bl.hf.save(bl.Transformer(config), tmp_path, family="llama")


def test_save_unknown_family(tmp_path):
    model = bl.Transformer(bl.ModelConfig.preset("llama", d_model=32, n_layers=1))
    with pytest.raises(UsageError, match="unknown family 'opt'"):
        bl.hf.save(model, tmp_path, family="opt")


def test_save_replaces_files_atomically(llama_dir, tmp_path):
    model = bl.hf.load(llama_dir)
    target = tmp_path / "out"
    bl.hf.save(model, target)
    bl.hf.save(model, target)
    assert sorted(path.name for path in target.iterdir()) == ["config.json", "model.safetensors"]


def test_bert_pretraining_heads_are_skipped(tmp_path, caplog):
    import transformers

    reference = transformers.BertForMaskedLM(tiny_hf_model("bert").config)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model = bl.hf.load(tmp_path)

    assert model.lm_head is None
    assert "skipping" in caplog.text
