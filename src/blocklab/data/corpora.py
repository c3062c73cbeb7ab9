"""Text corpora for training and evaluation, and their train/validation split.

``load_corpus`` turns a source string into a list of documents. The accepted
sources are:

* ``python-docs`` (the default corpus): the reference-manual topics that ship with
  CPython in ``pydoc_data.topics``, about 0.46 MB of English text.
* ``python-stdlib``: the standard library's own ``.py`` files, one document per
  file. Directories named in ``STDLIB_EXCLUDED_DIRS`` are skipped. Files are
  taken in sorted path order until the total reaches ``STDLIB_MAX_BYTES``
  (13,000,000) UTF-8 bytes, and the file that crosses that bound is cut to fit.
  CPython 3.11 has about 11 MB of such source, so there all of it is read.
* a ``.txt`` or ``.md`` file, a directory searched recursively for such files, or
  a ``.jsonl`` file with one JSON object per line.
* ``hf:NAME[:CONFIG]``: a dataset read through the optional ``datasets`` package,
  either a directory written by ``Dataset.save_to_disk`` or a Hub dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "python-docs"

#: Size bound of the ``python-stdlib`` corpus in UTF-8 bytes, used when
#: ``load_corpus`` gets no ``max_bytes``.
STDLIB_MAX_BYTES = 13_000_000

#: Directory names skipped when collecting the standard library's source files.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)

#: A .txt or .md file with more characters than this is cut into several
#: documents, so that a corpus of one file can still be split by document.
LARGE_FILE_CHARS = 256 * 1024

#: Target size in characters of each piece of a cut file.
LARGE_FILE_CHUNK_CHARS = 64 * 1024

#: Seconds to wait for a response from the Hugging Face Hub before an ``hf:NAME``
#: load falls back to the local cache. Without this check, huggingface_hub
#: (2.4) retries a failed request 5 times with backoff, which sleeps 23 seconds
#: in all for each request.
HUB_CHECK_TIMEOUT = 5.0

#: Loggers of the packages behind ``hf:NAME``, set to ERROR during a load.
HUB_LOGGERS = ("huggingface_hub", "datasets")

_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"

_SOURCE_FORMS = (
    "an existing .txt/.md/.jsonl file, a directory of .txt/.md files, "
    "python-docs, python-stdlib or hf:NAME[:CONFIG]"
)


class DataError(ValueError):
    """Invalid data input: a bad corpus source, split setting or tokenizer spec.

    The message is one line with the offending value and the fix.
    """


@dataclass
class Corpus:
    """A named list of text documents.

    Attributes:
        name: Short name for logs and run records, such as ``python-docs`` or a
            file name.
        documents: The documents in a fixed order. None of them is empty or
            only whitespace.
        source: The source string that ``load_corpus`` received.
    """

    name: str
    documents: list[str]
    source: str

    @property
    def num_bytes(self) -> int:
        """Total size of all documents in UTF-8 bytes."""
        return sum(len(document.encode("utf-8")) for document in self.documents)


def load_corpus(
    source: str | os.PathLike[str] = DEFAULT_CORPUS,
    *,
    text_field: str = "text",
    max_bytes: int | None = None,
) -> Corpus:
    """Load a corpus from a built-in name, a local file or directory, or a dataset.

    The built-in names ``python-docs`` and ``python-stdlib`` and the ``hf:`` prefix
    are checked before paths, so a local file called ``python-docs`` is not read.

    A ``.txt`` or ``.md`` file is one document, except that a file of more than
    ``LARGE_FILE_CHARS`` characters is cut into pieces of about
    ``LARGE_FILE_CHUNK_CHARS`` characters. Cuts fall after a blank line where
    possible and otherwise after a line break, and the pieces joined together
    give back the file's text exactly. A directory contributes every ``.txt`` and
    ``.md`` file below it, in sorted path order. In a ``.jsonl`` file each
    non-blank line is a JSON object whose ``text_field`` value is one document.
    Local files must be UTF-8.

    Documents that are empty or only whitespace are dropped.

    Args:
        source: Where to read text from (see the module docstring).
        text_field: The field that contains the text in a ``.jsonl`` line or the
            column in an ``hf:`` dataset.
        max_bytes: Upper bound on the corpus size in UTF-8 bytes. Documents are
            kept in order, the first document that would cross the bound is cut
            at a character boundary to fit, and the rest are dropped. The default
            is no bound, except ``STDLIB_MAX_BYTES`` for ``python-stdlib``.

    Returns:
        The loaded corpus.

    Raises:
        DataError: If the source is missing, unreadable, of an unknown kind,
            malformed or contains no text, or if ``max_bytes`` is not a positive
            integer.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise DataError(
            f"corpus source must be a string, got {source!r}; pass {_SOURCE_FORMS}"
        )
    if not source.strip():
        raise DataError(f"corpus source is empty: {source!r}; pass {_SOURCE_FORMS}")
    if max_bytes is not None:
        _check_positive_int("max_bytes", max_bytes)

    if source == "python-docs":
        name, documents = source, _python_docs_documents()
    elif source == "python-stdlib":
        limit = STDLIB_MAX_BYTES if max_bytes is None else max_bytes
        name, documents = source, _python_stdlib_documents(limit)
    elif source.startswith("hf:"):
        name, documents = source, _hf_documents(source, text_field, max_bytes)
    else:
        path = Path(source).expanduser()
        name, documents = path.name or source, _path_documents(path, text_field)

    if max_bytes is not None:
        documents = _limit_bytes(documents, max_bytes)
    corpus = _finish_corpus(name, source, documents)
    logger.info(
        "loaded corpus %s: %d documents, %d bytes",
        corpus.name,
        len(corpus.documents),
        corpus.num_bytes,
    )
    return corpus


