"""Tokenizers that turn text into integer ids and back.

Three kinds exist, chosen by a spec string in ``build_tokenizer``:

* ``bytes``: the UTF-8 bytes of the text plus one end-of-text id.
* ``bpe:N``: a byte-level BPE tokenizer with N ids, trained on the training texts
  with the ``tokenizers`` package.
* a path to a ``tokenizer.json`` file written by the ``tokenizers`` package.
* a directory written by ``Tokenizer.save``, such as an earlier run's directory.

``Tokenizer.save`` writes a tokenizer into a run directory and ``load_tokenizer``
reads it back. Both use JSON files only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers as hf_tokenizers

from blocklab.data.corpora import DataError, _first_line

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "bytes"

#: File names inside a run directory.
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"

#: The end-of-text special token of tokenizers trained by ``BPETokenizer.train``.
EOS_TOKEN = "<|endoftext|>"

#: Special tokens accepted as end-of-text in a tokenizer file, in order of preference.
KNOWN_EOS_TOKENS = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")

#: Allowed vocabulary sizes for ``bpe:N``. The lower bound is the 256 byte ids,
#: the end-of-text id and at least one merge. The upper bound only catches typing
#: mistakes such as an extra digit.
BPE_MIN_VOCAB = 258
BPE_MAX_VOCAB = 1_000_000

_SPEC_FORMS = (
    "'bytes', 'bpe:N' with N an integer from "
    f"{BPE_MIN_VOCAB} to {BPE_MAX_VOCAB}, or a path to a tokenizer.json file"
)


class Tokenizer(ABC):
    """Base class of all tokenizers: text to ids, ids to text, and saving.

    ``encode`` never adds the end-of-text id, and ``decode`` skips it.
    """

    #: Short kind name stored in ``tokenizer_meta.json``: bytes, bpe or file.
    kind: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids. Every id that ``encode`` returns is below it."""

    @property
    @abstractmethod
    def eos_id(self) -> int:
        """Id appended after each document to mark its end."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """Spec string that built this tokenizer, such as ``bytes`` or ``bpe:512``."""

    @property
    def name(self) -> str:
        """Same as ``spec``."""
        return self.spec

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Convert text into token ids, without an end-of-text id."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Convert token ids into text, skipping end-of-text ids."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several texts. Subclasses may override this to run faster."""
        return [self.encode(text) for text in texts]

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the tokenizer into ``directory`` for ``load_tokenizer`` to read.

        Writes ``tokenizer_meta.json`` and, for BPE and file tokenizers, also
        ``tokenizer.json``. Each file is written to a temporary file in the same
        directory and then renamed, so a reader never sees a partial file.

        Args:
            directory: The directory to write to. It is created if missing.

        Raises:
            OSError: If the files cannot be written.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        tokenizer_json = self._tokenizer_json()
        if tokenizer_json is not None:
            _write_atomic(target / TOKENIZER_FILE, tokenizer_json)
        meta = {
            "kind": self.kind,
            "spec": self.spec,
            "eos_id": self.eos_id,
            "vocab_size": self.vocab_size,
        }
        _write_atomic(target / META_FILE, json.dumps(meta, indent=2) + "\n")

    def _tokenizer_json(self) -> str | None:
        """Return the ``tokenizer.json`` content, or None if there is none."""
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spec={self.spec!r}, vocab_size={self.vocab_size})"
        )


class ByteTokenizer(Tokenizer):
    """Tokenizer whose ids are the UTF-8 bytes 0..255 plus end-of-text id 256."""

    kind = "bytes"

    @property
    def vocab_size(self) -> int:
        """257: the 256 byte values and the end-of-text id."""
        return 257

    @property
    def eos_id(self) -> int:
        """256, the id after the byte values."""
        return 256

    @property
    def spec(self) -> str:
        """Always ``bytes``."""
        return "bytes"

    def encode(self, text: str) -> list[int]:
        """Return the UTF-8 bytes of ``text`` as ids."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Decode byte ids as UTF-8, skipping 256 and replacing invalid sequences.

        Raises:
            ValueError: If an id is outside 0..256.
        """
        return bytes(i for i in ids if i != 256).decode("utf-8", errors="replace")


