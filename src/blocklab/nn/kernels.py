"""Fused float32 CPU kernels (kernels.c), compiled on first use and called through ctypes.

RMSNorm, RoPE and SwiGLU each run as several PyTorch operators that read and
write whole tensors. kernels.c does each in one pass per row. It also has a
matrix-vector product for the few rows of a decoding step, which streams the
weights at close to the memory bandwidth. The first call
compiles it with the system C compiler (``$CC``, else ``cc``) into a shared
library under ``$BLOCKLAB_CACHE`` (default ``~/.cache/blocklab``), keyed by a
hash of the source, the flags and the CPU, and later processes load that file.
With no compiler, or with ``BLOCKLAB_KERNELS=0`` in the environment, ``load``
returns None and every caller keeps its pure-PyTorch path, which computes the
same functions.

The wrappers take and return tensors. They expect float32 CPU tensors whose
last dimension is contiguous; ``usable`` checks that for callers.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
# -march=native lets the compiler use the CPU's widest vectors. The cache key
# includes the CPU's flags, so a machine with other flags builds its own copy.
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c99")
OPENMP_FLAGS = ("-fopenmp",)

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_loaded = False

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p
_SIGNATURES = {
    "bl_rms_norm_forward": (_ptr, _ptr, _ptr, _ptr, _i64, _i64, ctypes.c_float, ctypes.c_int),
    "bl_rms_norm_backward": (_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, ctypes.c_int),
    "bl_rope": (
        _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64,
        _i64, _i64, _i64, ctypes.c_int, ctypes.c_float, ctypes.c_int,
    ),
    "bl_swiglu_forward": (_ptr, _ptr, _ptr, _i64, ctypes.c_int),
    "bl_swiglu_backward": (_ptr, _ptr, _ptr, _ptr, _ptr, _i64, ctypes.c_int),
    "bl_linear_rows": (_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_int),
    "bl_linear_rows_swiglu": (_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_int),
}


def enabled() -> bool:
    """Return False when ``BLOCKLAB_KERNELS`` is set to 0, false, no or off."""
    return os.environ.get("BLOCKLAB_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_signature() -> str:
    """Return the machine, CPU model and CPU flags, as the cache key's hardware part."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith(("model name", "flags", "Features")):
                    parts.append(line.strip())
                if len(parts) >= 4:
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _cache_dir() -> Path:
    root = os.environ.get("BLOCKLAB_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "blocklab"


def _compile(compiler: list[str], flags: tuple[str, ...], target: Path) -> None:
    """Compile SOURCE into ``target`` atomically, so concurrent processes never load half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(handle)
    try:
        command = [*compiler, *flags, "-o", temporary, str(SOURCE), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise OSError(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")
        digest = _digest(Path(temporary))
        os.replace(temporary, target)
        # The digest goes in last, so a library without a matching one is never loaded.
        handle, temporary_digest = tempfile.mkstemp(dir=target.parent, suffix=".sha256.tmp")
        with os.fdopen(handle, "w") as file:
            file.write(digest)
        os.replace(temporary_digest, _digest_path(target))
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _intact(target: Path) -> bool:
    """Return True when ``target`` matches the digest written after it was compiled.

    A library cut short but with intact headers would make the dynamic loader
    read past the end of the file and the process die with SIGBUS, so it is
    checked before it is loaded.
    """
    try:
        return _digest_path(target).read_text().strip() == _digest(target)
    except OSError:
        return False


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    """Set every kernel's argument types; AttributeError when a symbol is missing."""
    for name, argtypes in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = None
    return library


def _load_or_compile(compiler: list[str], flags: tuple[str, ...], target: Path) -> ctypes.CDLL:
    if target.exists() and not _digest_path(target).exists():
        # Another process may be between writing the library and its digest.
        logger.info("cached kernel library %s has no digest yet; compiling it again", target)
    elif target.exists():
        try:
            if not _intact(target):
                raise OSError("its contents do not match the digest recorded when it was compiled")
            return _bind(ctypes.CDLL(str(target)))
        except (OSError, AttributeError) as error:
            # For example, a file cut short by an interrupted copy.
            logger.warning("cached kernel library %s is unusable (%s); compiling it again", target, error)
    logger.info("compiling %s into %s", SOURCE.name, target)
    _compile(compiler, flags, target)
    try:
        return _bind(ctypes.CDLL(str(target)))
    except AttributeError as error:
        raise OSError(f"compiled library {target} lacks a kernel: {error}") from None


def _build() -> ctypes.CDLL:
    # CC may carry arguments ("ccache cc", "gcc -g"), as make and pip allow.
    compiler = shlex.split(os.environ.get("CC") or "cc")
    source = SOURCE.read_bytes()
    errors: list[str] = []
    # OpenMP first; a compiler without it (Apple clang) still gets a
    # single-threaded library, because the pragmas are then ignored.
    for flags in (FLAGS + OPENMP_FLAGS, FLAGS):
        key = hashlib.sha256(b"\0".join([source, " ".join(compiler).encode(), " ".join(flags).encode(),
                                         _cpu_signature().encode(), torch.__version__.encode()]))
        target = _cache_dir() / "kernels" / f"blocklab-kernels-{key.hexdigest()[:16]}.so"
        try:
            return _load_or_compile(compiler, flags, target)
        except (OSError, subprocess.SubprocessError, ValueError) as error:
            if str(error) not in errors:
                errors.append(str(error))
    raise OSError("; ".join(errors))


def load() -> ctypes.CDLL | None:
    """Return the compiled kernel library, building it on the first call, or None when unavailable.

    ``BLOCKLAB_KERNELS`` is read on the first call only. A failed build is
    logged once as a warning and not retried in this process.
    """
    global _library, _loaded
    if _loaded:
        return _library
    with _lock:
        if not _loaded:
            _library = _build_or_warn() if enabled() else None
            _loaded = True
    return _library


def _build_or_warn() -> ctypes.CDLL | None:
    try:
        return _build()
    except OSError as error:
        logger.warning(
            "fused CPU kernels unavailable, using PyTorch operators instead (%s); install a C compiler "
            "or set CC, point BLOCKLAB_CACHE at a writable directory, or set BLOCKLAB_KERNELS=0 to "
            "skip the build", error,
        )
        return None


def usable(*tensors: torch.Tensor) -> bool:
    """Return True when the kernels can take these tensors: float32 on the CPU, last dim contiguous.

    Always False while torch.compile traces, because it cannot trace a ctypes
    call, and it fuses the PyTorch path itself. Decoding calls this for every
    norm of every token, so it is kept to a few attribute reads.
    """
    if (_library is None and _loaded) or torch.compiler.is_compiling():
        return False
    for tensor in tensors:
        if not tensor.is_cpu or tensor.dtype != torch.float32:
            return False
        if tensor.dim() and tensor.stride(-1) != 1 and tensor.shape[-1] > 1:
            return False
    return load() is not None


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def rms_norm_forward(
    x: torch.Tensor, gain: torch.Tensor, eps: float, want_rstd: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return RMSNorm(x) * gain and, when ``want_rstd``, rstd (..., 1); x and gain contiguous."""
    width = x.shape[-1]
    rows = x.numel() // width
    out = torch.empty_like(x)
    rstd = x.new_empty((*x.shape[:-1], 1)) if want_rstd else None
    load().bl_rms_norm_forward(
        x.data_ptr(), gain.data_ptr(), out.data_ptr(), _address(rstd), rows, width, eps,
        torch.get_num_threads(),
    )
    return out, rstd


def rms_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, gain: torch.Tensor, rstd: torch.Tensor,
    need_x: bool, need_gain: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Return the gradients of x and gain for RMSNorm; all inputs contiguous."""
    width = x.shape[-1]
    rows = x.numel() // width
    threads = torch.get_num_threads()
    grad_x = torch.empty_like(x) if need_x else None
    partials = torch.zeros(threads, width, dtype=x.dtype) if need_gain else None
    load().bl_rms_norm_backward(
        grad.data_ptr(), x.data_ptr(), gain.data_ptr(), rstd.data_ptr(), _address(grad_x),
        _address(partials), rows, width, threads,
    )
    grad_gain = partials.sum(0) if partials is not None else None
    return grad_x, grad_gain


def rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, inverse: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return x (B, H, T, D) rotated by cos, sin (B or 1, T, R/2).

    ``inverse`` rotates by the negative angles. x may be any strided view whose
    last dimension is contiguous, and so may ``out``, which receives the result
    when given (it must not overlap x). Without ``out`` the result is a new
    contiguous tensor. cos and sin must have a contiguous last dimension.
    """
    batch, heads, length, dim = x.shape
    half = cos.shape[-1]
    if out is None:
        out = torch.empty((batch, heads, length, dim), dtype=x.dtype)
    if out.numel() == 0:
        return out
    if sin.stride() != cos.stride():
        sin = sin.contiguous()
        cos = cos.contiguous()
    cos_batch_stride = cos.stride(0) if cos.shape[0] > 1 else 0
    load().bl_rope(
        x.data_ptr(), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), batch, heads, length, dim, half,
        x.stride(0), x.stride(1), x.stride(2), cos_batch_stride, cos.stride(1),
        out.stride(0), out.stride(1), out.stride(2), int(interleaved), -1.0 if inverse else 1.0,
        torch.get_num_threads(),
    )
    return out


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Return silu(gate) * up for contiguous gate and up of one shape."""
    out = torch.empty_like(gate)
    load().bl_swiglu_forward(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(), torch.get_num_threads())
    return out


def swiglu_backward(
    grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, need_gate: bool, need_up: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Return the gradients of gate and up for silu(gate) * up; all inputs contiguous."""
    grad_gate = torch.empty_like(gate) if need_gate else None
    grad_up = torch.empty_like(up) if need_up else None
    load().bl_swiglu_backward(
        grad.data_ptr(), gate.data_ptr(), up.data_ptr(), _address(grad_gate), _address(grad_up),
        gate.numel(), torch.get_num_threads(),
    )
    return grad_gate, grad_up


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Return x (R, K) @ weight (N, K).T + bias for contiguous inputs and few rows R."""
    rows, in_features = x.shape
    out_features = weight.shape[0]
    out = x.new_empty((rows, out_features))
    load().bl_linear_rows(
        x.data_ptr(), weight.data_ptr(), _address(bias), out.data_ptr(), rows, in_features, out_features,
        torch.get_num_threads(),
    )
    return out


def linear_rows_swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Return silu(x @ gate.T) * (x @ up.T) for contiguous x (R, K), gate and up (N, K), few rows R."""
    rows, in_features = x.shape
    out_features = gate.shape[0]
    out = x.new_empty((rows, out_features))
    load().bl_linear_rows_swiglu(
        x.data_ptr(), gate.data_ptr(), up.data_ptr(), out.data_ptr(), rows, in_features, out_features,
        torch.get_num_threads(),
    )
    return out