# --- built-in corpora ---------------------------------------------------------


def _python_docs_documents() -> list[str]:
    """Return the pydoc reference topics, one document per topic, by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # Some Linux distributions package it separately.
        raise DataError(
            "corpus 'python-docs' is unavailable because this Python has no "
            f"pydoc_data.topics module ({exc}); install the Python documentation "
            "package or pass another corpus"
        ) from exc
    return [topics[topic] for topic in sorted(topics)]


def _list_stdlib_files() -> list[Path]:
    """Return the standard library's .py files in sorted path order.

    Directories named in ``STDLIB_EXCLUDED_DIRS`` are skipped at any depth.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(
            f"corpus 'python-stdlib' is unavailable because the standard library "
            f"directory was not found: {str(root)!r}; pass another corpus"
        )
    files: list[Path] = []
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in STDLIB_EXCLUDED_DIRS]
        files.extend(Path(directory) / f for f in filenames if f.endswith(".py"))
    files.sort()
    return files


def _python_stdlib_documents(max_bytes: int) -> list[str]:
    """Read standard library files in sorted order until ``max_bytes`` is reached.

    The file that crosses the bound is kept whole here, and ``_limit_bytes`` in
    ``load_corpus`` then cuts it, so the corpus never exceeds ``max_bytes``.
    """
    documents: list[str] = []
    total = 0
    for path in _list_stdlib_files():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            logger.warning(
                "skipping unreadable standard library file %s: %s", path, exc
            )
            continue
        documents.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            logger.debug("python-stdlib reached %d bytes at %s; stopping", total, path)
            break
    return _limit_bytes(documents, max_bytes)


# --- local files ----------------------------------------------------------------


