"""BERT: names and numbers match transformers, sparse prediction, attention modes, masks, dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import approx, close, forward_terms

from masklm.config import ModelConfig
from masklm.errors import InputError
from masklm.models import MaskedLMOutput, build_model
from masklm.models import attention as attention_mod
from masklm.models.attention import AttentionMask, attend, build_attention_mask, dropout

transformers = pytest.importorskip("transformers")

V = 100


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    fields.update(overrides)
    return ModelConfig(**fields)


def hf_twin(model):
    """transformers' BertForMaskedLM with the same config and weights."""
    cfg = transformers.BertConfig(**{k: v for k, v in model.config.to_dict().items() if k != "arch"})
    hf = transformers.BertForMaskedLM(cfg)
    result = hf.load_state_dict(model.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]
    assert not result.unexpected_keys
    return hf


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(tiny_config())


def batch(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if B >= 3:
        mask[1, 8:] = 0
        mask[2, 4:] = 0
    return ids, mask


def test_parameter_names_and_shapes_match_hf(model):
    cfg = transformers.BertConfig(**{k: v for k, v in model.config.to_dict().items() if k != "arch"})
    hf = transformers.BertForMaskedLM(cfg)
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = set(hf._tied_weights_keys)  # decoder weight/bias are aliases in HF, absent here
    assert tied == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert ours == {k: s for k, s in hf_shapes.items() if k not in tied}
    assert "bert.encoder.layer.1.attention.self.query.weight" in ours


def test_eval_logits_and_hidden_match_hf_with_padding(model):
    hf = hf_twin(model).eval()
    model.eval()
    ids, mask = batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert isinstance(out, MaskedLMOutput) and out.loss is None
    assert out.logits.shape == (3, 12, V) and out.hidden_states.shape == (3, 12, 32)
    keep = mask.bool()
    n = forward_terms(model.config, 12)
    assert close(out.logits[keep], ref.logits[keep], n=n)
    assert close(out.hidden_states[keep], ref.hidden_states[-1][keep], n=n)
    assert close(model.predict(model.encode(ids, mask)), out.logits, n=n)


def test_sparse_loss_and_gradients_match_hf_dense():
    torch.manual_seed(1)
    model = build_model(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    hf = hf_twin(model)
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, [1, 5, 7]] = ids[0, [1, 5, 7]]
    labels[1, 2] = 3
    labels[2, 0] = ids[2, 0]
    out = model(ids, attention_mask=mask, labels=labels)
    ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (5, V)  # only the 5 labelled rows reach the head
    assert out.loss.item() == approx(ref.loss.item(), n=forward_terms(model.config, 12, softmax=True))
    full = ref.logits[labels != -100]
    assert close(out.logits, full, n=forward_terms(model.config, 12))
    out.loss.backward()
    ref.loss.backward()
    hf_params = dict(hf.named_parameters())
    # one scale for all: a gradient that is 0 in exact arithmetic (the key bias) is rounding noise of the rest
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    for name, p in model.named_parameters():
        assert close(p.grad, hf_params[name].grad, n=forward_terms(model.config, 12), scale=scale), name


def test_no_selected_labels_gives_zero_loss(model):
    ids, _ = batch()
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.logits.shape == (0, V)
    assert out.loss.item() == 0.0  # exact: with nothing selected the loss is the constant 0
    out.loss.backward()  # must not raise


def test_init_follows_hf():
    torch.manual_seed(0)
    model = build_model(tiny_config(hidden_size=256, num_attention_heads=4, intermediate_size=512))
    sd = model.state_dict()
    w = sd["bert.encoder.layer.0.intermediate.dense.weight"]
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.all(sd["bert.encoder.layer.0.intermediate.dense.bias"] == 0)
    assert torch.all(sd["bert.embeddings.LayerNorm.weight"] == 1)
    assert torch.all(sd["cls.predictions.bias"] == 0)
    assert torch.all(sd["bert.embeddings.word_embeddings.weight"][0] == 0)  # padding row
    assert abs(sd["bert.embeddings.position_embeddings.weight"].std().item() - 0.02) < 0.002


def test_gelu_is_exact(model):
    x = torch.linspace(-3, 3, 7)
    act = model.bert.encoder.layer[0].intermediate.act
    assert torch.equal(act(x), F.gelu(x, approximate="none"))  # the same op: bit-exact


def test_too_long_input_raises(model):
    with pytest.raises(InputError, match="at most 64"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_causal_equals_running_on_prefixes(model):
    model.eval()
    ids, _ = batch(B=2, T=9)
    with torch.no_grad():
        full = model.encode(ids, causal=True)
        for t in (1, 4, 9):
            prefix = model.encode(ids[:, :t], causal=True)
            assert close(full[:, :t], prefix, n=forward_terms(model.config, 9))
        bidir = model.encode(ids)
    assert (full[:, :-1] - bidir[:, :-1]).abs().max() > 1e-3  # causal really changes the result


def test_document_ids_block_attention(model):
    model.eval()
    ids, _ = batch(B=1, T=10)
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]])
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1 - 5) % (V - 5) + 5  # a token of document 1
    with torch.no_grad():
        a = model.encode(ids, document_ids=docs)
        b = model.encode(changed, document_ids=docs)
        plain = model.encode(ids)
    other = docs[0] != 1
    # other documents do not see it, bit for bit: its key gets attention weight exactly 0 there
    assert torch.equal(a[0, other], b[0, other])
    assert (a[0, ~other] - b[0, ~other]).abs().max() > 1e-3  # its own document does
    assert (a - plain).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_give_zeros_not_nan(model, causal):
    model.train()
    ids = torch.randint(5, V, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2] = 0  # a row of padding only
    docs = torch.tensor([[0, 0, 1, 1, 1, -1, -1, -1], [0, 0, 0, 0, 1, 1, 1, 1], [-1] * 8])
    labels = torch.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]
    for kwargs in ({"attention_mask": mask}, {"attention_mask": mask, "document_ids": docs},
                   {"document_ids": docs}):
        out = model(ids, labels=labels, causal=causal, **kwargs)
        assert torch.isfinite(out.hidden_states).all() and torch.isfinite(out.loss)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()

    # at the attention itself: a query row with no key to attend to is exactly zero
    attn = build_attention_mask(mask, docs, causal)
    q, k, v = (torch.randn(3, 2, 8, 4) for _ in range(3))
    y = attend(q, k, v, attn)
    assert torch.all(y[2] == 0) and torch.all(y[0, :, 5:] == 0)
    assert y[0, :, :5].abs().sum() > 0 and torch.isfinite(y).all()


