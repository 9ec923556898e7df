"""A run remembers itself, and nothing is overwritten by accident (#12, points 1 and 2 for ``masklm train``).

Every case goes through the CLI as a user types it: ``masklm train --out DIR --resume`` with no other flag
continues the recorded run bit for bit, a flag that would change the run is refused naming it, changed
corpus files need ``--rebuild-data``, a folder without a usable checkpoint is refused, and ``--out`` that
holds anything needs ``--resume`` or ``--overwrite``. Every refusal is one line, exit 2, files unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from masklm.cli import main
from masklm.files import LOCK_NAME, sha256_file
from masklm.training import checkpoint as ckpt
from masklm.training.run_record import RESUME_MAY_CHANGE

WORDS = "the a cat dog bird sat ran flew on under over mat tree house and then quickly slowly".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(40):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) + " .\n\n")
    return path


@pytest.fixture(scope="module")
def toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text("eval_batches = 1\nheldout_fraction = 0.1\n[model]\nhidden_size = 32\nnum_hidden_layers = 1\n"
                    "num_attention_heads = 2\nintermediate_size = 64\n")
    return path


def base_flags(toml: Path, corpus: Path | str) -> list[str]:
    # A constant LR without warmup, so a run of 3 steps extended to 6 takes the very steps of a 6-step run.
    return ["train", "--config", str(toml), "--corpus", str(corpus), "--vocab-size", "150", "--seq-len", "32",
            "--batch-size", "4", "--lr", "1e-3", "--schedule", "constant", "--warmup", "0", "--log-every", "1",
            "--no-progress"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its sha256."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys, *needles: str) -> str:
    """Run the CLI; it must exit 2 with one line on stderr holding every needle."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("masklm: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_equal_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:  # bit-exact: the resumed run repeats the very same operations on the same state
        assert torch.equal(wa[name], wb[name]), name