def _path_documents(path: Path, text_field: str) -> list[str]:
    if not path.exists():
        raise DataError(f"corpus path not found: {str(path)!r}; pass {_SOURCE_FORMS}")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
        )
        if not files:
            raise DataError(
                f"corpus directory contains no .txt or .md files: {str(path)!r}; "
                "add text files to it or pass a file"
            )
        documents: list[str] = []
        for file in files:
            documents.extend(_text_file_documents(file))
        return documents

    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _text_file_documents(path)
    if suffix == JSONL_SUFFIX:
        return _jsonl_documents(path, text_field)
    raise DataError(
        f"unsupported corpus file extension {path.suffix or '(none)'!r}: "
        f"{str(path)!r}; pass {_SOURCE_FORMS}"
    )


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read corpus file {str(path)!r}: {exc.strerror or exc}; "
            "check that it is a readable file"
        ) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"corpus file is not valid UTF-8: {str(path)!r} (invalid byte at offset "
            f"{exc.start}); convert it to UTF-8"
        ) from exc


def _text_file_documents(path: Path) -> list[str]:
    text = _read_utf8(path)
    if len(text) <= LARGE_FILE_CHARS:
        return [text]
    chunks = split_large_text(text, LARGE_FILE_CHUNK_CHARS)
    logger.info(
        "cut %s (%d characters) into %d documents", path, len(text), len(chunks)
    )
    return chunks


def split_large_text(text: str, chunk_chars: int) -> list[str]:
    """Cut text into pieces of about ``chunk_chars`` characters at line breaks.

    A piece ends at the first blank line after it has reached ``chunk_chars``
    characters, or at the first line break after ``2 * chunk_chars`` characters
    when no blank line comes. ``"".join(pieces) == text`` always holds.

    Args:
        text: The text to cut.
        chunk_chars: The target piece size in characters.

    Returns:
        The pieces in order. A single line longer than ``2 * chunk_chars`` stays
        one piece.
    """
    pieces: list[str] = []
    lines: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        lines.append(line)
        size += len(line)
        at_blank_line = not line.strip()
        if (size >= chunk_chars and at_blank_line) or size >= 2 * chunk_chars:
            pieces.append("".join(lines))
            lines, size = [], 0
    if lines:
        pieces.append("".join(lines))
    return pieces


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    documents: list[str] = []
    for line_number, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {line_number} of {str(path)!r}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where} is not valid JSON ({exc.msg} at column {exc.colno}); "
                "write one JSON object per line"
            ) from exc
        if not isinstance(record, dict):
            raise DataError(
                f"{where} is a JSON {type(record).__name__}, not an object; "
                f"write one object per line with a {text_field!r} field"
            )
        if text_field not in record:
            raise DataError(
                f"{where} has no {text_field!r} field (fields: "
                f"{', '.join(map(repr, record)) or 'none'}); add the field or "
                "choose another text field"
            )
        documents.append(_check_text_value(record[text_field], where, text_field))
    return documents