def test_build_attention_mask_modes():
    assert build_attention_mask(None, None, False).mask is None
    m = build_attention_mask(torch.ones(2, 5), None, True)
    assert m.mask is None and m.is_causal  # all-ones padding is dropped, SDPA gets is_causal
    pad = torch.tensor([[1, 1, 1, 0]])
    m = build_attention_mask(pad, None, False)
    assert m.mask.shape == (1, 1, 1, 4) and m.keep_rows is None
    docs = torch.tensor([[0, 0, 1, 1]])
    m = build_attention_mask(pad, docs, True)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(m.mask[0, 0], expected)


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_cpu_attention_equals_sdpa(monkeypatch, causal):
    """The explicit path used for attention dropout on CPU computes what SDPA computes, gradients included
    (it adds the mask's bias to the scores in place), and a second layer reusing the mask agrees too."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 4, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(2, 2, 6, 4)
    pad = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    docs = torch.tensor([[0, 0, 1, 1, -1, -1], [0, 0, 0, 1, 1, 1]])
    for attn in (build_attention_mask(pad, docs, causal), build_attention_mask(None, None, causal),
                 build_attention_mask(pad, None, causal)):
        reference = attend(q, k, v, attn, dropout_p=0.0)
        ref_grads = torch.autograd.grad(reference, (q, k, v), grad_out)
        monkeypatch.setattr(attention_mod, "dropout", lambda x, p, training: x)
        for _layer in range(2):
            explicit = attend(q, k, v, attn, dropout_p=0.5)
            grads = torch.autograd.grad(explicit, (q, k, v), grad_out)
            assert close(explicit, reference, n=6)  # attention over 6 keys of width 4
            assert all(close(a, b, n=6) for a, b in zip(grads, ref_grads))
        monkeypatch.undo()


def test_dropout_statistics():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = dropout(x, 0.1, True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003
    assert close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))  # one float32 multiply
    assert dropout(x, 0.1, False) is x
    x = torch.randn(3, 7, requires_grad=True)
    y = dropout(x, 0.5, True)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2)  # exact: the gradient is the 0/2 mask itself
    # seeded like torch's own dropout
    torch.manual_seed(5)
    a = dropout(torch.ones(50), 0.3, True)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(torch.ones(50), 0.3, True))  # bit-exact: same seed, same draws



def test_dropout_traces_into_one_graph_under_compile():
    """Eager CPU dropout draws with numpy; traced by torch.compile it must not break the graph (it hands the
    draws to Inductor), here through the CPU attention path with dropout as in a training step."""
    import torch._dynamo

    def step(q, k, v, x):
        return attend(q, k, v, AttentionMask(), dropout_p=0.1).sum() + dropout(x, 0.1, True).sum()

    q, k, v = (torch.randn(2, 4, 8, 16) for _ in range(3))
    explained = torch._dynamo.explain(step)(q, k, v, torch.randn(2, 8, 64))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons

def test_train_mode_uses_dropout_and_eval_is_deterministic(model):
    ids, mask = batch()
    model.train()
    a, b = model.encode(ids, mask), model.encode(ids, mask)
    assert (a - b).abs().max() > 1e-4
    model.eval()
    assert torch.equal(model.encode(ids, mask), model.encode(ids, mask))  # bit-exact: same input and kernels


@pytest.mark.parametrize("mode", ["plain", "padding", "documents", "causal", "causal+padding+documents"])
def test_sparse_last_layer_equals_full_computation(mode):
    """With labels, the last layer runs only at the labelled rows; logits, loss and gradients are unchanged."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=64, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0))
    B, T = 3, 10
    ids = torch.randint(5, 50, (B, T))
    labels = torch.where(torch.rand(B, T) < 0.3, ids, torch.full_like(ids, -100))
    labels[0, 0], labels[2, :] = ids[0, 0], -100  # a labelled first position; a row with no labels
    labels[1, 9] = ids[1, 9]
    kw = {}
    if "padding" in mode:
        kw["attention_mask"] = torch.tensor([[1] * 10, [1] * 10, [1] * 6 + [0] * 4])
    if "documents" in mode:
        kw["document_ids"] = torch.tensor([[0] * 4 + [1] * 6, [0] * 10, [0] * 3 + [1] * 3 + [-1] * 4])
    if "causal" in mode:
        kw["causal"] = True
    out = model(ids, labels=labels, **kw)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    hidden = model.encode(ids, **kw)  # the full computation: every row through every layer
    keep = labels != -100
    ref_logits = model.predict(hidden[keep])
    F.cross_entropy(ref_logits, labels[keep]).backward()
    assert out.logits.shape == ref_logits.shape and out.hidden_states.shape == (int(keep.sum()), 32)
    terms = forward_terms(model.config, T)
    assert close(out.logits, ref_logits, n=terms)
    scale = max(float(p.grad.abs().max()) for p in model.parameters())  # one scale: see the test above
    for name, p in model.named_parameters():
        assert close(grads[name], p.grad, n=terms, scale=scale), name
