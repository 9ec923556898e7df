"""The trainer: resume bit for bit, atomic checkpoints, metrics, config errors, and DDP on 2 CPU processes."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import approx, close, forward_terms
from safetensors.torch import load_file

from masklm.cli import main
from masklm.errors import ConfigError
from masklm.training import checkpoint as ckpt
from masklm.training.config import TrainConfig
from masklm.training.progress import LRSchedule

TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
WORDS = "the a cat dog bird sat ran flew on under over mat tree house and then quickly slowly".split()


def write_corpus(path: Path, docs: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(docs):
            sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " ." for _ in range(3)]
            f.write(" ".join(sentences) + "\n\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "toy.txt")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus) -> Path:
    from masklm.data.corpus import iter_documents
    from masklm.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(iter_documents([str(corpus)]), kind="wordpiece", vocab_size=120, min_frequency=1).save(out)
    return out


def tiny_config(out: Path, corpus: Path, tokenizer_dir: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), corpus=[str(corpus)], tokenizer=str(tokenizer_dir), model=dict(TINY_MODEL),
                seq_len=32, batch_size=4, max_steps=6, lr=1e-3, warmup_steps=2, log_every=1, progress=False,
                heldout_fraction=0.1, eval_batches=2)
    base.update(kw)
    return TrainConfig(**base)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_resume_is_bit_identical(tmp_path, corpus, tokenizer_dir):
    from masklm.training.trainer import train

    straight = train(tiny_config(tmp_path / "straight", corpus, tokenizer_dir, save_every=3))
    interrupted = train(tiny_config(tmp_path / "resumed", corpus, tokenizer_dir, save_every=3, keep_last=5))
    # Pretend the run died after step 3: drop everything written later, then resume.
    import shutil

    shutil.rmtree(interrupted / "checkpoints" / "step-6")
    shutil.rmtree(interrupted / "final")
    resumed = train(tiny_config(tmp_path / "resumed", corpus, tokenizer_dir, save_every=3, resume=True))
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:  # bit-exact: a resumed run repeats the very same operations on the same state
        assert torch.equal(a[name], b[name]), name
    # metrics after the resume point were rewritten, not duplicated
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]
    # and without the resume the weights differ from a run that trained 3 fewer steps
    assert not torch.equal(a["bert.embeddings.word_embeddings.weight"],
                           load_file(str(interrupted / "checkpoints" / "step-3" / "model.safetensors"))[
                               "bert.embeddings.word_embeddings.weight"])


def test_run_folder_contents_and_metrics(tmp_path, corpus, tokenizer_dir):
    from masklm.training.trainer import train

    run = train(tiny_config(tmp_path / "run", corpus, tokenizer_dir, max_steps=8, save_every=4, keep_last=1,
                            eval_every=4))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_recs] == list(range(1, 9))
    for r in train_recs:
        assert r["objective"] == "mlm" and r["loss"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8] and all(0 <= r["eval_accuracy"] <= 1 for r in evals)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-8"]  # keep-last 1
    assert (run / "loss.png").stat().st_size > 1000
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "training_args.json"):
        assert (run / "final" / name).is_file(), name
    # training lowers the loss on this easy corpus
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]


def test_same_eval_masks_every_time(tmp_path, corpus, tokenizer_dir):
    from masklm.data.packing import PackedRows, split_documents
    from masklm.data.shards import ShardedCorpus
    from masklm.inference.pipeline import load
    from masklm.training.evaluate import evaluate_mlm
    from masklm.training.trainer import train

    run = train(tiny_config(tmp_path / "run", corpus, tokenizer_dir, max_steps=2))
    pipe = load(run / "final")
    shards = ShardedCorpus(run / "data")
    _, held = split_documents(shards.num_documents, 0.1, 0)
    rows = PackedRows(shards, held, 32, pipe.tokenizer.pad_id)
    r1 = evaluate_mlm(pipe.model, rows, pipe.tokenizer, batch_size=4, max_batches=2, seed=0)
    r2 = evaluate_mlm(pipe.model, rows, pipe.tokenizer, batch_size=4, max_batches=2, seed=0)
    assert r1 == r2 and r1["eval_tokens"] > 0  # bit-exact: the same masks and the same forward passes


def test_checkpoint_fallback_skips_incomplete(tmp_path):
    from masklm.config import ModelConfig
    from masklm.models import build_model

    model = build_model(ModelConfig(vocab_size=50, **TINY_MODEL))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(5, 50, (2, 8)), labels=torch.randint(5, 50, (2, 8))).loss.backward()
    opt.step()
    good = ckpt.save_checkpoint(tmp_path, 5, model, opt, {"step": 5}, keep_last=3)
    newer = ckpt.save_checkpoint(tmp_path, 10, model, opt, {"step": 10}, keep_last=3)
    assert ckpt.latest_good(tmp_path) == newer
    # a kill between writing files and writing the manifest
    (newer / "manifest.json").unlink()
    messages = []
    assert ckpt.latest_good(tmp_path, log=messages.append) == good
    assert "no manifest" in messages[0]
    # a file damaged after the fact
    ckpt.save_checkpoint(tmp_path, 15, model, opt, {"step": 15}, keep_last=5)
    damaged = tmp_path / "checkpoints" / "step-15" / "optimizer.pt"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    messages.clear()
    assert ckpt.latest_good(tmp_path, log=messages.append) == good
    assert "step-15" in messages[0] and "checksum" in messages[0]
    # a temporary folder left by a kill mid-write is never listed
    (tmp_path / "checkpoints" / ".step-20.tmp-1-2").mkdir()
    assert all(not p.name.startswith(".") for p in ckpt.list_checkpoints(tmp_path))
    # restoring gives back the optimizer state and the RNG
    fresh = build_model(ModelConfig(vocab_size=50, **TINY_MODEL))
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    state = ckpt.load_checkpoint(good, fresh, fresh_opt)
    assert state["step"] == 5
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n  # the stored bytes: bit-exact
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_lr_schedules():
    cos = LRSchedule("cosine", warmup=10, min_ratio=0.1)
    assert cos(0, 110) == approx(1 / 11, dtype=float) and cos(9, 110) == approx(10 / 11, dtype=float)  # floats
    assert cos(10, 110) == approx(1.0, dtype=float, n=4) and cos(60, 110) == approx(0.55, dtype=float, n=4)
    assert cos(110, 110) == approx(0.1, dtype=float, n=4)
    lin = LRSchedule("linear", warmup=10)
    assert lin(60, 110) == approx(0.5, dtype=float, n=2) and lin(110, 110) == approx(0.0, dtype=float, n=2, scale=1.0)
    assert LRSchedule("constant", 0)(99, 100) == 1.0  # the constant itself, exactly


def test_config_errors_exit_2_and_leave_nothing(tmp_path, capsys, corpus):
    bad = tmp_path / "bad.toml"
    bad.write_text('max_steps = 3\nbatch_sise = 4\n')
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'batch_sise'" in err and "\n" not in err and "Traceback" not in err
    bad.write_text('max_steps = "three"\n')
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r1")]) == 2
    assert "'max_steps' must be" in capsys.readouterr().err
    assert main(["train", "--size", "huge", "--corpus", str(corpus), "--out", str(tmp_path / "r2")]) == 2
    assert "unknown size 'huge'" in capsys.readouterr().err
    assert main(["train", "--arch", "gpt9", "--corpus", str(corpus), "--out", str(tmp_path / "r2")]) == 2
    assert "unknown architecture 'gpt9'" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    assert main(["train", "--corpus", str(empty), "--out", str(tmp_path / "r3"), "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err.lower()
    assert not (tmp_path / "r3").exists()
    with pytest.raises(ConfigError, match="mask_split"):
        TrainConfig(mask_split=[0.5, 0.5, 0.5])


def test_existing_run_needs_resume(tmp_path, corpus, tokenizer_dir):
    from masklm.training.trainer import train

    train(tiny_config(tmp_path / "run", corpus, tokenizer_dir, max_steps=2, save_every=2))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tmp_path / "run", corpus, tokenizer_dir, max_steps=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = r"""
