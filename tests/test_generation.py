"""Generation: the algorithms' defining properties (research/antlm_gmlm.md §D 4-8, 14), the controls,
the key/value cache, the shifted read of GPT-BERT-style models, and the bad-input errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import close, forward_terms, generate, tiny

import masklm
from masklm.cli import main
from masklm.errors import InputError
from masklm.generation import REQUEST_FIELDS, GenerationConfig
from masklm.generation.canvas import build_canvas, prompt_rows
from masklm.generation.confidence import still_masked
from masklm.generation.diffusion import unmask_draw
from masklm.generation.kv_cache import CausalStepper
from masklm.generation.mask_predict import mask_predict, remask_count
from masklm.generation.sampling import Network
from masklm.modeldir import save_model_dir


@pytest.fixture(scope="module")
def bert(tok):
    return tiny("bert", tok)




def masks(x: torch.Tensor, tok) -> torch.Tensor:
    return (x == tok.mask_id).sum(1)


def test_mask_predict_T1_is_one_argmax_pass(tok, bert):
    for objectives, shift in ((["mlm"], 0), (["mntp", "clm"], 1)):
        out = generate(bert, tok, "the river", length=6, steps=1, objectives=objectives, trace=True)
        assert out["network_calls"] == 1
        x = out["network"].inputs[0]  # [1, W]: [CLS] the river [MASK]*6
        assert x[0, -6:].eq(tok.mask_id).all()
        logits = bert.predict(bert.encode(x))[0, -6 - shift:x.shape[1] - shift]
        logits[:, tok.special_ids] = float("-inf")
        assert out["results"][0]["token_ids"] == logits.argmax(-1).tolist()


def test_mask_predict_remask_counts_and_kept_confidence(tok, bert):
    N, T = 12, 5
    out = generate(bert, tok, ["the", "of"], length=N, steps=T, trace=True)  # equal widths: no padding
    inputs = out["network"].inputs
    want = [N] + [max(1, N * (T - t) // T) for t in range(1, T)]  # 12, 9, 7, 4, 2
    assert want == [12, 9, 7, 4, 2]
    assert [masks(x, tok).tolist() for x in inputs] == [[w, w] for w in want]
    assert remask_count(torch.tensor([N]), 3, N).item() == N - 3  # T = N: N - t at step t
    # replay: each re-mask picks the n_t least confident, each kept token keeping its old confidence
    W = inputs[0].shape[1]
    conf = torch.zeros(2, N)
    for t, x in enumerate(inputs[:-1]):
        logits = bert.predict(bert.encode(x))[:, W - N:].float()
        logits[..., tok.special_ids] = float("-inf")
        best = torch.log_softmax(logits, -1).max(-1)  # greedy: the argmax and its log-probability
        predicted = x[:, W - N:] == tok.mask_id
        conf = torch.where(predicted, best.values, conf)  # only re-predicted positions get a new confidence
        nxt = inputs[t + 1][:, W - N:]
        remasked = nxt == tok.mask_id
        for b in range(2):
            assert set(remasked[b].nonzero().flatten().tolist()) == set(conf[b].argsort()[:want[t + 1]].tolist())
            kept = ~remasked[b]
            want_tokens = torch.where(predicted[b], best.indices[b], x[b, W - N:])
            assert torch.equal(nxt[b][kept], want_tokens[kept])


def test_length_beam_grows_batch_and_keeps_best_mean_logprob(tok, bert):
    out = generate(bert, tok, ["the river", "hello"], length=5, steps=3, length_beam=3, trace=True)
    net = out["network"]
    assert [x.shape[0] for x in net.inputs] == [6, 6, 6]  # 2 prompts x 3 lengths
    for b, prompt in enumerate(["the river", "hello"]):
        scores = {}
        for n in (4, 5, 6):  # centred on 5
            canvas = build_canvas(prompt_rows(tok, [prompt], [n]), tok.pad_id, 128, torch.device("cpu"))
            scores[n] = mask_predict(Network(bert, 0, out["network"].banned), canvas, tok.mask_id, 3).item()
        assert len(out["results"][b]["token_ids"]) == max(scores, key=scores.get)


def test_confidence_commits_never_change_and_counts(tok, bert):
    for schedule, commit in (("cosine", "confidence"), ("linear", "margin")):
        out = generate(bert, tok, ["the", "of"], length=10, steps=4, strategy="confidence", temperature=1.0,
                       schedule=schedule, commit=commit, choice_temperature=2.0, seed=3, trace=True)
        xs = out["network"].inputs + [torch.tensor([[0] + r["token_ids"] for r in out["results"]])]
        counts = [masks(x[:, -10:], tok).tolist() for x in xs]
        assert counts[-1] == [0, 0] and all(a >= b for a, b in zip(counts, counts[1:]))
        for earlier, later in zip(xs, xs[1:]):
            done = earlier[:, -10:] != tok.mask_id
            assert torch.equal(earlier[:, -10:][done], later[:, -10:][done])
        n = torch.tensor([10, 10])
        if schedule == "cosine":  # MaskGIT: max(1, min(masked - 1, floor(N cos(pi (t+1) / 2T))))
            want = [10] + [max(1, min(c[0] - 1, math.floor(10 * math.cos(math.pi * (t + 1) / 8))))
                           for t, c in enumerate(counts[:3])]
        else:  # LLaDA: k = [3, 3, 2, 2]
            want = [10, 7, 4, 2]
        assert [c[0] for c in counts[:4]] == want
        assert still_masked(n, n, 3, 4, schedule).tolist() == [0, 0]


def test_confidence_block_1_is_greedy_left_to_right(tok, bert):
    L = 6
    out = generate(bert, tok, "the river", length=L, steps=L, strategy="confidence", block_length=1)
    canvas = build_canvas(prompt_rows(tok, ["the river"], [L]), tok.pad_id, 128, torch.device("cpu")).ids
    for j in range(canvas.shape[1] - L, canvas.shape[1]):
        logits = bert.predict(bert.encode(canvas))[0, j]
        logits[tok.special_ids] = float("-inf")
        canvas[0, j] = logits.argmax()
    assert out["results"][0]["token_ids"] == canvas[0, -L:].tolist()
    assert out["network_calls"] == L


@pytest.mark.parametrize("arch", ["bert", "ltg-bert", "gpt-bert"])
def test_cached_autoregressive_equals_uncached(tok, arch):
    model = tiny(arch, tok, seed=1)
    ids = torch.randint(5, tok.vocab_size, (2, 17))
    stepper = CausalStepper(model, 2, 17)
    steps = torch.cat([stepper.step(ids[:, :5])] + [stepper.step(ids[:, i:i + 1]) for i in range(5, 17)], 1)
    assert close(steps, model.encode(ids, causal=True), n=forward_terms(model.config, 17))
    with pytest.raises(ValueError, match="holds 4 positions"):
        CausalStepper(model, 2, 4).step(ids[:, :5])
    for temperature in (0.0, 1.0):
        a, b = (generate(model, tok, ["the river", "of"], length=12, strategy="autoregressive", seed=7,
                         temperature=temperature, cache=c, objectives=["clm"]) for c in (True, False))
        assert [r["token_ids"] for r in a["results"]] == [r["token_ids"] for r in b["results"]]


def test_diffusion_stay_masked_rate_and_cache(tok, bert):
    g = torch.Generator().manual_seed(0)
    stay = 1 - unmask_draw(torch.ones(400, 500, dtype=torch.bool), 0.8, 0.3, g).double().mean().item()
    assert abs(stay - 0.3 / 0.8) < 0.006  # s/t; sd ~0.0011
    out = generate(bert, tok, [""] * 32, length=64, steps=2, strategy="diffusion", seed=1, trace=True)
    frac = masks(out["network"].inputs[1], tok).sum().item() / (32 * 64)
    assert abs(frac - 0.5) < 0.04  # t = 1 -> s = 0.5
    cached = generate(bert, tok, "the", length=8, steps=200, strategy="diffusion", seed=5, trace=True)
    uncached = generate(bert, tok, "the", length=8, steps=200, strategy="diffusion", seed=5, cache=False)
    states = {tuple(x.flatten().tolist()) for x in cached["network"].inputs}
    assert cached["network_calls"] == len(states) <= 9
    assert uncached["network_calls"] > cached["network_calls"]
    assert cached["results"][0]["token_ids"] == uncached["results"][0]["token_ids"]


@pytest.mark.parametrize("strategy", ["mask-predict", "confidence", "diffusion", "autoregressive"])
def test_seed_prefix_specials_and_batching(tok, bert, strategy):
    kw = dict(length=8, strategy=strategy, temperature=1.0, top_k=20, top_p=0.9, objectives=["mlm", "clm"])
    prompts = ["the river of", "hello"]
    a, b = generate(bert, tok, prompts, seed=11, **kw), generate(bert, tok, prompts, seed=11, **kw)
    assert [r["text"] for r in a["results"]] == [r["text"] for r in b["results"]]
    c = generate(bert, tok, prompts, seed=12, **kw)
    assert [r["token_ids"] for r in a["results"]] != [r["token_ids"] for r in c["results"]]
    for r, p in zip(a["results"], prompts):
        assert r["text"].startswith(p) and len(r["token_ids"]) == 8
        assert not set(r["token_ids"]) & set(tok.special_ids)
    if strategy == "diffusion":  # its unmasking order is random even at temperature 0
        return
    greedy = dict(kw, temperature=0.0)  # batched == one at a time (padding is invisible)
    batch = generate(bert, tok, prompts, **greedy)["results"]
    assert [r["token_ids"] for r in batch] == [generate(bert, tok, p, **greedy)["results"][0]["token_ids"]
                                               for p in prompts]


def test_template_infilling_and_stop_at_sep(tok, bert):
    out = generate(bert, tok, template=["the [MASK]*3 of the river", "[MASK] world"], strategy="confidence",
                   trace=True)
    first = out["network"].inputs[0]
    assert masks(first, tok).tolist() == [3, 1]
    final = out["results"][0]
    assert len(final["token_ids"]) == 3 and final["text"].startswith("the") and final["text"].endswith("of the river")
    # stop at [SEP]: a model that always predicts [SEP] ends every continuation at once
    model = tiny("bert", tok)
    with torch.no_grad():
        model.cls.predictions.bias[tok.sep_id] = 1e4
    for strategy in ("mask-predict", "autoregressive"):
        r = generate(model, tok, "the river", length=5, strategy=strategy, stop_at_sep=True, objectives=["clm"])
        assert r["results"][0]["text"] == "the river" and r["results"][0]["token_ids"] == []
        r = generate(model, tok, "the river", length=5, strategy=strategy, objectives=["clm"])
        assert len(r["results"][0]["token_ids"]) == 5 and tok.sep_id not in r["results"][0]["token_ids"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("gen")
    mlm = save_model_dir(root / "mlm", tiny("bert", tok), tok, training_args={"objectives": ["mlm"]})
    hybrid = save_model_dir(root / "hybrid", tiny("gpt-bert", tok), tok, training_args={"objectives": ["mntp", "clm"]})
    mntp = save_model_dir(root / "mntp", tiny("gpt-bert", tok), tok, training_args={"objectives": ["mntp"]})
    return mlm, hybrid, mntp


def test_pipeline_objectives_and_bad_input(model_dirs, capsys):
    mlm, hybrid, mntp = model_dirs
    pipe = masklm.load(hybrid)
    r = pipe.generate("the river", length=4, strategy="autoregressive", seed=0)
    assert set(r) >= {"text", "tokens", "network_calls", "seconds"} and r["network_calls"] == 4
    masklm.load(mntp).generate("the", length=2, strategy="autoregressive")
    assert "never with clm" in capsys.readouterr().err
    with pytest.raises(InputError, match="trained with clm"):
        masklm.load(mlm).generate("the", length=3, strategy="autoregressive")
    bad = [dict(steps=0), dict(steps=9, length=8), dict(steps=9, length=8, strategy="confidence"),
           dict(length=1000), dict(top_p=0.0), dict(top_p=1.5), dict(template="no mask here", prompt=None),
           dict(strategy="magic"), dict(temperature=-1.0), dict(length=8, steps=3, block_length=2,
                                                                   strategy="confidence")]
    for kw in bad:
        prompt = kw.pop("prompt", "the")
        with pytest.raises(InputError):
            pipe.generate(prompt, **kw)


def test_generation_config_checks_itself_and_fills_the_defaults():
    assert GenerationConfig().resolve() == GenerationConfig(length=32, steps=10, temperature=0.0)
    assert GenerationConfig(strategy="diffusion", length=8).resolve().temperature == 1.0
    assert GenerationConfig(strategy="confidence", length=12, block_length=4).resolve().steps == 3
    assert GenerationConfig(length=5, length_beam=3).resolve().lengths() == [4, 5, 6]
    assert GenerationConfig(steps=3).resolve(template_length=4).length == 4
    for bad in (dict(steps=0), dict(length=0), dict(strategy="magic"), dict(top_p=0.0), dict(top_k=0),
                dict(temperature=-1.0), dict(schedule="nope"), dict(commit="nope"), dict(length_beam=0),
                dict(block_length=2)):
        with pytest.raises(InputError):
            GenerationConfig(**bad)
    for bad, template_length in ((dict(steps=9, length=8), None), (dict(length=4), 3), (dict(stop_at_sep=True), 3),
                                 (dict(length_beam=3), 3), (dict(strategy="confidence", length=8, steps=3,
                                                                 block_length=2), None)):
        with pytest.raises(InputError):
            GenerationConfig(**bad).resolve(template_length)
    owned = {"cache", "eps", "objectives", "max_length", "trace"}  # what a server request may not set
    assert set(REQUEST_FIELDS) == {f.name for f in dataclasses.fields(GenerationConfig)} - owned


def test_cli_json_and_errors(model_dirs, capsys):
    _, hybrid, _ = model_dirs
    assert main(["generate", "the river", "of", "--model", str(hybrid), "--length", "5", "--steps", "2",
                 "--seed", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 2 and all(len(d["tokens"]) == 5 and d["network_calls"] == 2 for d in data)
    for args in (["--top-p", "2"], ["--steps", "0"], ["--template", "no mask"], ["--length", "999"]):
        assert main(["generate", "--model", str(hybrid), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("masklm: error:") and "\n" not in err


def test_cli_says_when_num_samples_gives_one_text_n_times(model_dirs, capsys):
    _, hybrid, _ = model_dirs
    assert main(["generate", "--model", str(hybrid), "--template", "the [MASK]*3 sat", "--num-samples", "3"]) == 0
    captured = capsys.readouterr()  # confidence at temperature 0: the same text three times, and said why
    assert len(set(captured.out.splitlines())) == 1 and "the 3 samples of each input are the same text" in captured.err
    assert main(["generate", "--model", str(hybrid), "--template", "the [MASK]*3 sat", "--num-samples", "3",
                 "--temperature", "1", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert len(set(captured.out.splitlines())) > 1 and "same text" not in captured.err


@pytest.mark.parametrize("strategy", ["mask-predict", "confidence", "diffusion", "threshold"])
def test_ids_past_the_tokenizer_are_never_emitted(tok, strategy):
    """A model whose embedding table is padded past the tokenizer (as imported BERTs can be): those ids have
    no text, so no strategy emits them, even when the model favours them."""
    from masklm.config import ModelConfig
    from masklm.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("bert", "tiny", vocab_size=tok.vocab_size + 8,
                                                max_position_embeddings=128)).eval()
    with torch.no_grad():
        model.cls.predictions.bias[tok.vocab_size:] = 50.0  # the padded rows win every argmax
    out = generate(model, tok, "the river", strategy=strategy, length=6, seed=0)
    ids = [i for r in out["results"] for i in r["token_ids"]]
    assert ids and max(ids) < tok.vocab_size


def test_cli_refuses_a_flag_the_strategy_never_reads(model_dirs, capsys):
    """--threshold with mask-predict, --draft-length with the default picked for an MLM model, and the like
    were accepted and ignored; each is one line naming the flag and the strategies that read it."""
    _, hybrid, _ = model_dirs
    cases = [(["--strategy", "mask-predict", "--threshold", "0.5"], "--threshold is for threshold, not mask-predict"),
             (["--strategy", "diffusion", "--commit", "margin"], "--commit is for confidence, not diffusion"),
             (["--strategy", "mask-predict", "--no-cache"], "--no-cache is for autoregressive and diffusion and "
                                                           "threshold, not mask-predict"),
             (["--strategy", "threshold", "--choice-temperature", "2"], "--choice-temperature is for confidence"),
             (["--draft-length", "2", "--template", "the [MASK] sat"], "--draft-length is for speculative, not "
                                                                        "confidence; leave it out (or pass --strategy)")]
    for extra, message in cases:
        prompt = [] if "--template" in extra else ["the river"]
        code = main(["generate", "--model", str(hybrid), *prompt, "--length", "4", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    assert main(["generate", "--model", str(hybrid), "the river", "--length", "4", "--strategy", "confidence",
                 "--choice-temperature", "-1"]) == 2
    assert "choice_temperature must be a finite number >= 0" in capsys.readouterr().err
    assert main(["generate", "--model", str(hybrid), "the river", "--length", "4", "--strategy", "threshold",
                 "--threshold", "0.5", "--no-cache", "--block-length", "2"]) == 0  # what threshold reads
