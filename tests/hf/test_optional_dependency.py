"""blocklab.hf loads and saves with `transformers` impossible to import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.hf import hf_forward, padded_batch, tiny_hf_model

pytest.importorskip("transformers")

CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["transformers"] = None  # any import of it now raises ImportError
    import torch
    from safetensors.torch import load_file, save_file
    import blocklab as bl

    source, saved, inputs, outputs = sys.argv[1:5]
    model = bl.hf.load(source)
    batch = load_file(inputs)
    with torch.no_grad():
        logits = model(batch["ids"], attention_mask=batch["mask"]).logits
    save_file({"logits": logits.contiguous()}, outputs)
    bl.hf.save(model, saved)
    imported = [name for name in sys.modules if name.startswith("transformers")
                and sys.modules[name] is not None]
    print(json.dumps({"imported": imported}))
""")


def test_load_and_save_without_transformers(tmp_path):
    reference = tiny_hf_model("llama")
    reference.save_pretrained(tmp_path / "source", safe_serialization=True)
    ids, mask = padded_batch("llama")
    save_file({"ids": ids, "mask": mask}, tmp_path / "inputs.safetensors")

    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "source"), str(tmp_path / "saved"),
         str(tmp_path / "inputs.safetensors"), str(tmp_path / "outputs.safetensors")],
        capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"imported": []}
    logits = load_file(tmp_path / "outputs.safetensors")["logits"]
    expected = hf_forward(reference, "llama", ids, mask)["logits"]
    torch.testing.assert_close(logits[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)
    assert (tmp_path / "saved" / "model.safetensors").is_file()