import sys, torch
from masklm.training.config import TrainConfig
from masklm.training.distributed import setup, cleanup
from masklm.training.trainer import Trainer
cfg = TrainConfig.from_dict(__import__("json").loads(sys.argv[1]))
info = setup("cpu")
t = Trainer(cfg, info, lambda m: None)
t.run()
torch.save({k: v.detach().clone() for k, v in t.model.state_dict().items()}, sys.argv[2] + f"/rank{info.rank}.pt")
cleanup(info)
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, corpus, tokenizer_dir):
    """2 gloo processes with batch 4 each == 1 process with batch 8: same weights on both ranks, same losses."""
    from masklm.training.trainer import train

    # No dropout: each rank draws its own dropout masks, which one process cannot reproduce.
    model = dict(TINY_MODEL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    common = dict(corpus=[str(corpus)], tokenizer=str(tokenizer_dir), model=model, seq_len=32, max_steps=5,
                  lr=1e-3, warmup_steps=1, log_every=1, progress=False, heldout_fraction=0.1, eval_batches=1)
    single = train(TrainConfig(out=str(tmp_path / "one"), batch_size=8, **common))

    cfg = dict(common, out=str(tmp_path / "two"), batch_size=4)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(_free_port()), str(script), json.dumps(cfg), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name  # bit-exact: both ranks apply the same averaged gradient

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(x)]

    # Same global batch, same masks, loss normalised by the global masked-token count: the curves agree up
    # to float summation order (and the weights they were computed with, which drift apart by rounding).
    one, two = losses(single), losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    assert one == approx(two, n=8 * 32)  # a mean over at most the global batch's 8 x 32 tokens
    w1 = final_weights(single)
    scale = max(float(v.abs().max()) for v in w1.values())  # one scale: some tensors stay near 0
    for name, value in w1.items():
        key = name
        assert close(value, r0[key], n=5, scale=scale), name  # 5 steps, each rounds every weight once


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["bert", "ltg-bert", "gpt-bert"])
def test_antlm_schedule_phases_and_evaluations(tmp_path, corpus, tokenizer_dir, arch, capsys):
    """clm:2,mlm:2,clm:2 in steps: every metrics line names its objective; phase changes at steps 2 and 4."""
    from masklm.training.trainer import train

    run = train(tiny_config(tmp_path / arch, corpus, tokenizer_dir, arch=arch,
                            objective="clm:2,mlm:2,clm:2", schedule_unit="steps", max_steps=None))
    recs = _records(run)
    train_recs = [r for r in recs if "loss" in r]
    assert [(r["step"], r["objective"]) for r in train_recs] == [
        (1, "clm"), (2, "clm"), (3, "mlm"), (4, "mlm"), (5, "clm"), (6, "clm")]  # the schedule sets the length
    assert [(r["step"], r["objective"]) for r in recs if "phase" in r] == [(2, "mlm"), (4, "clm")]
    final = [r for r in recs if r.get("objective") == "eval"][-1]
    assert {"eval_accuracy", "causal_ppl"} <= set(final) and final["causal_ppl"] > 1
    assert json.loads((run / "final" / "training_args.json").read_text())["objectives"] == ["clm", "mlm"]
    assert "phase 2 of the schedule begins (mlm)" in capsys.readouterr().err


