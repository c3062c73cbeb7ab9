"""Benchmarks of blocklab parts against reference implementations.

Each benchmark builds the blocklab part and every available reference with the
same weights and inputs, and first checks that they compute the same result:
the maximum absolute difference over the outputs and the gradients. It then
times them interleaved. Every repetition runs each implementation once, in an
order that rotates from one repetition to the next, so a burst of load from
other processes hits all of them alike. A speedup is the median over the
repetitions of reference time / blocklab time, so above 1 means blocklab is
faster. The first repetitions are warm-up and are not counted.

Peak memory is what one forward and backward allocates over what was already
allocated (parameters and inputs). On CUDA it comes from
``torch.cuda.max_memory_allocated``. On CPU it comes from the allocation and
free events that the PyTorch profiler records for every tensor, replayed in
time order. Memory that PyTorch does not allocate (the interpreter, the
allocator's own caches, oneDNN scratch space) is not counted.

The training benchmark also times a large square float32 matrix multiply in
the same repetitions and reports the model FLOPs utilisation (MFU) against it:

    FLOPs per token = 6 N + 12 L T C

where N counts the weights of every matrix multiply (attention and FFN
projections and the output head, not the embedding lookup or norm gains), L
is the number of layers, T the sequence length and C the model width. 6 N is
the forward (2 N) and backward (4 N) cost of the weight products. 12 L T C is
the cost of the two attention products QK^T and AV over all T keys. This is
the convention of the PaLM paper (Chowdhery et al. 2022), which counts the
masked half of causal attention too.

References are ``torch.nn`` modules and, when the package is installed,
`transformers`' LLaMA modules.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blocklab.config import ModelConfig
from blocklab.errors import UsageError
from blocklab.generate import generate
from blocklab.model import Transformer
from blocklab.nn.attention import Attention
from blocklab.nn.block import TransformerBlock
from blocklab.nn.feedforward import FeedForward
from blocklab.nn.norms import LayerNorm, RMSNorm
from blocklab.nn.rotary import RotaryEmbedding, apply_rotary

logger = logging.getLogger(__name__)

Outputs = torch.Tensor | tuple[torch.Tensor, ...]

# Minimum speedups that blocklab aims for, keyed by benchmark and reference:
# reference time / blocklab time of forward + backward, or of the whole call
# where there is no backward (decoding). The table marks each as met or missed.
GOALS: dict[tuple[str, str], float] = {
    ("rmsnorm", "transformers.LlamaRMSNorm"): 2.0,
    ("rmsnorm", "torch.nn.RMSNorm"): 1.5,
    ("rmsnorm", "torch.nn.LayerNorm"): 1.0,
    ("rope", "transformers.apply_rotary_pos_emb"): 1.5,
    ("decoder_layer", "transformers.LlamaDecoderLayer"): 1.2,
    ("train_step", "transformers.LlamaForCausalLM"): 1.2,
    ("generate", "transformers.generate"): 3.0,
    ("generate_small", "transformers.generate"): 3.0,
}
# Blocklab's training peak memory should not exceed the reference's.
MEMORY_GOALS: dict[tuple[str, str], float] = {
    ("train_step", "transformers.LlamaForCausalLM"): 1.0,
}
MFU_GOAL = 0.75


# Data ----------------------------------------------------------------------


@dataclass
class BenchSettings:
    """How to run the benchmarks.

    Attributes:
        quick: tiny sizes and few repetitions, to check that everything runs.
        reps: counted repetitions; None uses each benchmark's default.
        warmup: uncounted repetitions before them; None uses the default.
        compile: wrap blocklab and the references alike in ``torch.compile``.
        device: where to run (``cpu`` or ``cuda``).
        seed: seed of the weights and inputs.
        profile_rows: after timing, profile one run of each implementation
            and keep this many top operators by self CPU time; 0 skips it.
    """

    quick: bool = False
    reps: int | None = None
    warmup: int | None = None
    compile: bool = False
    device: str = "cpu"
    seed: int = 0
    profile_rows: int = 0


@dataclass
class Implementation:
    """One contender in a benchmark.

    Attributes:
        name: ``blocklab`` or the reference's name.
        forward: runs the forward pass and returns its output tensors; a
            scalar output (a loss) is differentiated without a gradient.
        leaves: tensors whose ``.grad`` is cleared before each run.
        results: returns the tensors to compare after a forward and backward
            (gradients), in the same order and layout for every contender.
        comparable: False for a reference that computes a different function
            (LayerNorm against RMSNorm), which is timed but not compared.
    """

    name: str
    forward: Callable[[], Outputs]
    leaves: Sequence[torch.Tensor] = ()
    results: Callable[[], list[torch.Tensor]] | None = None
    comparable: bool = True


@dataclass
class Case:
    """A benchmark ready to run: blocklab first, then the references.

    Attributes:
        name: the benchmark's name (``--only`` selects by it).
        description: shapes and settings, for the table and the JSON.
        implementations: blocklab, then each reference.
        backward: time a backward pass after the forward.
        tokens: tokens processed per run, for tokens/s; None if not meaningful.
        reps, warmup: default repetition counts.
        probe: an extra function timed in every repetition (the matmul peak).
        probe_flops: floating-point operations of one probe call.
        flops_per_run: model FLOPs of one run, for MFU; None if not reported.
        agreement: the name of the agreement metric.
    """

    name: str
    description: str
    implementations: list[Implementation]
    backward: bool = True
    tokens: int | None = None
    reps: int = 20
    warmup: int = 3
    probe: Callable[[], Any] | None = None
    probe_flops: float | None = None
    flops_per_run: float | None = None
    agreement: str = "max_abs_diff"


@dataclass
class Measurement:
    """Median times of one implementation, in milliseconds, and its peak memory."""

    name: str
    forward_ms: float
    backward_ms: float | None
    total_ms: float
    tokens_per_s: float | None = None
    peak_memory_mib: float | None = None
    mfu: float | None = None
    top_ops: list[dict[str, Any]] | None = None


@dataclass
class Comparison:
    """Blocklab against one reference: medians of paired ratios, and agreement.

    Speedups are reference time / blocklab time, so above 1 favours blocklab.
    """

    reference: str
    speedup_forward: float
    speedup_backward: float | None
    speedup_total: float
    agreement: float | None
    memory_ratio: float | None = None
    goal: float | None = None
    goal_met: bool | None = None
    memory_goal: float | None = None
    memory_goal_met: bool | None = None


@dataclass
class BenchmarkResult:
    """Everything one benchmark measured."""

    name: str
    description: str
    reps: int
    warmup: int
    agreement_metric: str
    blocklab: Measurement
    references: list[Measurement]
    comparisons: list[Comparison]
    matmul_peak_gflops: float | None = None
    mfu_goal: float | None = None


# Timing --------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_tuple(outputs: Outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _clear_grads(implementation: Implementation) -> None:
    for tensor in implementation.leaves:
        tensor.grad = None


def _backward(outputs: tuple[torch.Tensor, ...], grads: tuple[torch.Tensor, ...] | None) -> None:
    if grads is None:
        torch.autograd.backward(outputs)
    else:
        torch.autograd.backward(outputs, grads)


def _output_grads(outputs: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...] | None:
    """Return fixed random output gradients, or None for a scalar loss."""
    if len(outputs) == 1 and outputs[0].dim() == 0:
        return None
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    return tuple(
        torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device) for out in outputs
    )


def _run_once(
    implementation: Implementation, grads: tuple[torch.Tensor, ...] | None, backward: bool,
    device: torch.device,
) -> tuple[float, float | None]:
    """Run one forward (and backward); return their wall times in seconds."""
    _clear_grads(implementation)
    _synchronize(device)
    start = time.perf_counter()
    outputs = _as_tuple(implementation.forward())
    _synchronize(device)
    middle = time.perf_counter()
    if not backward:
        return middle - start, None
    _backward(outputs, grads)
    _synchronize(device)
    return middle - start, time.perf_counter() - middle


def _max_abs_diff(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> float:
    if len(first) != len(second):
        raise RuntimeError(f"benchmark bug: {len(first)} results against {len(second)}")
    worst = 0.0
    for a, b in zip(first, second):
        if a.shape != b.shape:
            raise RuntimeError(f"benchmark bug: result shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        if a.numel():
            worst = max(worst, (a.detach().double() - b.detach().double()).abs().max().item())
    return worst


def _collect(
    implementation: Implementation, grads: tuple[torch.Tensor, ...] | None, backward: bool,
) -> list[torch.Tensor]:
    """Run once and return the outputs followed by the implementation's results."""
    _clear_grads(implementation)
    outputs = _as_tuple(implementation.forward())
    if backward:
        _backward(outputs, grads)
    extra = implementation.results() if implementation.results is not None else []
    return [out.detach().clone() for out in outputs] + [t.detach().clone() for t in extra]


