"""Fixtures shared by the training, evaluation and command-line tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Return a JSON-lines corpus of 20 Python help topics, 2,000 characters each.

    A test module that needs more text defines its own ``corpus_file``.
    """
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    names = sorted(topics)[:20]
    path.write_text("".join(json.dumps({"text": topics[name][:2000]}) + "\n" for name in names))
    return str(path)
