"""Packed attention in its cheapest exact form (models/attention.py) against the dense [B, 1, T, T] mask.

For BERT, LTG-BERT and GPT-BERT, causal and bidirectional, rows of one document with and without padding
at the end, rows of several documents, and document ids given or left out (as the trainer leaves them out
when the packer says every row holds one document): the hidden states at real tokens and every parameter
gradient equal those of a model whose every attention is the dense mask. Padding outputs are compared
where the contract fixes them (0 with document ids).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import close, forward_terms

import masklm.models.attention as attention_mod
import masklm.models.bert as bert_mod
import masklm.models.ltg_bert as ltg_mod
from masklm.config import ModelConfig
from masklm.data.packing import PackedRows
from masklm.models import build_model
from masklm.models.attention import AttentionMask, attend, build_attention_mask, document_runs

T = 10


def _dense_reference(attention_mask, document_ids, causal, seq_len, dtype=torch.float32, forms=()):
    """What attention was before: one full [B, 1, T, T] bool mask (also when nothing is masked)."""
    ref = attention_mask if attention_mask is not None else document_ids
    B = ref.shape[0] if ref is not None else 1
    mask = torch.ones(B, 1, seq_len, seq_len, dtype=torch.bool)
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]
    if document_ids is not None:
        mask = mask & (document_ids[:, :, None] == document_ids[:, None, :])[:, None]
    if causal:
        mask = mask & torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    has_key = mask.any(-1, keepdim=True)
    return AttentionMask(mask=mask | ~has_key, keep_rows=None if bool(has_key.all()) else has_key.to(dtype))


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))  # every bias and LayerNorm weight matters
    return model.train()


# (attention_mask, document_ids) per case; None = not passed. Rows: [B=3, T=10].
_PAD = torch.tensor([[1] * 10, [1] * 7 + [0] * 3, [1] * 4 + [0] * 6])
_MULTI = torch.tensor([[0] * 4 + [1] * 6, [0] * 10, [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]])
_MULTI_PADDED = torch.tensor([[0] * 4 + [1] * 6, [0] * 3 + [1] * 4 + [-1] * 3, [0] * 4 + [-1] * 6])
CASES = {
    "one-document": (None, torch.zeros(3, T, dtype=torch.long)),
    "padding-at-end": (_PAD, None),
    "one-document-padded": (_PAD, torch.where(_PAD.bool(), 0, -1)),
    "several-documents": (None, _MULTI),
    "several-documents-padded": (_PAD, _MULTI_PADDED),
    "documents-not-contiguous": (None, torch.tensor([[0, 0, 1, 1, 0, 0, 1, 1, 1, 1]] * 3)),
}
FORMS = {  # the form build_attention_mask picks with forms=("split", "dense"), bidirectional / causal
    "one-document": ("none", "causal"),
    "padding-at-end": ("padding", "causal"),
    "one-document-padded": ("split", "split"),
    "several-documents": ("split", "split"),
    "several-documents-padded": ("split", "split"),
    "documents-not-contiguous": ("dense", "dense"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("causal", [False, True])
def test_the_form_picked(case, causal):
    mask, docs = CASES[case]
    # the picking rule with split preferred (the CPU default is dense alone: measured faster)
    assert build_attention_mask(mask, docs, causal, T, forms=("split", "dense")).form == FORMS[case][causal]
    assert build_attention_mask(mask, docs, causal, T).form in ("none", "causal", "padding", "dense")  # default


def _run(model, ids, mask, docs, causal, weights):
    """Hidden states [B, T, D] and the gradient of sum(weights * hidden at real tokens) per parameter."""
    model.zero_grad()
    hidden = model.encode(ids, attention_mask=mask, causal=causal, document_ids=docs)
    real = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    (hidden * weights * real[..., None]).sum().backward()
    return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["bert", "ltg-bert", "gpt-bert"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_gradients_equal_the_dense_mask(monkeypatch, arch, causal, case):
    model = _model(arch)
    mask, docs = CASES[case]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (3, T), generator=g)
    weights = torch.randn(3, T, 16, generator=g)
    fast, fast_grads = _run(model, ids, mask, docs, causal, weights)
    module = bert_mod if arch == "bert" else ltg_mod
    monkeypatch.setattr(module, "build_attention_mask", _dense_reference)
    dense, dense_grads = _run(model, ids, mask, docs, causal, weights)
    real = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    n = forward_terms(model.config, T)
    assert close(fast[real], dense[real], n=n)
    if docs is not None and mask is not None and arch == "bert":  # padding queries see no key: exactly 0
        assert torch.equal(fast[~real], dense[~real])
    scale = max(float(g.abs().max()) for g in dense_grads.values())  # one scale, as in test_bert
    for name, grad in dense_grads.items():
        assert close(fast_grads[name], grad, n=n, scale=scale), name
    assert dense[real].abs().max() > 0.1  # the comparison is not between zeros


def test_split_form_with_dropout_matches_its_runs(monkeypatch):
    """With attention dropout (CPU: the explicit path), each run of the split form is its own sequence."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, T, 4) for _ in range(3))
    docs = _MULTI[:2]
    attn = build_attention_mask(None, docs, False, T, forms=("split", "dense"))
    assert attn.segments == (((0, 4), (4, 10)), ((0, 10),))
    monkeypatch.setattr(attention_mod, "dropout", lambda x, p, training: x)  # dropout as identity
    out = attend(q, k, v, attn, dropout_p=0.5)
    dense = attend(q, k, v, _dense_reference(None, docs, False, T))
    assert close(out, dense, n=T)


