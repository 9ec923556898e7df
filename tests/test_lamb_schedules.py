"""LAMB against a slow reference, the trust ratio's scope, no-decay grouping by name on real models,
the LTG-BERT/GPT-BERT LR recipes, the mask-rate schedule and the sequence-length schedule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import approx, close

from masklm.config import ModelConfig
from masklm.errors import ConfigError
from masklm.models import build_model
from masklm.training.lamb import Lamb
from masklm.training.optim import build_optimizer, param_groups, split_decay
from masklm.training.progress import (
    LRSchedule,
    MaskRateSchedule,
    SeqLenSchedule,
    build_lr_schedule,
    parse_mask_rate,
)

# ---- LAMB ---------------------------------------------------------------------------------------


def reference_lamb(params, grads_per_step, lr, betas, eps, weight_decays):
    """The LTG-BERT update written plainly in float64, one tensor at a time; returns the final params."""
    b1, b2 = betas
    w = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    t = [0] * len(w)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.double()
            t[i] += 1
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            update = (m[i] / (1 - b1 ** t[i])) / (torch.sqrt(v[i] / (1 - b2 ** t[i])) + eps)
            ratio = 1.0
            if weight_decays[i] > 0:
                update = update + weight_decays[i] * w[i]
                wn, un = w[i].norm().item(), update.norm().item()
                if wn > 0 and un > 0:
                    ratio = wn / un
            w[i] = w[i] - lr * ratio * update
    return w


def make_problem(seed=0, steps=5):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (8,), (3, 4, 5), (1,), (7, 7)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    params[3].zero_()  # a zero weight: the trust ratio falls back to 1
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    grads[0][4] = None  # one tensor misses the first step, so its step count lags the others
    return params, grads


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("steps", [1, 6])
def test_lamb_matches_reference(foreach, steps):
    params, grads = make_problem(steps=steps)
    weight_decays = [0.1, 0.0, 0.1, 0.1, 0.0]
    lr, betas, eps = 1e-2, (0.9, 0.98), 1e-6
    expected = reference_lamb(params, grads, lr, betas, eps, weight_decays)
    live = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Lamb([{"params": [live[0], live[2], live[3]], "weight_decay": 0.1},
                {"params": [live[1], live[4]], "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps, foreach=foreach)
    for step_grads in grads:
        for p, g in zip(live, step_grads):
            p.grad = None if g is None else g.clone()
        opt.step()
    for got, want in zip(live, expected):
        assert close(got.detach(), want, n=steps)  # float32 against the float64 reference: a rounding a step
    assert opt.state[live[4]].get("step", 0) == steps - 1 and opt.state[live[0]]["step"] == steps


def test_trust_ratio_only_in_decayed_groups():
    gen = torch.Generator().manual_seed(1)
    w0, g = 0.05 * torch.randn(64, 32, generator=gen), torch.randn(64, 32, generator=gen)  # small weights
    decayed, plain = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    lr = 1e-2
    opt = Lamb([{"params": [decayed], "weight_decay": 0.1}, {"params": [plain], "weight_decay": 0.0}],
               lr=lr, betas=(0.9, 0.98), eps=1e-6)
    decayed.grad, plain.grad = g.clone(), g.clone()
    opt.step()
    # Decayed: the update is rescaled to the weight's own norm, so |dw| = lr * |w| exactly.
    assert (decayed.detach() - w0).norm().item() == approx(lr * w0.norm().item(), n=w0.numel())
    # No decay: a raw Adam step; at step 1 m_hat / sqrt(v_hat) = g / |g|, i.e. lr * sign(g) per entry.
    step = -lr * g / (g.abs() + 1e-6)
    assert close(plain.detach() - w0, step, scale=float(w0.abs().max()))  # w1 - w0 cancels w0: its scale
    # So with small weights the decayed step is ~20x shorter than the raw Adam step.
    assert (plain.detach() - w0).norm().item() > 10 * (decayed.detach() - w0).norm().item()


def test_lamb_state_dict_round_trip():
    params, grads = make_problem(steps=6)

    def build(ps):
        return Lamb([{"params": ps[:3], "weight_decay": 0.1}, {"params": ps[3:], "weight_decay": 0.0}], lr=1e-2)

    def take(opt, ps, step_grads):
        for p, g in zip(ps, step_grads):
            p.grad = None if g is None else g.clone()
        opt.step()

    straight = [torch.nn.Parameter(p.clone()) for p in params]
    opt = build(straight)
    for gs in grads:
        take(opt, straight, gs)
    resumed = [torch.nn.Parameter(p.clone()) for p in params]
    opt = build(resumed)
    for gs in grads[:3]:
        take(opt, resumed, gs)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt = build(resumed)
    opt.load_state_dict(torch.load(buf, weights_only=True))
    for gs in grads[3:]:
        take(opt, resumed, gs)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))  # bit-exact: the state round-trips


def names(pairs):
    return {n for n, _ in pairs}


def test_no_decay_groups_on_real_models():
    ltg = build_model(ModelConfig.from_preset("ltg-bert", "tiny", vocab_size=100))
    decay, exempt = split_decay(ltg, "ltg-bert")
    assert {"embedding.word_embedding.weight", "embedding.relative_embedding",
            "embedding.relative_layer_norm.weight", "classifier.bias",
            "transformer.layers.0.attention.in_proj_qk.bias",
            "transformer.layers.1.attention.post_layer_norm.weight"} <= names(exempt)
    assert names(decay) == {n for n, _ in ltg.named_parameters()
                            if not any(s in n for s in ("bias", "layer_norm", "embedding"))}
    assert {"transformer.layers.0.attention.in_proj_qk.weight", "transformer.layers.1.mlp.down_proj.weight",
            "classifier.dense.weight"} <= names(decay)
    # The tied output weight is the word embedding: one tensor, counted once, in the no-decay group.
    assert len(decay) + len(exempt) == len({id(p) for p in ltg.parameters()})

    # GPT-BERT style decays the embeddings, the relative table and the DWA alphas.
    gpt = build_model(ModelConfig.from_preset("gpt-bert", "tiny", vocab_size=100))
    decay, exempt = split_decay(gpt, "gpt-bert")
    assert {"embedding.word_embedding.weight", "embedding.relative_embedding",
            "transformer.dwa_alphas.0", "transformer.dwa_alphas.3"} <= names(decay)
    assert names(exempt) == {n for n, _ in gpt.named_parameters() if "bias" in n or "layer_norm" in n}

    # BERT style (the default, unchanged): LayerNorm gains and biases exempt, embeddings decayed.
    bert = build_model(ModelConfig.from_preset("bert", "tiny", vocab_size=100))
    decay, exempt = split_decay(bert)
    assert "bert.embeddings.word_embeddings.weight" in names(decay)
    assert {"bert.embeddings.LayerNorm.weight", "cls.predictions.bias"} <= names(exempt)
    groups = param_groups(bert, 0.01)
    assert [len(g["params"]) for g in groups] == [len(decay), len(exempt)]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]


def test_build_optimizer_kinds():
    model = build_model(ModelConfig.from_preset("ltg-bert", "tiny", vocab_size=100))
    opt = build_optimizer(model, 1e-2, 0.1, (0.9, 0.98), 1e-6, kind="lamb", no_decay="ltg-bert")
    assert isinstance(opt, Lamb)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for _, p in split_decay(model, "ltg-bert")[1]}
    assert isinstance(build_optimizer(model, 1e-3, 0.01, (0.9, 0.98), 1e-6), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, 1e-3, 0.01, (0.9, 0.98), 1e-6, kind="sgd")
    with pytest.raises(ConfigError, match="no-decay style"):
        split_decay(model, "roberta")


# ---- LR schedules -------------------------------------------------------------------------------


def test_ltg_bert_lr_recipe():
    s = build_lr_schedule("ltg-bert")
    assert s.warmup_steps(1000) == 16 and s.cooldown_steps(1000) == 0
    # Python floats (float64); s(16, 1000) == 1.0 exactly: the peak is the constant 1, not a formula's value
    assert s(0, 1000) == approx(1 / 17, dtype=float) and s(15, 1000) == approx(16 / 17, dtype=float)
    assert s(16, 1000) == 1.0
    assert s(16 + 492, 1000) == approx(0.55, dtype=float, n=4)  # half way through the cosine: (1 + 0.1) / 2
    assert s(1000, 1000) == approx(0.1, dtype=float, n=4) and s(5000, 1000) == approx(0.1, dtype=float, n=4)
    values = [s(t, 1000) for t in range(16, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:])) and min(values) > 0.1
    for t in range(16, 1000):  # the reference's formula, after warmup
        progress = (t - 16) / (1000 - 16)
        want = max(0.1, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert s(t, 1000) == approx(want, dtype=float, n=4, scale=1.0)  # terms up to 1: absolute


def test_gpt_bert_lr_recipe_cools_down_to_zero():
    s = build_lr_schedule("gpt-bert")
    assert s.warmup_steps(1000) == 16 and s.cooldown_steps(1000) == 16
    assert s(16, 1000) == 1.0 and s(16 + 484, 1000) == approx(0.55, dtype=float, n=4)  # cosine spans 16..984
    assert s(984, 1000) == approx(0.1, dtype=float, n=4) and 0.1 < s(983, 1000) < 0.1 + 1e-4  # continuous
    assert s(992, 1000) == approx(0.05, dtype=float, n=4) and s(999, 1000) == approx(0.1 / 16, dtype=float, n=4)
    assert s(1000, 1000) == 0.0  # the end of the cooldown is 0 exactly: (total - step) = 0
    # A shorter run keeps the recipe's fractions: a 500-step run warms up 8 steps and cools down 8.
    assert (s.warmup_steps(500), s.cooldown_steps(500)) == (8, 8)
    assert s(492, 500) == approx(0.1, dtype=float, n=4) and s(499, 500) > 0
    # A pure function of (step, total): a fresh schedule at the same length gives the same numbers, bit for
    # bit (the same float64 operations on the same inputs).
    fresh = build_lr_schedule("gpt-bert")
    assert [s(t, 500) for t in range(0, 501, 7)] == [fresh(t, 500) for t in range(0, 501, 7)]


def test_plain_kinds_unchanged_and_constant_cooldown():
    old = LRSchedule("cosine", 10, 0.0)
    new = build_lr_schedule("cosine", warmup=0.1)
    assert [old(t, 100) for t in range(101)] == [new(t, 100) for t in range(101)]  # one code path: bit-exact
    wsd = build_lr_schedule("constant", warmup=0, cooldown=0.2)  # warmup-stable-decay
    assert wsd(0, 100) == 1.0 and wsd(79, 100) == 1.0 and wsd(80, 100) == 1.0  # the stable phase is the constant 1
    assert wsd(90, 100) == approx(0.5, dtype=float, n=2) and wsd(99, 100) == approx(0.05, dtype=float, n=2)
    with pytest.raises(ConfigError, match="unknown LR schedule 'cosin'"):
        build_lr_schedule("cosin")


# ---- mask rate ----------------------------------------------------------------------------------


def test_mask_rate_schedule():
    s = MaskRateSchedule.parse("0.30->0.15")
    assert (s.start, s.end) == (0.30, 0.15)
    assert s(0, 1000) == approx(0.30, dtype=float, n=2) and s(500, 1000) == approx(0.225, dtype=float, n=2)
    assert s(1000, 1000) == approx(0.15, dtype=float, n=2) and s(250, 1000) == approx(0.2625, dtype=float, n=2)
    assert s(2000, 1000) == approx(0.15, dtype=float, n=2)
    constant = MaskRateSchedule.parse(0.15)
    assert constant(0, 10) == constant(10, 10) == 0.15
    assert parse_mask_rate(" 0.3 -> .15 ") == (0.3, 0.15) and parse_mask_rate("0.4") == (0.4, 0.4)


@pytest.mark.parametrize("bad", ["abc", "0.3->", "->0.15", "0.3->0.15->0.1", "1.5->0.1", "0->0.15", "nan",
                                 "0.3-0.15", 1.0, 0, True])
def test_mask_rate_nonsense_is_one_clear_error(bad):
    with pytest.raises(ConfigError) as err:
        parse_mask_rate(bad)
    assert "mask_rate" in str(err.value) and "\n" not in str(err.value)


# ---- sequence length ----------------------------------------------------------------------------


def phase_at(s: SeqLenSchedule, step: int, total: int) -> tuple[int, float]:
    """(seq_len, batch fraction) of the phase ``RowOrder`` reads at ``step``."""
    phase = s.phases[s.phase_index(step, total)]
    return phase.seq_len, phase.batch_fraction


def test_ltg_bert_seq_len_schedule():
    s = SeqLenSchedule([(0.0, 128, 1.0), (0.9, 512, 0.25)])
    assert s.boundaries(1000) == [0, 900] and s.boundaries(15625) == [0, 14063]
    assert phase_at(s, 0, 1000) == (128, 1.0) and phase_at(s, 899, 1000) == (128, 1.0)
    assert phase_at(s, 900, 1000) == (512, 0.25) and phase_at(s, 999, 1000) == (512, 0.25)
    assert phase_at(s, 14062, 15625) == (128, 1.0) and phase_at(s, 14063, 15625) == (512, 0.25)
    assert s.phases[s.phase_index(899, 1000)].batch_size(256) == 256
    assert s.phases[s.phase_index(900, 1000)].batch_size(256) == 64
    assert s.phases[s.phase_index(900, 1000)].batch_size(2) == 1 and s.max_seq_len == 512
    preset = SeqLenSchedule.preset("ltg-bert")
    assert [(p.start, p.seq_len, p.batch_fraction) for p in preset.phases] == [(0.0, 128, 1.0), (0.9, 512, 0.25)]


def test_gpt_bert_seq_len_schedule():
    s = SeqLenSchedule.preset("gpt-bert")
    assert s.boundaries(1000) == [0, 700, 900] and s.boundaries(7812) == [0, 5469, 7031]
    for step, want in [(0, (128, 1.0)), (699, (128, 1.0)), (700, (256, 0.5)), (899, (256, 0.5)),
                       (900, (512, 0.25)), (999, (512, 0.25))]:
        assert phase_at(s, step, 1000) == want, step
    assert phase_at(s, 5468, 7812) == (128, 1.0) and phase_at(s, 5469, 7812) == (256, 0.5)
    assert phase_at(s, 7030, 7812) == (256, 0.5) and phase_at(s, 7031, 7812) == (512, 0.25)
    doubled = SeqLenSchedule.preset("gpt-bert", base_seq_len=256)
    assert [p.seq_len for p in doubled.phases] == [256, 512, 1024]


def test_seq_len_boundaries_survive_float_rounding():
    s = SeqLenSchedule([(0.0, 64, 1.0), (0.3, 128, 0.5)])  # 0.3 * 10 = 3.0000000000000004 in floats
    assert s.boundaries(10) == [0, 3] and phase_at(s, 3, 10) == (128, 0.5) and phase_at(s, 2, 10) == (64, 1.0)


@pytest.mark.parametrize("phases", [[], [(0.1, 128, 1.0)], [(0.0, 128, 1.0), (0.5, 256, 0.5), (0.4, 512, 0.25)],
                                    [(0.0, 128, 1.0), (1.0, 512, 0.25)], [(0.0, 128, 0.0)], [(0.0, 0, 1.0)]])
def test_seq_len_schedule_rejects_bad_phases(phases):
    with pytest.raises(ConfigError):
        SeqLenSchedule(phases)
    with pytest.raises(ConfigError, match="unknown sequence-length schedule"):
        SeqLenSchedule.preset("bert-long")
