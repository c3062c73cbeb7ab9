"""Tests for the byte, BPE and file tokenizers and their save/load round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocklab.data.corpora import DataError, load_corpus
from blocklab.data.tokenizers import (
    BPE_MIN_VOCAB,
    EOS_TOKEN,
    META_FILE,
    TOKENIZER_FILE,
    BPETokenizer,
    ByteTokenizer,
    FileTokenizer,
    build_tokenizer,
    load_tokenizer,
)

SAMPLES = [
    "",
    "plain ASCII text.",
    "  leading spaces and\ttabs\r\nwindows line ends\n",
    "Grüße, naïve café — “quotes”",
    "日本語のテキスト 中文 한국어",
    "emoji 😀👍🏽 and flags 🇫🇷 and ZWJ 👩‍👩‍👧",
    f"literal {EOS_TOKEN} inside the text",
    "\x00\x01 control \x7f characters",
]


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
    return load_corpus("python-docs", max_bytes=60_000).documents


@pytest.fixture(scope="module")
def bpe(training_texts) -> BPETokenizer:
    return BPETokenizer.train(training_texts, 400)


# --- bytes ----------------------------------------------------------------------------


def test_byte_tokenizer_constants():
    tokenizer = ByteTokenizer()
    assert tokenizer.vocab_size == 257
    assert tokenizer.eos_id == 256
    assert tokenizer.spec == "bytes"
    assert tokenizer.encode("aé") == [97, 0xC3, 0xA9]


@given(st.text())
def test_byte_tokenizer_round_trip(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.decode(ids) == text


def test_byte_decode_eos_and_invalid_bytes():
    tokenizer = ByteTokenizer()
    assert tokenizer.decode([104, 256, 105]) == "hi"
    assert tokenizer.decode([0xC3]) == "\ufffd"


# --- BPE ------------------------------------------------------------------------------


def test_bpe_vocab_and_eos(bpe):
    assert bpe.vocab_size == 400
    assert bpe.eos_id == bpe.backend.token_to_id(EOS_TOKEN)
    assert bpe.spec == "bpe:400"


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trip_samples(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_bpe_literal_eos_text_is_not_eos_id(bpe):
    assert bpe.eos_id not in bpe.encode(f"a {EOS_TOKEN} b")


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_bpe_round_trip_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_training_text(bpe, training_texts):
    text = training_texts[0]
    assert len(bpe.encode(text)) < 0.7 * len(text.encode("utf-8"))


def test_bpe_training_is_deterministic(training_texts):
    first = BPETokenizer.train(training_texts, 300)
    second = BPETokenizer.train(training_texts, 300)
    assert first.backend.to_str() == second.backend.to_str()


def test_bpe_encode_batch_matches_encode(bpe):
    assert bpe.encode_batch(SAMPLES) == [bpe.encode(text) for text in SAMPLES]


def test_bpe_decode_skips_eos(bpe):
    ids = bpe.encode("one") + [bpe.eos_id] + bpe.encode("two")
    assert bpe.decode(ids) == "onetwo"


# --- build_tokenizer ------------------------------------------------------------------


def test_build_bytes_is_default():
    assert isinstance(build_tokenizer(), ByteTokenizer)
    assert isinstance(build_tokenizer("bytes"), ByteTokenizer)


def test_build_bpe(training_texts):
    tokenizer = build_tokenizer("bpe:300", training_texts)
    assert isinstance(tokenizer, BPETokenizer)
    assert tokenizer.vocab_size == 300


@pytest.mark.parametrize(("spec", "value"), [("bpe:abc", "'abc'"), ("bpe:", "''")])
def test_build_bpe_non_integer(spec, value):
    with pytest.raises(DataError, match="invalid BPE vocabulary size") as info:
        build_tokenizer(spec, ["text"])
    assert value in str(info.value)
    assert str(BPE_MIN_VOCAB) in str(info.value)


@pytest.mark.parametrize("size", ["10", "257", "-5", "100000000"])
def test_build_bpe_out_of_range(size):
    with pytest.raises(DataError, match="out of range") as info:
        build_tokenizer(f"bpe:{size}", ["text"])
    assert size in str(info.value)
    assert str(BPE_MIN_VOCAB) in str(info.value)


def test_build_bpe_without_texts():
    with pytest.raises(DataError, match="needs training texts"):
        build_tokenizer("bpe:300")
    with pytest.raises(DataError, match="without text"):
        build_tokenizer("bpe:300", ["", ""])


def test_build_unknown_spec_lists_forms():
    with pytest.raises(DataError, match="unknown tokenizer spec 'wordpiece'") as info:
        build_tokenizer("wordpiece")
    message = str(info.value)
    assert "'bytes'" in message
    assert "'bpe:N'" in message
    assert "tokenizer.json" in message


def test_build_missing_file(tmp_path):
    missing = str(tmp_path / "tok.json")
    with pytest.raises(DataError, match="tokenizer file not found") as info:
        build_tokenizer(missing)
    assert missing in str(info.value)


# --- tokenizer.json files -------------------------------------------------------------


def test_build_from_tokenizer_file(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.backend.save(str(path))
    tokenizer = build_tokenizer(str(path))
    assert isinstance(tokenizer, FileTokenizer)
    assert tokenizer.eos_id == bpe.eos_id
    assert tokenizer.spec == str(path)
    for text in SAMPLES:
        assert tokenizer.encode(text) == bpe.encode(text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_file_without_eos(tmp_path):
    import tokenizers

    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=280, show_progress=False)
    backend.train_from_iterator(["some text here"], trainer=trainer)
    path = tmp_path / "noeos.json"
    backend.save(str(path))
    with pytest.raises(DataError, match="has no end-of-text token") as info:
        build_tokenizer(str(path))
    assert EOS_TOKEN in str(info.value)


def test_tokenizer_file_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="cannot load tokenizer file") as info:
        build_tokenizer(str(path))
    assert str(path) in str(info.value)


# --- save and load --------------------------------------------------------------------


def _all_tokenizers(bpe, tmp_path):
    path = tmp_path / "source" / "tokenizer.json"
    path.parent.mkdir()
    bpe.backend.save(str(path))
    return [ByteTokenizer(), bpe, build_tokenizer(str(path))]


def test_save_load_gives_identical_ids(bpe, tmp_path):
    for number, tokenizer in enumerate(_all_tokenizers(bpe, tmp_path)):
        directory = tmp_path / f"run{number}"
        tokenizer.save(directory)
        loaded = load_tokenizer(directory)
        assert type(loaded) is type(tokenizer)
        assert loaded.spec == tokenizer.spec
        assert loaded.eos_id == tokenizer.eos_id
        assert loaded.vocab_size == tokenizer.vocab_size
        for text in SAMPLES:
            assert loaded.encode(text) == tokenizer.encode(text)


def test_save_writes_json_files_only(bpe, tmp_path):
    bpe.save(tmp_path / "run")
    names = sorted(path.name for path in (tmp_path / "run").iterdir())
    assert names == [TOKENIZER_FILE, META_FILE]
    meta = json.loads((tmp_path / "run" / META_FILE).read_text(encoding="utf-8"))
    assert meta == {
        "kind": "bpe",
        "spec": "bpe:400",
        "eos_id": bpe.eos_id,
        "vocab_size": 400,
    }

    ByteTokenizer().save(tmp_path / "bytes_run")
    names = [path.name for path in (tmp_path / "bytes_run").iterdir()]
    assert names == [META_FILE]


def test_save_overwrites_existing_files(bpe, tmp_path):
    ByteTokenizer().save(tmp_path)
    bpe.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), BPETokenizer)


def test_build_from_saved_directory(bpe, tmp_path):
    bpe.save(tmp_path)
    tokenizer = build_tokenizer(str(tmp_path))
    assert tokenizer.encode("héllo") == bpe.encode("héllo")


def test_load_missing_meta(tmp_path):
    with pytest.raises(DataError, match="tokenizer metadata not found") as info:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_invalid_meta(tmp_path):
    (tmp_path / META_FILE).write_text(
        '{"kind": "bytes", "spec": "bytes"}', encoding="utf-8"
    )
    with pytest.raises(DataError, match="invalid 'eos_id'"):
        load_tokenizer(tmp_path)


def test_load_unknown_kind(tmp_path):
    meta = {"kind": "sentencepiece", "spec": "x", "eos_id": 0, "vocab_size": 10}
    (tmp_path / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="unknown tokenizer kind 'sentencepiece'"):
        load_tokenizer(tmp_path)


def test_load_detects_mismatched_meta(bpe, tmp_path):
    bpe.save(tmp_path)
    meta_path = tmp_path / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["vocab_size"] = 999
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="vocab_size 400, but .* records 999"):
        load_tokenizer(tmp_path)


def test_load_missing_tokenizer_json(bpe, tmp_path):
    bpe.save(tmp_path)
    (tmp_path / TOKENIZER_FILE).unlink()
    with pytest.raises(DataError, match="tokenizer file not found"):
        load_tokenizer(tmp_path)
