"""LTG-BERT / GPT-BERT: buckets, architecture, init, sizes, forward contract, and parity with an
independent sequence-first re-implementation of the reference maths (research/ltg_bert.md §1-§4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import close, forward_terms, tolerance
from torch import nn

from masklm.config import ModelConfig
from masklm.errors import ModelDirError
from masklm.hf.ltg_reference import convert_reference_state_dict, export_reference_state_dict
from masklm.models.ltg_bert import LtgBertForMaskedLM, position_bucket, relative_position_indices

# ---------------------------------------------------------------------------------------------------
# Relative-position buckets: the spec's §2.2 table is the test vector
# ---------------------------------------------------------------------------------------------------

BUCKET_RANGES = {17: (17, 20), 18: (21, 25), 19: (26, 31), 20: (32, 40), 21: (41, 50), 22: (51, 63),
                 23: (64, 80), 24: (81, 101), 25: (102, 127), 26: (128, 161), 27: (162, 202),
                 28: (203, 255), 29: (256, 321), 30: (322, 405), 31: (406, 511)}


def test_bucket_table_boundaries():
    rel = torch.arange(-2000, 2001)
    got = dict(zip(rel.tolist(), position_bucket(rel).tolist()))
    for r in range(17):  # exact
        assert got[r] == r and got[-r] == -r
    for bucket, (lo, hi) in BUCKET_RANGES.items():
        for r in (lo, hi):
            assert got[r] == bucket, (r, got[r], bucket)
            assert got[-r] == -bucket
        assert got[lo - 1] == bucket - 1  # the boundary really is at lo
    assert got[511] == 31 and got[-511] == -31  # pre-ceil value is exactly 15.0 there
    assert got[512] == 31 and got[2000] == 31 and got[-2000] == -31  # clamped to M-1
    assert set(got.values()) == set(range(-31, 32))


def test_relative_position_indices_long_sequence():
    idx = relative_position_indices(600, 32)
    assert idx.shape == (600, 600) and idx.dtype == torch.long
    assert int(idx.min()) == 0 and int(idx.max()) == 62
    assert idx[0, 0] == 31 and idx[599, 0] == 62 and idx[0, 599] == 0
    assert idx[17, 0] == 31 + 17 and idx[0, 17] == 31 - 17 and idx[100, 50] == 31 + 21
    # depends on i - j only
    assert torch.equal(idx[1:, 1:], idx[:-1, :-1])


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------

def tiny_config(arch: str = "ltg-bert", **kw) -> ModelConfig:
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return ModelConfig(arch=arch, **base)


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Every parameter random (LN weights around 1) so that every term and every bias matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * r)
            elif p.dim() == 1:
                p.copy_(0.3 * r)
            elif "embedding" in name:  # LayerNormed before use; small so that logits stay O(1)
                p.copy_(0.25 * r)
            else:
                p.copy_(r / math.sqrt(p.shape[1]))


def blocked_mask(B: int, T: int, attention_mask=None, causal=False, document_ids=None) -> torch.Tensor:
    """Reference-style mask ``[B, 1, T, T]``, True = blocked."""
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    if attention_mask is not None:
        allowed &= attention_mask.bool()[:, None, None, :]
    if causal:
        allowed &= torch.ones(T, T, dtype=torch.bool).tril()
    if document_ids is not None:
        allowed &= (document_ids[:, :, None] == document_ids[:, None, :])[:, None]
    return ~allowed


# ---------------------------------------------------------------------------------------------------
# An independent re-implementation of the reference maths: sequence-first ([T, B]), reference parameter
# names, masks True = blocked, direct einsum over materialised [T, T, 2D] position vectors, masked softmax.
# ---------------------------------------------------------------------------------------------------

def ref_bucket(rel: int, bucket_size: int = 32, max_position: int = 512) -> int:
    mid = bucket_size // 2
    if abs(rel) <= mid:
        return rel
    a = min(abs(rel), max_position - 1)
    b = mid + math.ceil(math.log(a / mid) / math.log((max_position - 1) / mid) * (mid - 1))
    return int(math.copysign(min(b, bucket_size - 1), rel))


class RefAttention(nn.Module):
    def __init__(self, D, H, eps, gated, split):
        super().__init__()
        self.H, self.eps, self.gated, self.split = H, eps, gated, split
        self.in_proj_qk = nn.Linear(D, 2 * D)
        if gated:
            self.in_proj_vg = nn.Linear(D, 2 * D)
        else:
            self.in_proj_v = nn.Linear(D, D)
        self.out_proj = nn.Linear(D, D)
        self.post_layer_norm = nn.LayerNorm(D, eps, elementwise_affine=not gated)
        self.register_buffer("position_indices", torch.zeros(4, 4, dtype=torch.long), persistent=True)

    def forward(self, x, blocked, rel_table):  # x [T, B, D], blocked [B, 1, T, T], rel_table [R, D]
        T, B, D = x.shape
        H, d = self.H, D // self.H
        s = 1.0 / math.sqrt(3 * d)
        h = F.layer_norm(x, (D,), eps=self.eps)
        q, k = self.in_proj_qk(h).split(D, dim=-1)
        if self.gated:
            v, g = self.in_proj_vg(h).split(D, dim=-1)
        else:
            v = self.in_proj_v(h)
        idx = torch.tensor([[ref_bucket(i - j) + 31 for j in range(T)] for i in range(T)])
        P = self.in_proj_qk(rel_table)[idx]  # [T, T, 2D]: the position vector of every (query, key) pair
        if self.split == "contiguous":
            q_r, k_r = P[..., :D].reshape(T, T, H, d), P[..., D:].reshape(T, T, H, d)
        else:
            P = P.reshape(T, T, H, 2 * d)
            q_r, k_r = P[..., :d], P[..., d:]
        q, k, v = (t.reshape(T, B, H, d) for t in (q, k, v))
        scores = s * (torch.einsum("ibhc,jbhc->bhij", q, k)
                      + torch.einsum("ibhc,ijhc->bhij", q, k_r)
                      + torch.einsum("jbhc,ijhc->bhij", k, q_r))
        probs = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1).masked_fill(blocked, 0.0)
        ctx = torch.einsum("bhij,jbhc->ibhc", probs, v).reshape(T, B, D)
        if self.gated:
            return self.out_proj(self.post_layer_norm(ctx * F.gelu(g)))
        return self.post_layer_norm(self.out_proj(ctx))


class RefGeGLU(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=-1)
        return a * F.gelu(b, approximate="tanh")


class RefMLP(nn.Module):
    def __init__(self, D, inter, eps):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(D, eps, elementwise_affine=False), nn.Linear(D, 2 * inter, bias=False),
                                 RefGeGLU(), nn.LayerNorm(inter, eps, elementwise_affine=False),
                                 nn.Linear(inter, D, bias=False), nn.Identity())

    def forward(self, x):
        return self.mlp(x)


class RefLayer(nn.Module):
    def __init__(self, D, H, inter, eps, split):
        super().__init__()
        self.attention = RefAttention(D, H, eps, False, split)
        self.mlp = RefMLP(D, inter, eps)


class RefBert(nn.Module):
    """LTG-BERT (``transformer.layers``) or GPT-BERT (``attention_layers``/``mlp_layers``/``dwa_modules``)."""

    def __init__(self, V, D, H, inter, L, eps=1e-7, gpt=False, split="contiguous"):
        super().__init__()
        self.gpt, self.eps = gpt, eps
        self.embedding = nn.Module()
        self.embedding.word_embedding = nn.Embedding(V, D)
        self.embedding.relative_embedding = nn.Parameter(torch.zeros(63, D))
        self.embedding.relative_layer_norm = nn.LayerNorm(D, eps)
        self.transformer = nn.Module()
        if gpt:
            self.transformer.attention_layers = nn.ModuleList(RefAttention(D, H, eps, True, split) for _ in range(L))
            self.transformer.mlp_layers = nn.ModuleList(RefMLP(D, inter, eps) for _ in range(L))
            self.transformer.dwa_modules = nn.Module()
            self.transformer.dwa_modules.alphas = nn.ParameterList(nn.Parameter(torch.zeros(j + 2)) for j in range(2 * L))
        else:
            self.transformer.layers = nn.ModuleList(RefLayer(D, H, inter, eps, split) for _ in range(L))
        self.classifier = nn.Module()
        self.classifier.nonlinearity = nn.Sequential(
            nn.LayerNorm(D, eps, elementwise_affine=False), nn.Linear(D, D), nn.GELU(),
            nn.LayerNorm(D, eps, elementwise_affine=False), nn.Dropout(0.0), nn.Linear(D, V))
        self.classifier.nonlinearity[5].weight = self.embedding.word_embedding.weight

    def forward(self, ids, blocked):  # ids [T, B] -> (hidden [T, B, D], logits [T, B, V])
        D = self.embedding.word_embedding.embedding_dim
        x = F.layer_norm(self.embedding.word_embedding(ids), (D,), eps=self.eps)
        rel = self.embedding.relative_layer_norm(self.embedding.relative_embedding)
        if self.gpt:
            t = self.transformer
            states = [x]
            for i in range(len(t.attention_layers)):
                for j, block in ((2 * i, lambda z, i=i: t.attention_layers[i](z, blocked, rel)),
                                 (2 * i + 1, lambda z, i=i: t.mlp_layers[i](z))):
                    states.append(x + block(x))
                    x = sum(a * s for a, s in zip(t.dwa_modules.alphas[j], states))
        else:
            for layer in self.transformer.layers:
                x = x + layer.attention(x, blocked, rel)
                x = x + layer.mlp(x)
        return x, self.classifier.nonlinearity(x)


def make_pair(gpt: bool, split: str, L: int = 2, eps: float = 1e-7, seed: int = 0):
    """A randomised reference model and our model loaded from its converted state dict."""
    ref = RefBert(40, 16, 2, 24, L, eps=eps, gpt=gpt, split=split)
    randomize(ref, seed)
    config = tiny_config("gpt-bert" if gpt else "ltg-bert", num_hidden_layers=L, position_split=split,
                         layer_norm_eps=eps)
    model = LtgBertForMaskedLM(config)
    model.load_state_dict(convert_reference_state_dict(ref.state_dict(), config), strict=True)
    return ref.eval(), model.eval()


def run_both(ref, model, ids, attention_mask=None, causal=False, document_ids=None):
    B, T = ids.shape
    with torch.no_grad():
        ours = model(ids, attention_mask=attention_mask, causal=causal, document_ids=document_ids)
        h, logits = ref(ids.t(), blocked_mask(B, T, attention_mask, causal, document_ids))
    return ours, h.transpose(0, 1), logits.transpose(0, 1)


def packed_inputs(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (2, T), generator=g)
    attention_mask = torch.ones(2, T, dtype=torch.long)
    attention_mask[1, T - T // 4:] = 0
    document_ids = torch.zeros(2, T, dtype=torch.long)
    document_ids[0, T // 3:] = 1
    document_ids[1, T // 2:] = 1
    document_ids[1, T - T // 4:] = -1
    return ids, attention_mask, document_ids


# ---------------------------------------------------------------------------------------------------
# Parity: fast SDPA path vs the direct formula, through a converted reference state dict
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gpt,split,eps", [(False, "contiguous", 1e-7), (False, "interleaved", 1e-7),
                                           (True, "contiguous", 1e-7), (False, "contiguous", 0.05),
                                           (True, "interleaved", 0.05)])
@pytest.mark.parametrize("mode", ["none", "padding", "causal", "documents", "all"])
def test_matches_reference_maths(gpt, split, eps, mode):
    ref, model = make_pair(gpt, split, eps=eps)
    ids, attention_mask, document_ids = packed_inputs(40)
    kw = {"none": {}, "padding": dict(attention_mask=attention_mask), "causal": dict(causal=True),
          "documents": dict(document_ids=document_ids),
          "all": dict(attention_mask=attention_mask, causal=True, document_ids=document_ids)}[mode]
    ours, h, logits = run_both(ref, model, ids, **kw)
    assert torch.isfinite(ours.logits).all()
    assert close(ours.hidden_states, h, n=forward_terms(model.config, 40))
    assert close(ours.logits, logits, n=forward_terms(model.config, 40))


@pytest.mark.parametrize("split", ["contiguous", "interleaved"])
def test_matches_reference_maths_beyond_512(split):
    ref, model = make_pair(False, split, L=1)
    ids, attention_mask, document_ids = packed_inputs(600)
    ours, h, logits = run_both(ref, model, ids, attention_mask=attention_mask, causal=True,
                               document_ids=document_ids)
    assert close(ours.hidden_states, h, n=forward_terms(model.config, 600))
    assert close(ours.logits, logits, n=forward_terms(model.config, 600))


def test_wrong_split_changes_outputs():
    for split, wrong in (("interleaved", "contiguous"), ("contiguous", "interleaved")):
        ref, _ = make_pair(False, split)
        config = tiny_config(position_split=wrong)
        model = LtgBertForMaskedLM(config).eval()
        model.load_state_dict(convert_reference_state_dict(ref.state_dict(), config))
        ours, h, _ = run_both(ref, model, packed_inputs(24)[0])
        assert (ours.hidden_states - h).abs().max() > 1e-2


def test_hub_layout_with_prefix_and_without_tied_copy():
    ref, expected = make_pair(True, "contiguous")
    sd = {f"model.{k}": v for k, v in ref.state_dict().items()
          if k != "classifier.nonlinearity.5.weight" and not k.endswith("position_indices")}
    model = LtgBertForMaskedLM(expected.config).eval()
    model.load_state_dict(convert_reference_state_dict(sd, expected.config), strict=True)
    ids = packed_inputs(20)[0]
    with torch.no_grad():  # bit-exact: the same tensors under other names, the same computation
        assert torch.equal(model(ids).logits, expected(ids).logits)
    # only the decoder copy of the tied matrix (word embedding key left out) also works
    sd = {k: v for k, v in ref.state_dict().items() if k != "embedding.word_embedding.weight"}
    model.load_state_dict(convert_reference_state_dict(sd, expected.config), strict=True)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected(ids).logits)


@pytest.mark.parametrize("gpt", [False, True])
def test_export_round_trip(gpt):
    ref, model = make_pair(gpt, "contiguous")
    exported = export_reference_state_dict(model.state_dict(), model.config)
    fresh = RefBert(40, 16, 2, 24, 2, gpt=gpt).eval()
    missing, unexpected = fresh.load_state_dict(exported, strict=False)
    assert not unexpected and all(k.endswith("position_indices") for k in missing)
    ids = packed_inputs(16)[0]
    blocked = blocked_mask(2, 16)
    with torch.no_grad():
        assert torch.equal(fresh(ids.t(), blocked)[1], ref(ids.t(), blocked)[1])  # same tensors: bit-exact


def test_conversion_errors_name_the_tensor():
    ref = RefBert(40, 16, 2, 24, 2)
    sd = ref.state_dict()
    with pytest.raises(ModelDirError, match=r"embedding.word_embedding.weight.*shape.*vocab_size"):
        convert_reference_state_dict(sd, tiny_config(vocab_size=41))
    with pytest.raises(ModelDirError, match=r"'embedding.relative_embedding' has shape \(63, 16\).*\(63, 32\)"):
        convert_reference_state_dict(sd, tiny_config(hidden_size=32))
    with pytest.raises(ModelDirError, match=r"'transformer.layers.0.mlp.mlp.1.weight'.*intermediate_size"):
        convert_reference_state_dict(sd, tiny_config(intermediate_size=32))
    with pytest.raises(ModelDirError, match=r"no tensor for 'transformer.layers.2"):
        convert_reference_state_dict(sd, tiny_config(num_hidden_layers=3))
    with pytest.raises(ModelDirError, match=r"'transformer.layers.1.attention.in_proj_qk.weight' has no place"):
        convert_reference_state_dict(sd, tiny_config(num_hidden_layers=1))
    gpt_sd = RefBert(40, 16, 2, 24, 2, gpt=True).state_dict()
    with pytest.raises(ModelDirError, match=r"in_proj_vg.*attention_gate"):
        convert_reference_state_dict(gpt_sd, tiny_config())
    with pytest.raises(ModelDirError, match="not an LTG-BERT"):
        convert_reference_state_dict({"bert.embeddings.word_embeddings.weight": torch.zeros(4, 4)}, tiny_config())
    bad = dict(sd)
    bad["classifier.nonlinearity.5.weight"] = bad["classifier.nonlinearity.5.weight"] + 1
    with pytest.raises(ModelDirError, match="differs"):
        convert_reference_state_dict(bad, tiny_config())


# ---------------------------------------------------------------------------------------------------
# Architecture, parameters, init, sizes
# ---------------------------------------------------------------------------------------------------

def test_parameter_names_and_norms():
    ltg = LtgBertForMaskedLM(tiny_config(num_hidden_layers=1))
    layer = "transformer.layers.0."
    assert set(ltg.state_dict()) == {
        "embedding.word_embedding.weight", "embedding.relative_embedding",
        "embedding.relative_layer_norm.weight", "embedding.relative_layer_norm.bias",
        *(layer + f"attention.{m}.{p}" for m in ("in_proj_qk", "in_proj_v", "out_proj", "post_layer_norm")
          for p in ("weight", "bias")),
        layer + "mlp.up_proj.weight", layer + "mlp.down_proj.weight",
        "classifier.dense.weight", "classifier.dense.bias", "classifier.bias"}
    assert list(ltg.buffers()) == []  # no position_indices buffer
    assert ltg.embedding.relative_embedding.shape == (63, 16)
    assert ltg.transformer.layers[0].mlp.up_proj.weight.shape == (48, 16)
    affine = [m for m in ltg.modules() if isinstance(m, nn.LayerNorm)]
    assert len(affine) == 2 and all(m.eps == 1e-7 for m in affine)
    gpt = LtgBertForMaskedLM(tiny_config("gpt-bert", num_hidden_layers=1))
    names = set(gpt.state_dict())
    assert layer + "attention.in_proj_vg.weight" in names and not any("post_layer_norm" in n for n in names)
    assert [gpt.state_dict()[f"transformer.dwa_alphas.{j}"].tolist() for j in range(2)] == [[0, 1], [0, 0, 1]]
    assert sum(isinstance(m, nn.LayerNorm) for m in gpt.modules()) == 1
    assert ModelConfig(arch="ltg-bert").layer_norm_eps == 1e-7


def test_init():
    config = ModelConfig(arch="ltg-bert", vocab_size=500, hidden_size=256, num_hidden_layers=3,
                         num_attention_heads=4, intermediate_size=512)
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(config)
    sigma = math.sqrt(2 / (5 * 256))
    trunc_std = sigma * 0.87962566  # std of N(0, 1) cut at +-2

    def check(w, scale=1.0):
        assert w.abs().max() <= 2 * sigma * scale + tolerance(2 * sigma * scale, n=2)  # a float32 cut
        assert abs(w.std().item() / (trunc_std * scale) - 1) < 0.04
        assert w.abs().max() > 1.9 * sigma * scale  # really reaches the cut

    check(model.embedding.word_embedding.weight)
    check(model.embedding.relative_embedding)
    check(model.classifier.dense.weight)
    for i, layer in enumerate(model.transformer.layers):
        a = layer.attention
        check(a.in_proj_qk.weight), check(a.in_proj_v.weight), check(a.out_proj.weight)  # out_proj not scaled
        check(layer.mlp.up_proj.weight, math.sqrt(1 / (2 * (i + 1))))
        check(layer.mlp.down_proj.weight, math.sqrt(1 / (2 * (i + 1))))
        for b in (a.in_proj_qk.bias, a.in_proj_v.bias, a.out_proj.bias, a.post_layer_norm.bias):
            assert torch.count_nonzero(b) == 0
        assert torch.equal(a.post_layer_norm.weight, torch.ones(256))  # initialised to 1 exactly
    assert torch.count_nonzero(model.classifier.bias) == 0 and torch.count_nonzero(model.classifier.dense.bias) == 0


@pytest.mark.parametrize("arch,size,vocab,count", [
    ("ltg-bert", "xs", 16384, 8_533_888), ("ltg-bert", "small", 6144, 23_799_552),
    ("ltg-bert", "small", 16384, 27_741_952), ("ltg-bert", "base", 16384, 98_229_760),
    ("gpt-bert", "small", 8192, 29_892_164), ("gpt-bert", "base", 16384, 119_454_532)])
def test_parameter_counts(arch, size, vocab, count):
    with torch.device("meta"):
        model = LtgBertForMaskedLM(ModelConfig.from_preset(arch, size, vocab_size=vocab))
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == count == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Forward contract
# ---------------------------------------------------------------------------------------------------

def test_forward_contract_and_sparse_head():
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(tiny_config("gpt-bert")).eval()
    ids = torch.randint(0, 40, (2, 12))
    full = model(ids)
    assert full.loss is None and full.logits.shape == (2, 12, 40) and full.hidden_states.shape == (2, 12, 16)
    n = forward_terms(model.config, 12)
    assert close(model.encode(ids), full.hidden_states, n=n)
    assert close(model.predict(full.hidden_states), full.logits, n=n)
    labels = torch.full((2, 12), -100)
    labels[0, 3], labels[1, 0], labels[1, 7] = 5, 9, 2
    out = model(ids, labels=labels)
    sel = full.logits[labels != -100]
    assert out.logits.shape == (3, 40) and close(out.logits, sel, n=n)
    # with labels, hidden_states are the rows the head read, as for BERT (a gather of the same tensor: exact)
    assert torch.equal(out.hidden_states, full.hidden_states[labels != -100])
    loss_terms = forward_terms(model.config, 12, softmax=True)
    assert close(out.loss, F.cross_entropy(sel, labels[labels != -100]), n=loss_terms)
    none = model(ids, labels=torch.full((2, 12), -100))
    assert none.logits.shape == (0, 40) and none.loss.item() == 0.0  # the constant 0, exactly


def test_tied_decoder_gets_gradients_from_the_head():
    model = LtgBertForMaskedLM(tiny_config())
    model.predict(torch.randn(3, 16)).sum().backward()
    assert model.embedding.word_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["ltg-bert", "gpt-bert"])
def test_masks_behave(arch):
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(tiny_config(arch))
    randomize(model)
    model.eval()
    ids = torch.randint(0, 40, (1, 20))
    n = forward_terms(model.config, 20)
    with torch.no_grad():
        # padding: what the pads hold cannot reach real positions, bit for bit (their weight is exactly 0)
        mask = torch.ones(1, 20, dtype=torch.long)
        mask[0, 14:] = 0
        padded = model.encode(ids, attention_mask=mask)
        other = ids.clone()
        other[0, 14:] = 3
        assert torch.equal(padded[:, :14], model.encode(other, attention_mask=mask)[:, :14])
        assert close(padded[:, :14], model.encode(ids[:, :14]), n=n)
        # causal: a position never sees later tokens
        changed = ids.clone()
        changed[0, 10:] = (changed[0, 10:] + 1) % 40
        a, b = model.encode(ids, causal=True), model.encode(changed, causal=True)
        assert torch.equal(a[:, :10], b[:, :10]) and not torch.allclose(a[:, 10:], b[:, 10:])  # as above
        # documents: a packed row equals its documents run on their own
        docs = torch.tensor([[0] * 7 + [1] * 13])
        packed = model.encode(ids, document_ids=docs)
        assert close(packed[:, :7], model.encode(ids[:, :7]), n=n)
        assert close(packed[:, 7:], model.encode(ids[:, 7:]), n=n)
        packed_causal = model.encode(ids, document_ids=docs, causal=True)
        assert close(packed_causal[:, 7:], model.encode(ids[:, 7:], causal=True), n=n)


def test_fully_masked_rows_give_zeros_not_nan():
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(tiny_config())
    randomize(model)
    attn = model.transformer.layers[0].attention
    seen = {}
    attn.register_forward_hook(lambda m, args, out: seen.setdefault("out", out))
    ids = torch.randint(0, 40, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1] = 0  # every query of row 1 has no key
    docs = torch.zeros(2, 10, dtype=torch.long)
    docs[0, 6:] = -1
    mask[0, 6:] = 0  # queries 6.. of row 0 only match padded keys
    out = model(ids, attention_mask=mask, document_ids=docs, labels=torch.randint(0, 40, (2, 10)))
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # attention context is zero there, so the sub-block returns post_LN(out_proj(0)) = post_LN(out_proj.bias)
    with torch.no_grad():
        constant = attn.post_layer_norm(attn.out_proj.bias)
    assert close(seen["out"][1], constant.expand(10, 16), n=16)  # out_proj(0) + bias, LayerNorm over 16
    assert close(seen["out"][0, 6:], constant.expand(4, 16), n=16)
    assert not torch.allclose(seen["out"][0, :6], constant.expand(6, 16), atol=1e-3)


def test_training_step_and_dropout():
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(tiny_config("gpt-bert", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    ids = torch.randint(0, 40, (2, 16))
    labels = torch.where(torch.rand(2, 16) < 0.3, ids, torch.full_like(ids, -100))
    labels[0, 0] = ids[0, 0]
    out1, out2 = model(ids, labels=labels), model(ids, labels=labels)
    assert not torch.equal(out1.logits, out2.logits)  # dropout is active in train mode
    out1.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)  # bit-exact: same input, same kernels


def test_rejects_bert_config():
    with pytest.raises(ValueError, match="ltg-bert or gpt-bert"):
        LtgBertForMaskedLM(ModelConfig(arch="bert"))


@pytest.mark.parametrize("causal", [False, True])
def test_dwa_in_one_buffer_equals_the_autograd_sums(monkeypatch, causal):
    """GPT-BERT's DWA in training (``models.dwa.DepthMix``: the states in one buffer, one matrix-vector product
    a block, their gradients in a second buffer) gives the loss and every gradient of the autograd spelling
    (``mix_states``), the embedding output's included; only the order of the sums differs."""
    from masklm.models import dwa, ltg_bert

    torch.manual_seed(0)
    model = LtgBertForMaskedLM(tiny_config("gpt-bert", num_hidden_layers=3, hidden_dropout_prob=0.1,
                                           attention_probs_dropout_prob=0.1))
    with torch.no_grad():  # away from the one-hot init, so every state weighs in
        for alpha in model.transformer.dwa_alphas:
            alpha.normal_()
    ids = torch.randint(0, 40, (3, 16))
    labels = torch.where(torch.rand(3, 16) < 0.4, ids, torch.full_like(ids, -100))
    mixes = []
    monkeypatch.setattr(dwa._Mix, "apply", lambda *a, real=dwa._Mix.apply: mixes.append(a) or real(*a))

    def step(fused: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        monkeypatch.setattr(ltg_bert, "depth_mix_usable", lambda x: fused and dwa.depth_mix_usable(x))
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        out = model(ids, labels=labels, causal=causal)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = step(True)
    assert len(mixes) == 6  # the buffer path ran: one mix a block
    ref_loss, ref_grads = step(False)
    assert len(mixes) == 6
    n = forward_terms(model.config, 16, softmax=True)
    assert close(loss, ref_loss, n=n)
    assert grads.keys() == ref_grads.keys()
    for name in grads:  # an alpha's gradient is a sum over every entry of a [B, T, D] state
        terms = ids.numel() * model.config.hidden_size if "dwa_alphas" in name else n
        assert close(grads[name], ref_grads[name], n=terms), name
    with torch.no_grad():  # inference keeps the autograd spelling
        model(ids)
    assert len(mixes) == 6


def test_dwa_in_one_buffer_under_bf16_autocast(monkeypatch):
    """Under bf16 autocast (``--precision bf16`` on a CPU; the matmuls in bf16, the states fp32 after each
    block's LayerNorm) the buffer path runs too, and matches the autograd sums to bf16's precision."""
    from masklm.models import dwa, ltg_bert

    torch.manual_seed(0)
    model = LtgBertForMaskedLM(tiny_config("gpt-bert", num_hidden_layers=3, hidden_dropout_prob=0.0,
                                           attention_probs_dropout_prob=0.0))
    with torch.no_grad():
        for alpha in model.transformer.dwa_alphas:
            alpha.normal_()
    ids = torch.randint(0, 40, (3, 16))
    labels = torch.where(torch.rand(3, 16) < 0.4, ids, torch.full_like(ids, -100))
    dtypes = []
    monkeypatch.setattr(dwa._Mix, "apply", lambda *a, real=dwa._Mix.apply: dtypes.append(a[1].dtype) or real(*a))

    def step(fused: bool) -> tuple[float, dict[str, torch.Tensor]]:
        monkeypatch.setattr(ltg_bert, "depth_mix_usable", lambda x: fused and dwa.depth_mix_usable(x))
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, labels=labels)
        out.loss.backward()
        return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = step(True)
    assert len(dtypes) == 6  # the buffer path ran
    ref_loss, ref_grads = step(False)
    assert len(dtypes) == 6
    assert abs(loss - ref_loss) < 1e-2 * abs(ref_loss)
    for name in grads:
        assert grads[name].dtype == torch.float32
        scale = ref_grads[name].abs().max().item()
        assert (grads[name] - ref_grads[name]).abs().max().item() <= 0.03 * scale + 1e-6, name