def _agreement(case: Case, grads: tuple[torch.Tensor, ...] | None) -> list[float | None]:
    """Compare every reference with blocklab; return one value per reference."""
    blocklab, *references = case.implementations
    expected = _collect(blocklab, grads, case.backward)
    values: list[float | None] = []
    for reference in references:
        if not reference.comparable:
            values.append(None)
            continue
        got = _collect(reference, grads, case.backward)
        if case.agreement == "mismatched_tokens":
            values.append(float(sum(int((a != b).sum()) for a, b in zip(expected, got))))
        else:
            values.append(_max_abs_diff(expected, got))
    return values


def _peak_memory_mib(
    implementation: Implementation, grads: tuple[torch.Tensor, ...] | None, backward: bool,
    device: torch.device,
) -> float | None:
    """Return the MiB that one run allocates at its peak, over what existed before.

    Returns None when the CPU profiler records no allocation events.
    """
    _clear_grads(implementation)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        outputs = _as_tuple(implementation.forward())
        if backward:
            _backward(outputs, grads)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20

    with _quiet_profiler(profile_memory=True) as profiler:
        outputs = _as_tuple(implementation.forward())
        if backward:
            _backward(outputs, grads)
        del outputs
    # NOTE: the allocation events are read from the profiler's Kineto results,
    # an attribute without a stability promise; PyTorch 2.13 has it.
    try:
        events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        logger.warning("this PyTorch's profiler exposes no memory events; peak memory not measured")
        return None
    if not events:
        return None
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak / 2**20


