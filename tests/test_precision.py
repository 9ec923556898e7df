"""Precision and compilation (issue #17 points 1 and 3) and the non-finite stop (issue #12 point 3).

Training: ``--precision bf16`` matches fp32 on CPU, with fp32 master weights and optimizer state; fp16's
overflows are skipped steps, not stops; a non-finite loss stops the run naming the step, keeping the last
checkpoint; non-finite hyperparameters are refused up front. Inference: ``--dtype`` for the commands that load
a model, with bf16 giving fp32's answers within bf16 rounding. ``--compile``: its fallback (fast tests) and
its numbers against eager (slow: compiling takes a minute or more on CPU).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import close, forward_terms
from safetensors.torch import load_file
from test_training import TINY_MODEL, write_corpus

from masklm.cli import main
from masklm.training import checkpoint as ckpt
from masklm.training import precision

TOML = """seq_len = 32
batch_size = 4
heldout_fraction = 0.1
eval_batches = 2
lr = 1e-3
warmup_steps = 2
[model]
""" + "".join(f"{k} = {v}\n" for k, v in TINY_MODEL.items())


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A toy corpus, a tokenizer folder and a TOML config for tiny runs through the CLI."""
    from masklm.data.corpus import iter_documents
    from masklm.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("precision")
    corpus = write_corpus(root / "toy.txt")
    tok = root / "tok"
    train_tokenizer(iter_documents([str(corpus)]), kind="wordpiece", vocab_size=120, min_frequency=1).save(tok)
    config = root / "tiny.toml"
    config.write_text(TOML, encoding="utf-8")
    return {"corpus": corpus, "tok": tok, "config": config}


def train_cli(setup: dict[str, Path], out: Path, *flags: str) -> int:
    return main(["train", "--config", str(setup["config"]), "--corpus", str(setup["corpus"]), "--tokenizer",
                 str(setup["tok"]), "--out", str(out), "--no-progress", *flags])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("masklm: error:")]


# ---- training precision ------------------------------------------------------------------------------