def _check_text_value(value: Any, where: str, text_field: str) -> str:
    """Return ``value`` as a document text, or "" for None."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{where} has a {type(value).__name__} in field {text_field!r}, not a "
            "string; store the document text as a string"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON escapes such as "\ud800" can produce unpaired surrogates, which no
        # tokenizer can encode.
        raise DataError(
            f"{where} contains an unpaired surrogate at character {exc.start} of "
            f"field {text_field!r}; remove it from the source"
        ) from exc
    return value


# --- datasets ---------------------------------------------------------------------


def _hf_documents(source: str, text_field: str, max_bytes: int | None) -> list[str]:
    spec = source[len("hf:") :]
    if Path(spec).expanduser().is_dir():
        name, config = spec, None
    else:
        name, _, config_text = spec.partition(":")
        config = config_text or None
    if not name:
        raise DataError(
            f"dataset name is missing in {source!r}; write hf:NAME or hf:NAME:CONFIG"
        )

    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"corpus {source!r} needs the datasets package, which is not installed; "
            "run `pip install datasets`"
        ) from exc

    local_path = Path(name).expanduser()
    if local_path.is_dir():
        if config is not None:
            raise DataError(
                f"a config ({config!r}) cannot be used with the local dataset "
                f"directory {name!r}; write hf:{name}"
            )
        dataset = _load_local_dataset(datasets, local_path)
    else:
        dataset = _load_hub_dataset(datasets, name, config)

    columns = list(dataset.column_names)
    if text_field not in columns:
        raise DataError(
            f"dataset {name!r} has no column {text_field!r} (columns: "
            f"{', '.join(map(repr, columns))}); choose one of them as the text field"
        )
    documents: list[str] = []
    total = 0
    for text in _iter_text_column(dataset, name, text_field):
        documents.append(text)
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            break  # load_corpus cuts the last document to fit.
    return documents


def _load_local_dataset(datasets: Any, path: Path) -> Any:
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot load dataset directory {str(path)!r}: {_first_line(exc)}; pass a "
            "directory written by Dataset.save_to_disk"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if not loaded:
            raise DataError(f"dataset directory {str(path)!r} contains no splits")
        split = "train" if "train" in loaded else next(iter(loaded))
        logger.info("using split %r of dataset %s", split, path)
        return loaded[split]
    return loaded


def _load_hub_dataset(datasets: Any, name: str, config: str | None) -> Any:
    described = name if config is None else f"{name}:{config}"
    offline_variable = _offline_variable()
    with _hub_loggers_at_error():
        unreachable = None if offline_variable else _hub_unreachable_reason(name)
        cache_only = offline_variable is not None or unreachable is not None
        try:
            with _cache_only(datasets) if cache_only else contextlib.nullcontext():
                dataset = datasets.load_dataset(name, config, split="train")
        # The datasets and huggingface_hub packages raise many unrelated exception
        # types for a missing dataset, a bad config or no network, so all are
        # reported here.
        except Exception as exc:  # noqa: BLE001
            raise DataError(_hub_failure_message(
                described, _first_line(exc), offline_variable, unreachable
            )) from exc
    if unreachable is not None:
        logger.warning("the Hugging Face Hub is unreachable (%s); loaded dataset %r "
                       "from the local cache", unreachable, described)
    return dataset


def _hub_failure_message(
    described: str, error: str, offline_variable: str | None, unreachable: str | None
) -> str:
    if offline_variable is not None:
        cause = (f"{offline_variable} is set, so only the local cache is read, and "
                 f"that failed: {error}")
        advice = f"unset {offline_variable}, or save the dataset"
    elif unreachable is not None:
        cause = (f"the Hugging Face Hub is unreachable ({unreachable}), and loading "
                 f"from the local cache failed: {error}")
        advice = "check network access, or save the dataset"
    else:
        cause = error
        advice = "check the name and network access, or save the dataset"
    return (f"cannot load dataset {described!r}: {cause}; {advice} with save_to_disk "
            "and pass hf:DIRECTORY")


def _offline_variable() -> str | None:
    """Return the environment variable that puts the datasets package offline, or None.

    This follows the datasets package (version 2 and later): HF_DATASETS_OFFLINE
    decides when it is set, and HF_HUB_OFFLINE otherwise. The variables are
    read on each call, so a value set after ``datasets`` was imported counts.
    """
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        value = os.environ.get(variable)
        if value is not None:
            return variable if value.strip().upper() in _TRUE_VALUES else None
    return None


def _hub_unreachable_reason(name: str) -> str | None:
    """Request the dataset's metadata from the Hub once, without retries.

    Returns the first line of the error when the request fails without an
    HTTP response (no network, a refused connection, no response within
    ``HUB_CHECK_TIMEOUT`` seconds), else None. An HTTP error (a missing or
    private dataset) and an invalid name also return None, because
    ``load_dataset`` then reports the problem itself.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    try:
        HfApi().dataset_info(name, timeout=HUB_CHECK_TIMEOUT)
    except (HfHubHTTPError, ValueError):
        return None
    # A connection failure surfaces as OSError, a timeout or the HTTP client's
    # own transport error, depending on the huggingface_hub version.
    except Exception as exc:  # noqa: BLE001
        return _first_line(exc)
    return None


