"""The side-by-side study: train variants of one backbone and compare them.

``blocklab compare`` varies one config field over a list of values. Every arm
gets the same backbone, data, tokenizer, seed, batch order and step budget;
only the varied field differs (and, in the residual study, the extra arms
without learning-rate warmup). Each arm trains in its own child process, so
its peak memory is its own and not the maximum of every arm before it.

The output directory holds ``study.json`` (the plan), one run directory per
arm and seed under ``runs/`` (loadable by ``blocklab eval`` and ``blocklab
generate``), each arm's ``result.json``, and at the end ``results.json``,
``report.md`` and the PNG plots. Re-running into the same directory skips the
arms whose ``result.json`` exists and resumes an interrupted arm from its
last checkpoint. The training time, tokens and tokens/s in ``result.json``
cover the whole arm, because each checkpoint records the totals so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import queue
import re
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blocklab import runs
from blocklab.config import ModelConfig
from blocklab.errors import UsageError

logger = logging.getLogger(__name__)

DEFAULT_FIELD = "position"
DEFAULT_VALUES = ("none", "sinusoidal", "learned", "relative", "t5", "alibi", "rope")
EVAL_MULTIPLIERS = (1, 2, 4, 8)
STUDY_FILE = "study.json"
RESULT_FILE = "result.json"
RESULTS_FILE = "results.json"
STUDY_FORMAT = "blocklab-compare"

# The backbone and budget of each profile. The model fields go to the llama
# preset; the train fields to TrainConfig. They are the same for every arm.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "model": dict(d_model=128, n_layers=4, n_heads=4),
        "train": dict(
            seq_len=128, batch_size=16, steps=300, lr=2e-3, warmup_steps=30, eval_every=50,
            eval_batches=4, save_every=100, log_every=10,
        ),
        "eval": dict(max_windows=24, batch_size=8),
    },
    "quick": {
        "model": dict(d_model=64, n_layers=2, n_heads=4),
        "train": dict(
            seq_len=32, batch_size=8, steps=30, lr=3e-3, warmup_steps=5, eval_every=10,
            eval_batches=2, save_every=30, log_every=5,
        ),
        "eval": dict(max_windows=6, batch_size=8),
    },
}


@dataclass
class Arm:
    """One trained variant: a value of the varied field, one seed.

    Attributes:
        key: directory-safe identifier, unique in the study.
        label: the name shown in tables and plots.
        value: the varied field's value.
        seed: the training seed.
        model: ModelConfig as a dict (vocab_size set from the tokenizer).
        train: TrainConfig as a dict.
        eval_lengths: the evaluation lengths, 1x to 8x the arm's seq_len.
        note: how the arm departs from the shared setup, if at all.
    """

    key: str
    label: str
    value: Any
    seed: int
    model: dict[str, Any]
    train: dict[str, Any]
    eval_lengths: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class StudyPlan:
    """Everything that defines a study; stored as study.json."""

    field: str
    values: list[Any]
    seeds: int
    profile: str
    eval_lengths: list[int]
    eval_max_windows: int
    eval_batch_size: int
    base_model: dict[str, Any] = dataclasses.field(default_factory=dict)
    arms: list[Arm] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": STUDY_FORMAT, **dataclasses.asdict(self)}


# --- planning -----------------------------------------------------------------------


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """Parse ``FIELD=v1,v2,...`` into the field name and the parsed values.

    Raises:
        UsageError: for a missing ``=``, an empty or single value, or duplicates.
    """
    from blocklab.train import parse_value

    name, separator, values_text = text.partition("=")
    name = name.strip()
    if not separator or not name:
        raise UsageError(f"--vary {text!r}: expected FIELD=v1,v2,..., for example --vary norm=layernorm,rmsnorm")
    raw = [part.strip() for part in values_text.split(",")]
    if any(not part for part in raw):
        raise UsageError(f"--vary {text!r}: empty value in the list; separate values with single commas")
    if len(raw) < 2:
        raise UsageError(
            f"--vary {text!r}: a study needs at least two values to compare; give FIELD=v1,v2,..."
        )
    if len(set(raw)) != len(raw):
        duplicate = next(part for part in raw if raw.count(part) > 1)
        raise UsageError(f"--vary {text!r}: value {duplicate!r} appears twice; list each value once")
    values = [parse_value(part) for part in raw]
    for index, value in enumerate(values):
        if value in values[:index]:
            raise UsageError(
                f"--vary {text!r}: {raw[index]!r} is the same value as an earlier one; list each value once"
            )
    return name, values


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-") or "value"


def build_plan(
    *,
    vary: str | None,
    seeds: int,
    quick: bool,
    preset: str | None,
    settings: list[str],
    flags: dict[str, Any],
    vocab_size: int | None = None,
) -> StudyPlan:
    """Turn the command-line choices into a validated list of arms.

    Raises:
        UsageError: for an unknown field, an invalid value of it, or bad flags.
    """
    from blocklab.train import TrainConfig, apply_setting, resolve_configs
    from blocklab.train import _check_model_for_training as check_trainable

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"--seeds: invalid value {seeds!r}; expected an integer >= 1")
    profile_name = "quick" if quick else "default"
    profile = PROFILES[profile_name]
    if vary is None:
        field_name, values = DEFAULT_FIELD, list(DEFAULT_VALUES)
    else:
        field_name, values = parse_vary(vary)

    _check_conflicts(field_name, settings, flags)
    user_sets_table = field_name == "max_seq_len" or any(
        _setting_field(setting) == "max_seq_len" for setting in settings
    )
    # The profile is the base layer, so --set and flags such as --steps override it.
    try:
        base_model = ModelConfig.preset(preset or "llama", **profile["model"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    base_train = TrainConfig(**profile["train"])
    model_config, train_config = resolve_configs(
        settings=list(settings), flags=flags, base=(base_model, base_train),
    )
    if vocab_size is not None:
        model_config = model_config.replace(vocab_size=vocab_size)
    if field_name == "residual":
        train_config = train_config.replace(log_layer_grad_norms=True)

    arms: list[Arm] = []
    for value in values:
        model_dict, train_dict = model_config.to_dict(), train_config.to_dict()
        where = f"--vary {field_name}={value!r}"
        try:
            apply_setting(model_dict, train_dict, field_name, value, f"--vary {field_name}")
            if not user_sets_table:
                # Learned positions get a table of exactly the training length,
                # unless max_seq_len was set on purpose.
                model_dict["max_seq_len"] = train_dict["seq_len"]
            arm_model = ModelConfig.from_dict(model_dict)
            arm_train = TrainConfig.from_dict(train_dict)
            check_trainable(arm_model, arm_train)
        except ValueError as error:
            message = str(error)
            raise UsageError(message if message.startswith("--vary") else f"{where}: {message}") from None
        lengths = [arm_train.seq_len * m for m in EVAL_MULTIPLIERS]
        variants = [(str(value), _slug(value), arm_train, "")]
        if field_name == "residual":
            no_warmup = arm_train.replace(warmup_steps=0)
            variants.append((f"{value}, no warmup", f"{_slug(value)}-nowarmup", no_warmup, "no learning-rate warmup"))
        for label, slug, arm_train_config, note in variants:
            for seed in range(seeds):
                seeded = arm_train_config.replace(seed=arm_train_config.seed + seed)
                arms.append(Arm(
                    key=f"{slug}-seed{seeded.seed}", label=label, value=value, seed=seeded.seed,
                    model=arm_model.to_dict(), train=seeded.to_dict(), eval_lengths=lengths, note=note,
                ))

    seq_len = train_config.seq_len
    return StudyPlan(
        field=field_name, values=values, seeds=seeds, profile=profile_name,
        eval_lengths=[seq_len * m for m in EVAL_MULTIPLIERS],
        eval_max_windows=profile["eval"]["max_windows"], eval_batch_size=profile["eval"]["batch_size"],
        base_model=model_config.to_dict(), arms=arms,
    )


def _setting_field(setting: str) -> str:
    """Return the field a ``KEY=VALUE`` setting names, without a model. or train. prefix."""
    key = setting.partition("=")[0].strip()
    for prefix in ("model.", "train."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _check_conflicts(field_name: str, settings: list[str], flags: dict[str, Any]) -> None:
    """Reject a --set or a flag that sets the field the study varies."""
    for setting in settings:
        if _setting_field(setting) == field_name:
            raise UsageError(
                f"--set {setting} conflicts with --vary {field_name}: the study sets {field_name} per arm; "
                "drop one of them"
            )
    if flags.get(field_name) is not None:
        flag = "--" + field_name.replace("_", "-")
        raise UsageError(
            f"{flag} {flags[field_name]} conflicts with --vary {field_name}: the study sets {field_name} "
            "per arm; drop one of them"
        )


# --- running one arm (in a child process) ----------------------------------------------------


def _run_arm(arm: dict[str, Any], run_dir: str, result_path: str, eval_lengths: list[int],
             eval_max_windows: int, eval_batch_size: int, messages: Any) -> None:
    """Train and evaluate one arm; runs in a spawned child process."""
    from blocklab.evaluate import evaluate_lengths
    from blocklab.model import Transformer
    from blocklab.train import TrainConfig, layer_grad_norms, prepare_data, train

    if hasattr(os, "setpgrp"):
        os.setpgrp()  # terminal signals go to the parent, which forwards them
    # The parent started this process with SIGINT ignored, so that a Ctrl-C
    # during start-up printed no traceback. From here an interrupt stops training cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    messages.put(("ready", arm["key"], None))
    try:
        model_config = ModelConfig.from_dict(arm["model"])
        train_config = TrainConfig.from_dict(arm["train"])
        data = prepare_data(train_config)
        model_config = model_config.replace(vocab_size=data.tokenizer.vocab_size)

        init_norms = None
        if train_config.log_layer_grad_norms:
            init_norms = _init_grad_norms(model_config, train_config, data, Transformer, layer_grad_norms)

        baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        resume = runs.is_run_dir(run_dir) and bool(runs.list_checkpoints(run_dir))
        result = train(
            model_config, train_config, run_dir, resume=resume, overwrite=not resume, progress=False,
            callbacks=[lambda record: messages.put(("record", arm["key"], record))], data=data,
        )
        # "finished": an earlier call trained every step but stopped before
        # writing result.json, for example when interrupted during evaluation.
        if result.status not in ("completed", "finished"):
            messages.put(("stopped", arm["key"], result.status))
            return
        final_loss = result.final_loss
        if final_loss is None:
            final_loss = next((record["loss"] for record in reversed(result.history) if "loss" in record), None)

        from blocklab.train import load_run

        loaded = load_run(run_dir)
        start = time.perf_counter()
        lengths = evaluate_lengths(
            loaded.model, data.val_tokens, eval_lengths, batch_size=eval_batch_size, max_windows=eval_max_windows,
        )
        eval_time = time.perf_counter() - start
        summary = {
            "key": arm["key"],
            "label": arm["label"],
            "value": arm["value"],
            "seed": arm["seed"],
            "note": arm["note"],
            "num_parameters": result.num_parameters,
            "steps": result.step,
            "final_loss": final_loss,
            "final_val_loss": result.final_val_loss,
            "best_val_loss": result.best_val_loss,
            "tokens_per_s": result.tokens_per_s,
            "train_time_s": result.train_time_s,
            "train_tokens": result.train_tokens,
            "eval_time_s": eval_time,
            "peak_memory_mb": result.peak_memory_mb,
            "baseline_memory_mb": baseline_mb,
            "memory_kind": result.memory_kind,
            "lengths": [dataclasses.asdict(item) for item in lengths],
            "history": [
                {key: record[key] for key in ("step", "loss", "val_loss", "lr", "grad_norm", "layer_grad_norms")
                 if key in record}
                for record in result.history
            ],
            "init_layer_grad_norms": init_norms,
            "data": data.record | {"split": None},
        }
        runs.write_json_atomic(result_path, summary)
        messages.put(("done", arm["key"], None))
    except KeyboardInterrupt:
        # Before train() takes over SIGINT (loading data, say) or after it
        # returns: nothing half-written to save, so stop quietly.
        messages.put(("stopped", arm["key"], "interrupted"))
    except Exception as error:  # reported to the parent, which prints one line
        messages.put(("error", arm["key"], f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"))


def _init_grad_norms(model_config, train_config, data, transformer_cls, layer_grad_norms) -> list[float]:
    """Gradient norm of each block for one batch at initialisation (same seed as training)."""
    import torch

    from blocklab.data import sample_batch

    torch.manual_seed(train_config.seed)
    model = transformer_cls(model_config)
    inputs, targets = sample_batch(
        data.train_tokens, train_config.batch_size, train_config.seq_len, seed=train_config.seed, step=0,
    )
    model(inputs, targets=targets).loss.backward()
    return layer_grad_norms(model)


def _check_data(plan: StudyPlan, vocab_size_source: str | None = None) -> None:
    """Load and tokenize the data once, so a bad corpus or tokenizer fails before any arm starts.

    Args:
        plan: the study.
        vocab_size_source: where the user set vocab_size (``--set
            vocab_size=N``), if they did; each arm's tokenizer must then have
            that many tokens. A study that varies vocab_size sets it in every arm.

    Raises:
        UsageError: for a missing, empty or too short corpus, a bad tokenizer
            spec, or a vocab_size the user set that an arm's tokenizer contradicts.
    """
    from blocklab.data import sample_batch
    from blocklab.train import TrainConfig, check_vocab_size, prepare_data

    groups: dict[tuple[Any, ...], list[Arm]] = {}
    for arm in plan.arms:
        groups.setdefault((arm.train["data"], arm.train["tokenizer"], arm.train["seq_len"]), []).append(arm)
    for members in groups.values():
        config = TrainConfig.from_dict(members[-1].train)
        try:
            data = prepare_data(config)
            sample_batch(data.train_tokens, 1, config.seq_len, seed=config.seed, step=0)
            if data.val_tokens.numel() < config.seq_len + 1:
                raise UsageError(
                    f"validation text has {data.val_tokens.numel()} tokens, fewer than one window of "
                    f"{config.seq_len + 1}; use a shorter seq_len or more text"
                )
        except ValueError as error:
            raise UsageError(str(error).splitlines()[0]) from None
        for arm in members:
            source = f"--vary vocab_size={arm.value}" if plan.field == "vocab_size" else vocab_size_source
            check_vocab_size(arm.model["vocab_size"], data.tokenizer, source)


# --- the study --------------------------------------------------------------------------


def _check_output(out: Path, plan: StudyPlan, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {str(out)!r} is a file; pass a directory path for the study")
    study_file = out / STUDY_FILE
    if out.is_dir() and any(out.iterdir()) and not study_file.is_file():
        raise UsageError(
            f"output directory {str(out)!r} is not empty and contains no {STUDY_FILE}; "
            "pass a new or empty directory so nothing in it is overwritten"
        )
    if study_file.is_file() and not overwrite:
        try:
            recorded = json.loads(study_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot read {str(study_file)!r}: {error}; pass another output directory") from None
        if recorded != json.loads(json.dumps(plan.to_dict())):
            raise UsageError(
                f"{str(out)!r} contains a different study (its {STUDY_FILE} differs from these options); "
                "pass another output directory, the same options to resume it, or --overwrite to replace it"
            )


def run_study(plan: StudyPlan, out: str | os.PathLike[str], *, progress: bool = True,
              overwrite: bool = False) -> dict[str, Any]:
    """Run every arm of ``plan`` (skipping finished ones) and write the report.

    Returns:
        The results dictionary also written to results.json.

    Raises:
        UsageError: for an output path that is a file or contains another study.
        RuntimeError: when an arm fails; finished arms are kept.
    """
    from blocklab import report

    out = Path(out)
    _check_output(out, plan, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(out / STUDY_FILE, plan.to_dict())
    (out / "runs").mkdir(exist_ok=True)

    total_steps = sum(arm.train["steps"] for arm in plan.arms)
    bar = _progress_bar(total_steps, progress)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    try:
        for index, arm in enumerate(plan.arms, start=1):
            arm_dir = out / "runs" / arm.key
            result_path = arm_dir / RESULT_FILE
            if result_path.is_file():
                bar.update(arm.train["steps"])
                logger.info("arm %s already finished; skipping", arm.key)
                continue
            bar.set_description(f"[{index}/{len(plan.arms)}] {arm.label}")
            _run_arm_process(context, arm, arm_dir, result_path, plan, bar)
    finally:
        bar.close()

    results = collect_results(plan, out)
    results["wall_time_s"] = time.perf_counter() - started
    runs.write_json_atomic(out / RESULTS_FILE, results)
    report.write_report(results, out)
    return results


def _run_arm_process(context, arm: Arm, arm_dir: Path, result_path: Path, plan: StudyPlan, bar) -> None:
    """Run one arm in a child process and relay its progress.

    The child runs in its own process group, so a Ctrl-C at the terminal
    reaches only this process, which forwards one SIGINT to the child. The
    child then saves a checkpoint after its current step and stops; a second
    signal stops it at once. The child starts with SIGINT ignored and reports
    when it is ready, and a request that arrives before that is forwarded then.
    """
    messages = context.Queue()
    process = context.Process(
        target=_run_arm,
        args=(dataclasses.asdict(arm), str(arm_dir / "run"), str(result_path), arm.eval_lengths,
              plan.eval_max_windows, plan.eval_batch_size, messages),
        daemon=True,
    )
    arm_dir.mkdir(parents=True, exist_ok=True)
    stop_requests = 0
    ready = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stop_requests
        stop_requests += 1
        if ready and process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGINT)
        if stop_requests > 1:
            raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # A spawned child inherits the ignored SIGINT until _run_arm is ready.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        for sig in previous:
            signal.signal(sig, forward)
    done_steps = 0
    outcome: tuple[str, Any] | None = None
    try:
        while outcome is None:
            try:
                kind, _key, payload = messages.get(timeout=0.5)
            except queue.Empty:
                if not process.is_alive():
                    outcome = ("error", f"the training process exited with code {process.exitcode}")
                continue
            if kind == "ready":
                ready = True
                if stop_requests:
                    os.kill(process.pid, signal.SIGINT)
            elif kind == "record":
                step = payload.get("step", done_steps)
                bar.update(max(0, step - done_steps))
                done_steps = max(done_steps, step)
                if "loss" in payload:
                    bar.set_postfix(loss=f"{payload['loss']:.3f}")
            else:
                outcome = (kind, payload)
        process.join(timeout=60)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.is_alive():
            process.terminate()
            process.join(timeout=30)
    kind, payload = outcome
    if kind == "stopped" or stop_requests:
        raise KeyboardInterrupt
    if kind == "error":
        raise RuntimeError(
            f"arm {arm.key!r} failed: {payload}; finished arms are kept, re-run the same command to resume"
        )
    bar.update(max(0, arm.train["steps"] - done_steps))


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def collect_results(plan: StudyPlan, out: Path) -> dict[str, Any]:
    """Read every arm's result.json and aggregate seeds per variant (mean and sample std)."""
    per_arm = []
    for arm in plan.arms:
        path = out / "runs" / arm.key / RESULT_FILE
        per_arm.append(json.loads(path.read_text(encoding="utf-8")))

    variants: list[dict[str, Any]] = []
    for label in dict.fromkeys(arm.label for arm in plan.arms):
        members = [result for result in per_arm if result["label"] == label]
        summary: dict[str, Any] = {
            "label": label,
            "value": members[0]["value"],
            "note": members[0]["note"],
            "seeds": [m["seed"] for m in members],
            "num_parameters": members[0]["num_parameters"],
            "runs": [f"runs/{m['key']}/run" for m in members],
        }
        for metric in ("final_val_loss", "best_val_loss", "tokens_per_s", "peak_memory_mb",
                       "baseline_memory_mb", "train_time_s"):
            summary[metric], summary[metric + "_std"] = _mean_std([m[metric] for m in members])
        lengths = []
        for position in range(len(EVAL_MULTIPLIERS)):
            entries = [m["lengths"][position] for m in members]
            loss, loss_std = _mean_std([e["loss"] for e in entries])
            lengths.append({
                "length": entries[0]["length"],
                "multiplier": EVAL_MULTIPLIERS[position],
                "loss": loss,
                "loss_std": loss_std,
                "perplexity": None if loss is None else math.exp(min(loss, 700.0)),
                "note": entries[0]["note"],
                "tokens": entries[0]["tokens"],
            })
        summary["lengths"] = lengths
        summary["curve"] = _mean_curve([m["history"] for m in members])
        if members[0].get("init_layer_grad_norms") is not None:
            summary["init_layer_grad_norms"] = _mean_lists([m["init_layer_grad_norms"] for m in members])
            trained = [[r["layer_grad_norms"] for r in m["history"] if "layer_grad_norms" in r] for m in members]
            summary["train_layer_grad_norms"] = _mean_lists(
                [_mean_lists(norms) for norms in trained if norms]
            )
        variants.append(summary)

    first = per_arm[0]
    return {
        "format": STUDY_FORMAT,
        "field": plan.field,
        "values": plan.values,
        "seeds": plan.seeds,
        "profile": plan.profile,
        "eval_lengths": plan.eval_lengths,
        "eval_max_windows": plan.eval_max_windows,
        "model": plan.base_model,
        "train": plan.arms[0].train,
        "data": first["data"],
        "environment": _environment(),
        "variants": variants,
        "arms": [{k: v for k, v in m.items() if k != "history"} for m in per_arm],
    }


