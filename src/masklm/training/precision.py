"""Numeric precision and compilation, for training and inference alike.

Mixed precision (Micikevicius et al., 2018, "Mixed Precision Training", arXiv:1710.03740): the forward and
backward run under ``torch.autocast`` in bf16 or fp16 while the weights, their gradients and the optimizer
state stay fp32 (the "master weights"). Autocast picks a dtype per op from torch's lists: matmuls and
attention in the low dtype, reductions that lose accuracy (softmax, log-softmax, norms) in fp32. The
training loss itself is taken in fp32 (``models.heads.cross_entropy_sum`` upcasts the logits).

fp16 has a 5-bit exponent, so small gradients underflow: ``torch.amp.GradScaler`` multiplies the loss by a
scale (2^16 at first), unscales the gradients before clipping, and skips an update whose gradients
overflowed, halving the scale (it doubles after 2000 clean steps). A skipped step is the scaler doing its
job, not a failure. bf16 has fp32's 8-bit exponent and needs no scaler. torch >= 2.3 runs both on CPU
(``torch.autocast("cpu", dtype=torch.float16)`` and ``GradScaler("cpu")``), so fp16 is allowed there too:
it trains correctly, though few CPUs have fp16 arithmetic, so it is rarely faster than fp32 there.

TF32: on NVIDIA Ampere and later GPUs, fp32 matmuls can run on tensor cores with a 10-bit mantissa
(``torch.set_float32_matmul_precision("high")``); torch leaves that off by default. Training turns it on
for CUDA, as Hugging Face's ``--tf32`` and most training recipes do; ``NVIDIA_TF32_OVERRIDE=0`` turns it
off for the whole process. Inference keeps torch's default: ``--dtype`` is its explicit choice.

On CPUs the fast precision depends on the chip: with AMX (Intel Xeon 4th generation and later; ``amx_bf16``
in /proc/cpuinfo) bf16 matmuls run several times faster than fp32 ones and a BERT small step takes about half
the time in bf16; without it bf16 converts back and forth and is slower than fp32 (docs/benchmarks.md, "bf16
on a CPU with AMX"). ``cpu_precision_advice`` says so in one line when a run's choice is the slow one.

Compilation: ``torch.compile`` (TorchDynamo captures graphs, Inductor generates C++/OpenMP code on CPU and
Triton kernels on CUDA). Inductor needs a C++ compiler on CPU and Triton on CUDA; without them, or when a
graph fails to compile, the code runs eagerly after one line saying so. The first call of each new shape
compiles (tens of seconds); see docs/benchmarks.md for when it pays.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from masklm.errors import ConfigError

# Training precisions (``--precision``) and inference dtypes (``--dtype``), each with its torch dtype.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FP16_INIT_SCALE = 2.0**16  # GradScaler's default first loss scale


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``--dtype`` name (or a torch dtype, or None for "as stored") -> torch dtype; ConfigError otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def cpu_bf16_matmul(cpu_flags: str) -> str:
    """What a CPU's bf16 matmuls run on, from its feature flags (``models.cpu_kernels.cpu_flags``):
    ``amx_bf16`` (matrix units: several times fp32's speed), ``avx512_bf16`` (vector dot products: slower than
    fp32 in a training step, docs/benchmarks.md) or ``none``."""
    flags = set(cpu_flags.split())
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), "none")


def cpu_precision_advice(precision: str, cpu_flags: str) -> str | None:
    """One line for a training run on an x86 CPU whose ``--precision`` is the slow choice there, else None.

    ``cpu_flags``: the CPU's feature flags (``models.cpu_kernels.cpu_flags``). fp32 where the CPU has AMX
    (``amx_bf16``), bf16 where it has not; other CPUs (ARM's bf16 instructions are another matter) and fp16
    get no advice."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    amx = cpu_bf16_matmul(cpu_flags) == "amx_bf16"
    if precision == "fp32" and amx:
        return ("this CPU has AMX: --precision bf16 runs faster here (bf16 matmuls on its matrix units, "
                "fp32 master weights)")
    if precision == "bf16" and not amx:
        return "this CPU has no AMX: --precision bf16 runs slower than fp32 here"
    return None


class MixedPrecision:
    """Autocast and, for fp16, the loss scaler of one run. ``scaler`` is None unless fp16."""

    def __init__(self, precision: str, device: torch.device) -> None:
        check_precision(precision)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        """The context the forward runs in (a no-op for fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (fp16), so clipping and the norm see the true gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The update; with fp16 the scaler skips it when the gradients hold inf/NaN, and adjusts the scale."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    @property
    def scale(self) -> float:
        """The current loss scale (1.0 without a scaler)."""
        return self.scaler.get_scale() if self.scaler is not None else 1.0


def grad_norm(model: nn.Module, clip_norm: float | None,
              optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """The global L2 norm of the gradients (0-dim), clipping them to ``clip_norm`` when given.

    ``optimizer``: when it is a fused AdamW (and no loss scaler uses its ``grad_scale``), the clipping is left
    to its next step instead of a pass over every gradient: ``grad_scale`` = max(1, (norm + 1e-6) /
    clip_norm), which the fused kernel divides each gradient by as it reads it. That is
    ``clip_grad_norm_``'s factor, min(1, clip_norm / (norm + 1e-6)), and the way torch's ``GradScaler``
    hands its scale to fused optimizers. The caller clears ``grad_scale`` after that step."""
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_norm and clips_in_step(optimizer):
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        optimizer.grad_scale = torch.clamp((norm.float() + 1e-6) / clip_norm, min=1.0)
        return norm
    if clip_norm:
        return torch.nn.utils.clip_grad_norm_(params, clip_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def clips_in_step(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether ``grad_norm`` can leave clipping to ``optimizer``'s step: a fused AdamW."""
    return isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults.get("fused"))


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def enable_tf32(device: torch.device) -> None:
    """TF32 tensor-core matmuls for fp32 on CUDA (see the module docstring); nothing elsewhere."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


# ---- torch.compile with a fallback ---------------------------------------------------------------

def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or None when it can."""
    try:
        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python version or platform"
    except Exception as exc:  # noqa: BLE001 - any failure here means: do not compile
        return f"torch.compile is not usable ({exc})"
    if device.type == "cuda":
        from torch.utils._triton import has_triton  # lazy: torch's private helper, only when compiling

        return None if has_triton() else "Triton is not installed (pip install triton)"
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if cxx is None or shutil.which(cxx) is None:
        return "no C++ compiler found (install g++ or set CXX)"
    return None


