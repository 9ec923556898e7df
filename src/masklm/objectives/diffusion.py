"""Masked diffusion (MDLM, Sahoo et al. 2024) as a training objective and as a likelihood bound.

Forward process: every maskable token (non-special, non-pad) becomes [MASK] independently with
probability t; there is no random/keep replacement. With the linear schedule alpha_t = 1 - t the
continuous-time NELBO of a sequence x is

    NELBO(x) = E_{t ~ U(0,1)} E_{z_t} [ (1/t) * sum_{l masked in z_t} -log p(x_l | z_t) ]  >=  -log p(x),

with equality for the exact posterior marginals (research/antlm_gmlm.md §C.1). We draw
t ~ U(eps, 1) (eps = 1e-3 as in MDLM: the 1/t weight has infinite variance near 0) and mask with
probability exactly t, so the loss weight is exactly 1/t.

SUBS parameterisation: the [MASK] logit is set to -inf before the softmax ("zero masking
probabilities"; done in ``objective_loss`` through ``ObjectiveBatch.excluded_token_id``), and unmasked
positions carry no label, so they contribute exactly zero ("carry-over unmasking").

Loss normalisation: the weighted sum is divided by the number of maskable tokens in the batch (every
token the model is scored on), not by the number of masked ones, so the training loss is the
per-token NELBO that ``training.evaluate.evaluate_diffusion`` reports.

Randomness: per-token draws come from ``row_generator(seed, epoch, row)``, so a row's mask does not
depend on its batch-mates given its t. The times are stratified ("antithetic" in MDLM's code) across
the B rows of a micro-batch, t_b = eps + (1 - eps) * (b + u_b) / B with independent u_b ~ U(0, 1),
as in MDLM's ``_sample_t``: exactly one t per stratum of width 1/B. The u_b come from
``row_generator(seed, epoch, -1 - rows[0])`` (a key no real row uses): deterministic per
(seed, epoch, first row), as the loader always puts the same rows together for a given epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from masklm.data.masking import IGNORE_INDEX, row_generator
from masklm.errors import ConfigError
from masklm.models.heads import log_probs_excluding
from masklm.objectives.base import ObjectiveBatch, ObjectiveOptions, Reading
from masklm.tokenizer import Tokenizer

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def stratified_times(u: torch.Tensor, eps: float) -> torch.Tensor:
    """One time per stratum of [eps, 1): t_i = eps + (1 - eps) * (i + u_i) / n, u ``[n]`` in [0, 1) -> ``[n]``."""
    n = u.shape[0]
    return eps + (1.0 - eps) * (torch.arange(n, dtype=torch.float64) + u.double()) / n


def maskable_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    special_ids: Sequence[int]) -> torch.Tensor:
    """``[B, T]`` bool: real (non-pad) tokens that are not special; only these are ever masked."""
    special = torch.tensor(sorted({int(s) for s in special_ids}), device=input_ids.device, dtype=input_ids.dtype)
    out = ~torch.isin(input_ids, special)
    if attention_mask is not None:
        out &= attention_mask.bool()
    return out


def row_uniforms(rows: Sequence[int], seed: int, epoch: int, T: int) -> torch.Tensor:
    """One uniform per token from each row's own stream -> ``[B, T]`` float64 (CPU)."""
    return torch.from_numpy(np.stack([row_generator(seed, epoch, int(r)).random(T) for r in rows]))


