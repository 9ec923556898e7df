"""GPT-BERT's depth-weighted averaging (DWA: Pagliardini et al. 2024, DenseFormer; research/ltg_bert.md),
and a training form of it that reads each stored state once per block.

Block j (attention and FFN blocks alike, j = 0 .. 2L-1) returns x_j = sum_{m <= j+1} alpha_j[m] s_m, where
s_0 is the embedding output and s_{j+1} block j's own output before mixing. Spelled with autograd ops
(``mix_states``), each of the (2L)^2 / 2 terms is a multiply and an add forward, and backward a multiply
for the state's gradient, a product summed for alpha's, and an addition into the state's gradient: about
14 passes over a ``[B, T, D]`` tensor a term, 324 terms a step in a 12-layer model.

``DepthMix`` keeps the states as rows of one buffer S ``[2L + 1, B*T*D]``. Block j's mix is one
matrix-vector product, S[:j+2]^T alpha_j (each state read once). Backward keeps the states' gradients in a
buffer G of the same shape: block j adds the rank-1 update alpha_j g_j^T to G[:j+2] (a read and a write a
state; the last block's, which runs first, writes G without reading it) and takes alpha_j's gradient as
S[:j+2] g_j (a read a state). Only blocks j' >= j read s_{j+1}, and autograd runs their backwards before
block j's (each depends on block j's output), so G[j+1] is complete when block j's backward returns it as
s_{j+1}'s gradient; block 0 returns G[0] for s_0 too. Four passes a term instead of 14, the same sums in
another order (equal within float rounding: tests/test_ltg_bert.py). S and G are kept between steps
(``DepthMixPool``). A GPT-BERT small CPU step took 9% longer with the autograd sums, the demo's tiny one
2% (benchmarks/gpt_bert_step.py; docs/benchmarks.md).

Used for training on a CPU (``depth_mix_usable``), in fp32 and under autocast alike. Under autocast the
states are still fp32 (LayerNorm outputs; a state of a lower dtype would be widened into the buffer, as the
autograd sums promote it, and get its gradient back in its own dtype), and the mix runs with autocast off:
the fp32 sums the autograd spelling computes (before, ``--precision bf16`` fell back to those sums, and a
GPT-BERT small CPU step spent more time in their multiplies than in its matmuls). GPUs, inference, the
key/value cache, scoring's sparse last layer and ``torch.compile`` keep ``mix_states``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def mix_states(alpha: torch.Tensor, states: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Store ``x`` ``[B, T, D]`` in ``states`` and return sum_m alpha[m] * states[m]; alpha ``[len(states)]``
    after the append. A running sum keeps only the states themselves alive for backward (stacking would
    copy them)."""
    states.append(x)
    out = alpha[0] * states[0]
    for m in range(1, len(states)):
        out = out + alpha[m] * states[m]
    return out


def depth_mix_usable(x: torch.Tensor) -> bool:
    """Whether ``DepthMix`` takes a forward pass on ``x`` (the embedding output): on a CPU (where it was
    measured; a GPU keeps the autograd sums, and the memory the second buffer would hold), fp32 (under
    autocast too), a gradient to be taken, not inside ``torch.compile`` (a buffer written in place is no graph
    Inductor can trace)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.requires_grad and torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


class DepthMixPool:
    """The buffers S and G kept between training steps. Fresh ones each step cost more than the mixing
    itself: a CPU faults in every page of a large new allocation (GPT-BERT small: 150 MB each). A pass
    takes them while no other pass holds them, and hands them back when its last backward (block 0's) has
    run; a pass that starts while they are held (two forwards before a backward) gets buffers of its own."""

    def __init__(self) -> None:
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self.held = False

    def __getstate__(self) -> dict:  # a copied or pickled model starts with no buffers
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def take(self, rows: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, G), each ``[rows, like.numel()]`` of like's dtype and device, not to be touched by anyone else
        until ``give_back``."""
        size = (rows, like.numel())
        if self.held:
            return like.new_empty(size), like.new_empty(size)
        kept = self.buffers[0] if self.buffers is not None else None
        if kept is None or (kept.shape, kept.dtype, kept.device) != (size, like.dtype, like.device):
            self.buffers = (like.new_empty(size), like.new_empty(size))
        self.held = True
        return self.buffers

    def give_back(self, states: torch.Tensor) -> None:
        if self.buffers is not None and states is self.buffers[0]:
            self.held = False


class DepthMix:
    """The states of one forward pass: ``DepthMix(s_0, blocks, pool)``, then ``mixed(alpha_j, s_{j+1})`` for
    j = 0, 1, ... in order -> x_j ``[B, T, D]``."""

    def __init__(self, first: torch.Tensor, blocks: int, pool: DepthMixPool):
        self.first, self.shape, self.pool = first, first.shape, pool
        self.states, self.grads = pool.take(blocks + 1, first)  # S: row m = s_m, flat; G alike
        self.count = 0  # rows of S written
        self.grad_rows = 0  # rows of G written (the first backward, the last block's, writes all it reads)

    def mixed(self, alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        first = self.first if self.count == 0 else None
        return _Mix.apply(alpha, x, first, self)

    def add_grads(self, alpha: torch.Tensor, g: torch.Tensor) -> None:
        """G[m] += alpha[m] g for m < len(alpha); rows not written before are set instead (no zero fill)."""
        n, done = alpha.numel(), min(self.grad_rows, alpha.numel())
        if done < n:
            torch.mul(alpha[done:, None], g[None, :], out=self.grads[done:n])
        if done:
            self.grads[:done].addr_(alpha[:done], g)
        self.grad_rows = max(self.grad_rows, n)


class _Mix(torch.autograd.Function):
    """One block's mix: (alpha ``[k+1]``, s_k ``[B, T, D]``, s_0 or None, DepthMix) -> x ``[B, T, D]``."""

    @staticmethod
    def forward(ctx, alpha, x, first, dm: DepthMix):
        if first is not None:
            dm.states[0].copy_(first.reshape(-1))
            dm.count = 1
        k = dm.count
        dm.states[k].copy_(x.reshape(-1))  # a bf16 block output (autocast) is widened: exact
        dm.count = k + 1
        with torch.autocast(dm.states.device.type, enabled=False):  # the fp32 sums autocast's promotion gives
            out = torch.mv(dm.states[:k + 1].t(), alpha.to(dm.states.dtype))  # [B*T*D]: each state read once
        ctx.save_for_backward(alpha)
        ctx.dm, ctx.k, ctx.first, ctx.x_dtype = dm, k, first is not None, x.dtype
        return out.view(dm.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (alpha,) = ctx.saved_tensors
        dm, k = ctx.dm, ctx.k
        g = grad_out.reshape(-1).to(dm.states.dtype)
        dm.add_grads(alpha.to(g.dtype), g)  # every state's gradient: += alpha[m] * g
        grad_alpha = torch.mv(dm.states[:k + 1], g).to(alpha.dtype)
        # s_k's gradient is complete (later blocks' backwards ran first); copied out (in s_k's dtype), as G is reused
        grad_x = dm.grads[k].view(dm.shape).to(ctx.x_dtype, copy=True)
        grad_first = dm.grads[0].view(dm.shape).clone() if ctx.first else None
        if ctx.first:  # block 0's backward is the pass's last: its buffers are free again
            dm.pool.give_back(dm.states)
        return grad_alpha, grad_x, grad_first, None
