"""Objectives: CLM / MNTP alignment, attention modes on every architecture, MDLM masking, loss and bound.

Spec: research/antlm_gmlm.md §D 1-3, 9-12; research/ltg_bert.md §6.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import approx, close
from torch import nn

from masklm.config import ModelConfig
from masklm.data.masking import mask_tokens
from masklm.errors import ConfigError
from masklm.models import build_model
from masklm.models.heads import log_probs_excluding
from masklm.objectives import (
    ObjectiveBatch,
    ObjectiveOptions,
    build_objective,
    objective_loss,
    step_loss_scales,
)
from masklm.objectives.clm import CausalLM
from masklm.objectives.diffusion import MaskedDiffusion, diffusion_nelbo, maskable_tokens
from masklm.objectives.mlm import MaskedLM
from masklm.objectives.mntp import MaskedNextToken
from masklm.training.evaluate import evaluate_causal, evaluate_diffusion

V, PAD, UNK, CLS, SEP, MASK = 50, 0, 1, 2, 3, 4
TOK = SimpleNamespace(pad_id=PAD, mask_id=MASK, special_ids=[PAD, UNK, CLS, SEP, MASK], vocab_size=V)


def packed_batch(layouts, T, seed=0):
    """Rows laid out like PackedRows: ``layouts[b]`` = document lengths in row b (a doc may start
    mid-way: "cont" continues a document from the previous row); the rest is padding."""
    rng = np.random.default_rng(seed)
    B = len(layouts)
    ids = np.full((B, T), PAD)
    docs = np.full((B, T), -1)
    for b, layout in enumerate(layouts):
        t = 0
        for d, length in enumerate(layout):
            cont = isinstance(length, tuple)  # ("cont", n): no [CLS], the row starts mid-document
            n = length[1] if cont else length
            seg = rng.integers(5, V, n)
            if not cont:
                seg[0] = CLS
            seg[-1] = SEP if not cont or d < len(layout) - 1 else seg[-1]
            ids[b, t:t + n] = seg
            docs[b, t:t + n] = d
            t += n
    attention = (docs >= 0).astype(np.int64)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
            "document_ids": torch.from_numpy(docs), "word_starts": torch.from_numpy(attention.astype(bool))}


LAYOUTS = [[9, 7, 8], [("cont", 10), 14], [18], [24], [5, 3, 6]]


def random_batch(B=300, T=40, seed=0):
    rng = np.random.default_rng(seed)
    layouts = []
    for _ in range(B):
        lengths, left = [], int(rng.integers(T // 2, T + 1))
        while left > 1:
            n = int(min(left, rng.integers(2, 15)))
            lengths.append(n)
            left -= n
        layouts.append(lengths or [2])
    return packed_batch(layouts, T, seed)


# ---- CLM ----------------------------------------------------------------------------------------

def test_clm_labels_are_next_tokens_within_documents():
    batch = packed_batch(LAYOUTS, T=24)
    ob = CausalLM(TOK)(batch, list(range(5)), 0)
    assert ob.causal and ob.objective == "clm" and torch.equal(ob.input_ids, batch["input_ids"])
    ids, docs = batch["input_ids"], batch["document_ids"]
    for b, i in itertools.product(range(ids.shape[0]), range(ids.shape[1])):
        nxt = i + 1 < ids.shape[1] and docs[b, i] >= 0 and docs[b, i + 1] == docs[b, i]
        assert ob.labels[b, i] == (ids[b, i + 1] if nxt else -100), (b, i)
    # never across a boundary: the last token of a document (its [SEP]) and pads predict nothing
    assert (ob.labels[0, [8, 15, 23]] == -100).all() and (ob.labels[2, 17:] == -100).all()
    assert int((ob.labels != -100).sum()) == sum(sum(x[1] if isinstance(x, tuple) else x for x in lay) - len(lay)
                                                 for lay in LAYOUTS)


def test_clm_and_mntp_never_cross_documents_on_random_rows():
    batch = random_batch()
    ids, docs = batch["input_ids"], batch["document_ids"]
    for ob in (CausalLM(TOK)(batch, range(300), 0), MaskedNextToken(TOK, seed=1)(batch, list(range(300)), 2)):
        i = (ob.labels[:, :-1] != -100).nonzero()
        b, p = i[:, 0], i[:, 1]
        assert (docs[b, p] == docs[b, p + 1]).all() and (docs[b, p] >= 0).all()
        assert torch.equal(ob.labels[b, p], ids[b, p + 1])
        assert (ob.labels[:, -1] == -100).all()


# ---- MNTP ---------------------------------------------------------------------------------------

def test_mntp_labels_are_the_original_next_token_exactly_where_it_was_masked():
    batch = random_batch(seed=3)
    rows = list(range(1000, 1300))
    obj = MaskedNextToken(TOK, rate=0.15, split=(1.0, 0.0, 0.0), seed=5)  # all [MASK]: selection is visible
    ob = obj(batch, rows, epoch=1)
    ids, docs = batch["input_ids"], batch["document_ids"]
    assert not ob.causal and ob.objective == "mntp"
    masked = ob.input_ids == MASK  # [B, T]; the original never contains [MASK]
    expected = torch.full_like(ids, -100)
    expected[:, :-1] = torch.where(masked[:, 1:], ids[:, 1:], -100)
    assert torch.equal(ob.labels, expected)  # labels[i] == original[i+1] exactly where i+1 was masked
    # every masked token is predicted from its same-document predecessor, so none is wasted
    assert not masked[:, 0].any()
    b, p = masked.nonzero().unbind(1)
    assert (docs[b, p - 1] == docs[b, p]).all()
    # the realised rate is the MLM rate over tokens that have a predecessor (non-special, in-document)
    selectable = (docs[:, 1:] == docs[:, :-1]) & (docs[:, 1:] >= 0) & (ids[:, 1:] > MASK)
    assert abs(int(masked.sum()) / int(selectable.sum()) - 0.15) < 0.01
    # deterministic per (seed, epoch, row); another epoch masks differently
    assert torch.equal(obj(batch, rows, 1).labels, ob.labels)
    assert not torch.equal(obj(batch, rows, 2).labels, ob.labels)


def test_mntp_with_the_default_split_still_shifts_the_mlm_targets():
    batch = random_batch(seed=4)
    rows = list(range(300))
    ob = MaskedNextToken(TOK, seed=2)(batch, rows, 0)
    sel = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    sel[:, 1:] = (batch["document_ids"][:, 1:] == batch["document_ids"][:, :-1]) & (batch["document_ids"][:, 1:] >= 0)
    _, mlm_labels = mask_tokens(batch["input_ids"], rows=rows, seed=2, epoch=0, mask_id=MASK, vocab_size=V,
                                special_ids=TOK.special_ids, attention_mask=sel.long())
    assert torch.equal(ob.labels[:, :-1], mlm_labels[:, 1:])
    changed = ob.input_ids != batch["input_ids"]
    assert changed[:, 1:].le(ob.labels[:, :-1] != -100).all()  # only selected tokens are corrupted


def test_the_rate_handed_to_the_call_is_the_rate_masked_at():
    batch = random_batch(seed=5)
    rows = list(range(300))
    for cls in (MaskedLM, MaskedNextToken):
        at_call = cls(TOK, seed=3)(batch, rows, 0, rate=0.4)
        built = cls(TOK, rate=0.4, seed=3)(batch, rows, 0)
        assert torch.equal(at_call.input_ids, built.input_ids) and torch.equal(at_call.labels, built.labels)
        assert at_call.mask_rate == built.mask_rate == 0.4
        assert cls(TOK, seed=3)(batch, rows, 0).mask_rate == 0.15  # no rate named: the objective's own
    # objectives that do not mask by a rate take it and ignore it, and say so with mask_rate None
    for objective in (CausalLM(TOK), MaskedDiffusion(TOK, seed=3)):
        plain, rated = objective(batch, rows, 0), objective(batch, rows, 0, rate=0.4)
        assert torch.equal(plain.input_ids, rated.input_ids) and torch.equal(plain.labels, rated.labels)
        assert plain.mask_rate is rated.mask_rate is None


# ---- attention modes on every architecture (spec §D.2) -------------------------------------------

@pytest.mark.parametrize("arch", ["bert", "ltg-bert", "gpt-bert"])
def test_causal_attention_hides_the_future_and_bidirectional_does_not(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset(arch, "tiny", vocab_size=V)).eval()
    batch = packed_batch([[10, 14], [18]], T=24, seed=1)  # row 1: 6 pads at the end
    docs = batch["document_ids"]

    def logits(ob: ObjectiveBatch, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(ids, attention_mask=ob.attention_mask, causal=ob.causal, document_ids=ob.document_ids).logits

    clm = CausalLM(TOK)(batch, [0, 1], 0)
    bidi = build_objective("mlm", TOK, ObjectiveOptions(seed=0))(batch, [0, 1], 0)
    assert clm.causal and not bidi.causal
    for b, j in [(0, 15), (1, 8)]:  # a token inside the second document of row 0, inside row 1's only one
        ids = batch["input_ids"].clone()
        ids[b, j] = 7 if ids[b, j] != 7 else 8
        same_doc_before = (docs[b] == docs[b, j]) & (torch.arange(24) < j)
        other_doc = (docs[b] != docs[b, j]) & (docs[b] >= 0)
        for ob in (clm, bidi):
            base = logits(ob, batch["input_ids"])
            diff = (logits(ob, ids) - base).abs().amax(-1)[b]  # [T]
            # what cannot see j is bit-exact: j's key gets attention weight exactly 0 there (same shapes,
            # same kernels, the other rows untouched)
            if other_doc.any():
                assert float(diff[other_doc].max()) == 0.0  # other documents never see j
            assert float(diff[j]) > 1e-4  # position j itself always changes
            if ob.causal:
                assert float(diff[same_doc_before].max()) == 0.0, arch  # i < j unchanged
            else:
                assert float(diff[same_doc_before].min()) > 1e-5, arch  # every i < j sees j
            assert float((logits(ob, ids) - base).abs()[1 - b].max()) == 0.0  # other rows untouched
    # changing a pad token changes no real position in either mode (bit-exact, as above)
    ids = batch["input_ids"].clone()
    ids[1, 20] = 9
    for ob in (clm, bidi):
        real = batch["attention_mask"].bool()
        assert torch.equal(logits(ob, ids)[real], logits(ob, batch["input_ids"])[real])


# ---- the loss contract --------------------------------------------------------------------------

def test_objective_loss_defaults_to_the_token_mean_the_trainer_used():
    batch = random_batch(B=8, T=16)
    ob = build_objective("mlm", TOK, ObjectiveOptions(seed=0))(batch, list(range(8)), 0)
    n = int((ob.labels != -100).sum())
    logits = torch.randn(n, V)
    loss_sum, denominator = objective_loss(logits, ob)
    target = ob.labels[ob.labels != -100]
    assert close(loss_sum, F.cross_entropy(logits, target, reduction="sum"), n=n) and denominator == n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_pass_cross_entropy_equals_autograd_through_log_softmax(dtype, weighted):
    """The trainer's loss (``models.heads.cross_entropy_sum``, a hand-written one-pass backward) against
    autograd through the plain formula: same value and the same gradient, [MASK] excluded or not."""
    g = torch.Generator().manual_seed(3)
    n = 37
    base = (torch.randn(n, V, generator=g) * 3).to(dtype)
    target = torch.randint(0, V, (n,), generator=g)
    target[target == MASK] = MASK + 1  # an excluded token is never a target
    weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    for excluded in (None, MASK):
        mine = base.clone().requires_grad_(True)
        ob = SimpleNamespace(labels=target, weights=weights, excluded_token_id=excluded, loss_denominator=n)
        loss, _ = objective_loss(mine, ob)
        loss.backward()
        ref = base.clone().requires_grad_(True)
        x = ref.float()
        if excluded is not None:
            x = x.index_fill(-1, torch.tensor([excluded]), float("-inf"))
        ce = F.nll_loss(F.log_softmax(x, -1), target, reduction="none")
        ref_loss = (ce if weights is None else ce * weights.float()).sum()
        ref_loss.backward()
        assert loss.dtype == torch.float32 and mine.grad.dtype == dtype
        assert close(loss.detach(), ref_loss.detach(), n=n)
        assert close(mine.grad.float(), ref.grad.float(), dtype=dtype, n=V)  # both rounded once to dtype
        if excluded is not None:
            assert (mine.grad[:, excluded] == 0).all()
        # a wrong target row would move the gradient by about 1 at that entry
        assert (mine.grad.float()[torch.arange(n), target] < 0).all()


def test_models_skip_their_own_loss_when_the_trainer_takes_it():
    for arch in ("bert", "ltg-bert"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch, vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64,
                                        max_position_embeddings=32)).eval()
        ids = torch.randint(5, V, (2, 12))
        labels = torch.full_like(ids, -100)
        labels[:, 3:6] = ids[:, 3:6]
        with_loss = model(ids, labels=labels)
        without = model(ids, labels=labels, return_loss=False)
        assert without.loss is None and with_loss.loss is not None
        assert torch.equal(without.logits, with_loss.logits)


def test_step_loss_scales_mix_objective_means_by_micro_batch_share():
    names = ["mntp"] * 15 + ["clm"]
    dens = [10.0 + a for a in range(15)] + [60.0]
    sums = [float(a + 1) for a in range(16)]
    scales = step_loss_scales(names, dens)
    total = sum(s * x for s, x in zip(scales, sums))
    mntp_mean = sum(sums[:15]) / sum(dens[:15])
    assert total == approx(15 / 16 * mntp_mean + 1 / 16 * sums[15] / 60.0, dtype=float, n=16)  # Python floats
    one = step_loss_scales(["mlm"] * 3, [4.0, 5.0, 6.0])
    assert one == approx([1 / 15] * 3, dtype=float, n=3)  # one objective: the global mean


def test_build_objective_by_name():
    for name, cls in [("clm", CausalLM), ("mntp", MaskedNextToken), ("diffusion", MaskedDiffusion)]:
        obj = build_objective(name, TOK, ObjectiveOptions(seed=1))
        assert isinstance(obj, cls) and obj.name == name
    assert build_objective("mlm", TOK).name == "mlm"
    with pytest.raises(ConfigError, match="unknown objective 'gpt'"):
        build_objective("gpt", TOK)
    with pytest.raises(ConfigError):
        build_objective("diffusion", TOK, ObjectiveOptions(diffusion_eps=0.0))


# ---- masked diffusion ---------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_diffusion_realised_mask_rate_for_fixed_t(t):
    batch = random_batch(B=400, T=48, seed=7)
    obj = MaskedDiffusion(TOK, seed=0)
    ob = obj.corrupt(batch, list(range(400)), 0, torch.full((400,), t, dtype=torch.float64))
    ids = batch["input_ids"]
    maskable = maskable_tokens(ids, batch["attention_mask"], TOK.special_ids)
    masked = ob.labels != -100
    n = int(maskable.sum())
    rate = int(masked.sum()) / n
    assert abs(rate - t) <= 4 * math.sqrt(t * (1 - t) / n) + 1e-12, rate  # binomial, 4 sigma
    assert not masked[~maskable].any()  # specials and pads never masked
    assert (ob.input_ids[masked] == MASK).all() and torch.equal(ob.labels[masked], ids[masked])  # no random/keep
    assert torch.equal(ob.input_ids[~masked], ids[~masked])
    assert ob.loss_denominator == n and ob.excluded_token_id == MASK and not ob.causal


def test_diffusion_times_are_stratified_and_deterministic():
    obj = MaskedDiffusion(TOK, eps=1e-3, seed=4)
    rows = list(range(40, 72))
    t = obj.times(rows, epoch=2)
    strata = ((t - 1e-3) / (1 - 1e-3) * 32).floor().long()
    assert sorted(strata.tolist()) == list(range(32))  # exactly one t per stratum of [eps, 1)
    assert torch.equal(obj.times(rows, 2), t) and not torch.equal(obj.times(rows, 3), t)
    batch = random_batch(B=32, T=40, seed=1)
    assert torch.equal(obj(batch, rows, 2).input_ids, obj(batch, rows, 2).input_ids)
    # given t, a row's mask does not depend on its batch-mates
    fixed = torch.full((2,), 0.5, dtype=torch.float64)
    two = {k: v[:2] for k, v in batch.items()}
    swapped = {k: v[[1, 0]] for k, v in two.items()}
    a = obj.corrupt(two, [5, 6], 0, fixed).input_ids
    b = obj.corrupt(swapped, [6, 5], 0, fixed).input_ids
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[0])


def test_diffusion_loss_is_weighted_by_inverse_t_over_all_tokens_and_zero_where_unmasked():
    batch = random_batch(B=16, T=32, seed=2)
    obj = MaskedDiffusion(TOK, seed=0)
    t = torch.linspace(0.2, 0.9, 16, dtype=torch.float64)
    ob = obj.corrupt(batch, list(range(16)), 0, t)
    masked = ob.labels != -100
    full = torch.randn(16, 32, V, requires_grad=True)  # what a model would output everywhere
    full_logits = full.clone()
    loss_sum, den = objective_loss(full_logits[masked], ob)
    # the reference: sum over masked tokens of CE(logits without [MASK]) / t, divided by every maskable token
    ref = 0.0
    for b, i in masked.nonzero().tolist():
        row = full[b, i].detach().clone()
        row[MASK] = -float("inf")
        ref += float(-F.log_softmax(row, -1)[ob.labels[b, i]]) / float(t[b])
    assert float(loss_sum.detach()) == approx(ref, n=int(masked.sum()))  # a float32 sum of same-sign terms
    assert den == int(maskable_tokens(batch["input_ids"], batch["attention_mask"], TOK.special_ids).sum())
    loss_sum.backward()
    grad = full.grad
    assert (grad[~masked] == 0).all()  # unmasked positions contribute exactly nothing
    assert (grad[masked].abs().sum(-1) > 0).all()
    assert (grad[..., MASK] == 0).all()  # the [MASK] logit is out of the softmax
    # however large the [MASK] logit, its probability is exactly 0 and the loss does not move
    huge = full.detach().clone()
    huge[..., MASK] = 1e4
    assert float(objective_loss(huge[masked], ob)[0]) == approx(ref, n=int(masked.sum()))
    probs = log_probs_excluding(huge[masked], MASK).exp()
    assert (probs[:, MASK] == 0).all() and close(probs.sum(-1), torch.ones(len(probs)), n=V)


# ---- the diffusion bound with an oracle denoiser (spec §D.12) -------------------------------------

S, L = 5, 6  # chain states 5..9 -> token ids; [MASK] = 4


class MarkovChain:
    """An order-1 chain over S states (token ids 5..5+S-1) with peaked transitions, length L."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.init = torch.from_numpy(rng.dirichlet(np.full(S, 0.5)))  # [S]
        self.trans = torch.from_numpy(rng.dirichlet(np.full(S, 0.3), size=S))  # [S, S]

    def enumerate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All S**L sequences as token ids ``[N, L]`` and their exact log-probabilities ``[N]``."""
        states = torch.tensor(list(itertools.product(range(S), repeat=L)))
        logp = self.init[states[:, 0]].log() + self.trans[states[:, :-1], states[:, 1:]].log().sum(1)
        return states + 5, logp

    def posterior(self, noisy: torch.Tensor) -> torch.Tensor:
        """Forward-backward: p(x_l = s | the unmasked tokens of ``noisy`` [B, L]) -> ``[B, L, S]``."""
        observed = noisy != MASK
        evidence = torch.where(observed[..., None], F.one_hot((noisy - 5).clamp(0, S - 1), S).double(),
                               torch.ones(*noisy.shape, S, dtype=torch.float64))  # [B, L, S]
        alpha = [self.init * evidence[:, 0]]
        for i in range(1, L):
            alpha.append((alpha[-1] @ self.trans) * evidence[:, i])
        beta = [torch.ones_like(alpha[0])]
        for i in range(L - 1, 0, -1):
            beta.insert(0, (self.trans @ (evidence[:, i] * beta[0]).T).T)
        post = torch.stack(alpha, 1) * torch.stack(beta, 1)
        return post / post.sum(-1, keepdim=True)

    def logits_fn(self, context: bool = True):
        """The oracle denoiser as a ``diffusion_nelbo`` logits_fn; ``context=False`` ignores the input
        and predicts the per-position marginals p(x_l)."""

        def fn(noisy: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            post = self.posterior(noisy if context else torch.full_like(noisy, MASK))
            log_probs = torch.full((*noisy.shape, V), float("-inf"), dtype=torch.float64)
            log_probs[..., 5:5 + S] = post.log()  # ids outside the chain (and [MASK]) get probability 0
            return log_probs[labels != -100]  # [N_sel, V]

        return fn


def test_forward_backward_matches_enumeration():
    chain = MarkovChain(0)
    seqs, logp = chain.enumerate()
    assert close(logp.exp().sum(), torch.tensor(1.0), dtype=torch.float64, n=len(logp))
    x = seqs[1234]
    for pattern in [(0, 0, 0, 0, 0, 0), (1, 0, 1, 0, 0, 1), (0, 1, 1, 1, 1, 0), (1, 1, 1, 1, 1, 1)]:
        hide = torch.tensor(pattern, dtype=torch.bool)
        noisy = x.masked_fill(hide, MASK)
        consistent = ((seqs == noisy) | hide).all(-1)  # [N]
        w = logp.exp() * consistent
        expected = torch.stack([torch.bincount(seqs[:, i] - 5, weights=w, minlength=S) for i in range(L)]) / w.sum()
        assert close(chain.posterior(noisy[None])[0], expected, dtype=torch.float64, n=len(seqs))


def _bound_and_tolerance(logits_fn, x, rows, eps, samples=16):
    """Mean NELBO of ``x`` [reps, L] and its tolerance: 4 standard errors from the sample std (iid
    formula: stratifying t over the draws only lowers the true error) plus eps * (NLL + leave-one-out
    NLL), a bound on the t < eps part of the integral the estimator skips."""
    est = diffusion_nelbo(logits_fn, x, maskable=torch.ones_like(x, dtype=torch.bool), mask_id=MASK,
                          samples=samples, seed=1, rows=rows, eps=eps).flatten()
    stderr = float(est.std()) / math.sqrt(est.numel())
    loo = -sum(float(logits_fn(x[:1].masked_fill(torch.arange(L) == j, MASK),
                               x[:1].masked_fill(torch.arange(L) != j, -100))[0, x[0, j]]) for j in range(L))
    return float(est.mean()), stderr, 4 * stderr + eps * (abs(float(est.mean())) + loo + 1.0)


def test_diffusion_nelbo_with_an_oracle_equals_the_true_nll():
    chain, other = MarkovChain(0), MarkovChain(1)  # other: a wrong but exact denoiser
    seqs, logp = chain.enumerate()
    _, logq = other.enumerate()
    order = torch.argsort(logp, descending=True)
    picks = [order[0], order[40], order[400], order[3000]]  # from likely to rare
    reps, eps = 500, 1e-4
    oracle = chain.logits_fn()
    position_marginals = chain.posterior(torch.full((1, L), MASK))[0]  # [L, S]: p(x_l)
    for k, idx in enumerate(picks):
        x = seqs[idx].repeat(reps, 1)  # [reps, L]: independent draws through distinct row keys
        rows = range(k * reps, (k + 1) * reps)
        nll = -float(logp[idx])
        bound, stderr, tolerance = _bound_and_tolerance(oracle, x, rows, eps)
        # teeth: the tolerance is ~3% of the NLL here; a 4% error in the weighting fails this test
        assert stderr < 0.02 * nll
        assert abs(bound - nll) < tolerance, (bound, nll, tolerance)
        # The same estimator gives -log q(x) for q's exact denoiser (far from -log p(x), so the match
        # above is no accident) and sum_l -log p(x_l) for a denoiser that ignores its input.
        context_free = -float(position_marginals.gather(1, x[0][:, None] - 5).log().sum())
        for fn, exact in [(other.logits_fn(), -float(logq[idx])), (chain.logits_fn(context=False), context_free)]:
            got, _, tol = _bound_and_tolerance(fn, x[:200], rows[:200], eps, samples=4)
            assert abs(got - exact) < tol, (got, exact, tol)
        assert abs(-float(logq[idx]) - nll) > 10 * tolerance


def test_diffusion_nelbo_at_t_one_is_the_all_mask_cross_entropy():
    """§D.10: at t = 1 every token is masked and weighted 1: the estimate is sum_l -log p(x_l | all mask)."""
    chain = MarkovChain(1)
    seqs, _ = chain.enumerate()
    x = seqs[[0, 777, 9000]]
    est = diffusion_nelbo(chain.logits_fn(), x, maskable=torch.ones_like(x, dtype=torch.bool), mask_id=MASK,
                          samples=1, eps=1.0 - 1e-12)
    marginals = chain.posterior(torch.full_like(x, MASK))  # [3, L, S]
    expected = -marginals.gather(2, (x - 5)[..., None]).log().sum((1, 2))
    assert close(est[0], expected, n=L)


# ---- evaluation helpers -------------------------------------------------------------------------

class ConstantModel(nn.Module):
    """Uniform predictions: logits 0 everywhere (sparse at labels != -100, like the real models)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, ids, attention_mask=None, labels=None, causal=False, document_ids=None):
        self.calls.append(causal)
        V = self.vocab_size
        shape = (int((labels != -100).sum()), V) if labels is not None else (*ids.shape, V)
        return SimpleNamespace(logits=torch.zeros(shape) + self.anchor)