class BPETokenizer(Tokenizer):
    """Wrapper around a ``tokenizers.Tokenizer`` with a known end-of-text id.

    Special tokens written in the input text are encoded as ordinary text, not as
    their special ids, so ``decode(encode(text)) == text`` holds for byte-level
    tokenizers such as those from ``train``.
    """

    kind = "bpe"

    def __init__(self, tokenizer: hf_tokenizers.Tokenizer, *, eos_id: int, spec: str):
        """Wrap a tokenizer.

        Args:
            tokenizer: The wrapped tokenizer. Its ``encode_special_tokens`` flag
                is set to True.
            eos_id: The end-of-text id, which must be a special token.
            spec: The spec string to record, such as ``bpe:512``.
        """
        tokenizer.encode_special_tokens = True
        self._tokenizer = tokenizer
        self._eos_id = eos_id
        self._spec = spec

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE tokenizer on ``texts``.

        The tokenizer splits text with the GPT-2 style ``ByteLevel`` pre-tokenizer
        (no added prefix space), starts from all 256 byte symbols, and has the
        special token ``<|endoftext|>`` as id 0. The same texts and vocabulary size
        give the same tokenizer in every process (checked with tokenizers 0.23).
        A small training text can yield fewer than ``vocab_size`` ids, which is
        logged as a warning.

        Args:
            texts: The training texts.
            vocab_size: Requested number of ids, from ``BPE_MIN_VOCAB`` to
                ``BPE_MAX_VOCAB``.

        Returns:
            The trained tokenizer, with spec ``bpe:{vocab_size}``.

        Raises:
            DataError: If ``vocab_size`` is out of range or ``texts`` has no text.
        """
        _check_bpe_vocab_size(vocab_size, f"bpe:{vocab_size}")
        if not any(text for text in texts):
            raise DataError(
                "cannot train a BPE tokenizer without text; pass training texts"
            )
        model = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
        model.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(
            add_prefix_space=False
        )
        model.decoder = hf_tokenizers.decoders.ByteLevel()
        trainer = hf_tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        model.train_from_iterator(texts, trainer=trainer, length=len(texts))
        actual = model.get_vocab_size(with_added_tokens=True)
        if actual < vocab_size:
            logger.warning(
                "BPE training produced %d ids, fewer than the requested %d, because "
                "the training text has too few distinct symbol pairs to merge",
                actual,
                vocab_size,
            )
        eos_id = model.token_to_id(EOS_TOKEN)
        return cls(model, eos_id=eos_id, spec=f"bpe:{vocab_size}")

    @property
    def vocab_size(self) -> int:
        """Number of ids, including special tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        """Id of the end-of-text special token."""
        return self._eos_id

    @property
    def spec(self) -> str:
        """Spec string recorded at construction."""
        return self._spec

    @property
    def backend(self) -> hf_tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Return the ids of ``text`` without special tokens added."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several texts in parallel threads of the ``tokenizers`` package."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Return the text of ``ids``, skipping special tokens."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def _tokenizer_json(self) -> str | None:
        return self._tokenizer.to_str()


class FileTokenizer(BPETokenizer):
    """A tokenizer loaded from a ``tokenizer.json`` file.

    Exact round trips hold only for byte-level tokenizers. A file whose
    normalizer lowercases or rewrites text decodes to the rewritten text.
    """

    kind = "file"


def build_tokenizer(
    spec: str = DEFAULT_TOKENIZER, train_texts: Sequence[str] | None = None
) -> Tokenizer:
    """Build the tokenizer described by ``spec``.

    Args:
        spec: One of ``bytes``, ``bpe:N`` (train a byte-level BPE tokenizer
            with N ids on ``train_texts``), a path to a ``tokenizer.json`` file,
            or a directory written by ``Tokenizer.save``.
        train_texts: The texts to train on. Only ``bpe:N`` uses them.

    Returns:
        The tokenizer.

    Raises:
        DataError: If the spec is unknown, N is not an integer in the allowed
            range, ``bpe:N`` gets no training texts, or the file cannot be used.
    """
    if not isinstance(spec, str):
        raise DataError(
            f"tokenizer spec must be a string, got {spec!r}; use {_SPEC_FORMS}"
        )
    if spec == "bytes":
        return ByteTokenizer()
    if spec.startswith("bpe:"):
        vocab_size = _parse_bpe_vocab_size(spec)
        if train_texts is None:
            raise DataError(
                f"tokenizer {spec!r} needs training texts; pass train_texts"
            )
        return BPETokenizer.train(train_texts, vocab_size)

    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / META_FILE).is_file():
            return load_tokenizer(path)
        raise DataError(
            f"tokenizer directory {spec!r} contains no {META_FILE}; pass a directory "
            "written by Tokenizer.save or a tokenizer.json file"
        )
    if path.is_file():
        return load_tokenizer_file(path)
    if path.suffix == ".json" or "/" in spec or os.sep in spec:
        raise DataError(f"tokenizer file not found: {spec!r}; use {_SPEC_FORMS}")
    raise DataError(f"unknown tokenizer spec {spec!r}; use {_SPEC_FORMS}")