@contextlib.contextmanager
def _hub_loggers_at_error() -> Iterator[None]:
    """Set the HUB_LOGGERS to ERROR for the block, so retries print no warnings.

    The HUB_LOGGERS are the packages' root loggers, and their child loggers
    inherit the level unless one sets its own.
    """
    loggers = [logging.getLogger(name) for name in HUB_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


@contextlib.contextmanager
def _cache_only(datasets: Any) -> Iterator[None]:
    """Run the block in the packages' offline mode and without progress bars.

    In offline mode ``load_dataset`` reads the local cache and makes no
    request, so there is nothing to retry and no download to show.
    NOTE: both are process-wide settings, so they also apply to a load in
    another thread until the block ends.
    """
    import huggingface_hub.constants as hub_constants
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    switches = [(hub_constants, "HF_HUB_OFFLINE")] + [
        (datasets.config, attribute)
        for attribute in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if hasattr(datasets.config, attribute)
    ]
    saved = [getattr(module, attribute) for module, attribute in switches]
    hub_bars_were_enabled = not are_progress_bars_disabled()
    datasets_bars_were_enabled = datasets.is_progress_bar_enabled()
    for module, attribute in switches:
        setattr(module, attribute, True)
    if hub_bars_were_enabled:
        disable_progress_bars()
    if datasets_bars_were_enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        for (module, attribute), value in zip(switches, saved):
            setattr(module, attribute, value)
        if hub_bars_were_enabled:
            enable_progress_bars()
        if datasets_bars_were_enabled:
            datasets.enable_progress_bars()


def _iter_text_column(dataset: Any, name: str, text_field: str) -> Iterator[str]:
    row = 0
    for batch in dataset.select_columns([text_field]).iter(batch_size=1024):
        for value in batch[text_field]:
            yield _check_text_value(value, f"row {row} of dataset {name!r}", text_field)
            row += 1


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --- shared steps -----------------------------------------------------------------


def _limit_bytes(documents: Iterable[str], max_bytes: int) -> list[str]:
    kept: list[str] = []
    remaining = max_bytes
    for document in documents:
        data = document.encode("utf-8")
        if len(data) <= remaining:
            kept.append(document)
            remaining -= len(data)
            continue
        # Cutting bytes can split a character, and "ignore" drops that partial one.
        kept.append(data[:remaining].decode("utf-8", errors="ignore"))
        break
    return kept


def _finish_corpus(name: str, source: str, documents: Iterable[str]) -> Corpus:
    kept = [document for document in documents if document.strip()]
    if not kept:
        raise DataError(
            f"corpus {source!r} is empty: it contains no non-whitespace text; "
            "pass a source with text"
        )
    return Corpus(name=name, documents=kept, source=source)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")


# --- train/validation split -------------------------------------------------------


@dataclass(frozen=True)
class DocumentSplit:
    """Training and validation texts of a split, with the indices to record it.

    Attributes:
        train: Training texts.
        val: Validation texts.
        train_indices: Indices (into the input documents) of the documents in
            ``train``, ascending.
        val_indices: Indices of the documents in ``val``, ascending. When a
            single document was cut, both index lists are ``[0]``.
        cut_at: For a single input document, the character offset where the
            validation text starts. None when whole documents were assigned.
        num_documents: Number of input documents.
        val_fraction: The requested validation fraction.
        seed: The seed that selected the split.
    """

    train: list[str]
    val: list[str]
    train_indices: list[int]
    val_indices: list[int]
    cut_at: int | None
    num_documents: int
    val_fraction: float
    seed: int

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready record of the split for a run's metadata."""
        return {
            "num_documents": self.num_documents,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "num_train_documents": len(self.train),
            "num_val_documents": len(self.val),
            "val_indices": list(self.val_indices),
            "cut_at": self.cut_at,
        }


def make_document_split(
    documents: Sequence[str], *, val_fraction: float = 0.1, seed: int = 0
) -> DocumentSplit:
    """Split documents into training and validation parts, deterministically.

    Each document is assigned by a SHA-256 hash of ``(seed, index, text)``: it goes
    to validation when the hash, read as a number in [0, 1), is below
    ``val_fraction``. The result depends only on the arguments, never on the
    process or platform. With two or more documents each part gets at least one:
    if no document went to validation, the one with the lowest hash moves there,
    and if none went to training, the one with the highest hash moves there.

    A single document is cut at a character boundary instead. The last
    ``max(1, round(len(text) * val_fraction))`` characters become the validation
    text and the rest the training text.

    Args:
        documents: The documents to split, in a fixed order.
        val_fraction: Expected share of documents (or, for one document, of
            characters) that goes to validation. Must be in (0, 1).
        seed: Selects a different split for the same documents.

    Returns:
        The split, with the validation document indices for the run record.

    Raises:
        DataError: If ``val_fraction`` is outside (0, 1), there are no documents,
            or a single document has fewer than 2 characters.
    """
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 < val_fraction < 1
    ):
        raise DataError(
            f"validation fraction must be between 0 and 1 (exclusive), got "
            f"{val_fraction!r}; pass a value such as 0.1"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"split seed must be an integer, got {seed!r}")
    count = len(documents)
    if count == 0:
        raise DataError("cannot split an empty list of documents; load a corpus first")
    if count == 1:
        return _cut_single_document(documents[0], val_fraction, seed)

    scores = [_split_score(seed, index, text) for index, text in enumerate(documents)]
    in_val = [score < val_fraction for score in scores]
    if not any(in_val):
        in_val[min(range(count), key=scores.__getitem__)] = True
    if all(in_val):
        in_val[max(range(count), key=scores.__getitem__)] = False

    val_indices = [i for i in range(count) if in_val[i]]
    train_indices = [i for i in range(count) if not in_val[i]]
    return DocumentSplit(
        train=[documents[i] for i in train_indices],
        val=[documents[i] for i in val_indices],
        train_indices=train_indices,
        val_indices=val_indices,
        cut_at=None,
        num_documents=count,
        val_fraction=float(val_fraction),
        seed=seed,
    )