@pytest.mark.slow
def test_bf16_training_matches_fp32_after_50_steps(tmp_path, setup):
    runs = {}
    for prec in ("fp32", "bf16"):
        runs[prec] = tmp_path / prec
        assert train_cli(setup, runs[prec], "--max-steps", "50", "--precision", prec, "--save-every", "50") == 0
    losses = {}
    for prec, run in runs.items():
        records = metrics(run)
        losses[prec] = {
            "train": next(r["loss"] for r in records if r["step"] == 50 and r["objective"] == "mlm"),  # steps 41-50
            "eval": next(r["eval_loss"] for r in records if r["objective"] == "eval"),
        }
        assert json.loads((run / "training_args.json").read_text())["precision"] == prec  # resume reads it here
    for kind in ("train", "eval"):
        assert losses["bf16"][kind] == pytest.approx(losses["fp32"][kind], rel=0.02), kind
    # bf16 really ran: not the very same numbers as fp32
    assert losses["bf16"]["train"] != losses["fp32"]["train"]
    # master weights and optimizer state stay fp32
    weights = load_file(str(runs["bf16"] / "final" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    optim = torch.load(runs["bf16"] / "checkpoints" / "step-50" / "optimizer.pt", weights_only=True)
    moments = [t for s in optim["state"].values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_fp16_overflow_is_a_skipped_step_not_a_stop(tmp_path, setup, monkeypatch, capsys):
    """At a loss scale of 2^40 every fp16 backward overflows: the scaler skips each update and halves the scale,
    the run finishes (exit 0) and its weights are still the initial ones."""
    from masklm.models import build_model
    from masklm.tokenizer import Tokenizer
    from masklm.training.config import TrainConfig

    monkeypatch.setattr(precision, "FP16_INIT_SCALE", 2.0**40)
    run = tmp_path / "fp16"
    assert train_cli(setup, run, "--max-steps", "3", "--precision", "fp16", "--save-every", "3") == 0
    err = capsys.readouterr().err
    for step in (1, 2, 3):
        assert f"step {step}: fp16 overflow, the loss scaler skipped this update" in err
    assert "scale 1.09951e+12 -> 5.49756e+11" in err  # 2^40 -> 2^39 at step 1
    state = json.loads((run / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["grad_scaler"]["scale"] == 2.0**37  # three halvings, kept for a resume
    cfg = TrainConfig.from_toml(setup["config"], {"tokenizer": str(setup["tok"])})
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    initial = build_model(cfg.model_config(Tokenizer.load(setup["tok"]).vocab_size)).state_dict()
    final = load_file(str(run / "final" / "model.safetensors"))
    for name, value in final.items():
        assert torch.equal(value, initial[name]), name


def test_fp16_resume_restores_the_loss_scale(tmp_path, setup, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(precision, "FP16_INIT_SCALE", 2.0**40)
    run = tmp_path / "fp16"
    flags = ("--max-steps", "4", "--precision", "fp16", "--save-every", "2", "--keep-last", "5")
    assert train_cli(setup, run, *flags) == 0
    shutil.rmtree(run / "checkpoints" / "step-4")  # as if the run had died after step 2
    shutil.rmtree(run / "final")
    capsys.readouterr()
    assert train_cli(setup, run, *flags, "--resume") == 0
    # the resumed step 3 starts from the saved scale 2^38, not from 2^40
    assert "step 3: fp16 overflow, the loss scaler skipped this update (scale 2.74878e+11 -> " in capsys.readouterr().err


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, setup, capsys):
    """lr 1e30 is finite (so allowed) but blows the weights up at step 1: step 2's loss is NaN."""
    run = tmp_path / "run"
    code = train_cli(setup, run, "--max-steps", "6", "--lr", "1e30", "--warmup", "0", "--schedule", "constant",
                     "--save-every", "1", "--log-every", "1")
    assert code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "training stopped at step 2: the training loss is nan" in lines[0], lines
    assert "step-1, is kept" in lines[0]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-1"]  # no checkpoint of the bad step
    assert ckpt.verify(run / "checkpoints" / "step-1") is None
    weights = load_file(str(run / "checkpoints" / "step-1" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert not (run / "final").exists()
    assert [r["step"] for r in metrics(run)] == [1]  # the record of what happened stays


def test_nonfinite_stop_without_checkpoints_keeps_the_run_folder(tmp_path, setup, capsys):
    run = tmp_path / "run"
    assert train_cli(setup, run, "--max-steps", "4", "--lr", "1e30", "--warmup", "0", "--schedule", "constant",
                     "--log-every", "1") == 2
    line = error_lines(capsys.readouterr().err)[0]
    assert "step 2" in line and "no checkpoint was written" in line
    assert (run / "metrics.jsonl").is_file() and not (run / "final").exists()


def test_fp16_that_overflows_at_scale_1_stops(tmp_path, setup, capsys):
    run = tmp_path / "run"
    code = train_cli(setup, run, "--max-steps", "40", "--lr", "1e30", "--warmup", "0", "--schedule", "constant",
                     "--precision", "fp16")
    assert code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "the fp16 gradients are non-finite even at loss scale 1" in lines[0], lines
    assert "use --precision bf16 or fp32" in lines[0]


@pytest.mark.parametrize("toml, field", [
    ("lr = inf", "lr"), ("lr = nan", "lr"), ("eps = 0.0", "eps"), ("eps = inf", "eps"),
    ("weight_decay = -0.1", "weight_decay"), ("clip_norm = inf", "clip_norm"), ("clip_norm = 0.0", "clip_norm"),
    ("betas = [0.9, 1.0]", "betas"), ('precision = "fp8"', "precision"),
])
def test_config_refuses_bad_hyperparameters_up_front(tmp_path, capsys, toml, field):
    config = tmp_path / "bad.toml"
    config.write_text(toml + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    # read_toml refuses a non-finite number naming the file and the key; the config's checks name the field
    assert len(lines) == 1 and re.match(rf"masklm: error: (.*bad\.toml: )?'?{field}'? must be", lines[0]), lines
    assert not out.exists()


def test_precision_flag_is_checked(tmp_path, capsys):
    assert main(["train", "--precision", "half", "--out", str(tmp_path / "run")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "masklm: error: precision must be one of fp32, bf16, fp16, got 'half'"]


@pytest.mark.parametrize("clip", [0.05, 100.0])  # clipped, and left alone (norm below the limit)
def test_clipping_left_to_fused_adamw_equals_clip_grad_norm(clip):
    """grad_norm hands the clipping factor to a fused AdamW's step (grad_scale) instead of scaling every
    gradient: the weights after that step, and the norm, equal clip_grad_norm_ followed by the step."""
    def run(fold):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        # eps large next to the gradients, so the step depends on their scale (Adam's otherwise does not)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, eps=1.0, fused=True)
        model(torch.randn(32, 8)).square().sum().backward()
        norm = precision.grad_norm(model, clip, opt if fold else None)
        assert (getattr(opt, "grad_scale", None) is not None) == fold
        opt.step()
        opt.grad_scale = None
        return norm, [p.detach().clone() for p in model.parameters()]

    (norm_fold, folded), (norm_plain, plain) = run(True), run(False)
    assert norm_plain > 1.0  # so clip 0.05 does clip
    assert torch.allclose(norm_fold, norm_plain)
    for a, b in zip(folded, plain):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()
    assert precision.clips_in_step(torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True))
    assert not precision.clips_in_step(torch.optim.AdamW([torch.zeros(1, requires_grad=True)]))


def test_tf32_is_turned_on_for_cuda_only():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        precision.enable_tf32(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
        precision.enable_tf32(torch.device("cuda"))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("machine, flags, precision_, says", [
    ("x86_64", "flags : fpu avx512f amx_bf16 amx_tile", "fp32", "this CPU has AMX: --precision bf16 runs faster"),
    ("x86_64", "flags : fpu avx512f avx512_bf16", "bf16", "this CPU has no AMX: --precision bf16 runs slower"),
    ("x86_64", "flags : fpu avx512f amx_bf16", "bf16", None),
    ("x86_64", "flags : fpu avx2", "fp32", None),
    ("x86_64", "flags : fpu avx2", "fp16", None),
    ("aarch64", "Features : fp asimd bf16", "bf16", None),
])
def test_cpu_precision_advice(monkeypatch, machine, flags, precision_, says):
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    advice = precision.cpu_precision_advice(precision_, flags)
    assert advice == says if says is None else advice.startswith(says)


def test_masklm_train_advises_bf16_on_a_cpu_with_amx(tmp_path, setup, monkeypatch, capsys):
    """What the user sees: one line, once, and the run goes on in the precision it was given."""
    from masklm.models import cpu_kernels

    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: "flags : fpu avx512f amx_bf16 amx_tile")
    assert train_cli(setup, tmp_path / "run", "--max-steps", "2") == 0
    err = capsys.readouterr().err
    assert err.count("this CPU has AMX: --precision bf16 runs faster here") == 1
    args = json.loads((tmp_path / "run" / "training_args.json").read_text(encoding="utf-8"))
    assert args["precision"] == "fp32"


# ---- inference dtype ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, setup) -> Path:
    """A random tiny BERT with peaked predictions, saved as a model folder."""
    from masklm.config import ModelConfig
    from masklm.modeldir import save_model_dir
    from masklm.models import build_model
    from masklm.tokenizer import Tokenizer

    tok = Tokenizer.load(setup["tok"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="bert", vocab_size=tok.vocab_size, max_position_embeddings=64,
                                    **TINY_MODEL))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    return save_model_dir(tmp_path_factory.mktemp("model") / "model", model, tok, training_args={"objectives": ["mlm"]})


TEXTS = ["the cat [MASK] on the mat .", "a dog ran [MASK] the tree .", "[MASK] bird flew over the house ."]


def test_bf16_pipeline_gives_fp32_answers(model_dir):
    import masklm

    pipes = {d: masklm.load(model_dir, dtype=d) for d in ("float32", "bfloat16")}
    assert pipes["bfloat16"].dtype == torch.bfloat16 and pipes["float32"].dtype == torch.float32
    # logits agree within bf16 rounding of the widest inner product
    ids = torch.tensor([pipes["float32"].tokenizer.encode(TEXTS[0]).ids])
    logits = {d: p.model.predict(p.model.encode(ids)).float() for d, p in pipes.items()}
    cfg = pipes["float32"].config
    assert close(logits["bfloat16"], logits["float32"], dtype=torch.bfloat16, n=forward_terms(cfg, ids.shape[1]))
    results = {d: p.fill_mask(TEXTS, top_k=3) for d, p in pipes.items()}
    for a, b in zip(results["float32"], results["bfloat16"]):
        assert a[0]["token"] == b[0]["token"]
        assert b[0]["score"] == pytest.approx(a[0]["score"], rel=0.05)


def test_dtype_flag_on_the_commands(model_dir, capsys, tmp_path):
    assert main(["fill-mask", *TEXTS, "--model", str(model_dir), "--json"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert main(["fill-mask", *TEXTS, "--model", str(model_dir), "--dtype", "bfloat16", "--json"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert [r[0]["token"] for r in bf16] == [r[0]["token"] for r in fp32]

    sentences = ["the cat sat on the mat .", "a dog ran under the tree ."]
    scores = {}
    for dtype in ("float32", "bfloat16", "float16"):
        assert main(["score", *sentences, "--model", str(model_dir), "--dtype", dtype, "--json"]) == 0
        scores[dtype] = [r["score"] for r in json.loads(capsys.readouterr().out)]
    for dtype in ("bfloat16", "float16"):
        assert scores[dtype] == pytest.approx(scores["float32"], rel=0.02), dtype

    out = tmp_path / "e.npy"
    assert main(["embed", *sentences, "--model", str(model_dir), "--dtype", "bfloat16", "--out", str(out)]) == 0
    import numpy as np

    vectors = np.load(out)
    assert vectors.dtype == np.float32
    ref = torch.from_numpy(np.asarray(masklm_load(model_dir).embed(sentences)))
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(vectors), ref, dim=-1)
    assert bool((cosine > 0.99).all()), cosine

    assert main(["generate", "the cat", "--model", str(model_dir), "--dtype", "bfloat16", "--length", "3",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["generated"]) > 0

    assert main(["fill-mask", TEXTS[0], "--model", str(model_dir), "--dtype", "half"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "masklm: error: dtype must be one of float32, bfloat16, float16, got 'half'"]


def masklm_load(path, **kw):
    import masklm

    return masklm.load(path, **kw)


def test_serve_takes_dtype_and_compile(model_dir, monkeypatch):
    """``serve --dtype bfloat16 --compile`` loads the pipeline with both (the server itself is tested in
    test_serve.py); stops before binding a port."""
    from masklm.errors import ConfigError

    pytest.importorskip("fastapi")
    seen = {}

    def fake_load(args):
        seen.update(dtype=args.dtype, compile=args.compile)
        raise ConfigError("stop here")

    monkeypatch.setattr("masklm.cli.serve.load_pipeline", fake_load)
    assert main(["serve", "--model", str(model_dir), "--dtype", "bfloat16", "--compile"]) == 2
    assert seen == {"dtype": "bfloat16", "compile": True}


# ---- compile -----------------------------------------------------------------------------------------

def test_compile_without_a_compiler_runs_eagerly_with_one_line(tmp_path, setup, monkeypatch, capsys):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train_cli(setup, eager, "--max-steps", "2", "--log-every", "1") == 0
    capsys.readouterr()
    assert train_cli(setup, compiled, "--max-steps", "2", "--log-every", "1", "--compile") == 0
    err = capsys.readouterr().err
    assert "--compile: no C++ compiler found (install g++ or set CXX); running the training forward eagerly" in err
    assert json.loads((compiled / "training_args.json").read_text())["compile"] is True
    a, b = load_file(str(eager / "final" / "model.safetensors")), load_file(str(compiled / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same eager run

    pipe = masklm_load(compiled / "final", compile=True)
    assert "--compile: no C++ compiler found" in capsys.readouterr().err
    assert pipe.fill_mask(TEXTS[0])  # eager, unchanged


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A graph that fails to compile (here: a backend that raises) is run eagerly after one line."""
    def failing_compile(fn, **_):
        def call(*args, **kwargs):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError("no cc1plus"), None)
        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    logged = []
    f = precision.CompiledOrEager(lambda x: x * 2, logged.append, "f")
    assert f(torch.tensor(3.0)) == 6.0 and f(torch.tensor(4.0)) == 8.0
    assert len(logged) == 1 and logged[0].startswith("--compile: compiling f failed (")
    assert logged[0].endswith("; running it eagerly")


@pytest.mark.slow
def test_compiled_training_and_inference_match_eager(tmp_path, setup, model_dir):
    if precision.compile_unavailable(torch.device("cpu")):
        pytest.skip(precision.compile_unavailable(torch.device("cpu")))
    # No dropout: Inductor draws its own random numbers, so dropout masks differ between compiled and eager.
    config = tmp_path / "no-dropout.toml"
    config.write_text(TOML + "hidden_dropout_prob = 0.0\nattention_probs_dropout_prob = 0.0\n", encoding="utf-8")
    setup = setup | {"config": config}
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    # two steps: the first compiles for its masked-token count, the second recompiles with that size dynamic
    assert train_cli(setup, eager, "--max-steps", "2", "--log-every", "1") == 0
    assert train_cli(setup, compiled, "--max-steps", "2", "--log-every", "1", "--compile") == 0
    losses = {run.name: [r["loss"] for r in metrics(run) if r["objective"] == "mlm"] for run in (eager, compiled)}
    assert len(losses["eager"]) == 2
    # fp32 both; compiled kernels fuse and reorder sums, so the same maths rounds differently
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)

    pipes = [masklm_load(model_dir), masklm_load(model_dir, compile=True)]
    ref, out = (p.fill_mask(TEXTS, top_k=3) for p in pipes)
    for a, b in zip(ref, out):
        assert [c["token"] for c in a] == [c["token"] for c in b]
        assert [c["score"] for c in b] == pytest.approx([c["score"] for c in a], rel=1e-4)
    assert math.isfinite(pipes[1].score("the cat sat on the mat ."))