class CompiledOrEager:
    """Calls ``torch.compile(fn)``; if compiling fails, says so in one line and calls ``fn`` from then on."""

    def __init__(self, fn: Callable, log: Callable[[str], None], what: str) -> None:
        self.fn = fn
        self.compiled: Callable | None = torch.compile(fn)
        self.log = log
        self.what = what

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            self.compiled = None
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log(f"--compile: compiling {self.what} failed ({reason[:200]}); running it eagerly")
            return self.fn(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # e.g. DDP's no_sync, a module's config
        return getattr(self.__dict__["fn"], name)


def maybe_compile(fn: Callable, device: torch.device, log: Callable[[str], None], what: str) -> Callable:
    """``fn`` compiled (with the eager fallback), or ``fn`` itself after one line saying why not."""
    reason = compile_unavailable(device)
    if reason is not None:
        log(f"--compile: {reason}; running {what} eagerly")
        return fn
    return CompiledOrEager(fn, log, what)


def compile_for_inference(model: nn.Module, device: torch.device, log: Callable[[str], None]) -> None:
    """Compile the methods inference calls (``encode``, ``predict``, ``forward``), in place on ``model``;
    each compiles on its first call, so unused ones cost nothing."""
    reason = compile_unavailable(device)
    if reason is not None:
        log(f"--compile: {reason}; running the model eagerly")
        return
    for name in ("encode", "predict", "forward"):
        method = getattr(model, name, None)
        if callable(method):
            setattr(model, name, CompiledOrEager(method, log, f"the model's {name}"))
