"""Tests for corpus loading and the train/validation split."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocklab.data import corpora
from blocklab.data.corpora import (
    STDLIB_MAX_BYTES,
    DataError,
    load_corpus,
    make_document_split,
    split_documents,
    split_large_text,
)

# --- built-in corpora -----------------------------------------------------------------


def test_python_docs_size_and_order():
    from pydoc_data.topics import topics

    corpus = load_corpus("python-docs")
    assert corpus.name == "python-docs"
    assert corpus.source == "python-docs"
    assert 400_000 <= corpus.num_bytes <= 600_000
    assert len(corpus.documents) == sum(1 for text in topics.values() if text.strip())
    assert corpus.documents[0] == topics[min(topics)]


def test_python_docs_is_default_and_deterministic():
    assert load_corpus().documents == load_corpus("python-docs").documents


def test_python_stdlib_is_bounded():
    corpus = load_corpus("python-stdlib")
    assert 1_000_000 < corpus.num_bytes <= STDLIB_MAX_BYTES
    assert any("def " in document for document in corpus.documents)


def test_python_stdlib_max_bytes_cuts_exactly():
    corpus = load_corpus("python-stdlib", max_bytes=100_000)
    assert corpus.num_bytes <= 100_000
    assert corpus.num_bytes >= 99_990  # Only a partial character may be dropped.


def test_stdlib_file_list_skips_excluded_dirs():
    files = corpora._list_stdlib_files()
    assert files == sorted(files)
    assert all(path.suffix == ".py" for path in files)
    for path in files:
        excluded = set(path.parts) & corpora.STDLIB_EXCLUDED_DIRS
        assert not excluded, path
    assert any(path.name == "json" or path.parent.name == "json" for path in files)


# --- local files ----------------------------------------------------------------------


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond paragraph é 😀\n", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.documents == ["first line\n\nsecond paragraph é 😀\n"]
    assert corpus.name == "notes.txt"
    assert corpus.source == str(path)


def test_path_object_source(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("text", encoding="utf-8")
    assert load_corpus(path).documents == ["text"]
    with pytest.raises(DataError, match="must be a string, got 5"):
        load_corpus(5)


def test_md_file_is_one_document(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# Title\n\nBody.\n", encoding="utf-8")
    assert load_corpus(str(path)).documents == ["# Title\n\nBody.\n"]


def test_large_txt_file_is_cut_losslessly(tmp_path):
    paragraph = "word " * 40 + "\n" + "more " * 40 + "\n\n"
    text = paragraph * (2 * corpora.LARGE_FILE_CHARS // len(paragraph))
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    documents = load_corpus(str(path)).documents
    assert len(documents) > 4
    assert "".join(documents) == text
    for document in documents[:-1]:
        assert document.endswith("\n\n")
        assert len(document) >= corpora.LARGE_FILE_CHUNK_CHARS


@given(st.text(alphabet="ab \n", max_size=300), st.integers(1, 40))
def test_split_large_text_joins_back(text, chunk_chars):
    pieces = split_large_text(text, chunk_chars)
    assert "".join(pieces) == text
    assert all(pieces)


def test_directory_reads_txt_and_md_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("two", encoding="utf-8")
    (tmp_path / "a.txt").write_text("one", encoding="utf-8")
    (tmp_path / "c.txt").write_text("three", encoding="utf-8")
    (tmp_path / "skip.py").write_text("not text", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    corpus = load_corpus(str(tmp_path))
    assert corpus.documents == ["one", "two", "three"]


def test_directory_without_text_files(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="no .txt or .md files") as info:
        load_corpus(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_jsonl_reads_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"text": "alpha", "id": 1}),
        "",
        json.dumps({"text": "beta ü"}),
        json.dumps({"text": ""}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_corpus(str(path)).documents == ["alpha", "beta ü"]


def test_jsonl_custom_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "gamma"}) + "\n", encoding="utf-8")
    assert load_corpus(str(path), text_field="body").documents == ["gamma"]


def test_jsonl_invalid_json_names_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 3 ") as info:
        load_corpus(str(path))
    assert "not valid JSON" in str(info.value)
    assert str(path) in str(info.value)


def test_jsonl_missing_field_message(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "x", "id": 2}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 ") as info:
        load_corpus(str(path))
    message = str(info.value)
    assert "'text'" in message
    assert "'body'" in message


def test_jsonl_non_object_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('["a list"]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1 .* not an object"):
        load_corpus(str(path))


def test_jsonl_non_string_text(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1 .*int"):
        load_corpus(str(path))


def test_jsonl_unpaired_surrogate(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "bad \\ud800 text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1 .* unpaired surrogate"):
        load_corpus(str(path))


# --- invalid sources ------------------------------------------------------------------


def test_missing_path_message(tmp_path):
    missing = str(tmp_path / "foo.txt")
    with pytest.raises(DataError) as info:
        load_corpus(missing)
    message = str(info.value)
    assert message.startswith("corpus path not found")
    assert repr(missing) in message
    assert "python-docs" in message
    assert "\n" not in message


def test_unknown_extension_message(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(
        DataError, match="unsupported corpus file extension '.csv'"
    ) as info:
        load_corpus(str(path))
    assert str(path) in str(info.value)


def test_empty_corpus_message(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text(" \n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="is empty") as info:
        load_corpus(str(path))
    assert str(path) in str(info.value)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        load_corpus(str(path))
    assert "offset 3" in str(info.value)


@pytest.mark.parametrize("source", ["", "   "])
def test_blank_source(source):
    with pytest.raises(DataError, match="source is empty"):
        load_corpus(source)


@pytest.mark.parametrize("max_bytes", [0, -5, 1.5, True])
def test_invalid_max_bytes(max_bytes):
    with pytest.raises(DataError, match="max_bytes must be a positive integer") as info:
        load_corpus("python-docs", max_bytes=max_bytes)
    assert repr(max_bytes) in str(info.value)


def test_max_bytes_cuts_at_character_boundary(tmp_path):
    (tmp_path / "a.txt").write_text("aaaa", encoding="utf-8")
    (tmp_path / "b.txt").write_text("éééé", encoding="utf-8")  # 2 bytes each
    (tmp_path / "c.txt").write_text("cccc", encoding="utf-8")
    corpus = load_corpus(str(tmp_path), max_bytes=9)
    assert corpus.documents == ["aaaa", "éé"]


# --- hf: datasets ---------------------------------------------------------------------


def test_hf_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "ds"
    rows = {"text": ["first doc", "", "second doc"], "label": [0, 1, 2]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(directory))
    corpus = load_corpus(f"hf:{directory}")
    assert corpus.documents == ["first doc", "second doc"]
    assert corpus.name == f"hf:{directory}"


def test_hf_max_bytes(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["x" * 10] * 100}).save_to_disk(str(directory))
    corpus = load_corpus(f"hf:{directory}", max_bytes=25)
    assert corpus.documents == ["x" * 10, "x" * 10, "x" * 5]


def test_hf_dataset_dict_prefers_train(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "dd"
    splits = datasets.DatasetDict(
        {
            "validation": datasets.Dataset.from_dict({"text": ["val doc"]}),
            "train": datasets.Dataset.from_dict({"text": ["train doc"]}),
        }
    )
    splits.save_to_disk(str(directory))
    assert load_corpus(f"hf:{directory}").documents == ["train doc"]


def test_hf_dataset_dict_without_train(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "dd"
    splits = datasets.DatasetDict(
        {"extra": datasets.Dataset.from_dict({"text": ["extra doc"]})}
    )
    splits.save_to_disk(str(directory))
    assert load_corpus(f"hf:{directory}").documents == ["extra doc"]


def test_hf_missing_column_lists_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": ["x"], "id": [1]}).save_to_disk(str(directory))
    with pytest.raises(DataError, match="no column 'text'") as info:
        load_corpus(f"hf:{directory}")
    assert "'body', 'id'" in str(info.value)
    assert load_corpus(f"hf:{directory}", text_field="body").documents == ["x"]


def test_hf_config_with_local_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(directory))
    with pytest.raises(DataError, match="cannot be used with the local dataset"):
        load_corpus(f"hf:{directory}:someconfig")


def test_hf_directory_that_is_not_a_dataset(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="cannot load dataset directory"):
        load_corpus(f"hf:{tmp_path}")


@pytest.fixture
def hub_check(monkeypatch):
    """Replace the Hub metadata request, so no test reaches the network.

    The fixture returns a list of the (dataset name, timeout) requests. A test
    sets its ``error`` attribute to make the next requests fail with it.
    """
    huggingface_hub = pytest.importorskip("huggingface_hub")
    requests = HubRequests()

    def dataset_info(self, name, timeout=None, **kwargs):
        requests.append((name, timeout))
        if requests.error is not None:
            raise requests.error

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    return requests


class HubRequests(list):
    error: BaseException | None = None


def _emit_hub_warnings():
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    logging.getLogger("datasets.load").warning("Using the latest cached version")


def test_hf_hub_failure_becomes_data_error(monkeypatch, hub_check):
    datasets = pytest.importorskip("datasets")
    requests = []

    def fail(name, config, split):
        requests.append((name, config, split))
        raise ConnectionError("Couldn't reach the Hub\nsecond line of detail")

    # The replacement keeps the test away from the network.
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError) as info:
        load_corpus("hf:someone/some-set:en")
    message = str(info.value)
    assert requests == [("someone/some-set", "en", "train")]
    assert "'someone/some-set:en'" in message
    assert "Couldn't reach the Hub" in message
    assert "second line" not in message


def test_hf_unreachable_hub_is_quiet(monkeypatch, hub_check, caplog, capfd):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    hub_check.error = ConnectionError("Failed to resolve 'huggingface.co'")
    offline_during_load = []

    def fail(name, config, split):
        offline_during_load.append(huggingface_hub.constants.HF_HUB_OFFLINE)
        offline_during_load.append(datasets.config.HF_HUB_OFFLINE)
        _emit_hub_warnings()
        raise ConnectionError("Couldn't find cache for someone/some-set")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    hub_level = logging.getLogger("huggingface_hub").level
    with pytest.raises(DataError) as info:
        load_corpus("hf:someone/some-set")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "'someone/some-set'" in message
    assert "Hugging Face Hub is unreachable (Failed to resolve 'huggingface.co')" in message
    assert "Couldn't find cache for someone/some-set" in message
    assert hub_check == [("someone/some-set", corpora.HUB_CHECK_TIMEOUT)]
    assert offline_during_load == [True, True]

    hub_records = [
        record for record in caplog.records
        if record.name.startswith(("huggingface_hub", "datasets"))
    ]
    assert hub_records == []
    captured = capfd.readouterr()
    assert "Retrying" not in captured.err
    assert "Retrying" not in captured.out
    assert "cached version" not in captured.err

    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    assert datasets.config.HF_HUB_OFFLINE is False
    assert logging.getLogger("huggingface_hub").level == hub_level
    assert datasets.is_progress_bar_enabled()


def test_hf_unreachable_hub_uses_cache(monkeypatch, hub_check, caplog):
    datasets = pytest.importorskip("datasets")
    hub_check.error = TimeoutError("timed out")
    cached = datasets.Dataset.from_dict({"text": ["cached doc"]})

    def from_cache(name, config, split):
        assert datasets.config.HF_HUB_OFFLINE is True
        return cached

    monkeypatch.setattr(datasets, "load_dataset", from_cache)
    with caplog.at_level(logging.WARNING, logger="blocklab"):
        corpus = load_corpus("hf:someone/some-set")
    assert corpus.documents == ["cached doc"]
    assert "loaded dataset 'someone/some-set' from the local cache" in caplog.text


def test_hf_hub_warnings_are_silenced(monkeypatch, hub_check, caplog, capfd):
    datasets = pytest.importorskip("datasets")

    def fail(name, config, split):
        assert datasets.config.HF_HUB_OFFLINE is False  # The Hub responded to the check.
        _emit_hub_warnings()
        raise FileNotFoundError("Dataset 'someone/missing' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match="doesn't exist on the Hub") as info:
        load_corpus("hf:someone/missing")
    assert len(str(info.value).splitlines()) == 1
    hub_records = [
        record for record in caplog.records
        if record.name.startswith(("huggingface_hub", "datasets"))
    ]
    assert hub_records == []
    assert "Retrying" not in capfd.readouterr().err


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hf_offline_variable_skips_hub(monkeypatch, hub_check, variable):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv(variable, "1")
    offline_during_load = []

    def fail(name, config, split):
        offline_during_load.append(datasets.config.HF_HUB_OFFLINE)
        raise ConnectionError("Couldn't find cache for someone/some-set")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError) as info:
        load_corpus("hf:someone/some-set")
    message = str(info.value)
    assert hub_check == []
    assert offline_during_load == [True]
    assert f"{variable} is set" in message
    assert f"unset {variable}" in message


def test_hf_offline_variable_zero_checks_hub(monkeypatch, hub_check):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # HF_DATASETS_OFFLINE takes precedence.
    loaded = datasets.Dataset.from_dict({"text": ["doc"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: loaded)
    assert load_corpus("hf:someone/some-set").documents == ["doc"]
    assert hub_check == [("someone/some-set", corpora.HUB_CHECK_TIMEOUT)]

def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # Makes the import fail.
    with pytest.raises(DataError, match="pip install datasets"):
        load_corpus("hf:anything")


def test_hf_missing_name():
    with pytest.raises(DataError, match="dataset name is missing"):
        load_corpus("hf:")


# --- split ----------------------------------------------------------------------------


DOCUMENTS = [f"document number {i}" for i in range(200)]


def test_split_is_deterministic():
    first = make_document_split(DOCUMENTS, val_fraction=0.2, seed=3)
    second = make_document_split(list(DOCUMENTS), val_fraction=0.2, seed=3)
    assert first == second


def test_split_is_disjoint_and_complete():
    split = make_document_split(DOCUMENTS, val_fraction=0.2, seed=0)
    assert set(split.train_indices).isdisjoint(split.val_indices)
    assert sorted(split.train_indices + split.val_indices) == list(range(200))
    assert split.train == [DOCUMENTS[i] for i in split.train_indices]
    assert split.val == [DOCUMENTS[i] for i in split.val_indices]


def test_split_fraction_is_roughly_respected():
    documents = [f"doc {i}" for i in range(2000)]
    split = make_document_split(documents, val_fraction=0.1, seed=0)
    assert 150 <= len(split.val) <= 250


def test_split_seed_changes_assignment():
    base = make_document_split(DOCUMENTS, seed=0).val_indices
    assert make_document_split(DOCUMENTS, seed=1).val_indices != base


def test_split_ignores_python_hash_seed():
    # Loading corpora.py by path skips the package __init__ and its slow torch import.
    code = (
        "import importlib.util, sys;"
        "spec = importlib.util.spec_from_file_location('corpora', sys.argv[1]);"
        "corpora = sys.modules['corpora'] = importlib.util.module_from_spec(spec);"
        "spec.loader.exec_module(corpora);"
        "docs = [f'd{i}' for i in range(50)];"
        "print(corpora.make_document_split(docs, val_fraction=0.3, seed=7).val_indices)"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", code, str(corpora.__file__)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout)
    expected = make_document_split(
        [f"d{i}" for i in range(50)], val_fraction=0.3, seed=7
    ).val_indices
    assert outputs == {f"{expected}\n"}


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
@pytest.mark.parametrize("count", [2, 3, 10])
def test_split_keeps_both_parts_nonempty(count, fraction):
    documents = [f"text {i}" for i in range(count)]
    for seed in range(5):
        train, val = split_documents(documents, val_fraction=fraction, seed=seed)
        assert train
        assert val
        assert len(train) + len(val) == count


def test_split_single_document_cuts_text():
    text = "x" * 95 + "yyyyy"
    split = make_document_split([text], val_fraction=0.05)
    assert split.train == ["x" * 95]
    assert split.val == ["yyyyy"]
    assert split.cut_at == 95
    assert split.summary()["cut_at"] == 95


def test_split_single_short_document():
    train, val = split_documents(["ab"], val_fraction=0.01)
    assert (train, val) == (["a"], ["b"])
    with pytest.raises(DataError, match="one document with 1 character"):
        split_documents(["a"])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True, "0.1", float("nan")])
def test_split_rejects_invalid_fraction(fraction):
    with pytest.raises(DataError, match="between 0 and 1") as info:
        split_documents(DOCUMENTS, val_fraction=fraction)
    assert repr(fraction) in str(info.value)


def test_split_rejects_no_documents():
    with pytest.raises(DataError, match="empty list of documents"):
        split_documents([])


def test_split_summary_is_json_ready():
    split = make_document_split(DOCUMENTS, val_fraction=0.1, seed=2)
    summary = json.loads(json.dumps(split.summary()))
    assert summary["val_indices"] == split.val_indices
    assert summary["num_documents"] == 200
    assert summary["seed"] == 2
    assert summary["num_train_documents"] + summary["num_val_documents"] == 200