def diffusion_mask(input_ids: torch.Tensor, t: torch.Tensor, uniforms: torch.Tensor, maskable: torch.Tensor,
                   mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbing-state corruption -> (noisy inputs ``[B, T]``, labels ``[B, T]`` with -100 where unmasked).

    input_ids [B, T]; t [B] mask probability per row; uniforms [B, T] in [0, 1); maskable [B, T] bool.
    Token (b, l) is masked iff maskable and uniforms[b, l] < t[b], i.e. with probability t[b].
    """
    masked = maskable & (uniforms.to(input_ids.device) < t.to(input_ids.device, torch.float64)[:, None])
    noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return noisy, labels


class MaskedDiffusion:
    """``obj(batch, rows, epoch, rate=None) -> ObjectiveBatch`` for MDLM training.

    weights [N] = 1/t of each target's row; loss_denominator = maskable tokens in the micro-batch;
    excluded_token_id = [MASK]. The model sees no t (MDLM's default: no time conditioning). ``rate``
    is accepted for the common contract and ignored: each row draws its own masking probability t.
    """

    name = "diffusion"
    reading = Reading(masked=True, shift=0, metrics=("pll", "pll-word-l2r"), causal_decoding="no",
                      evaluators=("mlm", "diffusion"))

    def __init__(self, tokenizer: Tokenizer, eps: float = 1e-3, seed: int = 0) -> None:
        if tokenizer.mask_id not in set(tokenizer.special_ids):
            raise ValueError("the [MASK] id must be a special token (it is never a target)")
        self.tokenizer = tokenizer
        self.eps = float(eps)
        self.seed = seed

    @classmethod
    def from_config(cls, options: ObjectiveOptions, tokenizer: Tokenizer) -> MaskedDiffusion:
        eps = options.diffusion_eps
        if not (math.isfinite(eps) and 0.0 < eps < 1.0):
            raise ConfigError(f"diffusion eps must be in (0, 1) (got {eps})")
        return cls(tokenizer, eps=eps, seed=options.seed)

    def times(self, rows: Sequence[int], epoch: int) -> torch.Tensor:
        """Stratified t per row of the micro-batch ``[B]`` float64, keyed on (seed, epoch, rows[0])."""
        u = row_generator(self.seed, epoch, -1 - int(rows[0])).random(len(rows))
        return stratified_times(torch.from_numpy(u), self.eps)

    def corrupt(self, batch: dict[str, torch.Tensor], rows: Sequence[int], epoch: int,
                t: torch.Tensor) -> ObjectiveBatch:
        """Mask ``batch`` at the given per-row times t ``[B]`` (tests fix t; training draws it)."""
        ids, attention = batch["input_ids"], batch["attention_mask"]
        tok = self.tokenizer
        maskable = maskable_tokens(ids, attention, tok.special_ids)
        uniforms = row_uniforms(rows, self.seed, epoch, ids.shape[1])
        noisy, labels = diffusion_mask(ids, t, uniforms, maskable, tok.mask_id)
        selected = labels != IGNORE_INDEX
        inverse_t = (1.0 / t).to(device=ids.device, dtype=torch.float32)
        weights = inverse_t[:, None].expand_as(labels)[selected]  # [N], row-major like the model's logits
        return ObjectiveBatch(noisy, labels, attention, batch["document_ids"], causal=False, weights=weights,
                              loss_denominator=float(maskable.sum()), excluded_token_id=tok.mask_id,
                              objective=self.name)

    def __call__(self, batch: dict[str, torch.Tensor], rows: Sequence[int], epoch: int,
                 rate: float | None = None) -> ObjectiveBatch:
        return self.corrupt(batch, rows, epoch, self.times(rows, epoch))


def diffusion_nelbo(logits_fn: LogitsFn, input_ids: torch.Tensor, *, maskable: torch.Tensor, mask_id: int,
                    samples: int, seed: int = 0, rows: Sequence[int] | None = None,
                    eps: float = 1e-3) -> torch.Tensor:
    """Monte Carlo NELBO of each sequence -> ``[samples, B]`` float64 (nats per sequence, one row per draw).

    logits_fn(noisy_ids [B, T], labels [B, T]) -> logits ``[N, V]`` at ``labels != -100`` in row-major
    order (the model's sparse contract; close over attention_mask/document_ids). The [MASK] logit is
    excluded before the softmax. input_ids [B, T]; maskable [B, T] bool (the tokens being scored).

    Draw k of row b uses t = eps + (1 - eps) * (k + u_b) / samples (stratified over the draws, u_b from
    ``row_generator(seed, -1, row)``) and per-token uniforms from ``row_generator(seed, k, row)``: the
    same rows give the same estimate at every call. The mean over draws is unbiased for the NELBO
    restricted to t >= eps (the missing [0, eps) part is about eps times the leave-one-out NLL); the
    std over draws / sqrt(samples) bounds its standard error (stratification only lowers it).
    """
    B, T = input_ids.shape
    rows = list(range(B)) if rows is None else [int(r) for r in rows]
    if len(rows) != B:
        raise ValueError(f"rows has {len(rows)} entries for a batch of {B}")
    offsets = torch.tensor([row_generator(seed, -1, r).random() for r in rows], dtype=torch.float64)
    out = torch.zeros(samples, B, dtype=torch.float64)
    for k in range(samples):
        t = eps + (1.0 - eps) * (k + offsets) / samples  # [B]
        noisy, labels = diffusion_mask(input_ids, t, row_uniforms(rows, seed, k, T), maskable, mask_id)
        selected = labels != IGNORE_INDEX
        if not selected.any():
            continue
        log_probs = log_probs_excluding(logits_fn(noisy, labels), mask_id)  # [N, V], [MASK] excluded
        nll = -log_probs.gather(1, labels[selected][:, None]).squeeze(1).double().cpu()  # [N]
        row_of = selected.nonzero()[:, 0].cpu()  # [N] batch row of each target
        out[k].index_add_(0, row_of, nll / t[row_of])
    return out