def split_documents(
    documents: Sequence[str], *, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split documents into training and validation texts.

    This is ``make_document_split`` without the record, so the same rules apply.
    Documents are assigned by a hash of ``(seed, index, text)``, and both parts
    get at least one document when there are two or more. A single document is
    cut so that its last ``val_fraction`` of characters become validation text.

    Args:
        documents: The documents to split, in a fixed order.
        val_fraction: Expected share of documents that goes to validation, in (0, 1).
        seed: Selects a different split for the same documents.

    Returns:
        ``(train, val)`` lists of texts.

    Raises:
        DataError: If ``val_fraction`` is outside (0, 1), there are no documents,
            or a single document has fewer than 2 characters.
    """
    split = make_document_split(documents, val_fraction=val_fraction, seed=seed)
    return split.train, split.val


def _split_score(seed: int, index: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{index}\x00".encode())
    digest.update(text.encode("utf-8", errors="surrogatepass"))
    return int.from_bytes(digest.digest()[:8], "big") / 2.0**64


def _cut_single_document(text: str, val_fraction: float, seed: int) -> DocumentSplit:
    if len(text) < 2:
        raise DataError(
            f"cannot split a corpus of one document with {len(text)} character(s) "
            "into training and validation text; add more text"
        )
    val_chars = min(len(text) - 1, max(1, math.floor(len(text) * val_fraction + 0.5)))
    cut_at = len(text) - val_chars
    logger.info(
        "corpus has one document; its last %d characters are the validation text",
        val_chars,
    )
    return DocumentSplit(
        train=[text[:cut_at]],
        val=[text[cut_at:]],
        train_indices=[0],
        val_indices=[0],
        cut_at=cut_at,
        num_documents=1,
        val_fraction=float(val_fraction),
        seed=seed,
    )