def loss_steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toml, corpus) -> Path:
    """The reference: 6 steps in one go (a tokenizer trained into the run folder)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(base_flags(toml, corpus) + ["--out", str(out), "--max-steps", "6"]) == 0
    return out


def test_resume_with_only_max_steps_extends_a_run_bit_for_bit(tmp_path, toml, corpus, straight, capsys):
    """3 steps, then `--resume --max-steps 6` and no other flag: the weights of 6 steps in one go."""
    out = tmp_path / "run"
    assert main(base_flags(toml, corpus) + ["--out", str(out), "--max-steps", "3", "--save-every", "3"]) == 0
    first = json.loads((out / "training_args.json").read_text())
    # the record: every field, resolved; corpus fingerprints; the tokenizer's; the version
    assert first["corpus"] == [str(corpus.absolute())] and first["seq_len"] == 32 and first["model"]["hidden_size"] == 32
    assert first["vocab_size"] == 150 and first["max_steps"] == 3 and first["resumes"] == []
    [entry] = first["corpus_files"]
    assert entry["path"] == str(corpus.resolve()) and entry["size"] == corpus.stat().st_size
    assert entry["sha256"] == sha256_file(corpus)
    from masklm.tokenizer import Tokenizer
    from masklm.version import __version__

    assert first["tokenizer_fingerprint"] == Tokenizer.load(out / "tokenizer").fingerprint()
    assert first["masklm_version"] == __version__
    # a finished run is not resumed as it is
    refused(["train", "--out", str(out), "--resume"], capsys, "is finished (3 of 3 steps)", "--max-steps")

    assert main(["train", "--out", str(out), "--resume", "--max-steps", "6"]) == 0
    assert_equal_weights(straight, out)
    assert loss_steps(out) == [1, 2, 3, 4, 5, 6]
    record = json.loads((out / "training_args.json").read_text())
    assert record["max_steps"] == 6 and record["resumes"][-1]["step"] == 3
    assert record["resumes"][-1]["changed"] == {"max_steps": [3, 6]}
    assert {k: v for k, v in record.items() if k not in ("max_steps", "resumes", "progress")} == \
           {k: v for k, v in first.items() if k not in ("max_steps", "resumes", "progress")}


def test_resume_with_no_flag_from_another_folder(tmp_path, toml, corpus, straight, monkeypatch):
    """The README's `masklm train --out DIR --resume`, from another working directory, on a run started with
    relative paths: the same corpus, tokenizer, sizes and batch, and the weights of an uninterrupted run."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(corpus, work / "toy.txt")
    shutil.copy(toml, work / "tiny.toml")
    monkeypatch.chdir(work)
    flags = base_flags(Path("tiny.toml"), "toy.txt")
    assert main(flags + ["--out", "run", "--max-steps", "6", "--save-every", "2", "--keep-last", "5"]) == 0
    run = work / "run"
    # pretend the run was killed after step 2
    for name in ("step-4", "step-6"):
        shutil.rmtree(run / "checkpoints" / name)
    shutil.rmtree(run / "final")
    data_before = snapshot(run / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert_equal_weights(straight, run)
    assert snapshot(run / "data") == data_before  # the user's shards were reused, not rebuilt
    assert loss_steps(run) == [1, 2, 3, 4, 5, 6]


def make_killed(folder: Path, toml: Path, corpus: Path) -> Path:
    """A run of 6 steps that died after its step-2 checkpoint, reading its own copy of the corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    own = folder / "corpus.txt"
    shutil.copy(corpus, own)
    out = folder / "run"
    assert main(base_flags(toml, own) + ["--out", str(out), "--max-steps", "6", "--save-every", "2",
                                         "--keep-last", "5"]) == 0
    for name in ("step-4", "step-6"):
        shutil.rmtree(out / "checkpoints" / name)
    shutil.rmtree(out / "final")
    return out


@pytest.fixture(scope="module")
def killed_once(tmp_path_factory, toml, corpus) -> Path:
    return make_killed(tmp_path_factory.mktemp("killed"), toml, corpus)


@pytest.fixture
def killed(killed_once, tmp_path) -> Path:
    """A copy of the killed run (its record still names the shared, unchanged corpus copy)."""
    return Path(shutil.copytree(killed_once, tmp_path / "run"))


def test_flags_that_would_change_the_run_are_refused(killed, tmp_path, toml, capsys):
    out, before = killed, snapshot(killed)
    resume = ["train", "--out", str(out), "--resume"]
    refused(resume + ["--seq-len", "64"], capsys, "--seq-len 64", "seq_len = 32")
    refused(resume + ["--batch-size", "8"], capsys, "--batch-size 8", "resume without --batch-size")
    refused(resume + ["--corpus", "kjv"], capsys, "--corpus")
    refused(resume + ["--objective", "clm"], capsys, "--objective")
    refused(resume + ["--lr", "0.01"], capsys, "--lr")
    refused(resume + ["--size", "small"], capsys, "--size")
    other = tmp_path / "other.toml"
    other.write_text("eval_batches = 1\nheldout_fraction = 0.2\n")
    refused(resume + ["--config", str(other)], capsys, f"heldout_fraction in {other}")
    refused(resume + ["--overwrite"], capsys, "--resume", "--overwrite")
    refused(resume + ["--seq-len", "0"], capsys, "seq_len must be >= 1")
    assert snapshot(out) == before
    # the same values again, and the fields a resume may change, are fine; the changes are recorded
    assert {"max_steps", "epochs", "time_limit", "save_every", "eval_every", "log_every"} <= RESUME_MAY_CHANGE
    recorded_corpus = json.loads((out / "training_args.json").read_text())["corpus"][0]
    assert main(resume + ["--config", str(toml), "--seq-len", "32", "--batch-size", "4", "--corpus",
                          recorded_corpus, "--save-every", "1", "--log-every", "2"]) == 0
    record = json.loads((out / "training_args.json").read_text())
    assert record["save_every"] == 1 and record["log_every"] == 2
    assert record["resumes"][-1]["changed"] == {"save_every": [2, 1], "log_every": [1, 2]}
    assert [p.name for p in ckpt.list_checkpoints(out)][-1] == "step-6"


def test_changed_corpus_needs_rebuild_data(tmp_path, toml, corpus, capsys):
    out = make_killed(tmp_path, toml, corpus)
    corpus = out.parent / "corpus.txt"
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("a new document about the cat on the mat .\n")
    before = snapshot(out)
    refused(["train", "--out", str(out), "--resume"], capsys, f"{corpus.resolve()} has", "--rebuild-data")
    assert snapshot(out) == before
    assert main(["train", "--out", str(out), "--resume", "--rebuild-data"]) == 0
    record = json.loads((out / "training_args.json").read_text())
    assert record["corpus_files"][0]["sha256"] == sha256_file(corpus)
    assert loss_steps(out) == [1, 2, 3, 4, 5, 6]
    # touched but with the same content: not a change
    text = corpus.read_bytes()
    corpus.write_bytes(text)
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "7"]) == 0


def test_other_tokenizer_or_missing_tokenizer_is_refused(killed, capsys):
    out = killed
    config = out / "tokenizer" / "tokenizer.json"
    original = config.read_text()
    edited = json.loads(original)
    edited["model"]["vocab"]["zzzz"] = len(edited["model"]["vocab"])
    config.write_text(json.dumps(edited))
    before = snapshot(out)
    refused(["train", "--out", str(out), "--resume"], capsys, "tokenizer", "not the one this run was trained with")
    assert snapshot(out) == before
    shutil.rmtree(out / "tokenizer")
    before = snapshot(out)
    refused(["train", "--out", str(out), "--resume"], capsys, "tokenizer is missing")
    assert snapshot(out) == before


def test_no_usable_checkpoint_stops_and_deletes_nothing(killed, tmp_path, capsys):
    out = killed
    for step in ckpt.list_checkpoints(out):  # every checkpoint damaged
        target = step / "model.safetensors"
        target.write_bytes(target.read_bytes()[:-5])
    before = snapshot(out)
    refused(["train", "--out", str(out), "--resume"], capsys, "nothing to resume", "fail their checks",
            "step-2", "--overwrite")
    assert snapshot(out) == before
    # a finished run without checkpoints (save-every 0), and a folder that does not exist
    refused(["train", "--out", str(tmp_path / "none"), "--resume"], capsys, "no checkpoint was written")
    assert not (tmp_path / "none").exists()


def test_damaged_newer_checkpoints_are_not_kept_in_place_of_fresh_ones(tmp_path):
    """Pruning keeps the newest ``keep_last`` checkpoints up to the one just written; a damaged checkpoint of a
    later step (skipped by the resume) no longer makes it delete each fresh one (review defect 8)."""
    from masklm.config import ModelConfig
    from masklm.models import build_model

    model = build_model(ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32))
    opt = torch.optim.AdamW(model.parameters())
    ckpt.save_checkpoint(tmp_path, 40, model, opt, {"step": 40}, keep_last=2)
    (tmp_path / "checkpoints" / "step-40" / "rng.pt").unlink()  # damaged
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, opt, {"step": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-2", "step-3", "step-40"]
    assert ckpt.latest_good(tmp_path, log=lambda m: None).name == "step-3"


def test_out_that_holds_anything_needs_resume_or_overwrite(tmp_path, toml, corpus, straight, capsys):
    flags = base_flags(toml, corpus) + ["--max-steps", "2"]
    done = tmp_path / "done"
    shutil.copytree(straight, done)  # a finished run without checkpoints
    before = snapshot(done)
    refused(flags + ["--out", str(done)], capsys, "holds a finished run", "--overwrite")
    assert snapshot(done) == before
    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    (project / "thesis.tex").write_text("only copy")
    before = snapshot(project)
    refused(flags + ["--out", str(project)], capsys, "holds files", "--overwrite")
    assert snapshot(project) == before
    # --overwrite never deletes what the run reads: a corpus inside --out, or its tokenizer
    inside = project / "corpus.txt"
    shutil.copy(corpus, inside)
    before = snapshot(project)
    refused(base_flags(toml, inside) + ["--max-steps", "2", "--out", str(project), "--overwrite"], capsys,
            "would replace", str(inside))
    refused(flags + ["--out", str(done), "--overwrite", "--tokenizer", str(done / "tokenizer")], capsys,
            "would replace")
    assert snapshot(project) == before and (done / "final").is_dir()
    inside.unlink()
    # --overwrite starts afresh
    assert main(flags + ["--out", str(project), "--overwrite"]) == 0
    assert not (project / "thesis.tex").exists() and (project / "final" / "model.safetensors").is_file()
    assert loss_steps(project) == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


def test_a_run_folder_holding_only_prepared_shards_is_used(tmp_path, toml, corpus, straight):
    """`masklm data prepare --out RUN/data`, then `masklm train --out RUN`: the shards are reused."""
    run = tmp_path / "run"
    shutil.copytree(straight / "data", run / "data")
    before = snapshot(run / "data")
    assert main(base_flags(toml, corpus) + ["--tokenizer", str(straight / "tokenizer"), "--out", str(run),
                                            "--max-steps", "1"]) == 0
    assert snapshot(run / "data") == before


def test_a_folder_another_run_is_writing_is_refused(killed, tmp_path, toml, corpus, capsys):
    """A second `masklm train` into a run folder in use (a resume started twice, a relaunched job,
    --overwrite over a live run) stops with one line and touches nothing; once the holder ends, it runs."""
    out = killed
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "holding"
        before = snapshot(out)
        refused(["train", "--out", str(out), "--resume"], capsys, f"{out} is in use by", f"(pid {other.pid})",
                "wait for it to end")
        refused(base_flags(toml, corpus) + ["--out", str(out), "--overwrite", "--max-steps", "2"], capsys,
                "is in use by")
        assert snapshot(out) == before
    finally:
        other.kill()
        other.wait()
    assert main(["train", "--out", str(out), "--resume"]) == 0  # a holder that died leaves no stale lock
    assert [p.name for p in ckpt.list_checkpoints(out)][-1] == "step-6"
    # a run into a folder nobody holds leaves no lock file behind, refused or not
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(base_flags(toml, corpus) + ["--out", str(empty), "--max-steps", "1"]) == 0
    assert not (empty / LOCK_NAME).exists() and (empty / "final").is_dir()


PROBE_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("free")
    except OSError:
        print("held")
"""


def lock_state(folder: Path) -> str:
    """'held' or 'free', as another process finds the run folder's lock ('none': no lock file)."""
    if not (folder / LOCK_NAME).exists():
        return "none"
    probe = [sys.executable, "-c", PROBE_LOCK, str(folder / LOCK_NAME)]
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("case", ["new folder", "--overwrite"])
def test_a_run_holds_its_folder_from_the_start(tmp_path, toml, corpus, monkeypatch, case):
    """A run into a folder that did not exist, and one that --overwrite emptied, hold it as a resumed run
    does: another process finds it locked at every step."""
    from masklm.training.trainer import Trainer

    out = tmp_path / "new" / "run"
    if case == "--overwrite":
        assert main(base_flags(toml, corpus) + ["--out", str(out), "--max-steps", "1"]) == 0
    seen, real_step = [], Trainer.train_step

    def probed(self, step):
        seen.append(lock_state(out))
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", probed)
    extra = ["--overwrite"] if case == "--overwrite" else []
    assert main(base_flags(toml, corpus) + ["--out", str(out), "--max-steps", "2", *extra]) == 0
    assert seen == ["held", "held"]
    assert lock_state(out) == "none" and loss_steps(out) == [1, 2]


def test_a_refused_run_into_new_folders_leaves_none_and_never_takes_a_held_one(tmp_path, toml, corpus, capsys,
                                                                             monkeypatch):
    from masklm.training import trainer

    nested = tmp_path / "a" / "b" / "run"
    refused(base_flags(toml, tmp_path / "missing.txt") + ["--out", str(nested)], capsys, "missing.txt' not found")
    assert not (tmp_path / "a").exists()  # bad input: the folders made for the run are gone again
    # a run that made its folder a moment before another run locked it leaves that run's folder alone
    out = tmp_path / "raced"
    holders = []

    def made_then_taken(folder):
        Path(folder).mkdir()
        holders.append(subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE,
                                        text=True))
        assert holders[0].stdout.readline().strip() == "holding"
        return Path(folder)

    monkeypatch.setattr(trainer, "make_dirs", made_then_taken)
    try:
        refused(base_flags(toml, corpus) + ["--out", str(out), "--max-steps", "1"], capsys, "is in use by")
        assert out.is_dir() and lock_state(out) == "held"
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


