"""Objective schedules: parsing, AntLM phase boundaries in every unit, mix ratios, clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from masklm.errors import ConfigError
from masklm.objectives import ObjectiveOptions
from masklm.objectives.schedule import ObjectiveSchedule, build_schedule


def test_single_objective():
    s = ObjectiveSchedule.parse("mlm")
    assert s.kind == "single" and s.total_length is None and s.total_steps(10) is None
    assert {s.name_at(step, 3 * step + a) for step in range(50) for a in range(3)} == {"mlm"}
    assert s.phase_at(1000, 99.0, 10**9) == 0


def test_antlm_schedule_in_epochs_matches_the_spec():
    """research/antlm_gmlm.md §D.1: clm for e in [0, 4), mlm for [4, 20), clm for [20, 24)."""
    s = ObjectiveSchedule.parse("clm:4,mlm:16,clm:4", unit="epochs")
    assert s.names == ("clm", "mlm", "clm") and s.lengths == (4.0, 16.0, 4.0)
    assert s.total_length == 24.0 and s.boundaries == (0.0, 4.0, 20.0, 24.0)
    for e in range(30):
        expected = "clm" if e < 4 or e >= 20 else "mlm"
        assert s.name_at(0, 0, epoch_float=float(e)) == expected, e
    spe = 7  # steps per epoch; epoch_float = step / spe as the trainer computes it
    assert s.total_steps(spe) == 24 * spe
    for boundary, before, after in [(4, 0, 1), (20, 1, 2)]:
        b = boundary * spe
        assert s.phase_at(b - 1, (b - 1) / spe) == before
        assert s.phase_at(b, b / spe) == after
        assert s.phase_at(b + 1, (b + 1) / spe) == after
    assert s.phase_at(0, 0.0) == 0
    assert s.phase_at(24 * spe - 1, (24 * spe - 1) / spe) == 2
    assert s.phase_at(24 * spe, 24.0) == 2 and s.phase_at(10**6, 10**6 / spe) == 2  # past the end: last phase


def test_phase_changes_are_detected_exactly_at_boundaries():
    s = ObjectiveSchedule.parse("clm:0.5,mlm:1.25,clm:0.25", unit="epochs")
    spe = 8
    phases = [s.phase_at(step, step / spe) for step in range(30)]
    changes = [step for step in range(1, 30) if phases[step] != phases[step - 1]]
    assert changes == [4, 14]  # 0.5 * 8 and 1.75 * 8
    assert s.total_steps(spe) == 16


def test_phases_in_steps():
    s = ObjectiveSchedule.parse("clm:5,mlm:7,clm:3", unit="steps")
    expected = ["clm"] * 5 + ["mlm"] * 7 + ["clm"] * 3
    assert [s.name_at(step, step) for step in range(15)] == expected
    for step, phase in [(4, 0), (5, 1), (6, 1), (11, 1), (12, 2), (13, 2), (14, 2), (15, 2), (100, 2)]:
        assert s.phase_at(step) == phase, step
    assert s.total_length == 15 and s.total_steps(steps_per_epoch=3) == 15


def test_phases_in_tokens():
    s = ObjectiveSchedule.parse("mlm:1000,clm:500", unit="tokens")
    for tokens, phase in [(0, 0), (999, 0), (1000, 1), (1001, 1), (1499, 1), (1500, 1), (10**9, 1)]:
        assert s.phase_at(step=3, tokens_seen=tokens) == phase, tokens
        assert s.name_at(3, 3, tokens_seen=tokens) == ("mlm", "clm")[phase]
    assert s.total_length == 1500
    assert s.total_steps(steps_per_epoch=10, tokens_per_step=128) == 12  # ceil(1500 / 128)
    with pytest.raises(ConfigError):
        s.total_steps(steps_per_epoch=10)


@pytest.mark.parametrize("text, window, counts", [
    ("mntp=15,clm=1", 16, {"mntp": 15, "clm": 1}),
    ("mlm=3,clm=2", 5, {"mlm": 3, "clm": 2}),
    ("mlm=2,clm=2,diffusion=1", 5, {"mlm": 2, "clm": 2, "diffusion": 1}),
    ("mlm=4,clm=2", 3, {"mlm": 2, "clm": 1}),           # reduced by the gcd
    ("mlm=0.5,clm=0.25", 3, {"mlm": 2, "clm": 1}),      # exact fractions
    ("mntp=15,clm=0", 1, {"mntp": 1}),                  # a zero weight never trains
])
def test_mix_ratio_holds_in_every_window(text, window, counts):
    s = ObjectiveSchedule.parse(text)
    assert s.kind == "mix" and s.total_length is None
    seq = [s.name_at(step=0, micro_index=i) for i in range(400)]
    for lo in range(len(seq) - window + 1):  # every sliding window, not just aligned ones
        win = seq[lo:lo + window]
        assert {n: win.count(n) for n in counts} == counts, (lo, win)
        assert set(win) <= set(counts)


def test_mix_spreads_the_minority_evenly_and_ignores_the_step():
    s = ObjectiveSchedule.parse("mntp=15,clm=1")
    clm = [i for i in range(200) if s.name_at(0, i) == "clm"]
    assert all(b - a == 16 for a, b in zip(clm, clm[1:]))
    s = ObjectiveSchedule.parse("mlm=1,clm=1")
    assert [s.name_at(0, i) for i in range(6)] == ["mlm", "clm"] * 3
    # the choice depends only on the global micro-batch index, so it survives a resume and agrees across ranks
    assert [s.name_at(7, i, 3.5, 999) for i in range(6)] == ["mlm", "clm"] * 3


@pytest.mark.parametrize("text, unit, fragment", [
    ("bogus", "epochs", "unknown objective 'bogus'"),
    ("clm:4,bert:2", "epochs", "unknown objective 'bert'"),
    ("clm:0", "epochs", "length > 0"),
    ("mlm:-1", "epochs", "length > 0"),
    ("clm:4,,mlm", "epochs", "empty entry"),
    ("clm:4,mlm:16,", "epochs", "empty entry"),
    ("", "epochs", "empty entry"),
    ("mntp=0,clm=0", "epochs", "at least one weight > 0"),
    ("mntp=-1,clm=2", "epochs", ">= 0"),
    ("clm:4,mlm=1", "epochs", "use one form"),
    ("clm,mlm", "epochs", "without lengths or weights"),
    ("clm:4,mlm", "epochs", "must be name:number"),
    ("clm:x", "epochs", "not a number"),
    ("clm:4:5", "epochs", "must be name:number"),
    ("clm=1,clm=2", "epochs", "twice"),
    ("clm:1.5,mlm:2", "steps", "whole number of steps"),
    ("mlm", "hours", "unknown schedule unit"),
    ("mlm=1,clm=100003", "epochs", "small whole numbers"),
])
def test_parse_errors_are_one_clear_line(text, unit, fragment):
    with pytest.raises(ConfigError) as info:
        ObjectiveSchedule.parse(text, unit)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_fractional_epochs_and_describe():
    s = ObjectiveSchedule.parse(" clm : 0.5 , mlm : 2 ")
    assert s.names == ("clm", "mlm") and s.lengths == (0.5, 2.0)
    assert s.describe() == "clm 0.5 -> mlm 2 epochs"
    assert ObjectiveSchedule.parse("mntp=15,clm=1").describe() == "mix mntp 15 : clm 1"


def test_build_schedule_returns_the_scheduled_objectives():
    tok = SimpleNamespace(mask_id=4, pad_id=0, special_ids=[0, 1, 2, 3, 4], vocab_size=50)
    sched = build_schedule("clm:1,mntp:2,diffusion:1,mlm:1", tok, ObjectiveOptions(rate=0.2, seed=3), unit="steps")
    assert sched.names == ("clm", "mntp", "diffusion", "mlm")
    got = [sched.objective_at(step, step).name for step in range(5)]
    assert got == ["clm", "mntp", "mntp", "diffusion", "mlm"]
    assert sched.objective_at(1, 1) is sched.objective_at(2, 2)  # one instance per objective
    assert sched.objectives["mntp"].rate == 0.2 and sched.objectives["diffusion"].seed == 3
    assert [sched.phase_at(step) for step in range(6)] == [0, 1, 1, 2, 3, 3]