def test_document_runs():
    assert document_runs(_MULTI_PADDED, _PAD) == (((0, 4), (4, 10)), ((0, 3), (3, 7)), ((0, 4),))
    assert document_runs(CASES["documents-not-contiguous"][1], None) is None  # one id in two runs
    assert document_runs(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4)) == ((),)  # all padding


@pytest.mark.parametrize("causal", [False, True])
def test_flex_block_mask_forward_on_cpu(monkeypatch, causal):
    """FlexAttention runs forward-only on the CPU (eager): BERT's hidden states equal the dense mask's."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = _model("bert").eval()
    ids = torch.randint(5, 40, (3, T), generator=torch.Generator().manual_seed(2))
    monkeypatch.setitem(attention_mod.DOCUMENT_FORMS, "cpu", ("flex", "dense"))
    monkeypatch.setattr(attention_mod, "flex_available", lambda: True)
    assert build_attention_mask(_PAD, _MULTI_PADDED, causal, forms=("flex",)).form == "flex"
    with torch.no_grad():
        flex = model.encode(ids, attention_mask=_PAD, document_ids=_MULTI_PADDED, causal=causal)
        monkeypatch.setattr(bert_mod, "build_attention_mask", _dense_reference)
        dense = model.encode(ids, attention_mask=_PAD, document_ids=_MULTI_PADDED, causal=causal)
    real = _PAD.bool()
    assert close(flex[real], dense[real], n=forward_terms(model.config, T))


def test_sparse_last_layer_rows_of_every_form():
    """``AttentionMask.rows`` (the sparse last layer's query rows) equals the dense mask's rows in every form."""
    at = torch.tensor([[0, 5, 9], [2, 3, 6], [1, 3, 3]])
    for (mask, docs) in CASES.values():
        for causal in (False, True):
            forms = ("split", "dense")
            got = build_attention_mask(mask, docs, causal, T, forms=forms).rows(at, T)
            want = _dense_reference(mask, docs, causal, T).rows(at, T)
            allowed = got.mask if got.mask is not None else torch.ones(3, 1, 3, T, dtype=torch.bool)
            real = (torch.ones(3, T) if mask is None else mask).bool().gather(1, at)  # padding rows: any
            assert torch.equal(allowed.expand(3, 1, 3, T)[real[:, None]], want.mask[real[:, None]])


def test_packer_says_when_every_row_holds_one_document(tmp_path):
    class Corpus:  # two documents of 6 and 9 tokens in one flat stream
        num_documents = 2
        doc_lengths = np.array([6, 9])
        doc_offsets = np.array([0, 6])

        def gather(self, positions):
            return positions.copy(), np.ones(positions.shape, dtype=bool)

    rows = PackedRows(Corpus(), [0, 1], seq_len=6, pad_id=0)  # rows: [d0], [d1], [d1 3 tokens + 3 pads]
    assert bool(rows.batch([0, 1])["single_document"]) and bool(rows.batch([2])["single_document"])
    rows = PackedRows(Corpus(), [0, 1], seq_len=5, pad_id=0)  # row 1 holds d0's last token and d1's first
    assert not bool(rows.batch([0, 1])["single_document"]) and bool(rows.batch([0, 2])["single_document"])


def test_flex_failure_falls_back_to_the_dense_mask(monkeypatch):
    """FlexAttention that fails at run time (no compiler, unsupported device) warns once and the process
    continues with the dense mask, with equal results."""
    monkeypatch.setattr(attention_mod, "_FLEX_FAILED", [])

    def broken(device_type):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(attention_mod, "_flex_attention", broken)
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, T, 4) for _ in range(3))
    attn = build_attention_mask(_PAD, _MULTI_PADDED, True, forms=("flex", "dense"))
    assert attn.form == "flex"
    with pytest.warns(RuntimeWarning, match="FlexAttention failed"):
        out = attend(q, k, v, attn)
    assert close(out, attend(q, k, v, _dense_reference(_PAD, _MULTI_PADDED, True, T)), n=T)
    assert build_attention_mask(_PAD, _MULTI_PADDED, True, forms=("flex", "dense")).form == "dense"  # not retried


def test_trainer_passes_no_document_ids_for_rows_of_one_document(tmp_path, monkeypatch):
    """``masklm train``'s step: batches whose rows each hold one document reach attention without document
    ids (the packer says so on the host); batches with a shared row still carry them."""
    import random

    from masklm.tokenizer import train_tokenizer
    from masklm.training.config import TrainConfig
    from masklm.training.trainer import train

    rng = random.Random(0)
    words = "the a cat dog bird sat ran flew on under over mat tree house and then".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.choice([6, 40]))) + " ." for _ in range(30)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    train_tokenizer(docs, kind="wordpiece", vocab_size=80, min_frequency=1).save(tmp_path / "tok")
    seen = []
    original = bert_mod.build_attention_mask

    def recording(attention_mask, document_ids, *args, **kw):
        if torch.is_grad_enabled():  # training steps (evaluation runs without gradients)
            seen.append(None if document_ids is None else int(document_ids.amax(1).max()))
        return original(attention_mask, document_ids, *args, **kw)

    monkeypatch.setattr(bert_mod, "build_attention_mask", recording)
    cfg = TrainConfig(out=str(tmp_path / "run"), corpus=[str(corpus)], tokenizer=str(tmp_path / "tok"),
                      model={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 32}, seq_len=16, batch_size=2, max_steps=12, lr=1e-3,
                      warmup_steps=1, log_every=4, progress=False, heldout_fraction=0.1, eval_batches=1)
    train(cfg)
    assert len(seen) == 12
    assert None in seen  # some batches had one document per row: no document ids, no document mask
    assert all(top is None or top >= 1 for top in seen)  # ids only where a row holds two documents
    assert any(top is not None for top in seen)


def test_attention_with_a_bias_drops_on_cpu_with_masklms_dropout(monkeypatch):
    """LTG-BERT's attention (a per-head float bias) with dropout on a CPU: the explicit maths with
    ``attention.dropout`` (SDPA's CPU fallback draws with bernoulli_), the same as SDPA without dropout, and
    the bias gets its gradient."""
    from masklm.models.attention import attend_with_bias, dropout

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    bias = torch.randn(2, 3, 5, 5, requires_grad=True)
    blocked = torch.zeros(2, 3, 5, 5)
    blocked[:, :, 1, 3] = float("-inf")
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, real=torch.nn.functional.scaled_dot_product_attention, **kw:
                        calls.append(kw["dropout_p"]) or real(*a, **kw))
    torch.manual_seed(7)
    out = attend_with_bias(q, k, v, bias + blocked, 0.3, 0.5)
    torch.manual_seed(7)
    keep = dropout(torch.ones(2, 3, 5, 5), 0.3, True)  # the same draws: the mask depends on the seed alone
    probs = torch.softmax(q @ k.transpose(-2, -1) * 0.5 + bias + blocked, -1)
    assert close(out, (probs * keep) @ v, n=5)
    assert calls == [] and bool((keep == 0).any()) and bool((keep > 1).any())
    out.sum().backward()
    assert bias.grad is not None and bool(torch.isfinite(bias.grad).all()) and bias.grad[:, :, 1, 3].eq(0).all()
    plain = attend_with_bias(q, k, v, bias.detach() + blocked, 0.0, 0.5)  # no dropout: SDPA itself
    assert calls == [0.0] and close(plain, probs.detach() @ v, n=5)
    model = ltg_mod.LtgBertForMaskedLM(ModelConfig(arch="gpt-bert", vocab_size=40, hidden_size=16,
                                                  num_hidden_layers=1, num_attention_heads=2, intermediate_size=24))
    model.train()(torch.randint(0, 40, (2, 8)))  # LTG-BERT training on a CPU takes this path
    assert calls == [0.0]