@contextlib.contextmanager
def _silenced_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null, for C++ code that prints there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _quiet_profiler(**options: Any) -> Iterator[torch.profiler.profile]:
    """Profile the CPU like torch.profiler.profile, without its start and stop lines.

    The Kineto backend of PyTorch 2.13's CPU build prints "USDT: profiler_start"
    and "profiler_stop" lines to stderr. Only the start and stop are silenced,
    so anything the profiled code prints still shows.
    """
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], **options)
    with _silenced_stderr():
        profiler.__enter__()
    try:
        yield profiler
    finally:
        with _silenced_stderr():
            profiler.__exit__(None, None, None)


def _top_ops(
    implementation: Implementation, grads: tuple[torch.Tensor, ...] | None, backward: bool, rows: int,
) -> list[dict[str, Any]]:
    """Profile one run; return its ``rows`` operators with the most self CPU time."""
    _clear_grads(implementation)
    with _quiet_profiler() as profiler:
        outputs = _as_tuple(implementation.forward())
        if backward:
            _backward(outputs, grads)
    averages = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    return [
        {
            "name": event.key,
            "self_cpu_ms": event.self_cpu_time_total / 1e3,
            "percent": 100.0 * event.self_cpu_time_total / total,
            "calls": event.count,
        }
        for event in averages[:rows]
    ]


def _median_ratio(reference: list[float], blocklab: list[float]) -> float:
    return statistics.median(r / b for r, b in zip(reference, blocklab))


def run_case(case: Case, settings: BenchSettings) -> BenchmarkResult:
    """Check agreement, then time and measure every implementation of ``case``."""
    device = torch.device(settings.device)
    reps = settings.reps if settings.reps is not None else case.reps
    warmup = settings.warmup if settings.warmup is not None else case.warmup
    logger.info("%s: %s; %d repetitions after %d warm-up", case.name, case.description, reps, warmup)

    # Warm up once before the agreement check, so that a compiled module's
    # first call (which compiles) is not what the comparison reads.
    first_outputs = _as_tuple(case.implementations[0].forward())
    grads = _output_grads(first_outputs, settings.seed) if case.backward else None
    del first_outputs
    agreements = _agreement(case, grads)

    count = len(case.implementations)
    forward = [[] for _ in range(count)]
    backward = [[] for _ in range(count)]
    probe_times: list[float] = []
    for rep in range(warmup + reps):
        order = [(rep + shift) % count for shift in range(count)]
        timings: dict[int, tuple[float, float | None]] = {}
        for index in order:
            timings[index] = _run_once(case.implementations[index], grads, case.backward, device)
        probe_time = None
        if case.probe is not None:
            _synchronize(device)
            start = time.perf_counter()
            case.probe()
            _synchronize(device)
            probe_time = time.perf_counter() - start
        if rep < warmup:
            continue
        for index, (fwd, bwd) in timings.items():
            forward[index].append(fwd)
            backward[index].append(bwd if bwd is not None else 0.0)
        if probe_time is not None:
            probe_times.append(probe_time)

    totals = [[f + b for f, b in zip(forward[i], backward[i])] for i in range(count)]
    memories = [
        _peak_memory_mib(impl, grads, case.backward, device) for impl in case.implementations
    ]
    peak_flops = None
    if case.probe_flops is not None and probe_times:
        peak_flops = case.probe_flops / statistics.median(probe_times)

    measurements = []
    for index, impl in enumerate(case.implementations):
        total = statistics.median(totals[index])
        tokens_per_s = case.tokens / total if case.tokens is not None else None
        mfu = None
        if case.flops_per_run is not None and peak_flops is not None:
            mfu = case.flops_per_run / total / peak_flops
        measurements.append(Measurement(
            name=impl.name,
            forward_ms=1e3 * statistics.median(forward[index]),
            backward_ms=1e3 * statistics.median(backward[index]) if case.backward else None,
            total_ms=1e3 * total,
            tokens_per_s=tokens_per_s,
            peak_memory_mib=memories[index],
            mfu=mfu,
            top_ops=(
                _top_ops(impl, grads, case.backward, settings.profile_rows) if settings.profile_rows else None
            ),
        ))

    comparisons = []
    for index in range(1, count):
        name = case.implementations[index].name
        memory_ratio = None
        if memories[0] is not None and memories[index]:
            memory_ratio = memories[0] / memories[index]
        speedup = _median_ratio(totals[index], totals[0])
        # The goals are stated for the full sizes, so --quick's tiny sizes are not judged.
        goal = None if settings.quick else GOALS.get((case.name, name))
        memory_goal = None if settings.quick else MEMORY_GOALS.get((case.name, name))
        comparisons.append(Comparison(
            reference=name,
            speedup_forward=_median_ratio(forward[index], forward[0]),
            speedup_backward=_median_ratio(backward[index], backward[0]) if case.backward else None,
            speedup_total=speedup,
            agreement=agreements[index - 1],
            memory_ratio=memory_ratio,
            goal=goal,
            goal_met=None if goal is None else speedup >= goal,
            memory_goal=memory_goal,
            memory_goal_met=(
                None if memory_goal is None or memory_ratio is None else memory_ratio <= memory_goal
            ),
        ))

    return BenchmarkResult(
        name=case.name,
        description=case.description,
        reps=reps,
        warmup=warmup,
        agreement_metric=case.agreement,
        blocklab=measurements[0],
        references=measurements[1:],
        comparisons=comparisons,
        matmul_peak_gflops=peak_flops / 1e9 if peak_flops is not None else None,
        mfu_goal=MFU_GOAL if case.flops_per_run is not None and not settings.quick else None,
    )