HOLD_LOCK = """
import sys, time
from masklm.files import folder_lock
with folder_lock(sys.argv[1], "masklm train --out elsewhere"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_ctrl_c_says_which_checkpoint_a_resume_continues_from(tmp_path, toml, corpus, capsys, monkeypatch):
    from masklm.training.trainer import Trainer

    out = tmp_path / "run"
    real_step = Trainer.train_step

    def interrupted_at_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_3)
    capsys.readouterr()
    assert main(base_flags(toml, corpus) + ["--out", str(out), "--max-steps", "4", "--save-every", "2"]) == 130
    err = capsys.readouterr().err
    assert f"{out}: the last checkpoint, {out / 'checkpoints' / 'step-2'}, is kept (--resume continues from it)" in err
    assert err.rstrip().endswith("masklm: interrupted") and "Traceback" not in err
    assert not (out / LOCK_NAME).exists()  # the lock went with the run
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert loss_steps(out) == [1, 2, 3, 4]


def test_a_full_disk_is_one_line_that_says_how_to_go_on(tmp_path, toml, corpus, capsys, monkeypatch):
    """ENOSPC while a checkpoint is written: the partial checkpoint is removed, the line names the disk and
    the checkpoint --resume continues from; with no checkpoint yet, the run's new folder is removed."""
    import errno

    from masklm.training import checkpoint

    real_save, saves = checkpoint.torch.save, []

    def fills_the_disk_on(n):
        def save(obj, path, *a, **k):
            if str(path).endswith("optimizer.pt"):
                saves.append(path)
                if len(saves) == n:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(obj, path, *a, **k)
        return save

    def last_line(argv: list[str]) -> str:  # the run logs as it goes; the error is its last line
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.endswith("\n") and err.count("masklm: error:") == 1, err
        return err.splitlines()[-1]

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", fills_the_disk_on(2))
    assert last_line(base_flags(toml, corpus) + ["--out", str(out), "--max-steps", "6", "--save-every", "2"]) == (
        f"masklm: error: no space left on the disk holding {(out / 'checkpoints' / 'step-4').absolute()}; nothing "
        f"was left half-written: free some space, then masklm train --out {out} --resume continues from step-2")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]
    assert not [p for p in tmp_path.rglob(".*") if p.name != LOCK_NAME]  # no partial write left aside
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert main(["train", "--out", str(out), "--resume"]) == 0 and loss_steps(out) == [1, 2, 3, 4, 5, 6]
    saves.clear()
    monkeypatch.setattr(checkpoint.torch, "save", fills_the_disk_on(1))
    fresh = tmp_path / "fresh"
    assert last_line(base_flags(toml, corpus) + ["--out", str(fresh), "--max-steps", "4", "--save-every", "2"]
                     ).endswith("free some space, then run the command again")
    assert not fresh.exists()  # nothing of value was written: the folder this run made is gone
    # metrics.jsonl is appended to, outside the atomic writes: a full disk there reads the same
    from masklm.training.metrics import MetricsLog

    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    real_write = MetricsLog.write

    def append(self, record):
        if record.get("step") == 3 and "loss" in record:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, record)

    monkeypatch.setattr(MetricsLog, "write", append)
    again = tmp_path / "again"
    assert last_line(base_flags(toml, corpus) + ["--out", str(again), "--max-steps", "4", "--save-every", "2"]) == (
        f"masklm: error: no space left on the disk holding {again}; nothing was left half-written: free some "
        f"space, then masklm train --out {again} --resume continues from step-2")


