"""`masklm demo` end to end, time-bounded: it must beat the unigram baseline clearly."""

from __future__ import annotations

import json
import re

import pytest

from masklm.cli import main


@pytest.mark.slow
def test_demo_beats_unigram_baseline(tmp_path, capsys):
    out = tmp_path / "demo"
    # A step budget, not a time budget, so the outcome does not depend on how busy the machine is.
    assert main(["demo", "--out", str(out), "--minutes", "10", "--max-steps", "300", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    acc = float(re.search(r"held-out masked-token accuracy .*: ([\d.]+)%", printed).group(1))
    base = float(re.search(r"unigram baseline .*: ([\d.]+)%", printed).group(1))
    assert acc > base + 5.0, printed  # clearly, not by a hair
    assert "fill-mask" in printed and "masklm fill-mask --model" in printed
    # the hybrid scores a minimal pair and generates; both report what they did
    assert re.search(r"minimal pair \(mntp, .*\n\s+-?[\d.]+  The LORD is my shepherd\.\n\s+-?[\d.]+  The LORD are", printed)
    generated = re.search(r"generate \(([\w-]+), 32 tokens\):\n  (.+)\n  (\d+) network calls.*left-to-right: (\d+) calls",
                          printed)
    assert generated and generated.group(2).startswith("And God said,"), printed
    assert int(generated.group(4)) == 32  # left-to-right: one call per token (with the KV cache)
    # speculative: the prompt's call, two per drafting round, one per plain causal step
    rounds = re.search(r"(\d+) network calls \((\d+) drafting rounds, (\d+) causal steps\)", printed)
    assert generated.group(1) == "speculative" and rounds, printed
    calls, drafting, causal = map(int, rounds.groups())
    assert drafting >= 1 and calls == 1 + 2 * drafting + causal
    assert (out / "final" / "model.safetensors").is_file() and (out / "loss.png").is_file()
    # a second demo into the same non-empty folder is refused instead of mixing runs
    assert main(["demo", "--out", str(out), "--minutes", "0.1"]) == 2
    assert "pass another --out, or --overwrite to replace it" in capsys.readouterr().err


def test_demo_refuses_an_unknown_precision_in_one_line_before_writing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--precision", "half", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision must be one of fp32, bf16, fp16, got 'half'" in err, err
    assert not out.exists()


@pytest.mark.slow
def test_demo_trains_in_the_precision_it_is_given(tmp_path, capsys):
    """The advice line on a CPU with AMX names --precision, which the demo takes as masklm train does."""

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-steps", "10", "--precision", "bf16", "--no-progress"]) == 0
    args = json.loads((out / "training_args.json").read_text(encoding="utf-8"))
    assert args["precision"] == "bf16" and "held-out masked-token accuracy" in capsys.readouterr().out


def test_demo_stopped_early_leaves_no_folder_it_made(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the demo's training: the folder it made holds nothing worth resuming, so it goes, and a
    rerun starts cleanly; a folder that was there before is kept."""
    from masklm.training.trainer import Trainer

    def interrupted(self, step):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-steps", "5", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"removed {out}, which it had made" in err and "or 5 steps, whichever comes first" in err
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main(["demo", "--out", str(mine), "--max-steps", "5", "--no-progress"]) == 130
    assert mine.is_dir() and "removed" not in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x"), "--minutes", "nan"]) == 2
    assert "--minutes must be a number > 0, got nan" in capsys.readouterr().err
