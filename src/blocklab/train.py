"""The training loop and the ``blocklab train`` command.

A causal language model is trained on next-token prediction with AdamW, a
linear warmup then cosine decay of the learning rate, gradient clipping and
gradient accumulation, optionally in bfloat16 autocast and under
``torch.compile``. Under ``torchrun`` it runs data-parallel with
DistributedDataParallel, or sharded with FSDP2 (``fully_shard``) when
``TrainConfig.fsdp`` is set.

Batch ``k`` of a run depends only on ``(seed, k)`` (see
``blocklab.data.sample_batch``). Each rank takes its own rows of that global
batch, and each accumulation step takes a slice of those rows. The global batch
is therefore the same for any number of processes, and a resumed run draws the
batches the uninterrupted run would have drawn. On CPU a resumed run reproduces
the uninterrupted run's losses bit for bit (the tests check this).

Library use (the ``compare`` command does this)::

    result = train(ModelConfig.preset("gpt2"), TrainConfig(steps=200), "runs/gpt2")
    model, tokenizer, model_config, train_config, step = load_run("runs/gpt2")
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from blocklab import distributed, runs
from blocklab.config import ModelConfig
from blocklab.data import (
    Tokenizer,
    build_tokenizer,
    encode_documents,
    eval_windows,
    load_corpus,
    load_tokenizer,
    make_document_split,
    sample_batch,
)
from blocklab.errors import UsageError
from blocklab.model import Transformer

logger = logging.getLogger(__name__)

#: The model ``blocklab train`` builds when no preset or config file is given.
DEFAULT_PRESET = "llama"

#: Largest accepted learning rate. AdamW divides lr by the bias correction
#: 1 - beta1**t and stores the result in float32; lr near the float32 maximum
#: (3.4e38) overflows there.
MAX_LR = 1e30

#: Largest accepted seed: torch.manual_seed takes a 64-bit integer.
MAX_SEED = 2**63 - 1

#: Fields a resumed run may change: they affect speed and logging, not the data
#: order or the optimisation.
RUNTIME_FIELDS = frozenset({"compile", "fsdp", "device", "tensorboard", "log_every", "bf16"})


# --- configuration ---------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything about a training run except the model.

    Attributes:
        data: corpus source for ``blocklab.data.load_corpus``: ``python-docs``,
            ``python-stdlib``, a .txt/.md/.jsonl path, a directory or
            ``hf:NAME[:CONFIG]``.
        tokenizer: ``bytes``, ``bpe:N`` (trained on the training split) or a
            path to a tokenizer.json file.
        val_fraction: share of documents held out for validation.
        seq_len: tokens per training sequence (T).
        batch_size: sequences per optimizer step, summed over accumulation
            steps and processes (the global batch).
        grad_accum: micro-batches per optimizer step; ``batch_size`` must be
            divisible by ``grad_accum`` times the number of processes.
        steps: optimizer steps; the cosine schedule ends here.
        lr: peak learning rate, at most ``MAX_LR``.
        warmup_steps: steps of linear warmup from lr / warmup_steps to lr.
            When it exceeds ``steps`` the run never reaches lr, and
            ``train`` logs a warning (the value is kept as given).
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        weight_decay: AdamW decoupled weight decay, applied to matrices and
            embedding tables only (not to norms and biases).
        beta1, beta2, eps: AdamW moment coefficients and epsilon.
        grad_clip: maximum global gradient norm; 0 disables clipping.
        seed: seed of the weight initialisation, the batch order and the
            train/validation split, from 0 to ``MAX_SEED``.
        eval_every: steps between validation evaluations; 0 evaluates only at
            the end.
        eval_batches: validation batches of ``batch_size`` windows per
            evaluation; 0 uses the whole validation text.
        save_every: steps between checkpoints; 0 saves only at the end.
        log_every: steps between metrics records (and every eval step).
        bf16: run forward passes in bfloat16 autocast.
        compile: wrap the model in ``torch.compile``.
        fsdp: shard the model with FSDP2 under torchrun instead of DDP.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        tensorboard: also write TensorBoard events (needs the tensorboard package).
        log_layer_grad_norms: add each block's gradient norm, before
            clipping, to every metrics record.
    """

    data: str = "python-docs"
    tokenizer: str = "bytes"
    val_fraction: float = 0.1
    seq_len: int = 128
    batch_size: int = 32
    grad_accum: int = 1
    steps: int = 500
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_batches: int = 16
    save_every: int = 100
    log_every: int = 10
    bf16: bool = False
    compile: bool = False
    fsdp: bool = False
    device: str = "auto"
    tensorboard: bool = False
    log_layer_grad_norms: bool = False

    def __post_init__(self) -> None:
        for name in ("data", "tokenizer", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                _invalid(name, getattr(self, name), "a non-empty string")
        for name in ("seq_len", "batch_size", "grad_accum", "steps"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "eval_batches", "save_every", "seed"):
            _check_int(name, getattr(self, name), 0)
        _check_int("log_every", self.log_every, 1)
        if self.seed > MAX_SEED:
            _invalid("seed", self.seed, f"an integer from 0 to {MAX_SEED} (2**63 - 1)")
        _check_number("lr", self.lr, low=0.0, high=MAX_LR)
        _check_number("eps", self.eps, low=0.0)
        _check_number("val_fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)
        _check_number("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0, low_open=False)
        _check_number("weight_decay", self.weight_decay, low=0.0, low_open=False)
        _check_number("grad_clip", self.grad_clip, low=0.0, low_open=False)
        for name in ("beta1", "beta2"):
            _check_number(name, getattr(self, name), low=0.0, high=1.0, low_open=False, high_open=True)
        for name in ("bf16", "compile", "fsdp", "tensorboard", "log_layer_grad_norms"):
            if not isinstance(getattr(self, name), bool):
                _invalid(name, getattr(self, name), "true or false")
        if self.batch_size % self.grad_accum:
            raise UsageError(
                f"TrainConfig.grad_accum: invalid value {self.grad_accum}; batch_size "
                f"({self.batch_size}) must be divisible by it"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a validated config; unknown keys raise UsageError."""
        if not isinstance(data, dict):
            raise UsageError(f"TrainConfig: expected a table of fields, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UsageError(
                f"TrainConfig: unknown field {unknown[0]!r}; run `blocklab train --list-fields` to see the fields"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a validated copy with ``changes`` applied."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _invalid(name: str, value: Any, expected: str) -> None:
    raise UsageError(f"TrainConfig.{name}: invalid value {value!r}; expected {expected}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _invalid(name, value, f"an integer >= {minimum}")


def _check_number(
    name: str, value: Any, *, low: float, high: float | None = None,
    low_open: bool = True, high_open: bool = False,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}"
        if high is not None:
            bound += f" and {'<' if high_open else '<='} {high}"
        _invalid(name, value, f"a finite number {bound}")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Return the learning rate of optimizer step ``step`` (0-based).

    Linear warmup: lr * (step + 1) / warmup_steps for the first warmup_steps
    steps. Then a cosine from lr down to lr * min_lr_ratio at the last step.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


# --- data ----------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Tokenized training and validation streams and their record for run.json.

    Attributes:
        tokenizer: the tokenizer that encoded both streams.
        train_tokens: 1-D int64 stream of the training documents.
        val_tokens: 1-D int64 stream of the validation documents.
        record: corpus source, size, SHA-256 and the split (validation
            document indices), as stored in run.json under ``data``.
    """

    tokenizer: Tokenizer
    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    record: dict[str, Any]


def prepare_data(config: TrainConfig, *, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Load the corpus, split it by document, build the tokenizer and encode both parts.

    Args:
        config: supplies data, tokenizer, val_fraction and seed.
        tokenizer: use this tokenizer instead of building one from the spec
            (a resumed run passes its saved tokenizer).

    Raises:
        DataError: for a missing, empty or unreadable corpus or a bad tokenizer spec.
    """
    corpus = load_corpus(config.data)
    split = make_document_split(corpus.documents, val_fraction=config.val_fraction, seed=config.seed)
    if tokenizer is None:
        tokenizer = build_tokenizer(config.tokenizer, split.train)
    train_tokens = encode_documents(split.train, tokenizer)
    val_tokens = encode_documents(split.val, tokenizer)
    record = {
        "source": corpus.source,
        "name": corpus.name,
        "num_documents": len(corpus.documents),
        "num_bytes": corpus.num_bytes,
        "sha256": runs.corpus_sha256(corpus.documents),
        "split": split.summary(),
        "train_tokens": int(train_tokens.numel()),
        "val_tokens": int(val_tokens.numel()),
    }
    return PreparedData(tokenizer, train_tokens, val_tokens, record)


def load_validation_tokens(
    record: dict[str, Any], tokenizer: Tokenizer, *, data: str | None = None
) -> torch.Tensor:
    """Rebuild a run's validation stream from its recorded corpus and split.

    Args:
        record: the run record (run.json).
        tokenizer: the run's tokenizer.
        data: another corpus source; its validation split (same fraction and
            seed) is used and no hash is checked.

    Raises:
        UsageError: when the recorded corpus changed since the run was trained.
    """
    data_record = record["data"]
    split_record = data_record.get("split", {})
    corpus = load_corpus(data or data_record["source"])
    if data is None and runs.corpus_sha256(corpus.documents) != data_record.get("sha256"):
        raise UsageError(
            f"corpus {data_record['source']!r} changed since the run was trained (its SHA-256 differs), "
            "so its validation documents are not the run's; pass --data to evaluate on it anyway"
        )
    split = make_document_split(
        corpus.documents, val_fraction=split_record.get("val_fraction", 0.1), seed=split_record.get("seed", 0)
    )
    if data is None and split.val_indices != split_record.get("val_indices"):
        raise UsageError(
            "the validation split rebuilt from the corpus differs from the recorded one; "
            "the data package's split rule may have changed"
        )
    return encode_documents(split.val, tokenizer)


# --- results and callbacks ------------------------------------------------------------


@dataclass
class TrainResult:
    """Outcome of one ``train`` call.

    Attributes:
        run_dir: the run directory.
        step: optimizer steps completed (including those before a resume).
        status: ``completed``, ``stopped`` (reached ``stop_at_step``),
            ``interrupted`` (SIGINT or SIGTERM; a checkpoint was saved) or
            ``finished`` (a resumed run was already at its last step or at
            ``stop_at_step``, so no step ran and nothing was written).
        final_loss: training loss of the last step, None if no step ran.
        final_val_loss: validation loss at the last evaluation.
        best_val_loss: lowest validation loss of the run.
        tokens_per_s: training tokens per second (``train_tokens /
            train_time_s``), excluding evaluation and checkpoint time.
        train_time_s: wall time of the training steps up to ``step``, summed
            over the calls that trained them (each checkpoint records the sum).
            A run resumed from a checkpoint that records no time (written by
            an older blocklab) counts only the steps after the resume.
        train_tokens: training tokens of the steps that ``train_time_s`` covers.
        peak_memory_mb: CUDA ``max_memory_allocated`` on a GPU; on a CPU the
            process's peak resident set size (``ru_maxrss``), which includes
            the Python interpreter and libraries.
        memory_kind: ``cuda_max_allocated`` or ``cpu_max_rss``.
        num_parameters: model parameters, tied weights counted once.
        history: every metrics record of the run, oldest first.
    """

    run_dir: Path
    step: int
    status: str
    final_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    tokens_per_s: float
    train_time_s: float
    train_tokens: int
    peak_memory_mb: float
    memory_kind: str
    num_parameters: int
    history: list[dict[str, Any]] = field(default_factory=list)


#: A callback receives each metrics record on rank 0 after it is written.
Callback = Callable[[dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; training stopped without saving."""


# --- the loop ----------------------------------------------------------------------------


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def layer_grad_norms(model: Transformer) -> list[float]:
    """Return the gradient norm of each block's parameters (0.0 where no gradient).

    Works on sharded (FSDP2) parameters too; every rank must then call it.
    """
    norms = []
    for block in model.blocks:
        total = torch.zeros((), dtype=torch.float32)
        for parameter in block.parameters():
            if parameter.grad is None:
                continue
            squared = distributed.total_norm(parameter.grad.detach().float().pow(2).sum())
            total = total + squared.cpu()
        norms.append(math.sqrt(float(total)))
    return norms


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state[f"cuda:{device.index}"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    key = f"cuda:{device.index}"
    if device.type == "cuda" and key in state:
        torch.cuda.set_rng_state(state[key], device)


@contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """Turn the first SIGINT or SIGTERM into a flag; a second one interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        logger.warning("received %s; saving a checkpoint after this step", signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_model_for_training(config: ModelConfig, train_config: TrainConfig) -> None:
    if not config.causal:
        raise UsageError(
            "model causal=false: next-token training needs a causal model; set causal=true "
            "or choose a causal preset (bert and t5 are bidirectional)"
        )
    if not config.lm_head:
        raise UsageError("model lm_head=false: training needs an output head; set lm_head=true")
    if config.position == "learned" and train_config.seq_len > config.max_seq_len:
        raise UsageError(
            f"seq_len {train_config.seq_len} is longer than the learned position table "
            f"(max_seq_len {config.max_seq_len}); raise max_seq_len or shorten seq_len"
        )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _estimate_parameters(config: ModelConfig) -> int:
    """Estimate the parameter count without building the model: 12 d^2 per block plus embeddings."""
    d_model, layers, vocab = config.d_model, config.n_layers, config.vocab_size
    return 12 * layers * d_model * d_model + 2 * vocab * d_model


def _build_model(config: ModelConfig, device: torch.device) -> Transformer:
    """Build the model on ``device``, turning a failed allocation into a UsageError."""
    try:
        return Transformer(config).to(device)
    except (MemoryError, RuntimeError) as error:
        if not isinstance(error, (MemoryError, torch.OutOfMemoryError)) and "alloc" not in str(error):
            raise
        raise UsageError(
            f"cannot allocate the model on {device} (d_model {config.d_model}, n_layers {config.n_layers}, "
            f"vocab_size {config.vocab_size}, about {_estimate_parameters(config):.2e} parameters); "
            "lower d_model or n_layers"
        ) from None


def _remove_empty_dirs(directories: Sequence[Path]) -> None:
    """Remove each directory, innermost first, and stop at the first one that is not empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _load_run_tokenizer(run_dir: Path) -> Tokenizer:
    directory = run_dir / runs.TOKENIZER_DIR
    if not directory.is_dir() or not any(directory.iterdir()):
        raise UsageError(
            f"tokenizer directory {str(directory)!r} is missing or empty, so the run may be damaged; "
            "restore it from a copy of the run or start a new run"
        )
    return load_tokenizer(directory)


class _Trainer:
    """State of one ``train`` call; ``run`` is the loop."""

    def __init__(
        self, model_config: ModelConfig, config: TrainConfig, run_dir: Path, *, resume: bool,
        overwrite: bool, progress: bool, callbacks: Sequence[Callback], stop_at_step: int | None,
        data: PreparedData | None, vocab_size_source: str | None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.callbacks = list(callbacks)
        self.stop_at_step = stop_at_step
        self.overwrite = overwrite
        # Until the first step completes, a failure of a new run undoes what
        # this call created (see ``undo_start``).
        self.starting = not resume
        self.new_run: runs.NewRunDir | None = None
        self._created_parents: list[Path] = []
        self._remove_created_parents = False
        self.context = distributed.init_distributed(config.device)
        self._lock = contextlib.ExitStack()
        try:
            if self.context.is_main:
                # lock_run_dir creates missing parents; undo_start removes them again.
                self._created_parents = [p for p in run_dir.absolute().parents if not p.exists()]
            self._lock_run_dir()
            self._setup(model_config, resume, overwrite, data, vocab_size_source)
        except BaseException:
            self.undo_start()
            self.close()
            raise

    def undo_start(self) -> None:
        """After a failure before the first completed step, remove what this call created.

        A run directory at step 0 is not a trained run, so it is not left to
        look like one. Only what this call wrote goes: the run's own entries,
        the directory and its parents if this call created them, and a run it
        replaced (``overwrite``) is put back. After the first step nothing is
        removed. Call it while the run directory is still locked.
        """
        if not self.starting:
            return
        self.starting = False
        if self.new_run is not None:
            logger.info("no training step completed, so run %s is removed", self.run_dir)
            self.new_run.discard()
            self.new_run = None
        self._remove_created_parents = True

    def _keep_started_run(self) -> None:
        """Keep the new run for good once its first step completed (the replaced run is deleted)."""
        if not self.starting:
            return
        self.starting = False
        if self.new_run is not None:
            self.new_run.commit()
            self.new_run = None

    def close(self) -> None:
        """Release the run directory lock and leave the process group."""
        try:
            self._lock.close()
        finally:
            distributed.shutdown(self.context)
            if self._remove_created_parents:
                _remove_empty_dirs(self._created_parents)

    def _lock_run_dir(self) -> None:
        """Lock the run directory on rank 0 for the whole run.

        Only rank 0 writes the run, so only it locks. Every rank then learns
        whether the lock was taken, so no rank waits for a failed rank 0.
        """
        error = None
        if self.context.is_main:
            try:
                self._lock.enter_context(runs.lock_run_dir(self.run_dir))
            except UsageError as caught:
                error = caught
        if distributed.broadcast_flag(error is not None, self.context):
            raise error or UsageError(
                f"rank 0 could not lock run directory {str(self.run_dir)!r}; see its error message"
            )

    # Setup ---------------------------------------------------------------------

    def _setup(
        self, model_config: ModelConfig, resume: bool, overwrite: bool, data: PreparedData | None,
        vocab_size_source: str | None,
    ) -> None:
        config, context = self.config, self.context
        if resume:
            record = runs.read_run_record(self.run_dir)
            tokenizer = _load_run_tokenizer(self.run_dir)
            checkpoint = runs.load_checkpoint(self.run_dir)
        else:
            runs.check_new_run_dir(self.run_dir, overwrite=overwrite)
            tokenizer, checkpoint = None, None
        if data is None or (tokenizer is not None and data.tokenizer.spec != tokenizer.spec):
            data = prepare_data(config, tokenizer=tokenizer)
        if resume and data.record["sha256"] != record["data"].get("sha256"):
            raise UsageError(
                f"corpus {config.data!r} changed since the run started (its SHA-256 differs); "
                "resuming would train on different data, so start a new run"
            )
        self.data = data

        check_vocab_size(model_config.vocab_size, data.tokenizer, vocab_size_source)
        if model_config.vocab_size != data.tokenizer.vocab_size:
            logger.info("vocab_size set to %d by the tokenizer", data.tokenizer.vocab_size)
            model_config = model_config.replace(vocab_size=data.tokenizer.vocab_size)
        _check_model_for_training(model_config, config)
        self.model_config = model_config
        if not resume and config.warmup_steps > config.steps:
            logger.warning(
                "warmup_steps %d is more than steps %d, so the learning rate never reaches lr %g; "
                "set warmup_steps to at most %d to reach it",
                config.warmup_steps, config.steps, config.lr, config.steps,
            )

        world = context.world_size * config.grad_accum
        if config.batch_size % world:
            raise UsageError(
                f"batch_size {config.batch_size} is not divisible by processes x grad_accum "
                f"({context.world_size} x {config.grad_accum}); choose a multiple of {world}"
            )
        self.micro_batch = config.batch_size // world
        # Both checks run before anything is written; they raise DataError for short text.
        sample_batch(data.train_tokens, 1, config.seq_len, seed=config.seed, step=0)
        max_windows = config.eval_batches * config.batch_size or None
        self.eval_batches = list(eval_windows(
            data.val_tokens, config.seq_len, max_windows=max_windows, batch_size=self.micro_batch,
        ))

        torch.manual_seed(config.seed)
        self.model = _build_model(model_config, context.device)
        self.num_parameters = self.model.num_parameters()
        self.wrapped = distributed.wrap_model(self.model, context, fsdp=config.fsdp)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, config.weight_decay), lr=config.lr,
            betas=(config.beta1, config.beta2), eps=config.eps,
        )
        if config.compile:
            self.wrapped = torch.compile(self.wrapped)

        self.start_step = 0
        self.extra: dict[str, Any] = {"best_val_loss": None, "val_loss": None}
        if checkpoint is not None:
            check_checkpoint_matches(self.model, checkpoint.model, checkpoint.path)
            distributed.load_model_state(self.model, checkpoint.model)
            if checkpoint.optimizer is not None:
                distributed.load_optimizer_state(self.model, self.optimizer, checkpoint.optimizer)
            _set_rng_state(checkpoint.rng, context.device)
            self.start_step = checkpoint.step
            self.extra.update(checkpoint.extra)
            logger.info("resuming %s from step %d", self.run_dir, self.start_step)
            if "train_time_s" not in self.extra or "train_tokens" not in self.extra:
                logger.warning(
                    "checkpoint at step %d records no training time, so the reported training time and "
                    "tokens/s cover only the steps after it", self.start_step,
                )
        # Training time and tokens of the steps up to start_step, as each checkpoint stores them.
        self.extra.setdefault("train_time_s", 0.0)
        self.extra.setdefault("train_tokens", 0)

        self.history: list[dict[str, Any]] = []
        if context.is_main:
            if resume:
                self.history = runs.truncate_metrics(self.run_dir, self.start_step)
            else:
                self._create_run()
        distributed.barrier(context)
        self.last_saved = self.start_step
        if not resume:
            self._save(0)

    def _create_run(self) -> None:
        self.new_run = runs.start_run_dir(self.run_dir, overwrite=self.overwrite)
        self.data.tokenizer.save(self.run_dir / runs.TOKENIZER_DIR)
        import blocklab

        runs.write_run_record(self.run_dir, {
            "model": self.model_config.to_dict(),
            "train": self.config.to_dict(),
            "data": self.data.record,
            "tokenizer": {
                "spec": self.data.tokenizer.spec,
                "vocab_size": self.data.tokenizer.vocab_size,
                "eos_id": self.data.tokenizer.eos_id,
            },
            "num_parameters": self.num_parameters,
            "world_size": self.context.world_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"blocklab": blocklab.__version__, "torch": torch.__version__},
        })

    # Steps ---------------------------------------------------------------------

    def _autocast(self):
        if not self.config.bf16:
            return nullcontext()
        return torch.autocast(self.context.device.type, dtype=torch.bfloat16)

    def _train_step(self, step: int) -> tuple[float, float]:
        """Run optimizer step ``step`` (0-based); return (loss, grad norm) before the update."""
        config, context = self.config, self.context
        lr = learning_rate(step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = sample_batch(
            self.data.train_tokens, config.batch_size, config.seq_len, seed=config.seed, step=step
        )
        per_rank = config.batch_size // context.world_size
        rows = slice(context.rank * per_rank, (context.rank + 1) * per_rank)
        inputs, targets = inputs[rows].to(context.device), targets[rows].to(context.device)

        self.wrapped.train()
        loss_sum = torch.zeros((), device=context.device)
        for micro in range(config.grad_accum):
            part = slice(micro * self.micro_batch, (micro + 1) * self.micro_batch)
            last = micro == config.grad_accum - 1
            with distributed.gradient_sync(self.wrapped, last), self._autocast():
                # The model computes the loss chunk by chunk, without (b, T, V) logits.
                loss = self.wrapped(inputs[part], targets=targets[part]).loss
                (loss / config.grad_accum).backward()
            loss_sum += loss.detach()

        loss_value = float(distributed.all_reduce(loss_sum / config.grad_accum, context))
        self.layer_norms = layer_grad_norms(self.model) if self._logs(step + 1) and config.log_layer_grad_norms else None
        max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
        grad_norm = float(distributed.total_norm(nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)))
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            what = f"loss is {loss_value}" if not math.isfinite(loss_value) else f"gradient norm is {grad_norm}"
            if self.starting:
                raise NonFiniteLossError(
                    f"{what} at step {step + 1}; training stopped before any step completed, so the new "
                    f"run in {str(self.run_dir)!r} is removed; lower the learning rate (--lr) or set "
                    "grad_clip, then start again"
                )
            raise NonFiniteLossError(
                f"{what} at step {step + 1}; training stopped and the last good checkpoint "
                f"(step {self.last_saved}) is kept in {str(self.run_dir)!r}; lower the learning rate "
                "(--lr) or set grad_clip, then start again with --overwrite"
            )
        try:
            self.optimizer.step()
        except RuntimeError as error:
            if "overflow" not in str(error):
                raise
            raise UsageError(
                f"the update of step {step + 1} overflows float32 at learning rate {lr:g} "
                f"({_first_line(error)}); lower --lr"
            ) from None
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm

    def _logs(self, step: int) -> bool:
        return step % self.config.log_every == 0 or self._evaluates(step) or step == self.end_step

    def _evaluates(self, step: int) -> bool:
        every = self.config.eval_every
        return (every > 0 and step % every == 0) or step == self.end_step

    @torch.no_grad()
    def evaluate(self) -> float:
        """Return the mean validation loss per token over the fixed evaluation windows."""
        self.wrapped.eval()
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for inputs, targets, mask in self.eval_batches:
            with self._autocast():
                logits = self.wrapped(inputs.to(self.context.device)).logits
            losses = F.cross_entropy(
                logits.float().flatten(0, 1), targets.to(logits.device).flatten(), reduction="none"
            )
            mask = mask.to(logits.device).flatten()
            total += losses[mask].double().sum().cpu()
            count += int(mask.sum())
        self.wrapped.train()
        return float(total / max(count, 1))

    def _save(self, step: int) -> None:
        model_state = distributed.full_model_state(self.model)
        optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        if self.context.is_main:
            runs.save_checkpoint(
                self.run_dir, step, model=model_state, optimizer=optimizer_state,
                rng=_rng_state(self.context.device), extra={**self.extra, "world_size": self.context.world_size},
            )
        distributed.barrier(self.context)
        self.last_saved = step

    # The loop ------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, context = self.config, self.context
        self.end_step = config.steps if self.stop_at_step is None else min(config.steps, self.stop_at_step)
        if self.start_step >= self.end_step:
            logger.info("run %s is already at step %d of %d; no step to train", self.run_dir, self.start_step,
                        self.end_step)
            return self._result(self.start_step, "finished", None)
        metrics = runs.MetricsLog(self.run_dir / runs.METRICS_FILE) if context.is_main else None
        board = self._tensorboard() if context.is_main else None
        bar = tqdm(
            total=config.steps, initial=self.start_step, unit="step", dynamic_ncols=True,
            disable=not (self.progress and context.is_main), desc="train",
        )
        tokens_per_step = config.batch_size * config.seq_len
        status, final_loss = "completed", None
        interval_time, interval_steps = 0.0, 0
        step = self.start_step
        try:
            with _stop_signals() as stop_flag:
                while step < self.end_step:
                    started = time.perf_counter()
                    loss, grad_norm = self._train_step(step)
                    step += 1
                    self._keep_started_run()

                    elapsed = time.perf_counter() - started
                    self.extra["train_time_s"] += elapsed
                    self.extra["train_tokens"] += tokens_per_step
                    interval_time += elapsed
                    interval_steps += 1
                    final_loss = loss
                    tokens_per_s = interval_steps * tokens_per_step / max(interval_time, 1e-9)

                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{learning_rate(step - 1, config):.2e}",
                                    tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                    bar.update(1)

                    if self._logs(step):
                        record = {
                            "step": step, "loss": loss, "lr": learning_rate(step - 1, config),
                            "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
                            "tokens_seen": step * tokens_per_step,
                        }
                        if self.layer_norms is not None:
                            record["layer_grad_norms"] = self.layer_norms
                        if self._evaluates(step):
                            self._record_eval(record)
                        interval_time, interval_steps = 0.0, 0
                        if metrics is not None:
                            self._emit(record, metrics, board)

                    stopping = distributed.broadcast_flag(stop_flag.is_set(), context)
                    if stopping or (config.save_every and step % config.save_every == 0) or step == self.end_step:
                        self._save(step)
                    if stopping:
                        status = "interrupted"
                        break
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
            if board is not None:
                board.close()
        if status == "completed" and step < config.steps:
            status = "stopped"
        return self._result(step, status, final_loss)

    def _record_eval(self, record: dict[str, Any]) -> None:
        val_loss = self.evaluate()
        record["val_loss"] = val_loss
        record["val_ppl"] = math.exp(min(val_loss, 700.0))
        best = self.extra.get("best_val_loss")
        self.extra["val_loss"] = val_loss
        self.extra["best_val_loss"] = val_loss if best is None else min(best, val_loss)

    def _emit(self, record: dict[str, Any], metrics: runs.MetricsLog, board: Any) -> None:
        metrics.write(record)
        self.history.append(record)
        if board is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss"):
                if key in record:
                    board.add_scalar(key, record[key], record["step"])
        if "val_loss" in record:
            logger.info("step %d: loss %.4f, validation loss %.4f", record["step"], record["loss"], record["val_loss"])
        for callback in self.callbacks:
            callback(record)

    def _tensorboard(self) -> Any:
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed, so no TensorBoard events are written; "
                           "run `pip install tensorboard`")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _result(self, step: int, status: str, final_loss: float | None) -> TrainResult:
        memory, kind = _peak_memory(self.context.device)
        train_time, tokens = self.extra["train_time_s"], self.extra["train_tokens"]
        return TrainResult(
            run_dir=self.run_dir, step=step, status=status, final_loss=final_loss,
            final_val_loss=self.extra.get("val_loss"), best_val_loss=self.extra.get("best_val_loss"),
            tokens_per_s=tokens / train_time if train_time > 0 else 0.0, train_time_s=train_time,
            train_tokens=tokens,
            peak_memory_mb=memory, memory_kind=kind, num_parameters=self.num_parameters,
            history=list(self.history),
        )


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    stop_at_step: int | None = None,
    data: PreparedData | None = None,
    vocab_size_source: str | None = None,
) -> TrainResult:
    """Train a model and write a run directory.

    Args:
        model_config: the model; its vocab_size is replaced by the tokenizer's
            unless ``vocab_size_source`` is given.
        train_config: data, optimisation and logging settings.
        run_dir: where the run is written (see ``blocklab.runs``).
        resume: continue the run in ``run_dir`` from its latest checkpoint. The
            configs recorded in the run are used as given here, so pass the
            run's own (``load_run`` returns them). A run that reached its
            ``steps`` cannot be extended, because the learning-rate schedule
            ended there; resuming it trains no step.
        overwrite: replace an existing run at ``run_dir``. Without it, only
            a run with no trained step (a failed start) is replaced. The
            replaced run is deleted once the first step completes.
        progress: show a tqdm progress bar on rank 0.
        callbacks: called on rank 0 with each metrics record.
        stop_at_step: save and stop after this step while keeping the
            schedule of ``train_config.steps``; a later ``resume`` continues.
        data: tokenized data from ``prepare_data`` to reuse across runs; it
            must come from the same ``train_config`` data settings.
        vocab_size_source: where the user set ``model_config.vocab_size``
            (see ``setting_source``). A size that then differs from the
            tokenizer's raises UsageError instead of being replaced.

    Returns:
        A TrainResult; on an interrupt (SIGINT or SIGTERM) the checkpoint is
        saved and the result's status is ``interrupted``.

    While it runs, rank 0 holds ``runs.lock_run_dir`` on ``run_dir``. When a
    new run fails before its first step completes (for example the first
    batch does not fit in memory), the exception propagates after the files
    and directories this call created are removed and a replaced run is put
    back, so no untrained run is left behind. A resumed run keeps its files.

    Raises:
        UsageError: for conflicting options, an existing run without
            ``overwrite``, a run directory locked by another process, a
            missing or damaged run when resuming, a model too large to
            allocate, or a ``vocab_size_source`` that the tokenizer contradicts.
        DataError: for a missing or too short corpus.
        NonFiniteLossError: when the loss or gradient norm stops being finite;
            no checkpoint is written at that step.
    """
    if resume and overwrite:
        raise UsageError("resume and overwrite conflict: resume continues a run, overwrite replaces it; pass one")
    if stop_at_step is not None and (isinstance(stop_at_step, bool) or stop_at_step < 1):
        raise UsageError(f"stop_at_step: invalid value {stop_at_step!r}; expected an integer >= 1")
    trainer = _Trainer(
        model_config, train_config, Path(run_dir), resume=resume, overwrite=overwrite,
        progress=progress, callbacks=callbacks, stop_at_step=stop_at_step, data=data,
        vocab_size_source=vocab_size_source,
    )
    try:
        return trainer.run()
    except BaseException:
        trainer.undo_start()
        raise
    finally:
        trainer.close()


# --- loading a run -----------------------------------------------------------------------


class LoadedRun(NamedTuple):
    """A trained model with its tokenizer and configs, as ``load_run`` returns it."""

    model: Transformer
    tokenizer: Tokenizer
    model_config: ModelConfig
    train_config: TrainConfig
    step: int


def check_checkpoint_matches(model: nn.Module, state: dict[str, Any], path: Any) -> None:
    """Raise UsageError when a checkpoint's tensors do not fit the model built from run.json.

    A hand-edited run.json (a different d_model, say) would otherwise fail in
    load_state_dict with a long size-mismatch message.
    """
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise UsageError(
            f"checkpoint {str(path)!r} does not match the recorded model: "
            f"{'missing' if missing else 'unexpected'} tensor {name!r}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UsageError(
                f"checkpoint {str(path)!r} does not match the recorded model: tensor {name!r} has shape "
                f"{tuple(state[name].shape)} in the checkpoint and {tuple(tensor.shape)} in the model that "
                "run.json describes; restore run.json or start a new run"
            )
    # Tensors the model shares (a tied head and embedding) must be equal in
    # the checkpoint, or loading would keep one of them and drop the other.
    # Grouped by parameter identity, which FSDP2's sharding keeps; storage
    # pointers would group empty shards together.
    first_by_parameter: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        first = first_by_parameter.setdefault(id(parameter), name)
        if first != name and not torch.equal(state[first], state[name]):
            raise UsageError(
                f"checkpoint {str(path)!r} does not match the recorded model: {first!r} and {name!r} are "
                "one tensor in the model that run.json describes (tie_embeddings) but differ in the "
                "checkpoint; restore run.json or start a new run"
            )


def load_run(
    run_dir: str | os.PathLike[str], *, step: int | None = None, device: str | torch.device = "cpu"
) -> LoadedRun:
    """Load a run's model (latest checkpoint unless ``step``) in eval mode.

    Raises:
        UsageError: when the directory is not a run or its files are damaged.
    """
    run_dir = runs.require_run_dir(run_dir)
    record = runs.read_run_record(run_dir)
    try:
        model_config = ModelConfig.from_dict(record["model"])
        train_config = TrainConfig.from_dict(record["train"])
    except ValueError as error:
        raise UsageError(f"run record {str(run_dir / runs.RUN_FILE)!r} has an invalid config: {error}") from None
    tokenizer = _load_run_tokenizer(run_dir)
    checkpoint = runs.load_checkpoint(run_dir, step, with_optimizer=False)
    model = Transformer(model_config)
    check_checkpoint_matches(model, checkpoint.model, checkpoint.path)
    model.load_state_dict(checkpoint.model)
    device = torch.device(device) if isinstance(device, str) else device
    model.to(device).eval()
    return LoadedRun(model, tokenizer, model_config, train_config, checkpoint.step)


# --- resolving configs for the command line ------------------------------------------------


def parse_value(text: str) -> Any:
    """Parse a --set value: JSON (numbers, true/false, null, lists), then TOML, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _model_field_names() -> set[str]:
    return {f.name for f in fields(ModelConfig)}


def _train_field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


def _set_nested(data: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    """Set ``data[path[0]][path[1]]... = value``, rejecting names the dicts do not have.

    A table that is None (such as ``rope.scaling``) starts as an empty dict, and
    its fields are checked when the config is built.
    """
    node = data
    checked = True
    for index, key in enumerate(path):
        name = ".".join(path[: index + 1])
        if checked and key not in node:
            raise UsageError(
                f"{where}: unknown model field {name!r}; run `blocklab train --list-fields` to see the fields"
            )
        if index == len(path) - 1:
            node[key] = value
            return
        child = node.get(key)
        checked = child is not None
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise UsageError(f"{where}: {name} is not a table, so it has no field {path[index + 1]!r}")
        node = child


def apply_setting(
    model: dict[str, Any], train_: dict[str, Any], key: str, value: Any, where: str
) -> tuple[str, ...]:
    """Apply one ``key=value`` to the model or train dict; the key may start with model. or train.

    Returns:
        The field's full path, such as ``("model", "rope", "theta")``, so that
        ``steps`` and ``train.steps`` compare equal.

    Raises:
        UsageError: for an unknown field.
    """
    path = key.split(".")
    if path[0] in ("model", "train") and len(path) > 1:
        section, path = path[0], path[1:]
    elif path[0] in _model_field_names():
        section = "model"
    elif path[0] in _train_field_names():
        section = "train"
    else:
        raise UsageError(
            f"{where}: unknown config field {key!r}; run `blocklab train --list-fields` to see the fields"
        )
    known = _model_field_names() if section == "model" else _train_field_names()
    if path[0] not in known:
        raise UsageError(
            f"{where}: unknown {section} field {path[0]!r}; run `blocklab train --list-fields` to see the fields"
        )
    if section == "train" and len(path) > 1:
        raise UsageError(f"{where}: train field {path[0]!r} has no sub-fields")
    _set_nested(model if section == "model" else train_, path, value, where)
    return (section, *path)


def _read_toml(path: str) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"config file {path!r} is a directory; pass a TOML file with [model] and [train] tables")
    if not file.is_file():
        raise UsageError(f"config file not found: {path!r}; pass a TOML file with [model] and [train] tables")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot parse config file {path!r}: {error}") from None
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise UsageError(f"config file {path!r}: unknown table [{unknown[0]}]; expected [model] and [train]")
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise UsageError(f"config file {path!r}: {section} must be a table")
    return data


def _preset_dict(name: str) -> dict[str, Any]:
    try:
        return ModelConfig.preset(name).to_dict()
    except ValueError as error:
        raise UsageError(str(error)) from None


def resolve_configs(
    *,
    preset: str | None = None,
    config_file: str | None = None,
    settings: Sequence[str] = (),
    flags: dict[str, Any] | None = None,
    base: tuple[ModelConfig, TrainConfig] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Combine the configuration layers of ``blocklab train``; later layers win.

    The layers are: ``base`` (or the default preset and TrainConfig
    defaults), the preset (``--preset``, else ``preset`` in the file's
    [model] table), the TOML file's [model] and [train] tables, the
    ``--set KEY=VALUE`` settings, and ``flags`` (train fields from dedicated
    options such as --steps). A flag must not set a field to another value
    than the file or a setting does.

    Raises:
        UsageError: for an unknown preset, field or table, an invalid value,
            or a flag that conflicts with the file or a setting.
    """
    file_data = _read_toml(config_file) if config_file else {}
    file_model = dict(file_data.get("model", {}))
    file_train = dict(file_data.get("train", {}))
    preset = preset or file_model.pop("preset", None)
    file_model.pop("preset", None)

    if preset is not None:
        model = _preset_dict(preset)
    elif base is not None:
        model = base[0].to_dict()
    else:
        model = _preset_dict(DEFAULT_PRESET)
    train_ = base[1].to_dict() if base is not None else TrainConfig().to_dict()

    _merge(model, file_model, f"config file {config_file!r}", "model.")
    # The source of each train field set by the file or --set, for conflict messages.
    train_sources: dict[str, str] = {}
    for key, value in file_train.items():
        apply_setting(model, train_, f"train.{key}", value, f"config file {config_file!r}")
        train_sources[key] = f"{key} = {json.dumps(value)} in config file {config_file!r}"
    # The field path of each --set so far, to reject a field set twice.
    set_paths: dict[tuple[str, ...], str] = {}
    for setting in settings:
        key, separator, text = setting.partition("=")
        if not separator or not key.strip():
            raise UsageError(f"--set {setting!r}: expected KEY=VALUE, for example --set d_model=256")
        before = dict(train_)
        path = apply_setting(model, train_, key.strip(), parse_value(text.strip()), f"--set {setting}")
        _check_repeated_setting(path, setting, set_paths)
        set_paths[path] = setting
        for name in train_:
            if train_[name] != before[name] or key.strip() in (name, f"train.{name}"):
                train_sources[name] = f"--set {setting}"
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key in train_sources and train_[key] != value:
            flag = "--" + key.replace("_", "-")
            shown = flag if value is True else f"{flag} {value}"
            raise UsageError(f"{shown} conflicts with {train_sources[key]}; pass one")
        train_[key] = value

    try:
        model_config = ModelConfig.from_dict(model)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return model_config, TrainConfig.from_dict(train_)


def _check_repeated_setting(path: tuple[str, ...], setting: str, earlier: dict[tuple[str, ...], str]) -> None:
    """Reject a --set for a field that an earlier --set already sets, directly or through its table.

    Without this check the later value would silently win.
    """
    for other_path, other in earlier.items():
        shorter = min(len(path), len(other_path))
        if path[:shorter] != other_path[:shorter]:
            continue
        name, other_name = ".".join(path[1:]), ".".join(other_path[1:])
        if path == other_path:
            raise UsageError(f"--set {setting}: --set {other} already sets {name!r}; pass each field once")
        raise UsageError(
            f"--set {setting} sets {name!r}, which overlaps --set {other} (it sets {other_name!r}); "
            "pass each field once"
        )


def setting_source(field_name: str, *, config_file: str | None = None, settings: Sequence[str] = ()) -> str | None:
    """Return where the user set model field ``field_name``, or None when only a preset or default did.

    Args:
        field_name: a top-level ModelConfig field, such as ``vocab_size``.
        config_file: the TOML file passed with --config, if any.
        settings: the ``--set KEY=VALUE`` strings.

    Returns:
        ``--set KEY=VALUE`` or ``NAME = VALUE in config file 'PATH'``, as
        the first words of an error message. A --set wins over the file, as
        in ``resolve_configs``.
    """
    for setting in reversed(settings):
        key = setting.partition("=")[0].strip()
        if key in (field_name, f"model.{field_name}"):
            return f"--set {setting}"
    if config_file:
        file_model = _read_toml(config_file).get("model", {})
        if field_name in file_model:
            return f"{field_name} = {json.dumps(file_model[field_name])} in config file {config_file!r}"
    return None


def check_vocab_size(vocab_size: int, tokenizer: Tokenizer, source: str | None) -> None:
    """Reject a vocab_size the user set that differs from the tokenizer's vocabulary.

    Args:
        vocab_size: the model's vocab_size.
        tokenizer: the tokenizer the run uses.
        source: where the user set vocab_size (see ``setting_source``). None
            means a preset or default did, so the tokenizer's size replaces it.

    Raises:
        UsageError: naming both sizes and what to do.
    """
    if source is None or vocab_size == tokenizer.vocab_size:
        return
    raise UsageError(
        f"{source} conflicts with tokenizer {tokenizer.spec!r}, whose vocabulary has {tokenizer.vocab_size} "
        f"tokens; drop the setting (vocab_size follows the tokenizer) or choose a tokenizer with "
        f"{vocab_size} tokens"
    )


def _merge(target: dict[str, Any], values: dict[str, Any], where: str, prefix: str) -> None:
    """Merge a TOML table into a config dict; nested tables merge field by field."""
    for key, value in values.items():
        if key not in target:
            raise UsageError(
                f"{where}: unknown field {prefix}{key!r}; run `blocklab train --list-fields` to see the fields"
            )
        if isinstance(value, dict) and isinstance(target[key], dict):
            _merge(target[key], value, where, f"{prefix}{key}.")
        else:
            target[key] = value


def _config_differences(
    given: tuple[ModelConfig, TrainConfig], recorded: tuple[ModelConfig, TrainConfig]
) -> list[str]:
    differences = []
    for section, new, old, skip in (
        ("model", given[0].to_dict(), recorded[0].to_dict(), {"vocab_size"}),
        ("train", given[1].to_dict(), recorded[1].to_dict(), RUNTIME_FIELDS),
    ):
        for key in new:
            if key not in skip and new[key] != old.get(key):
                differences.append(f"{section}.{key} is {new[key]!r} here but {old.get(key)!r} in the run")
    return differences


# --- the command ---------------------------------------------------------------------------

_FLAG_FIELDS = {
    "data": "data", "tokenizer": "tokenizer", "steps": "steps", "batch_size": "batch_size",
    "seq_len": "seq_len", "lr": "lr", "seed": "seed", "grad_accum": "grad_accum",
    "eval_every": "eval_every", "save_every": "save_every", "log_every": "log_every",
    "device": "device",
}
_SWITCH_FIELDS = ("bf16", "compile", "fsdp", "tensorboard")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="directory to write the run to (created; an existing run needs --resume or --overwrite)")
    parser.add_argument("--preset", help=f"named model architecture (default {DEFAULT_PRESET}); see --list-fields")
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with [model] and [train] tables")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set d_model=256 --set rope.theta=500000 "
                             "(repeatable, once per field; values are JSON or TOML, else strings)")
    parser.add_argument("--data", help="corpus: python-docs (default), python-stdlib, a .txt/.md/.jsonl file, "
                                       "a directory or hf:NAME[:CONFIG]")
    parser.add_argument("--tokenizer", help="bytes (default), bpe:N or a tokenizer.json path")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, help="sequences per optimizer step, over all processes")
    parser.add_argument("--seq-len", type=int, help="tokens per training sequence")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed of the initialisation, batch order and split")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--eval-every", type=int, help="steps between validation evaluations (0: only at the end)")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints (0: only at the end)")
    parser.add_argument("--log-every", type=int, help="steps between metrics records")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", default=None, help="compile the model with torch.compile")
    parser.add_argument("--fsdp", action="store_true", default=None,
                        help="under torchrun, shard the model with FSDP2 instead of DDP")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write TensorBoard events to RUN_DIR/tensorboard")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its latest checkpoint; a run that reached "
                             "its --steps is finished and cannot be extended")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in RUN_DIR")
    parser.add_argument("--stop-at-step", type=int, metavar="STEP",
                        help="save and stop after STEP steps, keeping the full schedule; continue with --resume")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--list-fields", action="store_true", help="print every config field with its default and exit")