@pytest.mark.parametrize("error, free, one_line", [
    (OSError(28, "No space left on device"), 10**12, True),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 989824 vs 989712"), 4096, True),
    (RuntimeError("a bug"), 10**12, False),  # a failed write on a disk with room keeps its traceback
])
def test_atomic_writes_read_a_full_disk(tmp_path, monkeypatch, error, free, one_line):
    """torch.save reports a full disk from its zip writer as a RuntimeError: read with the free space."""
    from collections import namedtuple

    from masklm import files
    from masklm.errors import DiskFull

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _p: usage(10**12, 10**12 - free, free))
    for writer, out in ((files.atomic_file, tmp_path / "f.bin"), (files.atomic_dir, tmp_path / "d")):
        with pytest.raises(DiskFull if one_line else RuntimeError) as raised:
            with writer(out) as tmp:
                (tmp / "x" if writer is files.atomic_dir else tmp).write_bytes(b"partial")
                raise error
        assert not out.exists() and list(tmp_path.iterdir()) == []
        if one_line:
            assert str(raised.value) == (f"no space left on the disk holding {out.absolute()}; nothing was left "
                                         "half-written: free some space, then run the command again")


def test_resume_auto_is_one_command_for_a_job_that_may_be_restarted(tmp_path, toml, corpus, capsys, monkeypatch):
    """`--resume auto` starts the run, continues it after a kill from its checkpoint, starts it again when the
    kill came before the first checkpoint, and refuses what any run would refuse."""
    from masklm.training.trainer import Trainer

    real_step = Trainer.train_step

    def killed_at(n):
        def step(self, s):
            if s == n:
                raise KeyboardInterrupt
            return real_step(self, s)
        return step

    out = tmp_path / "job"
    job = base_flags(toml, corpus) + ["--out", str(out), "--save-every", "2", "--resume", "auto"]
    monkeypatch.setattr(Trainer, "train_step", killed_at(3))
    assert main(job + ["--max-steps", "4"]) == 130  # nothing there: a new run, killed after step-2's checkpoint
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main(job + ["--max-steps", "4"]) == 0  # the same command: continues from step-2
    assert loss_steps(out) == [1, 2, 3, 4] and [p.name for p in ckpt.list_checkpoints(out)][-1] == "step-4"
    assert main(job + ["--max-steps", "6"]) == 0 and loss_steps(out) == [1, 2, 3, 4, 5, 6]  # and further

    early = tmp_path / "early"
    job = base_flags(toml, corpus) + ["--out", str(early), "--save-every", "4", "--max-steps", "4", "--resume", "auto"]
    monkeypatch.setattr(Trainer, "train_step", killed_at(2))
    assert main(job) == 130  # killed before its first checkpoint: its record and data are there, no checkpoint
    assert (early / "training_args.json").is_file() and not ckpt.list_checkpoints(early)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    before = snapshot(early)
    refused(job + ["--lr", "5e-4"], capsys, "--lr 0.0005 would change the run recorded in")  # another run
    assert snapshot(early) == before
    assert main(job) == 0 and loss_steps(early) == [1, 2, 3, 4]
    assert "starting it again from the beginning (--resume auto)" in capsys.readouterr().err

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(base_flags(toml, corpus) + ["--out", str(mine), "--resume", "auto"]) == 2
    assert "holds files (notes.txt)" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "mine"
    refused(["train", "--out", str(out), "--resume", "always"], capsys, "--resume takes no value, or 'auto'")
    refused(job + ["--overwrite"], capsys, "pass only one of them")