# References ----------------------------------------------------------------


def transformers_version() -> str | None:
    """Return the installed `transformers` version, or None when it is missing."""
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def _llama_modules() -> Any | None:
    if transformers_version() is None:
        return None
    from transformers.models.llama import modeling_llama

    return modeling_llama


def llama_config(config: ModelConfig) -> Any:
    """Return the `transformers` LlamaConfig of a LLaMA-style blocklab config."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.dim_per_head,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope.theta},
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=config.qkv_bias,
        mlp_bias=config.ffn_bias,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation="sdpa",
    )


@torch.no_grad()
def copy_block_to_llama(block: TransformerBlock, layer: nn.Module) -> None:
    """Copy a blocklab LLaMA-style block's weights into a LlamaDecoderLayer."""
    attention = block.attn
    query, key, value = attention.qkv.weight.split(
        (attention.num_heads * attention.head_dim,
         attention.num_kv_heads * attention.head_dim,
         attention.num_kv_heads * attention.head_dim),
    )
    layer.self_attn.q_proj.weight.copy_(query)
    layer.self_attn.k_proj.weight.copy_(key)
    layer.self_attn.v_proj.weight.copy_(value)
    layer.self_attn.o_proj.weight.copy_(attention.out.weight)
    copy_feedforward_to_llama(block.ffn, layer.mlp)
    layer.input_layernorm.weight.copy_(block.attn_norm.weight)
    layer.post_attention_layernorm.weight.copy_(block.ffn_norm.weight)


@torch.no_grad()
def copy_feedforward_to_llama(feedforward: FeedForward, mlp: nn.Module) -> None:
    """Copy a blocklab SwiGLU FeedForward's weights into a LlamaMLP."""
    mlp.gate_proj.weight.copy_(feedforward.gate.weight)
    mlp.up_proj.weight.copy_(feedforward.up.weight)
    mlp.down_proj.weight.copy_(feedforward.down.weight)


@torch.no_grad()
def copy_model_to_llama(model: Transformer, llama: nn.Module) -> None:
    """Copy a blocklab LLaMA-style Transformer's weights into a LlamaForCausalLM."""
    llama.model.embed_tokens.weight.copy_(model.embed.weight)
    for block, layer in zip(model.blocks, llama.model.layers):
        copy_block_to_llama(block, layer)
    llama.model.norm.weight.copy_(model.final_norm.weight)
    llama.lm_head.weight.copy_(model.lm_head.weight)


def _qkv_grad(attention: nn.Module) -> torch.Tensor:
    """Return a LlamaAttention's q, k, v weight gradients stacked as blocklab's fused qkv."""
    return torch.cat(
        (attention.q_proj.weight.grad, attention.k_proj.weight.grad, attention.v_proj.weight.grad)
    )


def _randomize_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Give every norm gain a random value near 1, so that a wrong gain shows."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.dim() == 1 and "norm" in name:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(1.0 + 0.1 * noise)


def _identity(module: Any) -> Any:
    return module


# Benchmarks ----------------------------------------------------------------


@dataclass
class _Context:
    settings: BenchSettings
    device: torch.device
    generator: torch.Generator
    wrap: Callable[[Any], Any]

    def randn(self, *shape: int, requires_grad: bool = False, scale: float = 1.0) -> torch.Tensor:
        data = scale * torch.randn(shape, generator=self.generator)
        return data.to(self.device).requires_grad_(requires_grad)


def _norm_case(ctx: _Context) -> Case:
    batch, length, width = (2, 16, 64) if ctx.settings.quick else (4, 1024, 1024)
    eps = 1e-5
    x = ctx.randn(batch, length, width, requires_grad=True)
    gain = 1.0 + 0.1 * torch.randn(width, generator=ctx.generator)

    def build(module: nn.Module, name: str, comparable: bool = True) -> Implementation:
        with torch.no_grad():
            module.weight.copy_(gain)
        module.to(ctx.device)
        run = ctx.wrap(module)
        return Implementation(
            name=name, forward=lambda: run(x), leaves=(x, module.weight),
            results=lambda: [x.grad, module.weight.grad], comparable=comparable,
        )

    implementations = [build(RMSNorm(dim=width, eps=eps), "blocklab")]
    llama = _llama_modules()
    if llama is not None:
        implementations.append(build(llama.LlamaRMSNorm(width, eps=eps), "transformers.LlamaRMSNorm"))
    implementations.append(build(nn.RMSNorm(width, eps=eps), "torch.nn.RMSNorm"))
    implementations.append(build(nn.LayerNorm(width, eps=eps), "torch.nn.LayerNorm", comparable=False))
    return Case(
        name="rmsnorm", description=f"x ({batch}, {length}, {width}) float32, eps {eps}",
        implementations=implementations, reps=30, warmup=5,
    )