def test_mix_and_diffusion_objectives(tmp_path, corpus, tokenizer_dir):
    from masklm.training.trainer import train

    run = train(tiny_config(tmp_path / "mix", corpus, tokenizer_dir, objective="mntp=3,clm=1", max_steps=8,
                            log_every=4, mask_rate="0.30->0.15"))
    train_recs = [r for r in _records(run) if "loss" in r]
    # a 3:1 mix over micro-batches: in each window of 4 steps, 3 mntp and 1 clm, each logged on its own line
    assert sorted((r["step"], r["objective"], r["steps"]) for r in train_recs) == [
        (4, "clm", 1), (4, "mntp", 3), (8, "clm", 1), (8, "mntp", 3)]
    assert train_recs[0]["mask_rate"] == approx(0.30 - 0.15 * 3 / 8, dtype=float, n=2)
    # the mask rate is logged only where the objective masked by it: mntp, not clm
    assert [("mask_rate" in r) for r in train_recs] == [r["objective"] == "mntp" for r in train_recs]
    run = train(tiny_config(tmp_path / "diff", corpus, tokenizer_dir, objective="diffusion", max_steps=3))
    final = [r for r in _records(run) if r.get("objective") == "eval"][-1]
    assert final["diffusion_ppl_bound"] == approx(math.exp(final["diffusion_nelbo"]), dtype=float)
    assert final["samples"] == 4
    assert not any("mask_rate" in r for r in _records(run))  # diffusion draws its own t per row