def load_tokenizer_file(
    path: str | os.PathLike[str], *, spec: str | None = None
) -> FileTokenizer:
    """Load a ``tokenizer.json`` file written by the ``tokenizers`` package.

    The end-of-text id is that of the first token of ``KNOWN_EOS_TOKENS`` that
    the file has.

    Args:
        path: The file to load.
        spec: The spec string to record. Defaults to ``path``.

    Returns:
        The tokenizer.

    Raises:
        DataError: If the file cannot be parsed or has no known end-of-text token.
    """
    path = Path(path)
    try:
        backend = hf_tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- the Rust parser raises plain Exception.
        raise DataError(
            f"cannot load tokenizer file {str(path)!r}: {_first_line(exc)}; pass a "
            "tokenizer.json written by the tokenizers package"
        ) from exc
    for token in KNOWN_EOS_TOKENS:
        eos_id = backend.token_to_id(token)
        if eos_id is not None:
            return FileTokenizer(backend, eos_id=eos_id, spec=spec or str(path))
    raise DataError(
        f"tokenizer file {str(path)!r} has no end-of-text token; add one of "
        f"{', '.join(KNOWN_EOS_TOKENS)} as a special token"
    )


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer written by ``Tokenizer.save``.

    Args:
        directory: The directory that contains ``tokenizer_meta.json``.

    Returns:
        A tokenizer that encodes every text to the same ids as the saved one.

    Raises:
        DataError: If the files are missing or malformed, or if the loaded
            tokenizer's end-of-text id or vocabulary size differs from the
            recorded one.
    """
    directory = Path(directory)
    meta = _read_meta(directory / META_FILE)
    kind = meta["kind"]
    if kind == "bytes":
        tokenizer: Tokenizer = ByteTokenizer()
    elif kind in ("bpe", "file"):
        file = directory / TOKENIZER_FILE
        if not file.is_file():
            raise DataError(
                f"tokenizer file not found: {str(file)!r}; the run directory is "
                "incomplete, so rebuild the tokenizer"
            )
        backend = _load_backend(file)
        cls = BPETokenizer if kind == "bpe" else FileTokenizer
        tokenizer = cls(backend, eos_id=meta["eos_id"], spec=meta["spec"])
    else:
        raise DataError(
            f"unknown tokenizer kind {kind!r} in {str(directory / META_FILE)!r}; "
            "expected bytes, bpe or file"
        )

    for key in ("eos_id", "vocab_size"):
        if getattr(tokenizer, key) != meta[key]:
            raise DataError(
                f"tokenizer in {str(directory)!r} has {key} {getattr(tokenizer, key)}, "
                f"but {META_FILE} records {meta[key]}; the files do not belong together"
            )
    return tokenizer


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(
            f"tokenizer metadata not found: {str(path)!r}; pass a directory written "
            "by Tokenizer.save"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read tokenizer metadata {str(path)!r}: {exc}") from exc
    required = {"kind": str, "spec": str, "eos_id": int, "vocab_size": int}
    if not isinstance(meta, dict):
        raise DataError(f"tokenizer metadata {str(path)!r} is not a JSON object")
    for key, expected_type in required.items():
        if not isinstance(meta.get(key), expected_type):
            raise DataError(
                f"tokenizer metadata {str(path)!r} has an invalid {key!r}: "
                f"{meta.get(key)!r}; expected a {expected_type.__name__}"
            )
    return meta


def _load_backend(file: Path) -> hf_tokenizers.Tokenizer:
    try:
        return hf_tokenizers.Tokenizer.from_file(str(file))
    except Exception as exc:  # noqa: BLE001 -- the Rust parser raises plain Exception.
        raise DataError(
            f"cannot load tokenizer file {str(file)!r}: {_first_line(exc)}"
        ) from exc


def _parse_bpe_vocab_size(spec: str) -> int:
    text = spec[len("bpe:") :]
    try:
        vocab_size = int(text)
    except ValueError:
        raise DataError(
            f"invalid BPE vocabulary size {text!r} in {spec!r}; write bpe:N with N an "
            f"integer from {BPE_MIN_VOCAB} to {BPE_MAX_VOCAB}"
        ) from None
    _check_bpe_vocab_size(vocab_size, spec)
    return vocab_size


def _check_bpe_vocab_size(vocab_size: Any, spec: str) -> None:
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, int)
        or not BPE_MIN_VOCAB <= vocab_size <= BPE_MAX_VOCAB
    ):
        raise DataError(
            f"BPE vocabulary size {vocab_size!r} in {spec!r} is out of range; use an "
            f"integer from {BPE_MIN_VOCAB} to {BPE_MAX_VOCAB}"
        )


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