def _rope_case(ctx: _Context) -> Case:
    batch, heads, length, head_dim = (2, 2, 16, 16) if ctx.settings.quick else (4, 16, 512, 64)
    theta = 10000.0
    q = ctx.randn(batch, heads, length, head_dim, requires_grad=True)
    k = ctx.randn(batch, heads, length, head_dim, requires_grad=True)
    positions = torch.arange(length, device=ctx.device).expand(batch, length)
    rotary = RotaryEmbedding(dim=head_dim, theta=theta)

    def blocklab_rope() -> Outputs:
        cos, sin = rotary(positions)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    implementations = [Implementation(
        name="blocklab", forward=ctx.wrap(blocklab_rope), leaves=(q, k), results=lambda: [q.grad, k.grad],
    )]
    llama = _llama_modules()
    if llama is not None:
        config = ModelConfig.preset(
            "llama", d_model=heads * head_dim, n_heads=heads, max_seq_len=length,
            rope={"theta": theta},
        )
        reference_rotary = llama.LlamaRotaryEmbedding(llama_config(config)).to(ctx.device)

        def reference_rope() -> Outputs:
            cos, sin = reference_rotary(q, positions)
            return llama.apply_rotary_pos_emb(q, k, cos, sin)

        implementations.append(Implementation(
            name="transformers.apply_rotary_pos_emb", forward=ctx.wrap(reference_rope),
            leaves=(q, k), results=lambda: [q.grad, k.grad],
        ))
    return Case(
        name="rope",
        description=f"q, k ({batch}, {heads}, {length}, {head_dim}) float32; cos/sin from positions",
        implementations=implementations, reps=30, warmup=5,
    )


def _small_llama(ctx: _Context) -> ModelConfig:
    if ctx.settings.quick:
        return ModelConfig.preset("llama", vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=32)
    return ModelConfig.preset(
        "llama", vocab_size=32000, d_model=512, n_layers=8, n_heads=8, max_seq_len=512,
    )


def _feedforward_case(ctx: _Context) -> Case:
    config = _small_llama(ctx)
    batch, length = (2, 16) if ctx.settings.quick else (4, 512)
    x = ctx.randn(batch, length, config.d_model, requires_grad=True)
    feedforward = FeedForward(dim=config.d_model, hidden_dim=config.ffn_dim, activation="swiglu")
    for linear in (feedforward.gate, feedforward.up, feedforward.down):
        nn.init.normal_(linear.weight, std=config.d_model**-0.5, generator=ctx.generator)
    feedforward.to(ctx.device)
    run = ctx.wrap(feedforward)

    def weights(gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> list[torch.Tensor]:
        return [x.grad, gate.weight.grad, up.weight.grad, down.weight.grad]

    implementations = [Implementation(
        name="blocklab", forward=lambda: run(x), leaves=(x, *feedforward.parameters()),
        results=lambda: weights(feedforward.gate, feedforward.up, feedforward.down),
    )]
    llama = _llama_modules()
    if llama is not None:
        mlp = llama.LlamaMLP(llama_config(config))
        copy_feedforward_to_llama(feedforward, mlp)
        mlp.to(ctx.device)
        reference = ctx.wrap(mlp)
        implementations.append(Implementation(
            name="transformers.LlamaMLP", forward=lambda: reference(x), leaves=(x, *mlp.parameters()),
            results=lambda: weights(mlp.gate_proj, mlp.up_proj, mlp.down_proj),
        ))
    return Case(
        name="feedforward",
        description=f"SwiGLU C {config.d_model}, F {config.ffn_dim}; x ({batch}, {length}, {config.d_model})",
        implementations=implementations, reps=20, warmup=3,
    )


def _decoder_layer_case(ctx: _Context) -> Case:
    config = _small_llama(ctx)
    batch, length = (2, 16) if ctx.settings.quick else (4, 512)
    model = Transformer(config.replace(n_layers=1))
    _randomize_norms(model, ctx.generator)
    block = model.blocks[0].to(ctx.device).train()
    rotary = model.rotary
    x = ctx.randn(batch, length, config.d_model, requires_grad=True)
    positions = torch.arange(length, device=ctx.device).expand(batch, length)
    run_block = ctx.wrap(block)

    def blocklab_layer() -> torch.Tensor:
        return run_block(x, causal=True, rope=rotary(positions))

    implementations = [Implementation(
        name="blocklab", forward=blocklab_layer, leaves=(x, *block.parameters()),
        results=lambda: [x.grad, block.attn.qkv.weight.grad, block.ffn.gate.weight.grad],
    )]
    llama = _llama_modules()
    if llama is not None:
        hf_config = llama_config(config)
        layer = llama.LlamaDecoderLayer(hf_config, layer_idx=0)
        copy_block_to_llama(block, layer)
        layer.to(ctx.device).train()
        reference_rotary = llama.LlamaRotaryEmbedding(hf_config).to(ctx.device)
        run_layer = ctx.wrap(layer)

        def reference_layer() -> torch.Tensor:
            out = run_layer(x, position_embeddings=reference_rotary(x, positions), position_ids=positions)
            return out[0] if isinstance(out, tuple) else out

        implementations.append(Implementation(
            name="transformers.LlamaDecoderLayer", forward=reference_layer, leaves=(x, *layer.parameters()),
            results=lambda: [x.grad, _qkv_grad(layer.self_attn), layer.mlp.gate_proj.weight.grad],
        ))
    return Case(
        name="decoder_layer",
        description=(
            f"LLaMA block C {config.d_model}, H {config.n_heads}, F {config.ffn_dim}, causal; "
            f"x ({batch}, {length}, {config.d_model})"
        ),
        implementations=implementations, reps=20, warmup=3,
    )


def _encoder_layer_case(ctx: _Context) -> Case:
    width, heads = (64, 4) if ctx.settings.quick else (512, 8)
    batch, length = (2, 16) if ctx.settings.quick else (4, 512)
    hidden = 4 * width
    block = TransformerBlock(
        attention=Attention(dim=width, num_heads=heads, qkv_bias=True, out_bias=True),
        feedforward=FeedForward(dim=width, hidden_dim=hidden, activation="gelu", bias=True),
        attn_norm=LayerNorm(dim=width), ffn_norm=LayerNorm(dim=width), residual="pre",
    )
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=ctx.generator))
        block.attn_norm.weight.add_(1.0)
        block.ffn_norm.weight.add_(1.0)
    block.to(ctx.device).train()

    reference = nn.TransformerEncoderLayer(
        width, heads, dim_feedforward=hidden, dropout=0.0, activation="gelu", batch_first=True,
        norm_first=True,
    )
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
        reference.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
        reference.self_attn.out_proj.weight.copy_(block.attn.out.weight)
        reference.self_attn.out_proj.bias.copy_(block.attn.out.bias)
        reference.linear1.weight.copy_(block.ffn.up.weight)
        reference.linear1.bias.copy_(block.ffn.up.bias)
        reference.linear2.weight.copy_(block.ffn.down.weight)
        reference.linear2.bias.copy_(block.ffn.down.bias)
        for ours, theirs in ((block.attn_norm, reference.norm1), (block.ffn_norm, reference.norm2)):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
    reference.to(ctx.device).train()

    x = ctx.randn(batch, length, width, requires_grad=True)
    run_block, run_reference = ctx.wrap(block), ctx.wrap(reference)
    return Case(
        name="encoder_layer",
        description=(
            f"pre-norm LayerNorm/GELU block with biases, bidirectional, C {width}, H {heads}, "
            f"F {hidden}; x ({batch}, {length}, {width})"
        ),
        implementations=[
            Implementation(
                name="blocklab", forward=lambda: run_block(x, causal=False),
                leaves=(x, *block.parameters()),
                results=lambda: [x.grad, block.attn.qkv.weight.grad, block.ffn.up.weight.grad],
            ),
            Implementation(
                name="torch.nn.TransformerEncoderLayer", forward=lambda: run_reference(x),
                leaves=(x, *reference.parameters()),
                results=lambda: [x.grad, reference.self_attn.in_proj_weight.grad, reference.linear1.weight.grad],
            ),
        ],
        reps=20, warmup=3,
    )


