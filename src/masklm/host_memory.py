"""Keep freed host memory inside the process during training: glibc's malloc options, set at run time.

Why: a training step on a CPU allocates hundreds of MB of activations and gradients and frees them when
the step ends. glibc's ``malloc`` serves blocks above its mmap threshold with fresh ``mmap``s (the
threshold starts at 128 KiB and only grows as such blocks are freed), and gives the top of its heap back
to the OS once more than its trim threshold lies free there. Every step then faults its memory in again,
page by page, and the kernel zeroes each page first. For BERT small (32 x 128) on the 2-core CPU that was
767-9,407 minor page faults and 12-78 ms of system time per step, billed to whichever op first wrote into a
fresh buffer (``addmm`` copying its bias into the output, dropout's conversions); kept, the faults fall to
0 within a few steps (``benchmarks/train_step_parts.py`` reports both, ``docs/benchmarks.md``).

Intel's performance guide for PyTorch on CPUs swaps in an allocator that keeps memory (jemalloc or
tcmalloc, through ``LD_PRELOAD``); that needs an install and a preload before the process starts. glibc's
own ``mallopt`` says the same after start-up: serve blocks of up to 32 MiB (glibc's largest mmap
threshold on 64-bit) from the heap, and never trim it. The heap then stays at the step's peak, which each
step needs anyway; blocks over 32 MiB (e.g. the gradient of a large embedding table) are still mapped and
unmapped each time. ``masklm train`` and ``masklm finetune`` call ``keep_freed_memory`` once with their
device; it does nothing for other devices, C libraries and systems.

Sources: the GNU C Library manual, "Malloc Tunable Parameters" (``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``:
setting either turns the dynamic threshold off); mallopt(3); Intel, "PyTorch performance tuning guide",
section "Memory allocator".
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # the largest int: never trim

_kept = False


def keep_freed_memory(device: object = "cpu") -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (see the module docstring) -> whether it is set.

    ``device``: the training device (a ``torch.device`` or its name); only a CPU's step allocates its
    tensors in host memory, so nothing changes for others. Idempotent; False where the C library is not
    glibc (macOS, Windows, musl) and nothing changes."""
    global _kept
    if _kept:
        return True
    if getattr(device, "type", str(device).split(":")[0]) != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        return False
    _kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