def test_another_ranks_write_probe_is_not_a_file_the_run_folder_holds(tmp_path):
    """Under torchrun every rank checks --out; one rank's write probe, there for a moment, is not a file the
    folder holds (a race CI once lost: 'holds files (.masklm-probe-...)')."""
    from masklm.files import PROBE_PREFIX
    from masklm.training.run_folder import held_files

    (tmp_path / f"{PROBE_PREFIX}x1y2").mkdir()
    (tmp_path / LOCK_NAME).write_text("masklm train")
    assert held_files(tmp_path) == []
    (tmp_path / "notes.txt").write_text("mine")
    assert held_files(tmp_path) == ["notes.txt"]


def test_ends_and_edges_of_a_resume(tmp_path, toml, corpus, straight, capsys, monkeypatch):
    """What a user meets at the edges: a run stopped before its first checkpoint (its leftovers are its
    start, which --resume auto starts again and a plain rerun names); a finished run requeued with --resume
    auto (done: exit 0); --resume on a run finished without checkpoints (--init-from is the way on);
    --max-steps below the checkpoint's step (refused)."""
    from masklm.training.trainer import Trainer

    early = tmp_path / "early"
    real_data = Trainer._data

    def stopped_in_data_preparation(self, tok):
        raise KeyboardInterrupt

    flags = base_flags(toml, corpus) + ["--out", str(early), "--max-steps", "2"]
    monkeypatch.setattr(Trainer, "_data", stopped_in_data_preparation)
    assert main(flags) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written before it" in err and "--resume auto starts the run again" in err
    assert (early / "training_args.json").is_file() and (early / "tokenizer").is_dir()  # its start, recorded
    monkeypatch.setattr(Trainer, "_data", real_data)
    refused(flags, capsys, "holds the start of a run stopped before its first checkpoint", "--resume auto")
    assert main(flags + ["--resume", "auto"]) == 0 and loss_steps(early) == [1, 2]
    capsys.readouterr()
    assert main(flags + ["--resume", "auto"]) == 0  # requeued after it ended: nothing to do, not a failure
    assert "is finished (final/, no checkpoints); nothing to do" in capsys.readouterr().err
    refused(["train", "--out", str(early), "--resume", "--max-steps", "4"], capsys,
            "finished without checkpoints", f"--init-from {early / 'final'}")
    longer = [f if f != "2" else "4" for f in flags]  # --max-steps 4: more than the run can give without checkpoints
    refused(longer + ["--resume", "auto"], capsys, "finished without checkpoints", "--init-from")

    out = tmp_path / "run"
    job = base_flags(toml, corpus) + ["--out", str(out), "--save-every", "2", "--max-steps", "4"]
    assert main(job) == 0
    capsys.readouterr()
    assert main(job + ["--resume", "auto"]) == 0
    assert "is finished (4 of 4 steps); nothing to do" in capsys.readouterr().err
    refused(["train", "--out", str(out), "--resume", "--max-steps", "3"], capsys,
            "--max-steps 3 is below step 4, where step-4 stands")

    odd = tmp_path / "odd"  # --save-every 3 of 4 steps: the last checkpoint is older than the final model
    job = base_flags(toml, corpus) + ["--out", str(odd), "--save-every", "3", "--max-steps", "4"]
    assert main(job) == 0
    before = snapshot(odd / "final")
    capsys.readouterr()
    assert main(job + ["--resume", "auto"]) == 0  # finished: it is not trained again from step-3
    assert "is finished (4 of 4 steps); nothing to do" in capsys.readouterr().err
    refused(["train", "--out", str(odd), "--resume"], capsys, "is finished (4 of 4 steps)")
    assert snapshot(odd / "final") == before and loss_steps(odd) == [1, 2, 3, 4]


def test_a_bert_reads_no_further_than_the_rows_it_was_trained_on(tmp_path, toml, corpus, straight, capsys):
    """BERT's positions past its training rows were never trained: the final folder's tokenizer says how
    long the rows were (32 here), masklm reads no further (one line, or windows), and --init-from keeps
    the longer of the two runs' rows."""
    import masklm
    from masklm.tokenizer import Tokenizer

    final = straight / "final"
    assert Tokenizer.load(final).model_max_length == 32
    pipe = masklm.load(final)
    assert pipe.max_length == 32 < pipe.config.max_position_embeddings
    long = " ".join(["alpha"] * 40)
    assert main(["embed", "--model", str(final), long]) == 2
    assert "more than the model's maximum of 32" in capsys.readouterr().err
    assert main(["embed", "--model", str(final), "--windows", long]) == 0
    assert "1 input read as 2 windows" in capsys.readouterr().err
    more = tmp_path / "more"
    assert main(["train", "--init-from", str(final), "--corpus", str(corpus), "--seq-len", "16", "--max-steps", "1",
                 "--batch-size", "4", "--no-progress", "--out", str(more)]) == 0
    assert Tokenizer.load(more / "final").model_max_length == 32  # it has read rows of 32 before
