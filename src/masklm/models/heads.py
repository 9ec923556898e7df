"""The masked-LM forward, head interface and loss, and sentence pooling, shared by every architecture.

A model is an encoder (``[B, T, D]`` out) with heads attached, as in Hugging Face's ``BertForMaskedLM``
(``bert`` + ``cls``) and ModernBERT (``model`` + ``head``). What all masked-LM heads do alike lives here:

- ``masked_lm_forward``: the forward contract of DESIGN.md §2. Label selection (``labels != -100``), the
  head only at the selected rows (sparse prediction: the ``[N, V]`` vocabulary projection dominates a
  small model otherwise), the head's mean loss, and a zero loss that still backpropagates when no
  position is selected (a mean over nothing would be NaN).
- ``MaskedLMHead``: what a head offers it. The decoder is the word-embedding matrix, handed in by the
  model (tied, stored once, as Hugging Face saves it).
- ``cross_entropy_sum``: the training loss, a (weighted) sum of cross-entropies in fp32, optionally with
  one token removed from the softmax, whose backward is one pass over ``[N, V]`` (``w (softmax - onehot)``;
  ``F.log_softmax`` + ``F.nll_loss`` take three: a zero-filled ``[N, V]`` gradient, a scatter, the softmax
  backward). ``objectives.objective_loss`` trains with it; ``cross_entropy`` is its mean (BERT's own
  loss; LTG-BERT keeps ``F.cross_entropy``, which rounds differently in the last bits).
  ``log_probs_excluding`` is its forward's log-softmax, which evaluation reads too. When training on a CPU
  with fp32 or bf16 logits both passes are one fused kernel (``models.cpu_kernels``): the forward keeps only
  each row's logsumexp instead of the ``[N, V]`` log-probabilities, and bf16 logits are read as fp32.
- ``pool``: one vector per sequence (mean or [CLS]), for embeddings and fine-tuned sequence heads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from masklm.models import cpu_kernels
from masklm.models.outputs import MaskedLMOutput

POOLINGS = ("mean", "cls")


class MaskedLMHead(Protocol):
    """What ``masked_lm_forward`` asks of a masked-LM head module."""

    def __call__(self, hidden: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """hidden ``[..., D]``, decoder (the word embeddings) ``[V, D]`` -> logits ``[..., V]``."""

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of logits ``[N, V]`` against token ids ``[N]``, N >= 1."""


def log_probs_excluding(logits: torch.Tensor, excluded: int | None = None) -> torch.Tensor:
    """Logits ``[..., V]`` -> fp32 log-probabilities ``[..., V]``, with ``excluded`` at exactly -inf
    (probability exactly 0) and the rest renormalised; the caller's logits stay intact (out of place)."""
    x = logits.float()
    if excluded is not None:
        x = x.index_fill(-1, torch.tensor([excluded], device=x.device), float("-inf"))
    return torch.log_softmax(x, dim=-1)


class _CrossEntropySum(torch.autograd.Function):
    """sum_n w_n CE(logits[n], target[n]) in fp32, with ``excluded``'s logit at -inf; one-pass backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                excluded: int | None, kernel: bool) -> torch.Tensor:
        ctx.excluded, ctx.logits_dtype, ctx.kernel = excluded, logits.dtype, kernel
        if kernel:  # fp32 on a CPU: the fused kernel keeps each row's logsumexp, not [N, V] log-probs
            loss, lse = cpu_kernels.cross_entropy_forward(logits, target, weights, excluded)
            ctx.save_for_backward(logits, target, weights, lse)
            return loss
        logp = log_probs_excluding(logits, excluded)  # [N, V]
        nll = -logp.gather(1, target[:, None]).squeeze(1)  # [N]
        ctx.save_for_backward(logp, target, weights)
        return (nll if weights is None else nll * weights.to(nll.dtype)).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.kernel:
            logits, target, weights, lse = ctx.saved_tensors
            grad = cpu_kernels.cross_entropy_backward(logits, target, weights, ctx.excluded, lse, float(grad_loss))
            return grad, None, None, None, None
        logp, target, weights = ctx.saved_tensors
        grad = logp.exp()  # [N, V]; exactly 0 at the excluded token. Not in place: backward may run twice
        grad[torch.arange(target.numel(), device=target.device), target] -= 1.0
        scale = grad_loss if weights is None else weights.to(grad.dtype)[:, None] * grad_loss
        return grad.mul_(scale).to(ctx.logits_dtype), None, None, None, None


def cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                      excluded: int | None = None) -> torch.Tensor:
    """0-dim fp32 sum_n weights[n] * CE(logits[n], target[n]); logits ``[N, V]`` (any float dtype, upcast),
    target ``[N]``, weights ``[N]`` or None (all 1), ``excluded``: a token id removed from the softmax
    (probability exactly 0, the rest renormalised). The backward is one pass over ``[N, V]``."""
    # decided here: inside the Function's forward, grad mode is off and the kernel's test would always fail
    kernel = cpu_kernels.usable(logits, multiple=1, bf16=True)  # fp32 or bf16 logits, read as fp32
    return _CrossEntropySum.apply(logits, target, weights, excluded, kernel)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE of logits ``[N, V]`` against ids ``[N]`` (no ignore index: rows are preselected)."""
    if logits.requires_grad:
        return cross_entropy_sum(logits, target) / target.numel()
    return F.cross_entropy(logits, target)


def masked_lm_forward(
    head: MaskedLMHead,
    decoder: torch.Tensor,
    labels: torch.Tensor | None,
    encode: Callable[[], torch.Tensor],
    encode_at: Callable[[torch.Tensor], torch.Tensor] | None = None,
    return_loss: bool = True,
) -> MaskedLMOutput:
    """Encode and predict, the same way for every architecture.

    head:      the masked-LM head; decoder: the word-embedding matrix ``[V, D]``.
    labels:    ``[B, T]`` target id or -100 = not predicted; None: logits everywhere ``[B, T, V]``, no loss.
    encode:    () -> final hidden states ``[B, T, D]``.
    encode_at: flat positions ``[N]`` (row-major, N >= 1) -> final hidden states there ``[N, D]``, for an
               encoder that can skip work elsewhere (BERT's sparse last layer); default: ``encode`` and
               pick the rows.
    With labels: logits ``[N, V]`` and hidden_states ``[N, D]`` at the selected positions, loss = mean CE
    (None with ``return_loss=False``: the trainer takes its own loss, ``objectives.objective_loss``).
    """
    if labels is None:
        hidden = encode()  # [B, T, D]
        return MaskedLMOutput(loss=None, logits=head(hidden, decoder), hidden_states=hidden)
    flat_labels = labels.reshape(-1)
    selected = (flat_labels != -100).nonzero().squeeze(1)  # [N]
    if encode_at is None or selected.numel() == 0:
        hidden = encode().flatten(0, 1).index_select(0, selected)  # [N, D]
    else:
        hidden = encode_at(selected)
    logits = head(hidden, decoder)  # [N, V]
    if not return_loss:
        loss = None
    elif selected.numel() == 0:  # nothing to predict: a zero loss that still backpropagates (to nothing)
        loss = logits.sum() * 0.0
    else:
        loss = head.loss(logits, flat_labels.index_select(0, selected))
    return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: hidden ``[B, T, D]``, attention_mask ``[B, T]`` (1 or True = token) -> ``[B, D]``.

    ``mean`` averages the non-padding positions, [CLS] and [SEP] included, as sentence-transformers'
    mean pooling does (so vectors compare with that convention); ``cls`` takes position 0.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