def _list_fields() -> str:
    lines = ["[model] fields (ModelConfig; defaults of preset " + DEFAULT_PRESET + "):"]
    for key, value in ModelConfig.preset(DEFAULT_PRESET).to_dict().items():
        lines.append(f"  {key} = {json.dumps(value)}")
    lines.append("[train] fields (TrainConfig):")
    for key, value in TrainConfig().to_dict().items():
        lines.append(f"  {key} = {json.dumps(value)}")
    from blocklab.config import PRESETS

    lines.append("presets: " + ", ".join(PRESETS))
    return "\n".join(lines)


def _configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    flags = {field_name: getattr(args, attr) for attr, field_name in _FLAG_FIELDS.items()}
    flags.update({name: getattr(args, name) for name in _SWITCH_FIELDS})
    given = args.preset or args.config or args.settings or any(v is not None for v in flags.values())
    if not args.resume:
        return resolve_configs(preset=args.preset, config_file=args.config, settings=args.settings, flags=flags)

    record = runs.read_run_record(args.run_dir)
    try:
        recorded = (ModelConfig.from_dict(record["model"]), TrainConfig.from_dict(record["train"]))
    except ValueError as error:
        raise UsageError(f"run record in {args.run_dir!r} has an invalid config: {error}") from None
    if not given:
        return recorded
    resolved = resolve_configs(preset=args.preset, config_file=args.config, settings=args.settings,
                               flags=flags, base=recorded)
    source = setting_source("vocab_size", config_file=args.config, settings=args.settings)
    if source is not None and resolved[0].vocab_size != recorded[0].vocab_size:
        tokenizer = _load_run_tokenizer(Path(args.run_dir))
        check_vocab_size(resolved[0].vocab_size, tokenizer, source)
    differences = _config_differences(resolved, recorded)
    if differences:
        raise UsageError(
            f"--resume keeps the run's configuration, but {differences[0]}; drop the change or start a new run"
        )
    runtime = {name: getattr(resolved[1], name) for name in RUNTIME_FIELDS}
    return recorded[0], recorded[1].replace(**runtime)