def test_dwa_buffers_are_reused_and_never_shared(monkeypatch):
    """DepthMixPool: the next step reuses the buffers; a forward while another pass holds them (two forwards,
    then both backwards) gets its own, and both passes' gradients stay right."""
    from masklm.models import ltg_bert

    torch.manual_seed(0)
    model = LtgBertForMaskedLM(tiny_config("gpt-bert"))
    with torch.no_grad():
        for alpha in model.transformer.dwa_alphas:
            alpha.normal_()
    ids = [torch.randint(0, 40, (2, 12)) for _ in range(2)]
    labels = [torch.where(torch.rand(2, 12) < 0.5, x, torch.full_like(x, -100)) for x in ids]

    def grads(together: bool, fused: bool) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(ltg_bert, "depth_mix_usable", lambda x: fused)
        model.zero_grad()
        if together:  # both forwards first: the second may not write into the first one's buffers
            losses = [model(x, labels=y).loss for x, y in zip(ids, labels)]
            sum(losses).backward()
        else:
            for x, y in zip(ids, labels):
                model(x, labels=y).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    want = grads(False, fused=False)
    pool = model.transformer.dwa_pool
    for together in (False, True, False):
        got = grads(together, fused=True)
        for name in want:
            terms = 2 * 12 * model.config.hidden_size if "dwa_alphas" in name else forward_terms(model.config, 12)
            assert close(got[name], want[name], n=terms), (together, name)
        assert not pool.held  # handed back after each pass's last backward
    first = pool.buffers[0].data_ptr()
    grads(False, fused=True)
    assert pool.buffers[0].data_ptr() == first  # the same memory, step after step