def matmul_flops_per_token(model: Transformer) -> float:
    """Return training FLOPs per token, 6 N + 12 L T C (see the module docstring)."""
    config = model.config
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 6.0 * weights + 12.0 * config.n_layers * config.max_seq_len * config.d_model


def _train_step_case(ctx: _Context) -> Case:
    config = _small_llama(ctx)
    batch, length = (2, config.max_seq_len) if ctx.settings.quick else (4, config.max_seq_len)
    model = Transformer(config)
    _randomize_norms(model, ctx.generator)
    model.to(ctx.device).train()
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=ctx.generator).to(ctx.device)
    # Next-token targets with the last position ignored, as transformers' loss does.
    targets = torch.cat((ids[:, 1:], torch.full_like(ids[:, :1], -100)), dim=1)  # (B, T)
    run_model = ctx.wrap(model)

    def blocklab_step() -> torch.Tensor:
        # The loss as `blocklab train` computes it: chunked, without full logits.
        return run_model(ids, targets=targets).loss

    implementations = [Implementation(
        name="blocklab", forward=blocklab_step, leaves=tuple(model.parameters()),
        results=lambda: [model.lm_head.weight.grad, model.blocks[0].attn.qkv.weight.grad,
                         model.embed.weight.grad],
    )]
    llama = _llama_modules()
    if llama is not None:
        reference = llama.LlamaForCausalLM(llama_config(config))
        copy_model_to_llama(model, reference)
        reference.to(ctx.device).train()
        run_reference = ctx.wrap(reference)

        def reference_step() -> torch.Tensor:
            return run_reference(input_ids=ids, labels=ids, use_cache=False).loss

        implementations.append(Implementation(
            name="transformers.LlamaForCausalLM", forward=reference_step,
            leaves=tuple(reference.parameters()),
            results=lambda: [reference.lm_head.weight.grad, _qkv_grad(reference.model.layers[0].self_attn),
                             reference.model.embed_tokens.weight.grad],
        ))

    size = 128 if ctx.settings.quick else 2048
    left, right = ctx.randn(size, size), ctx.randn(size, size)
    product = torch.empty(size, size, device=ctx.device)
    return Case(
        name="train_step",
        description=(
            f"LLaMA V {config.vocab_size}, C {config.d_model}, L {config.n_layers}, H {config.n_heads}, "
            f"F {config.ffn_dim}; batch {batch} x {length} tokens; forward, cross-entropy and "
            f"backward (no optimizer update); matmul peak from {size}x{size} float32 products"
        ),
        implementations=implementations, tokens=batch * length,
        reps=5, warmup=2,
        probe=lambda: torch.mm(left, right, out=product), probe_flops=2.0 * size**3,
        flops_per_run=matmul_flops_per_token(model) * batch * length,
    )