def _print_nothing_to_do(run_dir: str, step: int, steps: int, stop_at_step: int | None) -> None:
    if step >= steps:
        print(
            f"run {run_dir} already finished at step {step} of {steps}; nothing to do "
            "(a finished run cannot be extended: start a new run with more --steps)"
        )
    else:
        print(f"run {run_dir} is already at step {step} of {steps}, which reaches "
              f"--stop-at-step {stop_at_step}; nothing to do")


def run_command(args: argparse.Namespace) -> int:
    if args.list_fields:
        print(_list_fields())
        return 0
    if not args.run_dir:
        raise UsageError("missing RUN_DIR; pass the directory to write the run to, e.g. blocklab train runs/first")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite conflict: --resume continues a run, --overwrite replaces it")
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise UsageError(f"--stop-at-step: invalid value {args.stop_at_step}; expected a step >= 1")
    model_config, train_config = _configs_from_args(args)
    vocab_size_source = setting_source("vocab_size", config_file=args.config, settings=args.settings)
    try:
        result = train(
            model_config, train_config, args.run_dir, resume=args.resume, overwrite=args.overwrite,
            progress=not args.no_progress, stop_at_step=args.stop_at_step, vocab_size_source=vocab_size_source,
        )
    except NonFiniteLossError as error:
        print(f"blocklab train: error: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":
        return 0
    if result.status == "finished":
        _print_nothing_to_do(args.run_dir, result.step, train_config.steps, args.stop_at_step)
        return 0
    val = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "n/a"
    print(
        f"{result.status} at step {result.step}: validation loss {val}, "
        f"{result.tokens_per_s:,.0f} tokens/s, run saved in {args.run_dir}"
    )
    if result.status == "interrupted":
        print(f"continue with: blocklab train {args.run_dir} --resume", file=sys.stderr)
        return 130
    return 0
