"""objectives.reading: the one table that says how a trained model is read."""

import pytest

from masklm.objectives.reading import TrainedAs, objectives_reading_at

CASES = [  # objectives -> (mask shift, default metric, causal decoding, evaluators)
    (None, (0, "pll", "no", ("mlm",))),
    (["mlm"], (0, "pll", "no", ("mlm",))),
    (["clm"], (1, "causal", "trained", ("mlm", "causal"))),
    (["mntp", "clm"], (1, "mntp", "trained", ("mlm", "causal"))),
    (["clm", "mlm"], (0, "pll", "trained", ("mlm", "causal"))),          # AntLM: masks read at the mask
    (["diffusion"], (0, "pll", "no", ("mlm", "diffusion"))),
    (["mlm", "mntp"], (1, "mntp", "untrained", ("mlm", "causal"))),      # next-token labels win
    (["mntp"], (1, "mntp", "untrained", ("mlm", "causal"))),
]


@pytest.mark.parametrize("names,expected", CASES)
def test_reading_follows_the_objectives(names, expected):
    t = TrainedAs.from_names(names)
    assert (t.mask_shift, t.default_metric, t.causal_decoding, t.evaluators) == expected


def test_metric_fit_is_known_only_for_known_objectives():
    assert [TrainedAs.from_names(["mlm"]).fits(m) for m in ("pll", "pll-word-l2r", "causal", "mntp")] == \
        [True, True, False, False]
    assert TrainedAs.from_names(["mntp", "clm"]).fits("causal") and not TrainedAs.from_names(["mntp"]).fits("pll")
    assert all(TrainedAs.from_names(None).fits(m) for m in ("pll", "causal", "mntp"))
    assert TrainedAs.from_names(["mlm"]).fits("not-a-metric")  # unknown metrics are the scorer's to refuse


def test_import_ltg_objectives_for_a_reading():
    assert objectives_reading_at(0, "ltg-bert") == ["mlm"]
    assert objectives_reading_at(1, "gpt-bert") == ["mntp", "clm"]
    assert objectives_reading_at(1, "ltg-bert") == ["mntp"]
    assert TrainedAs.from_names(objectives_reading_at(1, "gpt-bert")).mask_shift == 1