def _generate_case(ctx: _Context, config: ModelConfig | None = None, name: str = "generate") -> Case:
    config = _small_llama(ctx) if config is None else config
    prompt, new_tokens = (8, 4) if ctx.settings.quick else (32, 64)
    model = Transformer(config)
    _randomize_norms(model, ctx.generator)
    model.to(ctx.device).eval()
    ids = torch.randint(0, config.vocab_size, (1, prompt), generator=ctx.generator).to(ctx.device)

    implementations = [Implementation(
        name="blocklab", forward=lambda: generate(model, ids, max_new_tokens=new_tokens),
    )]
    llama = _llama_modules()
    if llama is not None:
        reference = llama.LlamaForCausalLM(llama_config(config))
        copy_model_to_llama(model, reference)
        reference.to(ctx.device).eval()
        mask = torch.ones_like(ids)

        def reference_generate() -> torch.Tensor:
            return reference.generate(
                ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, pad_token_id=0,
            )

        implementations.append(Implementation(name="transformers.generate", forward=reference_generate))
    size = (
        f"V {config.vocab_size}, C {config.d_model}, L {config.n_layers}, H {config.n_heads}, "
        f"{model.num_parameters() / 1e6:.1f}M parameters"
    )
    return Case(
        name=name,
        description=(
            f"greedy decoding with the KV cache, LLaMA {size}; 1 prompt of {prompt} tokens, "
            f"{new_tokens} new tokens (tokens/s counts new tokens)"
        ),
        implementations=implementations, backward=False, tokens=new_tokens,
        reps=5, warmup=1, agreement="mismatched_tokens",
    )


def _generate_small_case(ctx: _Context) -> Case:
    # The llama preset at its default size: small enough that the work per
    # step, not reading the weights, sets the speed.
    config = ModelConfig.preset("llama", max_seq_len=128)
    return _generate_case(ctx, config, name="generate_small")


CASES: dict[str, Callable[[_Context], Case]] = {
    "rmsnorm": _norm_case,
    "rope": _rope_case,
    "feedforward": _feedforward_case,
    "decoder_layer": _decoder_layer_case,
    "encoder_layer": _encoder_layer_case,
    "train_step": _train_step_case,
    "generate": _generate_case,
    "generate_small": _generate_small_case,
}
# Compiling generation would need a static cache on both sides; not measured.
NOT_COMPILED = ("generate", "generate_small")


def run_benchmarks(names: Sequence[str], settings: BenchSettings) -> list[BenchmarkResult]:
    """Run the named benchmarks in order and return their results.

    Raises:
        UsageError: for an unknown benchmark name or an unavailable device.
    """
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise UsageError(f"unknown benchmark {unknown[0]!r}; expected one of {', '.join(CASES)}")
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {settings.device!r} is not available; use --device cpu")
    wrap = torch.compile if settings.compile else _identity
    results = []
    for name in names:
        if settings.compile and name in NOT_COMPILED:
            logger.info("%s: skipped with --compile (decoding is not compiled)", name)
            continue
        generator = torch.Generator().manual_seed(settings.seed)
        torch.manual_seed(settings.seed)
        ctx = _Context(settings=settings, device=torch.device(settings.device), generator=generator, wrap=wrap)
        case = CASES[name](ctx)
        if len(case.implementations) == 1:
            logger.warning("%s: no reference is installed; timing blocklab alone", name)
        results.append(run_case(case, settings))
    return results


# Reporting -----------------------------------------------------------------