def _mean_curve(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Average the validation-loss curve over seeds, step by step."""
    by_step: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            if record.get("val_loss") is not None:
                by_step.setdefault(record["step"], []).append(record["val_loss"])
    return [{"step": step, "val_loss": sum(v) / len(v)} for step, v in sorted(by_step.items())]


def _mean_lists(lists: list[list[float]]) -> list[float] | None:
    lists = [values for values in lists if values]
    if not lists:
        return None
    return [sum(column) / len(column) for column in zip(*lists)]


def _environment() -> dict[str, Any]:
    import platform

    import torch

    from blocklab import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "blocklab": __version__,
        "platform": platform.platform(),
    }


# --- command line ------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", nargs="?", default=None,
        help="study directory (default runs/compare-FIELD, or runs/compare-FIELD-quick with --quick)",
    )
    parser.add_argument(
        "--vary", metavar="FIELD=V1,V2,...",
        help="config field and values to compare (default position=" + ",".join(DEFAULT_VALUES) + ")",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per variant; the report shows mean and spread")
    parser.add_argument("--quick", action="store_true", help="tiny backbone and budget (under 2 minutes on 2 CPU cores)")
    parser.add_argument("--preset", help="backbone preset (default llama)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="override a backbone or training field for every arm, e.g. --set d_model=256 (repeatable, once per field)",
    )
    parser.add_argument("--steps", type=int, help="training steps per arm")
    parser.add_argument("--data", help="corpus (default python-docs)")
    parser.add_argument("--tokenizer", help="tokenizer: bytes (default), bpe:N or a tokenizer.json path")
    parser.add_argument("--overwrite", action="store_true", help="replace a study with other options in OUT")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_command(args: argparse.Namespace) -> int:
    flags = {"steps": args.steps, "data": args.data, "tokenizer": args.tokenizer}
    plan = build_plan(
        vary=args.vary, seeds=args.seeds, quick=args.quick, preset=args.preset, settings=args.settings,
        flags=flags,
    )
    out = Path(args.out or f"runs/compare-{_slug(plan.field)}" + ("-quick" if args.quick else ""))
    from blocklab.train import setting_source

    vocab_size_source = setting_source("vocab_size", settings=args.settings)
    if args.overwrite and out.is_dir() and (out / STUDY_FILE).is_file():
        import shutil

        _check_output(out, plan, overwrite=True)
        _check_data(plan, vocab_size_source)
        shutil.rmtree(out)
    else:
        _check_output(out, plan, overwrite=False)
        _check_data(plan, vocab_size_source)
    print(f"blocklab compare: {len(plan.arms)} runs varying {plan.field} -> {out}", file=sys.stderr)
    try:
        results = run_study(plan, out, progress=not args.no_progress, overwrite=args.overwrite)
    except RuntimeError as error:
        print(f"blocklab compare: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"blocklab compare: interrupted; re-run the same command to resume into {out}", file=sys.stderr)
        return 130

    from blocklab.report import results_table

    print(results_table(results))
    print(f"\nreport: {out / 'report.md'}")
    return 0
