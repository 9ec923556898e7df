"""The strategies of issue #13: threshold commits with the block prefix cache, self-speculative decoding
(greedy and exact speculative sampling), the repetition controls in every strategy, and the default rule."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import generate, tiny

import masklm
from masklm.cli import main
from masklm.errors import InputError
from masklm.generation import REQUEST_FIELDS, GenerationConfig
from masklm.generation.canvas import build_canvas, prompt_rows
from masklm.generation.config import pick_strategy
from masklm.generation.repetition import apply_penalty
from masklm.generation.sampling import draw
from masklm.generation.speculative import DraftSizer, accept_round
from masklm.generation.threshold import commit_mask
from masklm.modeldir import save_model_dir
from masklm.serve.generation import check_generate
from masklm.serve.limits import Limits

HYBRID = ["mntp", "clm"]
PROMPTS = ["the river of", "hello", None]  # different lengths: the rows are padded








def ids(out: dict) -> list[list[int]]:
    return [r["token_ids"] for r in out["results"]]


def head(model):
    """The output bias of any of the tiny architectures ``[V]``."""
    return model.cls.predictions.bias if hasattr(model, "cls") else model.classifier.bias


@pytest.mark.parametrize("arch", ["gpt-bert", "bert"])
def test_threshold_1_block_1_is_greedy_left_to_right(tok, arch):
    model = tiny(arch, tok)
    greedy = generate(model, tok, PROMPTS, length=10, strategy="autoregressive", temperature=0.0, objectives=HYBRID)
    out = generate(model, tok, PROMPTS, length=10, strategy="threshold", threshold=1.0, block_length=1,
                   objectives=HYBRID)
    assert ids(out) == ids(greedy)
    assert all(len(r) == 10 for r in ids(out))


def _reference_whole_canvas(model, tok, prompts, length, shift, threshold):
    """Threshold decoding by recomputing the visible canvas (all columns but the last with shift 1) with a
    plain bidirectional pass at every step."""
    canvas = build_canvas(prompt_rows(tok, prompts, [length] * len(prompts)), tok.pad_id, 128, torch.device("cpu"))
    x, gen, W = canvas.ids, canvas.gen, canvas.ids.shape[1]
    calls = 0
    while bool((gen & (x == tok.mask_id)).any()):
        hidden = model.encode(x[:, :W - shift], attention_mask=canvas.attention[:, :W - shift])
        logits = model.predict(hidden[:, 1 - shift:]).float()  # [B, W - 1, V]: targets 1..W-1
        logits[..., tok.special_ids] = float("-inf")
        logp, best = torch.log_softmax(logits, -1).max(-1)
        masked = gen[:, 1:] & (x[:, 1:] == tok.mask_id)
        take = commit_mask(logp.double().exp(), masked, threshold)
        x[:, 1:][take] = best[take]
        calls += 1
    return [row[g].tolist() for row, g in zip(x, gen)], calls


@pytest.mark.parametrize("objectives,shift", [(["mlm"], 0), (HYBRID, 1)])
def test_threshold_block_cache_is_exact(tok, objectives, shift):
    model = tiny("ltg-bert" if shift else "bert", tok, seed=2)
    with torch.no_grad():
        head(model)[8] += 3.0  # a token the model is sometimes sure of: some steps commit several positions
    kw = dict(length=12, strategy="threshold", threshold=0.3, objectives=objectives)
    for block, temperature in ((3, 0.0), (3, 1.0), (128, 1.0)):
        cached = generate(model, tok, PROMPTS, block_length=block, temperature=temperature, seed=4, **kw)
        again = generate(model, tok, PROMPTS, block_length=block, temperature=temperature, seed=4, cache=False, **kw)
        assert ids(cached) == ids(again) and cached["network_calls"] == again["network_calls"]
    whole = generate(model, tok, PROMPTS, block_length=128, **kw)
    want, calls = _reference_whole_canvas(model, tok, PROMPTS, 12, shift, 0.3)
    assert ids(whole) == want and whole["network_calls"] == calls
    assert 1 < calls < 12  # several tokens in some calls, not all in one


def test_threshold_step_costs_the_block_and_commits_confident_positions(tok):
    model = tiny("gpt-bert", tok, seed=3)
    widths = []
    encode = model.encode

    def counting(ids_, *args, **kwargs):
        widths.append(ids_.shape[1])
        return encode(ids_, *args, **kwargs)

    model.encode = counting
    out = generate(model, tok, "the river of", length=16, strategy="threshold", block_length=4, objectives=HYBRID)
    lo = 1 + len(tok.encode("the river of", add_special_tokens=False).ids)
    assert out["network_calls"] == len(widths) == 16  # an untrained model is never 90% sure: one per step
    # block k's first call feeds the chunks committed since the last block with it, later ones the block
    assert max(widths[1:]) <= 8 and widths.count(4) >= 16 - 2 * 4 and widths[0] <= lo + 4
    with torch.no_grad():
        head(model)[7] += 12.0  # token 7 now ~certain everywhere: a whole block per call
    out = generate(model, tok, "the river of", length=16, strategy="threshold", block_length=4, objectives=HYBRID)
    assert out["network_calls"] <= 5 and ids(out) == [[7] * 16]


@pytest.mark.parametrize("arch", ["gpt-bert", "ltg-bert", "bert"])
def test_greedy_speculative_equals_greedy_left_to_right(tok, arch):
    model = tiny(arch, tok, seed=1)
    greedy = generate(model, tok, PROMPTS, length=14, strategy="autoregressive", temperature=0.0, objectives=HYBRID)
    for k in (1, 4):
        out = generate(model, tok, PROMPTS, length=14, strategy="speculative", temperature=0.0, draft_length=k,
                       objectives=HYBRID)
        assert ids(out) == ids(greedy)
        assert 0 <= out["stats"]["mean_accepted"] <= k and out["stats"]["rounds"] >= 1
    antlm = generate(model, tok, PROMPTS, length=14, strategy="speculative", temperature=0.0, draft_length=3,
                     objectives=["mlm", "clm"])  # AntLM: drafts read at the mask itself
    assert ids(antlm) == ids(greedy)
    with torch.no_grad():
        head(model)[9] += 30.0  # both readings agree on every token: all k drafts and the bonus kept
    out = generate(model, tok, "hello", length=12, strategy="speculative", temperature=0.0, draft_length=3,
                   objectives=HYBRID)
    assert ids(out) == [[9] * 12] and out["stats"]["mean_accepted"] == 3 and out["stats"]["tokens_per_round"] == 4
    assert out["network_calls"] == 1 + 2 * 3 and out["tokens_per_call"] == 12 / 7


@pytest.mark.parametrize("arch", ["gpt-bert", "ltg-bert"])
def test_adaptive_speculative_is_greedy_left_to_right_and_drafts_only_while_drafts_are_kept(tok, arch):
    """No --draft-length: each round's drafts are sized from the drafts kept so far (``DraftSizer``); the
    output is still greedy left to right, token for token, through drafted rounds, plain causal steps and
    rows that wait for the slowest one."""
    model = tiny(arch, tok, seed=1)
    greedy = generate(model, tok, PROMPTS, length=40, strategy="autoregressive", temperature=0.0, objectives=HYBRID)
    out = generate(model, tok, PROMPTS, length=40, strategy="speculative", temperature=0.0, objectives=HYBRID)
    assert ids(out) == ids(greedy)
    stats = out["stats"]
    assert stats["draft_rounds"] >= 1 and stats["causal_steps"] >= 1 and stats["carried"] >= 1
    assert stats["draft_rounds"] + stats["causal_steps"] == stats["rounds"]
    # an untrained model's drafts are mostly rejected: after the first rounds it decodes left to right
    assert out["network_calls"] <= greedy["network_calls"] + 2 * stats["draft_rounds"]
    with torch.no_grad():
        head(model)[9] += 30.0  # both readings agree on every token: it keeps drafting the full window
    out = generate(model, tok, "hello", length=20, strategy="speculative", temperature=0.0, objectives=HYBRID)
    assert ids(out) == [[9] * 20] and out["stats"]["causal_steps"] == 0 and out["network_calls"] == 1 + 2 * 4


def test_draft_sizer_stops_drafting_on_rejections_and_tries_again_later():
    sizer = DraftSizer(4, "cpu")
    assert sizer.size() == 4  # optimistic before any evidence
    ordinal = torch.arange(4).repeat(8)
    for _ in range(3):  # every first draft kept, every later one rejected
        sizer.observe(ordinal, ordinal <= 1, ordinal == 0)
    assert sizer.size() == 0  # a round would cost more than the two tokens it yields
    rounds = 0
    while sizer.size() == 0:  # no drafts, no evidence: the old counts fade until drafting is tried again
        sizer.fade_round()
        rounds += 1
    assert 100 < rounds < 1000  # 24 rows of evidence fade in a few hundred steps
    cuda = DraftSizer(4, "cuda")  # a GPU round costs about two steps: two kept tokens per round pay
    for _ in range(3):
        cuda.observe(ordinal, ordinal <= 2, ordinal <= 1)
    assert cuda.size() >= 2 and sizer.rate(0) == 1.0


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit (categories with expected count >= 5 kept, the rest pooled)."""
    n = counts.sum()
    expected = probs.double() * n
    keep = expected >= 5
    obs = torch.cat([counts[keep].double(), counts[~keep].double().sum()[None]])
    exp = torch.cat([expected[keep], expected[~keep].sum()[None]])
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = torch.tensor(float(len(obs) - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def test_accept_round_emits_the_target_distribution():
    """Leviathan et al.'s rule on fixed p and q: the first emitted token ~ p_1, the second (when the round
    reaches it) ~ p_2, for drafts drawn from q."""
    g = torch.Generator().manual_seed(0)
    N, V = 40000, 6
    p = torch.tensor([[3.0, 1.0, 0.0, -1.0, 0.5, 2.0], [0.0, 2.5, 1.0, 1.0, -2.0, 0.0],
                      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # [k+1, V]
    q = torch.tensor([[0.0, 2.0, 2.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.5, 0.0, 1.0]])  # [k, V]
    drafts = torch.stack([torch.multinomial(q[i].softmax(-1), N, replacement=True, generator=g) for i in range(2)], 1)
    decide = torch.ones(N, 3, dtype=torch.bool)
    accepted, token = accept_round(p.expand(N, 3, V), q.expand(N, 2, V), drafts, decide, 1.0, None, None, g)
    first = torch.where(accepted >= 1, drafts[:, 0], token)
    assert _chi2_pvalue(torch.bincount(first, minlength=V), p[0].softmax(-1)) > 1e-3
    reached = accepted >= 1
    second = torch.where(accepted[reached] >= 2, drafts[reached, 1], token[reached])
    assert _chi2_pvalue(torch.bincount(second, minlength=V), p[1].softmax(-1)) > 1e-3
    # the test can fail: the drafts alone are far from the target
    assert _chi2_pvalue(torch.bincount(drafts[:, 0], minlength=V), p[0].softmax(-1)) < 1e-6


def test_draw_samples_each_row_and_never_a_zero_probability_token():
    """The float64 inverse-CDF sampler every strategy uses: unnormalised rows, zeros at both ends and inside."""
    g = torch.Generator().manual_seed(3)
    probs = torch.tensor([[0.0, 2.0, 0.0, 1.0, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0, 1.5]], dtype=torch.float64)
    N = 20000
    ids = draw(probs.repeat(N, 1), g).view(N, 2)
    for r in range(2):
        counts = torch.bincount(ids[:, r], minlength=6)
        assert counts[probs[r] == 0].sum() == 0
        assert _chi2_pvalue(counts[probs[r] > 0], probs[r][probs[r] > 0] / probs[r].sum()) > 1e-3
    uniform = torch.ones(4, dtype=torch.float64) / 4
    assert _chi2_pvalue(torch.bincount(ids[:, 0], minlength=6)[[0, 1, 3, 4]], uniform) < 1e-6  # it can fail
    one_hot = torch.zeros(3, 5, dtype=torch.float64)
    one_hot[[0, 1, 2], [0, 4, 2]] = 1e-300  # a single tiny positive entry is the only choice
    assert draw(one_hot, g).tolist() == [0, 4, 2]


def test_sampled_speculative_first_token_matches_left_to_right_sampling(tok):
    model = tiny("gpt-bert", tok, seed=2)
    prompt, T = "the river", 0.5
    row = torch.tensor([[tok.cls_id] + tok.encode(prompt, add_special_tokens=False).ids])
    with torch.no_grad():
        causal = model.predict(model.encode(row, causal=True)[:, -1]).float()[0]
        masked = model.predict(model.encode(torch.cat([row, torch.tensor([[tok.mask_id] * 2])], 1))[:, -3]).float()[0]
    causal[tok.special_ids] = masked[tok.special_ids] = float("-inf")
    p, q = (causal / T).softmax(-1), (masked / T).softmax(-1)
    assert (p - q).abs().sum() > 0.2  # the two readings differ, so rejections happen
    counts = torch.zeros(tok.vocab_size, dtype=torch.long)
    for seed in range(4):  # 4 seeds x 400 rows; rows draw independently
        out = generate(model, tok, [prompt] * 400, length=2, strategy="speculative", draft_length=2, seed=seed,
                       temperature=T, objectives=HYBRID)
        counts += torch.bincount(torch.tensor([r[0] for r in ids(out)]), minlength=tok.vocab_size)
    assert _chi2_pvalue(counts, p) > 1e-3
    assert _chi2_pvalue(counts, q) < 1e-6  # what the drafts alone would give is rejected


@pytest.mark.parametrize("draft_length", [2, None])
def test_sampled_speculative_carried_tokens_keep_the_left_to_right_distribution(tok, draft_length):
    """The second token: rows that accepted more than the slowest row keep it (carried into the next
    window, not drafted again), the others draw it next round; both must give left-to-right sampling's
    marginal sum_t1 p(t1) p(t2 | t1). Sized drafts (None): after the first round the drafts stop paying,
    so rows that are ahead wait while the others take plain causal steps."""
    model = tiny("gpt-bert", tok, seed=2)
    prompt, T = "the river", 0.5
    row = [tok.cls_id] + tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        first = model.predict(model.encode(torch.tensor([row]), causal=True)[:, -1]).float()[0]
        first[tok.special_ids] = float("-inf")
        p1 = (first / T).softmax(-1)  # [V]
        rows = torch.tensor([row + [t] for t in range(tok.vocab_size)])  # every first token
        after = model.predict(model.encode(rows, causal=True)[:, -1]).float()  # [V, V]
        after[:, tok.special_ids] = float("-inf")
        p2 = (p1[:, None] * (after / T).softmax(-1)).sum(0)
    counts = torch.zeros(tok.vocab_size, dtype=torch.long)
    carried = 0
    for seed in range(4):
        out = generate(model, tok, [prompt] * 400, length=3, strategy="speculative", draft_length=draft_length,
                       seed=seed, temperature=T, objectives=HYBRID)
        counts += torch.bincount(torch.tensor([r[1] for r in ids(out)]), minlength=tok.vocab_size)
        carried += out["stats"]["carried"] > 0
        assert out["stats"]["causal_steps"] == (0 if draft_length else 2)  # sized: rows ahead waited twice
    assert carried == 4  # rows did get ahead of the slowest one, so the carried path ran
    assert _chi2_pvalue(counts, p2) > 1e-3
    assert _chi2_pvalue(counts, p1) < 1e-6  # the test can fail: the first token's distribution is rejected


def _repeats(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("strategy", ["mask-predict", "confidence", "diffusion", "autoregressive", "threshold",
                                      "speculative"])
def test_no_repeat_ngram_never_emits_a_repeated_ngram(tok, strategy):
    model = tiny("gpt-bert", tok, seed=6)
    with torch.no_grad():
        head(model)[[11, 12]] += 6.0  # two tokens the model loves: without the rule they repeat
    kw = dict(length=24, strategy=strategy, objectives=HYBRID, seed=3,
              temperature=0.0 if strategy != "diffusion" else 1.0)
    prompts = ["the river of the river", "hello"]
    free = generate(model, tok, prompts, **kw)
    assert any(_repeats(r, 2) for r in ids(free))
    for n in (2, 3):
        out = generate(model, tok, prompts, no_repeat_ngram_size=n, **kw)
        for prompt, r in zip(prompts, ids(out)):
            context = tok.encode(prompt, add_special_tokens=False).ids
            assert len(r) == 24
            # every n-gram holding a generated token is unique in the row ([CLS] + prompt + generated)
            full = [tok.cls_id] + context + r
            grams = [tuple(full[i:i + n]) for i in range(len(full) - n + 1)]
            generated = grams[max(0, len(full) - 24 - n + 1):]
            assert all(grams.count(gram) == 1 for gram in generated), (strategy, n, r)


def test_repetition_penalty_follows_hf():
    logits = torch.tensor([[[2.0, -2.0, 1.0, -1.0]]])  # [B=1, 1, V]
    out = apply_penalty(logits.clone(), torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[[1.0, -4.0, 1.0, -1.0]]]  # present: positive / 2, negative * 2; absent unchanged


def test_repetition_penalty_in_greedy_left_to_right(tok):
    model = tiny("gpt-bert", tok, seed=7)
    out = generate(model, tok, "hello", length=6, strategy="autoregressive", temperature=0.0, objectives=HYBRID,
                   repetition_penalty=3.0)
    x = torch.tensor([[tok.cls_id] + tok.encode("hello", add_special_tokens=False).ids])
    for _ in range(6):  # HF's loop: penalise every token of the sequence so far, then argmax
        logits = model.predict(model.encode(x, causal=True)[:, -1]).float()
        logits[:, tok.special_ids] = float("-inf")
        present = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, x, True)
        logits = torch.where(present, torch.where(logits > 0, logits / 3.0, logits * 3.0), logits)
        x = torch.cat([x, logits.argmax(-1, keepdim=True)], 1)
    assert ids(out) == [x[0, -6:].tolist()]
    assert ids(out) != ids(generate(model, tok, "hello", length=6, strategy="autoregressive", temperature=0.0,
                                    objectives=HYBRID))


def test_new_fields_are_checked_and_requested():
    assert {"threshold", "draft_length", "no_repeat_ngram_size", "repetition_penalty"} <= set(REQUEST_FIELDS)
    for field, bad in (("threshold", 0.0), ("threshold", 1.5), ("threshold", "high"), ("draft_length", 0),
                       ("no_repeat_ngram_size", 0), ("repetition_penalty", 0.0), ("repetition_penalty", "x")):
        with pytest.raises(InputError, match=field):
            GenerationConfig(**{field: bad})
    with pytest.raises(InputError, match="steps"):
        GenerationConfig(strategy="threshold", steps=4)
    with pytest.raises(InputError, match="block_length"):
        GenerationConfig(strategy="speculative", block_length=4)
    assert GenerationConfig(strategy="threshold").resolve().block_length == 8
    assert GenerationConfig(strategy="speculative").resolve().temperature == 1.0


def test_default_rule():
    assert pick_strategy(HYBRID)[0] == "speculative" and pick_strategy(["mlm", "clm"])[0] == "speculative"
    assert pick_strategy(["clm"])[0] == "autoregressive"
    assert pick_strategy(["mlm"])[0] == "threshold" and pick_strategy(["mntp"])[0] == "threshold"
    assert pick_strategy(None)[0] == "threshold"
    assert pick_strategy(HYBRID, templated=True)[0] == "confidence"
    assert pick_strategy(HYBRID, steps=4)[0] == "mask-predict"
    assert pick_strategy(HYBRID, block_length=8)[0] == "threshold"
    assert "clm" in pick_strategy(HYBRID)[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("gen13")
    hybrid = save_model_dir(root / "hybrid", tiny("gpt-bert", tok), tok, training_args={"objectives": HYBRID})
    mlm = save_model_dir(root / "mlm", tiny("bert", tok), tok, training_args={"objectives": ["mlm"]})
    return hybrid, mlm


def test_cli_default_says_what_it_chose(folders, capsys):
    hybrid, mlm = folders
    for folder, chosen in ((hybrid, "speculative"), (mlm, "threshold")):
        assert main(["generate", "the river", "hello", "--model", str(folder), "--length", "6", "--seed", "1",
                     "--json"]) == 0
        captured = capsys.readouterr()
        data = json.loads(captured.out)
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"masklm: strategy {chosen} (")
        assert all(d["strategy"] == chosen and len(d["token_ids"]) == 6 for d in data)
        assert data[0]["tokens_per_call"] == pytest.approx(12 / data[0]["network_calls"])
        assert data[0]["seconds"] > 0 and data[0]["network_calls"] >= 1
    # an explicit strategy: nothing chosen, the same text as the Python API
    assert main(["generate", "the river", "--model", str(hybrid), "--strategy", "threshold", "--length", "6",
                 "--no-repeat-ngram-size", "2", "--repetition-penalty", "1.2", "--threshold", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "strategy threshold (" not in captured.err
    assert re.fullmatch(r"masklm: threshold, \d+ network calls, [\d.]+ tokens per call, [\d.]+ s", captured.err.strip())
    want = masklm.load(hybrid).generate("the river", strategy="threshold", length=6, no_repeat_ngram_size=2,
                                        repetition_penalty=1.2, threshold=0.5)
    assert captured.out.strip() == want["text"] and want["why"] is None
    for args in (["--threshold", "2"], ["--draft-length", "0"], ["--strategy", "speculative", "--steps", "3"]):
        assert main(["generate", "x", "--model", str(hybrid), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("masklm: error:") and "\n" not in err


def test_cli_summary_counts_in_the_singular_for_one(folders, capsys):
    hybrid, _ = folders
    assert main(["generate", "--model", str(hybrid), "--template", "the [MASK] river", "--strategy", "mask-predict",
                 "--steps", "1"]) == 0
    assert ", 1 step, 1 network call, 1.00 tokens per call" in capsys.readouterr().err


def test_pipeline_default_and_server_fields(folders, tok):
    hybrid, _ = folders
    pipe = masklm.load(hybrid)
    r = pipe.generate("the river", length=5, seed=0)
    assert r["strategy"] == "speculative" and "clm" in r["why"] and "mean_accepted" in r["stats"]
    assert pipe.generate("the river", length=5, steps=5)["strategy"] == "mask-predict"
    params = check_generate("the", {"strategy": "speculative", "draft_length": 3, "no_repeat_ngram_size": 2,
                                    "repetition_penalty": 1.1}, Limits(), tok)
    assert params["draft_length"] == 3
    # no strategy: left for the pipeline to pick from the objectives, as masklm generate does
    assert check_generate("the", {}, Limits(), tok, HYBRID)["strategy"] is None
    with pytest.raises(Exception, match="threshold"):
        check_generate("the", {"strategy": "threshold", "threshold": 3}, Limits(), tok)