def test_heldout_rows_and_evaluators_reproduce_the_trainers_final_eval(tmp_path, corpus, tokenizer_dir):
    """What the demo and the experiment rebuild from a run folder is exactly what the trainer evaluated."""
    from masklm.data.shards import ShardedCorpus
    from masklm.modeldir import load_model_dir
    from masklm.objectives.reading import TrainedAs
    from masklm.training.evaluate import evaluate_heldout, heldout_rows
    from masklm.training.trainer import train

    cfg = tiny_config(tmp_path / "run", corpus, tokenizer_dir, arch="gpt-bert", objective="mntp=1,clm=1",
                      max_steps=2)
    run = train(cfg)
    model, _, tok = load_model_dir(run / "final")
    rows = heldout_rows(ShardedCorpus(run / "data"), heldout_fraction=cfg.heldout_fraction, seed=cfg.seed,
                        seq_len=cfg.seq_len, pad_id=tok.pad_id)
    trained_as = TrainedAs.from_names(["mntp", "clm"])
    assert trained_as.evaluators == ("mlm", "causal") and trained_as.mask_shift == 1
    again = evaluate_heldout(model, rows, tok, trained_as.evaluators, batch_size=cfg.batch_size,
                             max_batches=cfg.eval_batches, seed=cfg.seed, diffusion_samples=cfg.eval_diffusion_samples,
                             diffusion_eps=cfg.diffusion_eps, shift=True)
    final = [r for r in _records(run) if r.get("objective") == "eval"][-1]
    assert {"step": 2, "objective": "eval", **again} == final