@pytest.fixture(scope="module")
def heldout_rows(tmp_path_factory, documents, wordpiece_tokenizer):
    from masklm.data.packing import PackedRows
    from masklm.data.shards import ShardedCorpus, prepare_shards

    out = tmp_path_factory.mktemp("objectives") / "shards"
    path = out.parent / "c.txt"
    path.write_text("\n\n".join(documents[:20]))
    prepare_shards([str(path)], wordpiece_tokenizer, out, num_workers=1, log=lambda m: None)
    corpus = ShardedCorpus(out)
    return PackedRows(corpus, np.arange(corpus.num_documents), 32, wordpiece_tokenizer.pad_id)


def test_evaluate_causal_counts_tokens_and_gives_exact_uniform_loss(heldout_rows, wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    model = ConstantModel(tok.vocab_size)
    res = evaluate_causal(model, heldout_rows, tok, batch_size=4, max_batches=3)
    n_rows = min(len(heldout_rows), 12)
    expected = int((CausalLM(tok)(heldout_rows.batch(range(n_rows)), None, 0).labels != -100).sum())
    assert res["tokens"] == expected > 0 and set(model.calls) == {True}
    # a float32 mean of identical terms log(V); the perplexity exp(loss) inherits the loss's absolute error
    assert res["causal_loss"] == approx(math.log(tok.vocab_size), n=expected)
    ppl_scale = tok.vocab_size * math.log(tok.vocab_size)
    assert res["causal_ppl"] == approx(tok.vocab_size, n=expected, scale=ppl_scale)


def test_evaluate_diffusion_bound_for_uniform_predictions(heldout_rows, wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    model = ConstantModel(tok.vocab_size)
    res = evaluate_diffusion(model, heldout_rows, tok, batch_size=4, max_batches=3, samples=16, seed=9)
    again = evaluate_diffusion(model, heldout_rows, tok, batch_size=4, max_batches=3, samples=16, seed=9)
    assert res == again  # bit-exact: the same masks at every call, the same computation
    batch = heldout_rows.batch(range(min(len(heldout_rows), 12)))
    assert res["tokens"] == int(maskable_tokens(batch["input_ids"], batch["attention_mask"], tok.special_ids).sum())
    # uniform over the V - 1 tokens that are not [MASK]: NELBO per token = log(V - 1) in expectation
    stderr = res["diffusion_nelbo_stderr"]
    assert 0 < stderr < 0.05 * math.log(tok.vocab_size) and abs(res["diffusion_nelbo"] - math.log(tok.vocab_size - 1)) < 4 * stderr
    assert res["diffusion_ppl_bound"] == approx(math.exp(res["diffusion_nelbo"]), dtype=float)
    assert res["samples"] == 16 and set(model.calls) == {False}


def test_evaluation_helpers_run_a_real_model(heldout_rows, wordpiece_tokenizer):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("gpt-bert", "tiny", vocab_size=wordpiece_tokenizer.vocab_size))
    causal = evaluate_causal(model, heldout_rows, wordpiece_tokenizer, batch_size=4, max_batches=2)
    bound = evaluate_diffusion(model, heldout_rows, wordpiece_tokenizer, batch_size=4, max_batches=2, samples=2)
    assert model.training  # restored
    assert math.isfinite(causal["causal_loss"]) and causal["causal_ppl"] > 1
    assert math.isfinite(bound["diffusion_nelbo"]) and bound["diffusion_ppl_bound"] > 1
