"""The report of a ``blocklab compare`` study: report.md, PNG plots and a terminal table."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Distinct marker and line style per variant, so identical curves stay visible.
STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"), ("X", "-."), ("*", ":")]

LOSS_PLOT = "loss_vs_steps.png"
LENGTH_PLOT = "perplexity_vs_length.png"
COST_PLOT = "throughput_memory.png"
GRAD_PLOT = "layer_grad_norms.png"


def _fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    return text


def _memory(variant: dict[str, Any]) -> str:
    peak, baseline = variant["peak_memory_mb"], variant.get("baseline_memory_mb")
    if peak is None:
        return "n/a"
    if baseline is None:
        return f"{peak:.0f}"
    return f"{peak:.0f} (+{max(peak - baseline, 0):.0f})"


def _ppl(entry: dict[str, Any]) -> str:
    return "n/a" if entry["perplexity"] is None else f"{entry['perplexity']:.2f}"


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return the header and rows of the results table."""
    variants = results["variants"]
    shared = all(
        [e["length"] for e in v["lengths"]] == [e["length"] for e in variants[0]["lengths"]] for v in variants
    )
    first = variants[0]["lengths"]
    header = ["variant", "params", "loss @1x" + (f" ({first[0]['length']})" if shared else "")]
    for entry in first:
        multiplier = entry.get("multiplier", entry["length"] // results["train"]["seq_len"])
        header.append(f"ppl @{entry['length']} ({multiplier}x)" if shared else f"ppl @{multiplier}x")
    header += ["tokens/s", "peak MB (+training)", "train s"]
    rows = []
    for variant in variants:
        one = variant["lengths"][0]
        row = [variant["label"], f"{variant['num_parameters']:,}", _fmt(one["loss"], one.get("loss_std"))]
        row += [_ppl(entry) for entry in variant["lengths"]]
        row += [
            _fmt(variant["tokens_per_s"], variant.get("tokens_per_s_std"), 0),
            _memory(variant),
            _fmt(variant["train_time_s"], None, 1),
        ]
        rows.append(row)
    return header, rows


def results_table(results: dict[str, Any]) -> str:
    """Render the results as an aligned plain-text table for the terminal."""
    header, rows = table_rows(results)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(results: dict[str, Any]) -> str:
    """Render the results as a Markdown table."""
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(results: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, variant in enumerate(results["variants"]):
        curve = variant["curve"]
        if curve:
            marker, line = STYLES[index % len(STYLES)]
            axis.plot([p["step"] for p in curve], [p["val_loss"] for p in curve], marker=marker, linestyle=line,
                      label=variant["label"], alpha=0.85)
    axis.set_xlabel("training step")
    axis.set_ylabel("validation loss (nats/token)")
    axis.set_title(f"Validation loss, varying {results['field']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_lengths(results: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, variant in enumerate(results["variants"]):
        points = [(e["length"], e["perplexity"]) for e in variant["lengths"] if e["perplexity"] is not None]
        if points:
            marker, line = STYLES[index % len(STYLES)]
            axis.plot(*zip(*points), marker=marker, linestyle=line, markersize=8 if len(points) == 1 else 6,
                      label=variant["label"], alpha=0.85)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    ticks = sorted({e["length"] for v in results["variants"] for e in v["lengths"]})
    axis.set_xticks(ticks, [str(length) for length in ticks])
    _plain_log_labels(axis, [p for v in results["variants"] for e in v["lengths"] if (p := e["perplexity"])])
    axis.axvline(results["train"]["seq_len"], color="gray", linestyle="--", linewidth=1)
    axis.set_xlabel("evaluation context length (tokens; dashed: training length)")
    axis.set_ylabel("validation perplexity")
    axis.set_title("Length extrapolation")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plain_log_labels(axis, values: list[float]) -> None:
    """Label a log y-axis with plain numbers, minor ticks too when it spans under a decade."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.yaxis.set_major_formatter(plain)
    if values and max(values) / min(values) < 10:
        axis.yaxis.set_minor_formatter(plain)


def plot_cost(results: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    variants = results["variants"]
    labels = [v["label"] for v in variants]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.barh(labels, [v["tokens_per_s"] or 0 for v in variants], color="tab:blue")
    left.set_xlabel("training tokens/s")
    peaks = [v["peak_memory_mb"] or 0 for v in variants]
    if results["arms"][0]["memory_kind"] == "cpu_max_rss":
        # The process's resident set includes the interpreter and libraries;
        # the coloured part is what training added on top of that.
        baselines = [min(v["baseline_memory_mb"] or 0, peak) for v, peak in zip(variants, peaks)]
        right.barh(labels, baselines, color="lightgray", label="before training")
        right.barh(labels, [p - b for p, b in zip(peaks, baselines)], left=baselines, color="tab:orange",
                   label="added by training")
        right.legend(fontsize=8, loc="lower right")
        right.set_xlabel("peak resident memory of the arm's process, MB")
    else:
        right.barh(labels, peaks, color="tab:orange")
        right.set_xlabel("peak CUDA memory allocated, MB")
    for axis in (left, right):
        axis.invert_yaxis()
        axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_grad_norms(results: dict[str, Any], path: Path) -> bool:
    variants = [v for v in results["variants"] if v.get("init_layer_grad_norms")]
    if not variants:
        return False
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), sharey=False)
    for index, variant in enumerate(variants):
        marker, line = STYLES[index % len(STYLES)]
        init = variant["init_layer_grad_norms"]
        left.plot(range(1, len(init) + 1), init, marker=marker, linestyle=line, label=variant["label"])
        trained = variant.get("train_layer_grad_norms")
        if trained:
            right.plot(range(1, len(trained) + 1), trained, marker=marker, linestyle=line, label=variant["label"])
    left.set_title("at initialisation")
    right.set_title("during training (mean over logged steps)")
    for axis in (left, right):
        axis.set_xlabel("block (1 = nearest the input)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_ylabel("gradient norm")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# --- report.md -----------------------------------------------------------------------------


def _setup_section(results: dict[str, Any]) -> list[str]:
    model, train, data, env = results["model"], results["train"], results["data"], results["environment"]
    tokens_seen = train["steps"] * train["batch_size"] * train["seq_len"]
    gpu = env["gpu"] or "none"
    return [
        "## Setup",
        "",
        f"- Varied: `{results['field']}` over {', '.join(f'`{v}`' for v in results['values'])}. "
        "Everything else is shared by every arm: backbone, data, tokenizer, seed, batch order and budget. "
        "No arm was tuned on its own.",
        f"- Data: `{data['source']}`, {data['num_documents']} documents, {data['num_bytes']:,} bytes; "
        f"split by document into {data['train_tokens']:,} training and {data['val_tokens']:,} validation tokens "
        f"(tokenizer `{train['tokenizer']}`).",
        "- Backbone: " + ", ".join(
            f"{name} {'(varied)' if name == results['field'] else f'`{model[name]}`'}"
            for name in ("d_model", "n_layers", "n_heads", "norm", "residual", "ffn", "position")
        ) + ".",
        f"- Budget: {train['steps']} steps of {train['batch_size']} x {train['seq_len']} tokens "
        f"({tokens_seen:,} tokens per arm), AdamW lr {train['lr']}, {train['warmup_steps']} warmup steps then "
        f"cosine decay to {train['min_lr_ratio']} x lr, weight decay {train['weight_decay']}, gradient clip "
        f"{train['grad_clip']}; seeds per variant: {results['seeds']}.",
        f"- Evaluation: validation loss on non-overlapping windows at {', '.join(map(str, results['eval_lengths']))} "
        f"tokens (1x, 2x, 4x, 8x the training length), at most {results['eval_max_windows']} windows per length.",
        f"- Hardware: {env['cpu']}, {env['cpu_count']} logical CPUs, {env['torch_threads']} torch threads, GPU {gpu}.",
        f"- Software: Python {env['python']}, PyTorch {env['torch']}, blocklab {env['blocklab']}, {env['platform']}.",
        f"- Wall time of this study: {results.get('wall_time_s', 0):.0f} s (finished arms skipped on a resume "
        "are not counted).",
        "",
    ]


def write_report(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write report.md and the plots into ``out``; return the report path."""
    out = Path(out)
    plot_loss(results, out / LOSS_PLOT)
    plot_lengths(results, out / LENGTH_PLOT)
    plot_cost(results, out / COST_PLOT)
    has_grad = plot_grad_norms(results, out / GRAD_PLOT)

    memory_kind = results["arms"][0]["memory_kind"]
    lines = [f"# blocklab compare: {results['field']}", ""]
    lines += _setup_section(results)
    lines += [
        "## Results",
        "",
        "Every number comes from the final model on the held-out documents, in non-overlapping windows from "
        "the start of the validation text. Loss @1x is in nats per token at the training length; the perplexity "
        "columns repeat the measurement at longer contexts than the model was trained on, and n/a means the "
        "model cannot run there (learned positions stop at their table). With several seeds a value is the mean "
        "± the sample standard deviation. The loss curve plot instead shows the validation loss measured during "
        "training on a fixed sample of windows, so its last point differs slightly from loss @1x. Tokens/s counts "
        "training steps only and depends on what else the machine runs. Peak memory is "
        + ("the peak resident set size of the process that trained the arm, interpreter and libraries included; "
           "the part in brackets is what it grew by from just before training to the peak"
           if memory_kind == "cpu_max_rss" else "CUDA max_memory_allocated")
        + ".",
        "",
        markdown_table(results),
        "",
        f"![validation loss against steps]({LOSS_PLOT})",
        "",
        f"![perplexity against evaluation length]({LENGTH_PLOT})",
        "",
        f"![tokens per second and peak memory]({COST_PLOT})",
        "",
    ]
    if has_grad:
        lines += _grad_section(results)
    notes = [v for v in results["variants"] if v["note"]]
    if notes:
        lines += ["Arms that depart from the shared setup: "
                  + "; ".join(f"{v['label']} ({v['note']})" for v in notes) + ".", ""]
    lines += [
        "## Reading it",
        "",
        "Differences smaller than the spread between seeds are noise; run with `--seeds 3` or more before "
        "drawing conclusions. A small model trained for minutes shows early-training behaviour and length "
        "extrapolation, not the ranking these variants reach at scale.",
        "",
        "Each arm's run directory is listed in results.json; `blocklab eval RUN` and `blocklab generate RUN` "
        "work on it.",
        "",
    ]
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _grad_section(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Gradient norms per block",
        "",
        "Norm of each block's parameter gradients, before clipping: at initialisation (one batch) and averaged "
        "over the logged training steps. Block 1 is nearest the input.",
        "",
    ]
    header = ["variant", "when"] + [f"block {i + 1}" for i in range(len(results["variants"][0]["init_layer_grad_norms"]))]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for variant in results["variants"]:
        for when, key in (("init", "init_layer_grad_norms"), ("training", "train_layer_grad_norms")):
            values = variant.get(key)
            if values:
                lines.append("| " + " | ".join([variant["label"], when] + [f"{v:.3g}" for v in values]) + " |")
    lines += ["", f"![gradient norm per block]({GRAD_PLOT})", ""]
    return lines
