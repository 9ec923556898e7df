"""The objectives by name: the one list that ``--objective``, ``training_args.json`` and the readers share.

Adding an objective means writing its class (``name``, ``reading``, ``from_config``, ``__call__``; see
``objectives.base.Objective``) and listing it here; nothing else tests names.
"""

from __future__ import annotations

from masklm.errors import ConfigError
from masklm.objectives.base import Objective, ObjectiveOptions
from masklm.objectives.clm import CausalLM
from masklm.objectives.diffusion import MaskedDiffusion
from masklm.objectives.mlm import MaskedLM
from masklm.objectives.mntp import MaskedNextToken
from masklm.tokenizer import Tokenizer

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (MaskedLM, CausalLM, MaskedNextToken, MaskedDiffusion)
}
OBJECTIVE_NAMES = tuple(OBJECTIVES)


def build_objective(name: str, tokenizer: Tokenizer, options: ObjectiveOptions | None = None) -> Objective:
    """An objective by name: ``mlm``, ``clm``, ``mntp`` (GPT-BERT) or ``diffusion`` (MDLM), built by its own
    ``from_config`` (None: the default options). ``rate``, ``split`` and ``masking`` apply to mlm and
    mntp, ``seed`` to every masked objective, ``diffusion_eps`` (the smallest t) to diffusion."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVE_NAMES)}")
    return OBJECTIVES[name].from_config(options or ObjectiveOptions(), tokenizer)
