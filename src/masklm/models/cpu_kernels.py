"""Fused kernels for training on a CPU, in C++ (``kernels/cpu_kernels.cpp``; the reasons and the maths are
in that file's header), each with its backward:

- ``attend_fused``: softmax(q k^T + bias) with dropout, times v. In eager PyTorch, attention with dropout on
  a CPU is a chain of passes over ``[B, H, T, T]`` tensors in memory plus copies of q, k and v into
  contiguous blocks and of their gradients back into the fused QKV layout; SDPA's CPU kernels cannot do
  dropout. The kernel keeps each (sequence, head) pair in cache, reads q, k and v where the QKV
  projection wrote them, adds the projection's bias itself (the projection runs without it) and writes
  their gradients straight into the QKV gradient, the bias's gradient beside them.
- ``add_norm``: BERT's sublayer exit, LayerNorm(residual + dropout(h + bias)), one pass per row forward and
  one backward, where eager PyTorch takes a pass per op (and addmm a copy of the bias);
- ``bias_gelu``: the FFN's GELU(h + bias) with the bias's gradient in the backward pass;
- ``cross_entropy_forward`` / ``_backward``: the training loss (``models.heads.cross_entropy_sum``) without
  the ``[N, V]`` log-probabilities: the forward keeps each row's logsumexp, the backward is one pass.

``benchmarks/cpu_kernels.py`` times attention against the explicit path and SDPA, and a whole training step
with the kernels on and off (figures in ``docs/benchmarks.md``, "Fused CPU kernels").

Like Inductor's generated code, the kernels are compiled on the machine that runs them, at first use, with the
C++ compiler found there (``$CXX``, else ``g++``, else ``c++``; ``-O3 -march=native -fopenmp``), and cached
under ``$MASKLM_CACHE`` (default ``~/.cache/masklm``) ``/kernels``, keyed by the source, the flags and the
CPU's flags, so later processes load it in milliseconds (``MASKLM_CPU_KERNELS_MARCH`` builds for an older CPU
level instead of ``native``; the tests use it to run the paths without AVX-512). Without a compiler, or when
the build or the load fails, or with ``MASKLM_CPU_KERNELS=0``, the models run on PyTorch's ops as before
(``models.attention.attend`` and the rest); ``unavailable()`` says why. The build writes to a temporary file
and renames it, so concurrent processes (``torchrun``) never load half a file.

Used by BERT (``models.bert``: self-attention, both sublayer exits, the exact GELU) and by the training loss
of every model (``models.heads``) when a gradient will be taken on a CPU in fp32 and the widths are multiples
of 16 (``usable``). Under bf16 autocast (``--precision bf16`` on a CPU) the sublayer exit, GELU and the loss
run in their bf16 forms: bf16 in and out where autocast has bf16 (the matmuls' outputs and their gradients),
fp32 inside, each result rounded once to nearest even; attention keeps SDPA there, whose bf16 matmuls run on
the CPU's matrix units (AMX) where it has them. Everything else (inference, GPUs, fp16 autocast, the key/value
cache) keeps SDPA or the PyTorch ops. Dropout's masks come from the kernels' own counter-based generator (a
function of seed, stream and position, vectorised; the C++ header says how), seeded by one draw of torch's
generator per call, so ``torch.manual_seed`` (and a checkpoint's RNG state) still fixes them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from masklm.models.attention import AttentionMask

SOURCE = Path(__file__).with_name("kernels") / "cpu_kernels.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC")


def _flags() -> tuple[str, ...]:
    """FLAGS, with ``-march=$MASKLM_CPU_KERNELS_MARCH`` in place of ``-march=native`` when that is set (a build
    for an older CPU than this one: the tests build ``x86-64-v2`` to check the code paths without AVX-512)."""
    march = os.environ.get("MASKLM_CPU_KERNELS_MARCH")
    return tuple(f"-march={march}" if f == "-march=native" and march else f for f in FLAGS)

_why_not: list[str] = []  # the reason the kernels are not available, once known


def _cache_dir() -> Path:
    root = os.environ.get("MASKLM_CACHE") or Path.home() / ".cache" / "masklm"
    return Path(root) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` compiles for them), or '' where /proc/cpuinfo is absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _build(compiler: str, target: Path) -> None:
    """Compile SOURCE into the shared library ``target`` (atomically: a temporary file, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *_flags(), "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"{compiler} failed: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, built at the first call of a process that finds none in the cache; None when they
    cannot be had (the reason goes to ``unavailable()``)."""
    if os.environ.get("MASKLM_CPU_KERNELS", "1") == "0":
        _why_not.append("MASKLM_CPU_KERNELS=0")
        return None
    compiler = _compiler()
    if compiler is None:
        _why_not.append("no C++ compiler found (install g++ or set CXX)")
        return None
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), compiler.encode(), " ".join(_flags()).encode(),
                                     cpu_flags().encode(), torch.__version__.encode()])).hexdigest()[:16]
    target = _cache_dir() / f"cpu_kernels-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _why_not.append(f"the fused CPU kernels could not be built or loaded ({error})")
        return None
    P, L, F, U, N = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_uint64, ctypes.c_int
    lib.attn_forward.argtypes = [P, P, P, P, P, P, P, P, P, P, P, P, L, L, L, L, L, P, L, L, F, F, U, N]
    lib.attn_backward.argtypes = [P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, L, L, L, L, L, F,
                                  F, U, N]
    lib.addnorm_forward.argtypes = [P, P, P, P, P, P, P, P, L, L, F, F, U, N]
    lib.addnorm_backward.argtypes = [P, P, P, P, P, P, P, P, P, L, L, F, U, N]
    lib.gelu_forward.argtypes = [P, P, P, L, L, N]
    lib.gelu_backward.argtypes = [P, P, P, P, P, L, L, N]
    lib.ce_forward.argtypes = [P, P, P, L, P, P, L, L, N]
    lib.ce_backward.argtypes = [P, P, P, L, P, F, P, L, L, N]
    for name in ("addnorm_forward", "addnorm_backward", "gelu_forward", "gelu_backward", "ce_forward", "ce_backward"):
        # the same arguments; h or x, and the outputs beside them (y, dh, dz, the logits' gradient), are bf16
        getattr(lib, name + "_bf16").argtypes = getattr(lib, name).argtypes
    for fn in (lib.attn_forward, lib.attn_backward, lib.addnorm_forward, lib.addnorm_backward, lib.gelu_forward,
               lib.gelu_backward, lib.ce_forward, lib.ce_backward, lib.addnorm_forward_bf16,
               lib.addnorm_backward_bf16, lib.gelu_forward_bf16, lib.gelu_backward_bf16, lib.ce_forward_bf16,
               lib.ce_backward_bf16):
        fn.restype = None
    return lib


def unavailable() -> str | None:
    """Why the fused CPU kernels cannot be used in this process, or None when they can (builds them if needed)."""
    return None if _library() is not None else _why_not[-1]


def usable(x: torch.Tensor, width: int | None = None, multiple: int = 16, bf16: bool = False) -> bool:
    """Whether the kernels take a call on ``x`` (attention: q_src; the sublayer exit and GELU: their input,
    with ``width`` the dense layer's output width; the loss: the logits, with ``multiple=1``): CPU, fp32, a
    gradient to be taken, the width the kernel works on (default: x's last dimension) a multiple of
    ``multiple``, not under autocast (but see ``bf16``), not inside ``torch.compile`` (Inductor fuses the PyTorch ops itself, and
    cannot trace a foreign call), and the kernels available.

    ``bf16=True`` where the kernel has a bf16 form (the sublayer exit, GELU, the loss) and its parameters are
    fp32: then ``x`` may be bf16 too, and CPU autocast to bf16 may be on (the kernel takes the matmul's bf16
    output, computes in fp32 and hands bf16 back where autocast would). Attention has no bf16 form: under
    autocast its bf16 matmuls run on the CPU's matrix units, which its fp32 products cannot match."""
    autocast = torch.is_autocast_enabled("cpu")  # an fp32 input may still meet a bf16 (or fp16) matmul
    if autocast and not (bf16 and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return False
    return (x.device.type == "cpu" and x.dtype in ((torch.float32, torch.bfloat16) if bf16 else (torch.float32,))
            and x.requires_grad and torch.is_grad_enabled()
            and (x.shape[-1] if width is None else width) % multiple == 0 and not torch.compiler.is_compiling()
            and _library() is not None)


def _check_fp32(*tensors: torch.Tensor | None) -> None:
    """The kernels read raw fp32 memory: refuse anything else rather than read it wrongly."""
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise TypeError(f"the fused CPU kernels take fp32 CPU tensors, got {t.dtype} on {t.device}")


def _form(t: torch.Tensor, fn: str) -> ctypes._CFuncPtr:
    """The kernel ``fn`` for ``t``'s dtype: fp32, or its bf16 form (``fn + '_bf16'``); anything else is refused
    rather than read wrongly."""
    if t.device.type == "cpu" and t.dtype == torch.bfloat16:
        return getattr(_library(), fn + "_bf16")
    _check_fp32(t)
    return getattr(_library(), fn)


def _seed() -> int:
    """One draw of torch's generator: the seed of a call's dropout streams."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def _heads(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``[B, T, n, H, d]`` -> n strided views ``[B, H, T, d]``; ``[B, T, H, d]`` -> one."""
    if t.dim() == 4:
        return (t.transpose(1, 2),)
    return t.permute(2, 0, 3, 1, 4).unbind(0)


def _strides(t: torch.Tensor) -> ctypes.Array:
    return (ctypes.c_long * 3)(*t.stride()[:3])


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _head_biases(q_bias: torch.Tensor | None, kv_bias: torch.Tensor | None, packed: bool) -> tuple:
    """The projection's bias (``[3, H, d]`` packed; ``[H, d]`` and ``[2, H, d]`` with separate queries) ->
    (q, k, v) biases ``[H, d]``, each None when absent."""
    if packed:
        return (None, None, None) if q_bias is None else tuple(q_bias.unbind(0))
    return (q_bias, *((None, None) if kv_bias is None else kv_bias.unbind(0)))


class _FusedAttention(torch.autograd.Function):
    """q_src ``[B, T, 3, H, d]`` (kv None) or ``[B, M, H, d]`` with kv ``[B, T, 2, H, d]``, the projection's
    biases alike without B and T (or None) -> ``[B, M, H, d]``."""

    @staticmethod
    def forward(ctx, q_src, kv, q_bias, kv_bias, mask, dropout_p: float, scale: float):
        _check_fp32(q_src, kv, q_bias, kv_bias, mask)
        q_src, kv = q_src.contiguous(), None if kv is None else kv.contiguous()
        q_bias, kv_bias = (None if b is None else b.contiguous() for b in (q_bias, kv_bias))
        q, k, v = _heads(q_src) if kv is None else (*_heads(q_src), *_heads(kv))
        qb, kb, vb = _head_biases(q_bias, kv_bias, kv is None)
        B, H, M, d = q.shape
        T = k.shape[2]
        out = torch.empty(B, M, H, d, dtype=torch.float32)
        probs = torch.empty(B, H, M, (T + 15) // 16 * 16, dtype=torch.float32)  # softmax (no dropout), rows padded
        seed = _seed()
        mask_b = mask_q = 0
        if mask is not None:  # [B or 1, 1, M or 1, T]
            mask_b = mask.stride(0) if mask.shape[0] > 1 else 0
            mask_q = mask.stride(2) if mask.shape[2] > 1 else 0
        o = out.transpose(1, 2)
        _library().attn_forward(
            q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(), _strides(v), _ptr(qb), _ptr(kb),
            _ptr(vb), o.data_ptr(), _strides(o), probs.data_ptr(), B, H, M, T, d, _ptr(mask), mask_b, mask_q,
            scale, dropout_p, seed, torch.get_num_threads())
        ctx.save_for_backward(q_src, kv, q_bias, kv_bias, probs)
        ctx.config = (dropout_p, scale, seed)
        return out

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: say so, never be wrong
    def backward(ctx, grad_out):
        q_src, kv, q_bias, kv_bias, probs = ctx.saved_tensors
        dropout_p, scale, seed = ctx.config
        grad_q_src = torch.empty_like(q_src)
        grad_kv = None if kv is None else torch.empty_like(kv)
        grad_q_bias = None if q_bias is None else torch.empty_like(q_bias)
        grad_kv_bias = None if kv_bias is None else torch.empty_like(kv_bias)
        if kv is None:
            (q, k, v), (dq, dk, dv) = _heads(q_src), _heads(grad_q_src)
        else:
            (q, k, v), (dq, dk, dv) = (*_heads(q_src), *_heads(kv)), (*_heads(grad_q_src), *_heads(grad_kv))
        qb, kb, vb = _head_biases(q_bias, kv_bias, kv is None)
        dqb, dkb, dvb = _head_biases(grad_q_bias, grad_kv_bias, kv is None)
        _check_fp32(grad_out)
        g = grad_out.transpose(1, 2)
        if g.stride(-1) != 1:
            g = g.contiguous()
        B, H, M, d = q.shape
        _library().attn_backward(
            q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(), _strides(v), _ptr(qb), _ptr(kb),
            _ptr(vb), g.data_ptr(), _strides(g), probs.data_ptr(), dq.data_ptr(), _strides(dq), dk.data_ptr(),
            _strides(dk), dv.data_ptr(), _strides(dv), _ptr(dqb), _ptr(dkb), _ptr(dvb), B, H, M, k.shape[2], d,
            scale, dropout_p, seed, torch.get_num_threads())
        return grad_q_src, grad_kv, grad_q_bias, grad_kv_bias, None, None, None


def attend_fused(q_src: torch.Tensor, kv: torch.Tensor | None, attn: AttentionMask, dropout_p: float,
                 scale: float, q_bias: torch.Tensor | None = None,
                 kv_bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale q k^T + mask) with dropout, times v, through the fused kernel (``usable`` first).

    q_src: ``[B, T, 3, H, d]`` (q, k and v as the fused QKV projection lays them out; kv None), or the queries
    ``[B, M, H, d]`` with ``kv`` ``[B, T, 2, H, d]``. q_bias, kv_bias: the projection's bias, which the
    kernel adds to q, k and v (so the projection can run without it): ``[3 * H * d]`` packed (kv_bias None),
    or ``[H * d]`` and ``[2 * H * d]``; None: no bias. attn: any dense form (no mask, key padding, causal, a
    dense mask; ``keep_rows`` applied; ``split`` and ``flex`` are made dense first). -> ``[B, M, H, d]``
    (M = T when packed).
    """
    T = q_src.shape[1] if kv is None else kv.shape[1]
    H, d = q_src.shape[-2:]
    if attn.segments is not None or attn.block_mask is not None:
        attn = attn.dense(T)
    mask = None
    if attn.mask is not None or attn.is_causal:
        mask = attn.bias(T, torch.float32, q_src.device)  # [B or 1, 1, M or 1, T]; causal: [1, 1, T, T]
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    if q_bias is not None:
        q_bias = q_bias.view(3, H, d) if kv is None else q_bias.view(H, d)
    if kv_bias is not None:
        kv_bias = kv_bias.view(2, H, d)
    out = _FusedAttention.apply(q_src, kv, q_bias, kv_bias, mask, float(dropout_p), float(scale))
    if attn.keep_rows is not None:
        out = out * attn.keep_rows.transpose(1, 2)  # [B, 1, M or 1, 1] -> [B, M or 1, 1, 1]
    return out


class _AddNorm(torch.autograd.Function):
    """LayerNorm(residual + dropout(h + bias)) over the last dimension; h (fp32, or bf16 under autocast),
    residual ``[..., D]`` fp32 -> fp32, as autocast's own ops would give (the bf16 h meets an fp32 bias)."""

    @staticmethod
    def forward(ctx, h, bias, residual, weight, norm_bias, eps: float, dropout_p: float):
        _check_fp32(bias, residual, weight, norm_bias)
        kernel = _form(h, "addnorm_forward")
        shape, D = h.shape, h.shape[-1]
        h2, r2 = h.reshape(-1, D).contiguous(), residual.reshape(-1, D).contiguous()
        N = h2.shape[0]
        y, xhat, rstd = (torch.empty(n, dtype=torch.float32) for n in ((N, D), (N, D), (N,)))
        weight, bias, norm_bias = weight.contiguous(), bias.contiguous(), norm_bias.contiguous()
        seed = _seed()
        kernel(h2.data_ptr(), bias.data_ptr(), r2.data_ptr(), weight.data_ptr(), norm_bias.data_ptr(), y.data_ptr(),
               xhat.data_ptr(), rstd.data_ptr(), N, D, eps, dropout_p, seed, torch.get_num_threads())
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.config = (shape, dropout_p, seed, h.dtype)
        return y.view(shape)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: say so, never be wrong
    def backward(ctx, grad_y):
        xhat, rstd, weight = ctx.saved_tensors
        shape, dropout_p, seed, h_dtype = ctx.config
        N, D = xhat.shape
        _check_fp32(grad_y)
        g = grad_y.reshape(N, D).contiguous()
        d_res, d_bias, d_weight, d_norm_bias = (torch.empty(n, dtype=torch.float32) for n in ((N, D), (D,), (D,), (D,)))
        d_h = torch.empty(N, D, dtype=h_dtype)
        _form(d_h, "addnorm_backward")(g.data_ptr(), xhat.data_ptr(), rstd.data_ptr(), weight.data_ptr(),
                                       d_res.data_ptr(), d_h.data_ptr(), d_bias.data_ptr(), d_weight.data_ptr(),
                                       d_norm_bias.data_ptr(), N, D, dropout_p, seed, torch.get_num_threads())
        return d_h.view(shape), d_bias, d_res.view(shape), d_weight, d_norm_bias, None, None


def add_norm(h: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: torch.nn.LayerNorm,
             dropout_p: float) -> torch.Tensor:
    """``norm(residual + dropout(h + bias))`` through the fused kernel (``usable(h)`` first); h and residual
    ``[..., D]`` (h: a dense layer's output without its bias), bias ``[D]``, ``norm`` with weight and bias."""
    return _AddNorm.apply(h, bias, residual, norm.weight, norm.bias, float(norm.eps), float(dropout_p))


class _BiasGelu(torch.autograd.Function):
    """GELU(h + bias), exact (erf) form; h ``[..., D]`` (fp32, or bf16 under autocast: the result is then bf16
    too, the fp32 result rounded once, as the next matmul's autocast would round it), bias ``[D]`` fp32."""

    @staticmethod
    def forward(ctx, h, bias):
        _check_fp32(bias)
        kernel = _form(h, "gelu_forward")
        shape, D = h.shape, h.shape[-1]
        h2, bias = h.reshape(-1, D).contiguous(), bias.contiguous()
        y = torch.empty_like(h2)
        kernel(h2.data_ptr(), bias.data_ptr(), y.data_ptr(), h2.shape[0], D, torch.get_num_threads())
        ctx.save_for_backward(h2, bias)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: say so, never be wrong
    def backward(ctx, grad_y):
        h2, bias = ctx.saved_tensors
        N, D = h2.shape
        g = grad_y.reshape(N, D).to(h2.dtype).contiguous()
        d_h, d_bias = torch.empty(N, D, dtype=h2.dtype), torch.empty(D, dtype=torch.float32)
        _form(h2, "gelu_backward")(g.data_ptr(), h2.data_ptr(), bias.data_ptr(), d_h.data_ptr(), d_bias.data_ptr(),
                                   N, D, torch.get_num_threads())
        return d_h.view(ctx.shape), d_bias


def bias_gelu(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(h + bias)`` (exact) through the fused kernel (``usable(h)`` first); h ``[..., D]``, a dense
    layer's output without its bias, bias ``[D]``. erf is Abramowitz-Stegun 7.1.26 (absolute error < 1.5e-7), the
    formula of PyTorch's own vectorised CPU GELU."""
    return _BiasGelu.apply(h, bias)


def _ce_args(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
             excluded: int | None) -> tuple[list, list, int, int]:
    """-> the kernels' leading arguments (logits, targets as int64, weights as fp32 or NULL, excluded or -1),
    the tensors behind those pointers (hold them until the call returns), N and V."""
    x, t = logits.detach().contiguous(), target.to(torch.int64).contiguous()
    w = None if weights is None else weights.to(torch.float32).contiguous()
    args = [x.data_ptr(), t.data_ptr(), None if w is None else w.data_ptr(), -1 if excluded is None else int(excluded)]
    return args, [x, t, w], x.shape[0], x.shape[1]


def cross_entropy_forward(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                          excluded: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_n w_n CE(logits[n], target[n]), ``excluded`` left out of the softmax -> (0-dim fp32 loss, the rows'
    logsumexp ``[N]`` for ``cross_entropy_backward``). logits ``[N, V]`` fp32 or bf16 (read as fp32), target
    ``[N]``, weights ``[N]``."""
    kernel = _form(logits, "ce_forward")
    args, _held, N, V = _ce_args(logits, target, weights, excluded)
    lse, losses = torch.empty(N, dtype=torch.float32), torch.empty(N, dtype=torch.float64)
    kernel(*args, lse.data_ptr(), losses.data_ptr(), N, V, torch.get_num_threads())
    return losses.sum().to(torch.float32), lse


def cross_entropy_backward(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                           excluded: int | None, lse: torch.Tensor, grad_loss: float) -> torch.Tensor:
    """The gradient of ``cross_entropy_forward``'s loss times ``grad_loss`` -> ``[N, V]``, one pass:
    grad_loss w_n (softmax - onehot), exactly 0 at ``excluded``; in the logits' dtype (computed in fp32, rounded
    once)."""
    kernel = _form(logits, "ce_backward")
    args, _held, N, V = _ce_args(logits, target, weights, excluded)
    grad = torch.empty(N, V, dtype=logits.dtype)
    kernel(*args, lse.data_ptr(), float(grad_loss), grad.data_ptr(), N, V, torch.get_num_threads())
    return grad