def environment() -> dict[str, Any]:
    """Describe the machine and the software versions that the figures depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers_version(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def _format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _format_agreement(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric == "mismatched_tokens":
        return f"{int(value)} tok"
    return f"{value:.1e}"


def _format_goal(comparison: Comparison) -> str:
    parts = []
    if comparison.goal is not None:
        parts.append(f">={comparison.goal:g}x {'met' if comparison.goal_met else 'MISSED'}")
    if comparison.memory_goal is not None and comparison.memory_goal_met is not None:
        parts.append(f"mem {'met' if comparison.memory_goal_met else 'MISSED'}")
    return ", ".join(parts) or "-"


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """Return the results as a plain-text table of speedups, one row per reference.

    Speedups are reference time / blocklab time. ``mem`` is blocklab's peak
    memory over the reference's (below 1 is less).
    """
    header = (
        "benchmark", "reference", "fwd", "bwd", "fwd+bwd", "blocklab ms", "ref ms",
        "mem", "agreement", "goal",
    )
    rows = [header]
    for result in results:
        for reference, comparison in zip(result.references, result.comparisons):
            rows.append((
                result.name, comparison.reference, _format_ratio(comparison.speedup_forward),
                _format_ratio(comparison.speedup_backward), _format_ratio(comparison.speedup_total),
                f"{result.blocklab.total_ms:.2f}", f"{reference.total_ms:.2f}",
                "-" if comparison.memory_ratio is None else f"{comparison.memory_ratio:.2f}",
                _format_agreement(result.agreement_metric, comparison.agreement),
                _format_goal(comparison),
            ))
        if not result.comparisons:
            rows.append((result.name, "(none)", "-", "-", "-", f"{result.blocklab.total_ms:.2f}",
                         "-", "-", "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_throughput(results: Sequence[BenchmarkResult]) -> str:
    """Return tokens/s, peak memory and MFU lines for the benchmarks that have them."""
    lines = []
    for result in results:
        for measurement in (result.blocklab, *result.references):
            if measurement.tokens_per_s is None:
                continue
            line = f"{result.name}: {measurement.name}: {measurement.tokens_per_s:,.0f} tokens/s"
            if measurement.peak_memory_mib is not None:
                line += f", peak {measurement.peak_memory_mib:,.0f} MiB"
            if measurement.mfu is not None:
                line += f", MFU {100 * measurement.mfu:.0f}%"
            lines.append(line)
        if result.matmul_peak_gflops is not None:
            goal = f" (goal: blocklab MFU >= {100 * result.mfu_goal:.0f}%)" if result.mfu_goal else ""
            lines.append(f"{result.name}: float32 matmul peak {result.matmul_peak_gflops:.1f} GFLOP/s{goal}")
    return "\n".join(lines)


def format_profiles(results: Sequence[BenchmarkResult]) -> str:
    """Return the profiled top operators of every implementation, as text."""
    lines = []
    for result in results:
        for measurement in (result.blocklab, *result.references):
            if not measurement.top_ops:
                continue
            lines.append(f"{result.name}: {measurement.name} (one run, self CPU time)")
            for op in measurement.top_ops:
                lines.append(
                    f"  {op['percent']:5.1f}%  {op['self_cpu_ms']:9.2f} ms  {op['calls']:5d} calls  {op['name']}"
                )
    return "\n".join(lines)


def results_to_json(
    results: Sequence[BenchmarkResult], settings: BenchSettings, command: str,
) -> dict[str, Any]:
    """Return a JSON-ready record of the run: command, environment, settings, results."""
    return {
        "command": command,
        "environment": environment(),
        "settings": dataclasses.asdict(settings),
        "mfu_formula": "6 N + 12 L T C FLOPs per token; N = weights of every matrix multiply",
        "benchmarks": [dataclasses.asdict(result) for result in results],
    }


def _write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(path)


# Command line --------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}; expected an integer >= 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected an integer >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value}; expected an integer >= 0")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``."""
    parser.add_argument(
        "--only", metavar="NAME,...",
        help=f"run only these benchmarks, comma-separated: {', '.join(CASES)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny sizes and 3 repetitions, to check it runs (goals are not judged)",
    )
    parser.add_argument(
        "--reps", type=_positive_int, metavar="N",
        help="counted repetitions per benchmark (default: 30 for norms and RoPE, 20 for layers, "
             "5 for training and decoding)",
    )
    parser.add_argument("--warmup", type=_non_negative_int, metavar="N",
                        help="uncounted warm-up repetitions before them (default: per benchmark)")
    parser.add_argument(
        "--compile", action="store_true",
        help="wrap blocklab and the references alike in torch.compile (decoding is skipped)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to run on (default: cuda when available, else cpu)",
    )
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="torch CPU threads (default: PyTorch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")
    parser.add_argument(
        "--profile", type=_non_negative_int, default=0, metavar="N",
        help="after timing, profile one run of each implementation and print its N most "
             "expensive operators by self CPU time (default: 0, no profile)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")


def _selected(only: str | None) -> list[str]:
    if only is None:
        return list(CASES)
    names = [name.strip() for name in only.split(",") if name.strip()]
    if not names:
        raise UsageError(f"--only: no benchmark names in {only!r}; expected some of {', '.join(CASES)}")
    for name in names:
        if name not in CASES:
            raise UsageError(f"--only: unknown benchmark {name!r}; expected some of {', '.join(CASES)}")
    return names


def _command_line(args: argparse.Namespace) -> str:
    """Rebuild the ``blocklab bench`` command line that ``args`` stand for."""
    words = ["blocklab", "bench"]
    for option in ("only", "reps", "warmup", "device", "threads", "seed", "profile", "json"):
        value = getattr(args, option)
        if value is not None and not (option in ("seed", "profile") and value == 0):
            words += [f"--{option}", str(value)]
    words += [f"--{flag}" for flag in ("quick", "compile") if getattr(args, flag)]
    return " ".join(words)


def run_command(args: argparse.Namespace) -> int:
    """Run the selected benchmarks, print the table and write the JSON record."""
    names = _selected(args.only)
    # --quick lowers the repetitions unless they are given; None keeps each
    # benchmark's own default.
    reps, warmup = args.reps, args.warmup
    if args.quick:
        reps = 3 if reps is None else reps
        warmup = 1 if warmup is None else warmup
    settings = BenchSettings(
        quick=args.quick,
        reps=reps,
        warmup=warmup,
        compile=args.compile,
        device=args.device,
        seed=args.seed,
        profile_rows=args.profile,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run_benchmarks(names, settings)
    env = environment()
    versions = f"torch {env['torch']}, transformers {env['transformers'] or 'not installed'}"
    print(f"{env['cpu']}, {env['cpu_count']} cores, {env['torch_threads']} threads; {versions}"
          f"{'; torch.compile' if settings.compile else ''}")
    print(format_table(results))
    throughput = format_throughput(results)
    if throughput:
        print()
        print(throughput)
    profiles = format_profiles(results)
    if profiles:
        print()
        print(profiles)
    if args.json is not None:
        _write_json(args.json, results_to_json(results, settings, _command_line(args)))
        print(f"wrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``blocklab bench`` with these arguments; for the scripts in benchmarks/."""
    from blocklab.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
