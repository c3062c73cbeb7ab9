"""Corpora, tokenizers and batches: everything between raw text and model inputs.

This package imports nothing else from blocklab, so the model code can depend on
it without cycles.
"""

from blocklab.data.batches import (
    encode_documents,
    eval_window_plan,
    eval_windows,
    random_batches,
    sample_batch,
)
from blocklab.data.corpora import (
    DEFAULT_CORPUS,
    STDLIB_MAX_BYTES,
    Corpus,
    DataError,
    DocumentSplit,
    load_corpus,
    make_document_split,
    split_documents,
    split_large_text,
)
from blocklab.data.tokenizers import (
    DEFAULT_TOKENIZER,
    EOS_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    FileTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    load_tokenizer_file,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "DEFAULT_CORPUS",
    "DEFAULT_TOKENIZER",
    "DataError",
    "DocumentSplit",
    "EOS_TOKEN",
    "FileTokenizer",
    "STDLIB_MAX_BYTES",
    "Tokenizer",
    "build_tokenizer",
    "encode_documents",
    "eval_window_plan",
    "eval_windows",
    "load_corpus",
    "load_tokenizer",
    "load_tokenizer_file",
    "make_document_split",
    "random_batches",
    "sample_batch",
    "split_documents",
    "split_large_text",
]
