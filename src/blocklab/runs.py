"""Run directories: their layout, checkpoints, the run record and the metrics log.

A run directory contains::

    run.json                  the run record: resolved model and training configs,
                              data source, corpus hash, train/validation split
    tokenizer/                the tokenizer, written by Tokenizer.save
    metrics.jsonl             one JSON object per logged step
    checkpoints/step_000600/  one directory per saved step
        model.safetensors     weights
        optimizer.safetensors optimizer tensors (AdamW moments and step counts)
        rng.safetensors       random number generator states
        state.json            step, optimizer hyperparameters, file sizes and hashes

Files and directories are created with the usual modes (0644 and 0755 under
a umask of 022), although they are first written under temporary names.

While a run is written, ``lock_run_dir`` holds an exclusive ``flock`` on a
hidden lock file next to the run directory (``.NAME.lock``), so a second
process cannot write the same run at the same time.

Nothing is pickled. A checkpoint is written into a hidden temporary directory
next to the others, flushed to disk and then renamed to ``step_NNNNNN``, so a
save interrupted at any point leaves the earlier checkpoints as they were. The
latest checkpoint is the step directory with the highest step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from blocklab.errors import UsageError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
RUN_FORMAT = "blocklab-run"
RUN_FORMAT_VERSION = 1

#: Number of most recent checkpoints kept; older ones are deleted after a save.
DEFAULT_KEEP = 2

_STEP_DIR = re.compile(r"^step_(\d+)$")


# --- small file helpers ---------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # Some file systems do not support fsync on directories.
    finally:
        os.close(descriptor)


def _current_umask() -> int:
    # os.umask can only be read by setting it, so set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public_mode(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Give a file from mkstemp (0600) or a directory from mkdtemp (0700) the umask's default mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_current_umask())


def _temporary_file(path: Path) -> tuple[int, str]:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _public_mode(temporary)
    except BaseException:
        os.close(descriptor)
        Path(temporary).unlink(missing_ok=True)
        raise
    return descriptor, temporary


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a synced temporary file and a rename."""
    path = Path(path)
    descriptor, temporary = _temporary_file(path)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2, sort_keys=False)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(
            f"{what} {str(path)!r} is damaged ({error}); restore it or start a new run"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- run directories ------------------------------------------------------------


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory with a blocklab ``run.json``."""
    return (Path(path) / RUN_FILE).is_file()


def require_run_dir(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path after checking that it is a run directory.

    Raises:
        UsageError: when the path is missing or is not a run directory.
    """
    run_dir = Path(path)
    if not run_dir.exists():
        raise UsageError(f"run directory not found: {str(run_dir)!r}; pass the directory `blocklab train` wrote")
    if not run_dir.is_dir():
        raise UsageError(f"not a run directory: {str(run_dir)!r} is a file; pass the directory `blocklab train` wrote")
    if not is_run_dir(run_dir):
        raise UsageError(
            f"not a run directory: {str(run_dir)!r} has no {RUN_FILE}; pass the directory `blocklab train` wrote"
        )
    return run_dir


def check_new_run_dir(path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Check that a new run may be written at ``path``; nothing is changed.

    An absent path or an empty directory is fine. An existing run is fine with
    ``overwrite``, or when it has no checkpoint after step 0 and no metrics
    (a start that failed before its first step). Anything else (a file, a directory with other content)
    is never replaced, because it may be someone's data.

    Raises:
        UsageError: when the path is taken.
    """
    run_dir = Path(path)
    if not run_dir.exists():
        _check_parents(run_dir)
        return
    if not run_dir.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} is an existing file; choose another path")
    if not any(run_dir.iterdir()):
        return
    if not is_run_dir(run_dir):
        raise UsageError(
            f"run directory {str(run_dir)!r} exists and is not a blocklab run; "
            "choose another path (--overwrite only replaces runs)"
        )
    if not overwrite and not has_trained_steps(run_dir):
        logger.info("run %s has no trained step, so it is replaced", run_dir)
        return
    if not overwrite:
        raise UsageError(
            f"run directory {str(run_dir)!r} already contains a run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another path"
        )


def _check_parents(run_dir: Path) -> None:
    for parent in run_dir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(
                    f"cannot create run directory {str(run_dir)!r}: {str(parent)!r} is a file, "
                    "not a directory; choose another path"
                )
            return


def has_trained_steps(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run has a checkpoint after step 0 or a metrics record."""
    if any(step > 0 for step in list_checkpoints(run_dir)):
        return True
    metrics = Path(run_dir) / METRICS_FILE
    return metrics.is_file() and metrics.stat().st_size > 0


def create_run_dir(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Create an empty run directory, removing an existing run when ``overwrite``.

    The old run is first renamed to a hidden name next to it and deleted after
    that, so the path never contains a mix of old and new files. The caller
    should hold ``lock_run_dir``, so that no other process writes the run
    between this check and the creation.

    Raises:
        UsageError: when the path is taken (see ``check_new_run_dir``).
    """
    new_run = start_run_dir(path, overwrite=overwrite)
    new_run.commit()
    return new_run.path


#: The entries a trainer writes into a run directory; ``NewRunDir.discard`` removes only these.
RUN_ENTRIES = (RUN_FILE, TOKENIZER_DIR, METRICS_FILE, CHECKPOINTS_DIR, "tensorboard")


@dataclass
class NewRunDir:
    """A run directory that ``start_run_dir`` created and that is kept or undone later.

    ``commit`` keeps the new run and deletes the run it replaced. ``discard``
    removes what the new run wrote and puts the replaced run back, for a start
    that failed before its first step.

    Attributes:
        path: the run directory.
        existed: the path was an empty directory before, so ``discard``
            empties it and leaves it in place.
        replaced: a hidden directory next to ``path`` holding the run that
            this one replaces, until ``commit`` or ``discard``; None when
            there was none.
    """

    path: Path
    existed: bool
    replaced: Path | None = None

    def commit(self) -> None:
        """Keep the new run: delete the replaced one, if any."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced)
            self.replaced = None

    def discard(self) -> None:
        """Remove the entries of ``RUN_ENTRIES`` and put the replaced run back.

        Other files in the directory are not this run's, so they are left in
        place. When there are any, the directory itself stays too, and so
        does the replaced run in its hidden directory, whose path is logged.
        """
        for name in RUN_ENTRIES:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        for leftover in self.path.glob(f".{RUN_FILE}.*.tmp"):  # from a write_json_atomic cut short
            leftover.unlink(missing_ok=True)
        if self.existed and self.replaced is None:
            return
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            where = f"; the replaced run is kept in {str(self.replaced)!r}" if self.replaced is not None else ""
            logger.warning("run directory %s contains files blocklab did not write, so it is kept%s",
                           self.path, where)
            return
        if self.replaced is not None:
            os.replace(self.replaced / self.path.name, self.path)
            self.replaced.rmdir()
            self.replaced = None
            logger.info("restored the replaced run in %s", self.path)


def start_run_dir(path: str | os.PathLike[str], *, overwrite: bool) -> NewRunDir:
    """Create an empty run directory whose creation can be undone (see ``NewRunDir``).

    An existing run that may be replaced (see ``check_new_run_dir``) is moved
    to a hidden directory next to the path, ``.NAME.replaced-XXXXXXXX``, and
    deleted only by ``NewRunDir.commit``. If the process dies before that, the
    old run stays in that directory. The caller should hold ``lock_run_dir``.

    Raises:
        UsageError: when the path is taken (see ``check_new_run_dir``).
    """
    check_new_run_dir(path, overwrite=overwrite)
    run_dir = Path(path)
    existed = run_dir.is_dir()
    replaced = None
    if existed and any(run_dir.iterdir()):
        replaced = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.replaced-"))
        os.replace(run_dir, replaced / run_dir.name)
        logger.info("replacing run %s", run_dir)
        existed = False
    new_run = NewRunDir(run_dir, existed, replaced)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CHECKPOINTS_DIR).mkdir(exist_ok=True)
    except BaseException:
        new_run.discard()
        raise
    return new_run


def _lock_path(run_dir: Path) -> Path:
    run_dir = run_dir.absolute()
    return run_dir.parent / f".{run_dir.name}.lock"


def _lock_owner(path: Path) -> str:
    try:
        owner = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return owner if owner.isdigit() else "unknown"


@contextlib.contextmanager
def lock_run_dir(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the run directory ``path`` for the duration of the block.

    The lock is an ``flock`` on ``.NAME.lock`` next to the directory, which
    contains the holder's process id. The kernel releases it when the process
    exits, however it exits, and the file is removed when the block ends.
    Missing parent directories of ``path`` are created.

    Raises:
        UsageError: when another process holds the lock, or the lock file
            cannot be created.
    """
    run_dir = Path(path)
    _check_parents(run_dir)
    lock_path = _lock_path(run_dir)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create run directory {str(run_dir)!r}: {error.strerror}; choose another path"
        ) from None
    while True:
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise UsageError(
                f"cannot create lock file {str(lock_path)!r} for run directory {str(run_dir)!r}: "
                f"{error.strerror}; choose a writable location"
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UsageError(
                f"run directory {str(run_dir)!r} is in use by another blocklab process "
                f"(pid {_lock_owner(lock_path)}); wait for it or choose another directory"
            ) from None
        # The previous holder may have removed the file between our open and
        # flock; a lock on a removed file protects nothing, so open it again.
        try:
            same_file = os.path.samestat(os.fstat(descriptor), os.stat(lock_path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        # Remove the file while still holding the lock, so that a waiting
        # process that opened it sees a removed file and opens a new one.
        lock_path.unlink(missing_ok=True)
        os.close(descriptor)


def read_run_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``run.json``.

    Raises:
        UsageError: when the directory is not a run or the record is damaged.
    """
    run_dir = require_run_dir(run_dir)
    record = _read_json(run_dir / RUN_FILE, "run record")
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise UsageError(f"{str(run_dir / RUN_FILE)!r} is not a blocklab run record; pass a run directory")
    if record.get("version") != RUN_FORMAT_VERSION:
        raise UsageError(
            f"run record {str(run_dir / RUN_FILE)!r} has format version {record.get('version')!r}; "
            f"this blocklab reads version {RUN_FORMAT_VERSION}"
        )
    for key in ("model", "train", "data", "tokenizer"):
        if not isinstance(record.get(key), dict):
            raise UsageError(f"run record {str(run_dir / RUN_FILE)!r} is missing its {key!r} section")
    return record


def write_run_record(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    record = {"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, **record}
    write_json_atomic(Path(run_dir) / RUN_FILE, record)


# --- checkpoints ----------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        step: the number of optimizer steps taken.
        path: the step directory.
        model: full model tensors by parameter name.
        optimizer: the optimizer state in the layout of
            ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``
            (``{"state": {name: {...}}, "param_groups": [...]}``), or None when
            the checkpoint has none.
        rng: random generator states (``cpu``, and ``cuda:N`` when saved).
        extra: the JSON values the trainer stored with it.
    """

    step: int
    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors that share memory with an earlier one (tied weights).

    safetensors rejects shared storage. Each copy is stored under its own name
    and loads back into the same tied parameter.
    """
    seen: set[tuple[int, int]] = set()
    result = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            tensor = tensor.clone()
        seen.add(key)
        result[name] = tensor
    return result


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    for name, values in state.get("state", {}).items():
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
    groups = []
    for group in state.get("param_groups", []):
        groups.append({key: list(value) if isinstance(value, tuple) else value for key, value in group.items()})
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat_name, tensor in tensors.items():
        name, _, key = flat_name.rpartition("/")
        state.setdefault(name, {})[key] = tensor
    param_groups = []
    for group in groups:
        restored = {}
        for key, value in group.items():
            # JSON has no tuples; optimizers store betas as a tuple.
            restored[key] = tuple(value) if isinstance(value, list) and key != "params" else value
        param_groups.append(restored)
    return {"state": state, "param_groups": param_groups}


def checkpoint_dir(run_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[int]:
    """Return the steps of the saved checkpoints, ascending."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    steps = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = DEFAULT_KEEP,
) -> Path:
    """Write a checkpoint for ``step`` and delete all but the ``keep`` newest.

    The files go to a hidden temporary directory that is synced and then
    renamed to ``step_NNNNNN``. If anything fails first, the temporary
    directory is removed and the earlier checkpoints are untouched.

    Returns:
        The new step directory.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step:06d}.", suffix=".tmp"))
    try:
        _public_mode(temporary, directory=True)
        files = {MODEL_FILE: _unshare(model)}
        groups: list[dict[str, Any]] = []
        if optimizer is not None:
            optimizer_tensors, groups = _flatten_optimizer(optimizer)
            files[OPTIMIZER_FILE] = optimizer_tensors
        files[RNG_FILE] = {name: tensor.detach().cpu().contiguous() for name, tensor in (rng or {}).items()}
        hashes = {}
        for name, tensors in files.items():
            path = temporary / name
            safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
            with path.open("rb") as file:
                os.fsync(file.fileno())
            hashes[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        state = {"step": step, "files": hashes, "optimizer_param_groups": groups, "extra": extra or {}}
        write_json_atomic(temporary / STATE_FILE, state)
        _fsync_dir(temporary)

        final = checkpoint_dir(run_dir, step)
        if final.exists():  # the same step saved twice, e.g. on Ctrl-C right after a save
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.old-"))
            os.replace(final, old / final.name)
            os.replace(temporary, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.debug("saved checkpoint %s", final)
    _prune(run_dir, keep)
    return final


def _prune(run_dir: str | os.PathLike[str], keep: int) -> None:
    steps = list_checkpoints(run_dir)
    for step in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(checkpoint_dir(run_dir, step), ignore_errors=True)
    root = Path(run_dir) / CHECKPOINTS_DIR
    for entry in root.iterdir():  # leftovers of saves killed before their rename
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)


def _load_tensors(path: Path, expected: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"checkpoint file not found: {str(path)!r}; the checkpoint is incomplete")
    if expected is not None:
        size = path.stat().st_size
        if size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
            raise UsageError(
                f"checkpoint file {str(path)!r} is damaged: its size or SHA-256 differs from the one "
                f"recorded at save time ({size} bytes, expected {expected.get('bytes')}); "
                "delete this step directory to fall back to an earlier checkpoint"
            )
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as error:  # noqa: BLE001 -- safetensors raises its own SafetensorError type
        raise UsageError(
            f"checkpoint file {str(path)!r} is damaged ({error}); delete this step directory "
            "to fall back to an earlier checkpoint"
        ) from None


def load_checkpoint(
    run_dir: str | os.PathLike[str], step: int | None = None, *, with_optimizer: bool = True
) -> Checkpoint:
    """Load the checkpoint at ``step``, or the latest one.

    Raises:
        UsageError: when the run has no checkpoint, the step does not exist or
            a file is damaged.
    """
    run_dir = Path(run_dir)
    steps = list_checkpoints(run_dir)
    if not steps:
        raise UsageError(f"run {str(run_dir)!r} has no checkpoint in {CHECKPOINTS_DIR}/; train it first")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UsageError(
            f"run {str(run_dir)!r} has no checkpoint at step {step}; saved steps are "
            + ", ".join(map(str, steps))
        )
    path = checkpoint_dir(run_dir, step)
    state = _read_json(path / STATE_FILE, "checkpoint state")
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        raise UsageError(f"checkpoint state {str(path / STATE_FILE)!r} is damaged; delete {str(path)!r}")
    files = state["files"]
    model = _load_tensors(path / MODEL_FILE, files.get(MODEL_FILE))
    optimizer = None
    if with_optimizer and OPTIMIZER_FILE in files:
        tensors = _load_tensors(path / OPTIMIZER_FILE, files[OPTIMIZER_FILE])
        optimizer = _unflatten_optimizer(tensors, state.get("optimizer_param_groups", []))
    rng = _load_tensors(path / RNG_FILE, files.get(RNG_FILE)) if RNG_FILE in files else {}
    return Checkpoint(step=int(state["step"]), path=path, model=model, optimizer=optimizer, rng=rng,
                      extra=state.get("extra", {}))


# --- metrics --------------------------------------------------------------------


class MetricsLog:
    """Append-only JSON-lines log; each record is flushed as it is written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``, skipping a last line cut short by a crash."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("ignoring the incomplete last line of %s", path)
                continue
            raise UsageError(f"metrics log {str(path)!r} is damaged at line {number}") from None
    return records


def truncate_metrics(run_dir: str | os.PathLike[str], step: int) -> list[dict[str, Any]]:
    """Keep only records up to ``step`` (those a resumed run does not repeat).

    Returns:
        The kept records.
    """
    kept = [record for record in read_metrics(run_dir) if record.get("step", 0) <= step]
    path = Path(run_dir) / METRICS_FILE
    descriptor, temporary = _temporary_file(path)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record) + "\n" for record in kept)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return kept


def corpus_sha256(documents: Iterable[str]) -> str:
    """Hash a list of documents; each is prefixed by its length, so boundaries count."""
    digest = hashlib.sha256()
    for document in documents:
        data = document.encode("utf-8", errors="surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