def test_bad_objectives_fail_before_training(tmp_path, capsys, corpus):
    for bad in ["clm:0", "mlm:-1", "clm:4,,mlm", "mlm=0,clm=0", "gpt"]:
        out = tmp_path / bad.replace(":", "_").replace(",", "_").replace("=", "_")
        assert main(["train", "--corpus", str(corpus), "--objective", bad, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("objective" in err.lower() or "phase" in err), err
        assert not out.exists()


def test_init_from_continues_a_model_on_a_new_corpus(tmp_path, corpus, tokenizer_dir):
    """--init-from: the first step's loss is the loaded model's loss on that batch; the tokenizer is kept."""
    import numpy as np

    from masklm.data.masking import mask_tokens
    from masklm.data.packing import PackedRows, split_documents
    from masklm.data.shards import ShardedCorpus
    from masklm.inference.pipeline import load
    from masklm.training.trainer import train

    # No dropout, so the training-mode loss of step 1 is a deterministic function of the loaded weights.
    model = dict(TINY_MODEL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base = train(tiny_config(tmp_path / "base", corpus, tokenizer_dir, model=model, max_steps=4))
    domain = write_corpus(tmp_path / "domain.txt", docs=30, seed=7)
    cfg = tiny_config(tmp_path / "adapted", domain, tokenizer_dir, max_steps=1, seed=3, objective="mlm",
                      tokenizer=None, model={}, init_from=str(base / "final"))
    adapted = train(cfg)
    first_loss = [r for r in _records(adapted) if "loss" in r][0]["loss"]

    pipe = load(base / "final")
    shards = ShardedCorpus(adapted / "data")
    train_docs, _ = split_documents(shards.num_documents, cfg.heldout_fraction, cfg.seed)
    rows = PackedRows(shards, train_docs, cfg.seq_len, pipe.tokenizer.pad_id)
    first_rows = np.random.default_rng([cfg.seed, 0]).permutation(len(rows))[:cfg.batch_size]
    batch = rows.batch(first_rows)
    inputs, labels = mask_tokens(batch["input_ids"], rows=first_rows.tolist(), seed=cfg.seed, epoch=0,
                                 rate=0.15, mask_id=pipe.tokenizer.mask_id, vocab_size=pipe.tokenizer.vocab_size,
                                 special_ids=pipe.tokenizer.special_ids, attention_mask=batch["attention_mask"],
                                 word_starts=batch["word_starts"])
    pipe.model.train()
    with torch.no_grad():
        expected = pipe.model(inputs, attention_mask=batch["attention_mask"], labels=labels,
                              document_ids=batch["document_ids"]).loss.item()
    assert first_loss == approx(expected, n=forward_terms(pipe.config, cfg.seq_len, softmax=True))
    assert (adapted / "final" / "tokenizer.json").read_text() == (base / "final" / "tokenizer.json").read_text()
    assert not (adapted / "tokenizer").exists()  # no new tokenizer was trained


@pytest.mark.parametrize("arch", ["bert", "ltg-bert"])
def test_ltg_recipe_span_masking_lamb(tmp_path, corpus, tokenizer_dir, arch):
    """The LTG-BERT recipe through the trainer: span masking, LAMB, warmup-then-cosine-to-0.1x, 0.30->0.15."""
    from masklm.training.trainer import train

    run = train(tiny_config(tmp_path / arch, corpus, tokenizer_dir, arch=arch, masking="span",
                            optimizer="lamb", no_decay="ltg-bert", schedule="ltg-bert", lr=1e-2,
                            mask_rate="0.30->0.15", max_steps=8))
    recs = [r for r in _records(run) if "loss" in r]
    rates = [r["mask_rate"] for r in recs]
    assert rates[0] == approx(0.30, dtype=float, n=2)
    assert rates[-1] == approx(0.30 - 0.15 * 7 / 8, dtype=float, n=2)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert all(math.isfinite(r["loss"]) for r in recs)
    # warmup round(1.6% of 8) = 0 steps, then cosine from 1x to the 0.1x floor: step 7 of 8
    want = 1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert recs[-1]["lr"] == approx(want, dtype=float, n=4)


def test_seq_len_schedule_row_order(tmp_path, corpus, tokenizer_dir):
    """LTG-BERT's schedule: rows of seq_len for 90% of the steps, then 4x longer rows at a quarter batch."""
    import numpy as np

    from masklm.data.shards import ShardedCorpus, prepare_shards
    from masklm.tokenizer import Tokenizer
    from masklm.training.progress import SeqLenSchedule
    from masklm.training.row_order import RowOrder

    tok = Tokenizer.load(tokenizer_dir)
    prepare_shards([str(corpus)], tok, tmp_path / "data", log=lambda m: None)
    shards = ShardedCorpus(tmp_path / "data")
    docs = np.arange(shards.num_documents)
    order = RowOrder(shards, docs, tok.pad_id, SeqLenSchedule.preset("ltg-bert", base_seq_len=16), 8, 1, seed=0)
    seen = []
    for step in range(20):
        rows, batch_size, key, global_rows = order.at(step, 20)
        assert (rows.seq_len, batch_size) == ((16, 8) if step < 18 else (64, 2))
        assert len(global_rows) == batch_size and key == (0 if step < 18 else 1_000_000) + (
            step // order.steps_per_epoch[0] if step < 18 else 0)
        if step < order.steps_per_epoch[0]:
            seen.extend(global_rows.tolist())
    # within an epoch every row is read (the last step wraps around to the start)
    assert set(seen) == set(range(len(order.rows[0])))


def test_resume_across_a_seq_len_phase_change(tmp_path, corpus, tokenizer_dir):
    import shutil

    from masklm.training.trainer import train

    kw = dict(arch="ltg-bert", seq_len=16, seq_len_schedule="ltg-bert", batch_size=8, max_steps=10, save_every=5,
              keep_last=5)
    straight = train(tiny_config(tmp_path / "a", corpus, tokenizer_dir, **kw))
    interrupted = train(tiny_config(tmp_path / "b", corpus, tokenizer_dir, **kw))
    shutil.rmtree(interrupted / "checkpoints" / "step-10")
    shutil.rmtree(interrupted / "final")
    resumed = train(tiny_config(tmp_path / "b", corpus, tokenizer_dir, resume=True, **kw))
    a, b = final_weights(straight), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-exact: resuming repeats the same operations


def test_mixed_family_config_and_schedule_length_notes(tmp_path, corpus, tokenizer_dir, capsys):
    from masklm.config import ModelConfig
    from masklm.training.trainer import train

    with pytest.raises(ConfigError, match="'dwa' is not a field of bert configs"):
        ModelConfig(arch="bert", dwa=True)
    with pytest.raises(ConfigError, match="'type_vocab_size' is not a field of ltg-bert configs"):
        ModelConfig(arch="ltg-bert", type_vocab_size=2)
    # --max-steps shorter than the AntLM schedule: said plainly before training starts
    train(tiny_config(tmp_path / "short", corpus, tokenizer_dir, objective="clm:3,mlm:3", schedule_unit="steps",
                      max_steps=4))
    err = capsys.readouterr().err
    assert "the objective schedule covers 6 steps (6 steps) but the run has 4 steps; it is cut short" in err
    assert err.index("cut short") < err.index("held-out masked-token accuracy")


def test_out_of_memory_is_one_line_naming_the_sizes(tmp_path, capsys, corpus, tokenizer_dir, monkeypatch):
    """An allocation that fails (review case 332: --seq-len 100000) is one line naming the flags that size
    it, exit 2, and the run folder this call made is gone; any other RuntimeError stays a bug (traceback)."""
    from masklm.training.trainer import Trainer

    def fail(self, step):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 400000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(Trainer, "train_step", fail)
    out = tmp_path / "run"
    args = ["train", "--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--size", "tiny", "--seq-len", "32",
            "--batch-size", "4", "--max-steps", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masklm: error")]
    assert len(err) == 1 and "out of memory with --batch-size 4 x --seq-len 32" in err[0], err
    assert not out.exists()

    monkeypatch.setattr(Trainer, "train_step", lambda self, step: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(args)


def test_progress_in_a_log_file_is_plain_lines(tmp_path, capsys, corpus, tokenizer_dir):
    """stderr that is not a terminal (a job's log, a pipe; pytest's capture here) gets no tqdm redraws, which
    a file keeps as one line growing all run, but a plain line at the last step (and every 30 s before)."""
    out = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--size", "tiny",
                 "--seq-len", "32", "--batch-size", "4", "--max-steps", "3", "--log-every", "1",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("train: step")]
    assert len(lines) == 1 and lines[0].startswith("train: step 3/3 (100%), ") and "loss mlm " in lines[0], err
    assert main(["train", "--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--size", "tiny",
                 "--seq-len", "32", "--batch-size", "4", "--max-steps", "3", "--out", str(tmp_path / "quiet"),
                 "--no-progress"]) == 0
    assert "train: step" not in capsys.readouterr().err  # --no-progress: neither bar nor lines


def test_plain_progress_lines_are_spaced_in_time():
    from masklm.training.metrics import PlainProgress

    records = [{"objective": "mntp", "loss": 3.5, "tokens_per_s": 12345.6}, {"objective": "clm", "loss": 4.25}]
    often, seldom = PlainProgress(every=0.0), PlainProgress(every=1e9)
    assert often.line(5, 10, records).endswith("(50%), 0 s: loss mntp 3.500, clm 4.250; 12,346 tokens/s")
    assert seldom.line(5, 10, records) is None and seldom.line(9, 10, records) is None
    assert seldom.line(10, 10, records).startswith("train: step 10/10 (100%)")


def test_the_last_line_says_what_the_held_out_rows_measured():
    from masklm.training.evaluate import held_out_line

    assert held_out_line({"eval_loss": 0.0, "eval_accuracy": 0.0, "eval_tokens": 0}).startswith(
        "held-out set too small to evaluate")  # not "accuracy 0.0000", which reads as a result
    mlm = {"eval_loss": 3.84971, "eval_accuracy": 0.138, "eval_tokens": 500}
    assert held_out_line(mlm) == "held-out masked-token accuracy 0.1380, loss 3.8497"
    assert held_out_line(mlm | {"causal_loss": 3.86, "causal_ppl": 47.61}) == (
        "held-out masked-token accuracy 0.1380, loss 3.8497; causal perplexity 47.6")  # clm and AntLM runs
    assert held_out_line(mlm | {"diffusion_ppl_bound": 120.04}).endswith("; diffusion perplexity bound 120.0")


def test_a_held_out_share_far_above_the_fraction_is_said():
    from masklm.training.evaluate import heldout_share_note

    assert heldout_share_note(2, 98, 0.02) is None and heldout_share_note(8, 92, 0.02) is None  # near enough
    note = heldout_share_note(1769, 3039, 0.02)  # one large document held out whole
    assert note.startswith("the held-out rows are 37% of the corpus's rows, against --heldout-fraction 0.02")


def test_the_final_tokenizer_says_how_far_the_model_reads():
    from masklm.training.config import TrainConfig

    cfg = TrainConfig(seq_len=128)
    assert cfg.rows_read(512, 512, "bert") == 128  # absolute positions: the rows it was trained on
    assert cfg.rows_read(512, 512, "gpt-bert") == cfg.rows_read(512, 512, "ltg-bert") == 512  # relative ones
    longer = TrainConfig(seq_len=64, init_from="base/final")
    assert longer.rows_read(256, 512, "bert") == 256 and longer.rows_read(1024, 512, "bert") == 512
