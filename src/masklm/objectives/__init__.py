"""Training objectives: each turns a packed batch into (inputs, labels, attention mode, loss weighting).

``mlm`` (BERT), ``clm`` (causal), ``mntp`` (GPT-BERT masked next-token) and ``diffusion`` (MDLM), listed
in ``registry``; ``base`` holds their contract and shared loss, ``reading`` how trained weights are
read, and ``schedule`` AntLM phases and micro-batch mixes of them.
"""

from masklm.objectives.base import (
    ObjectiveBatch,
    ObjectiveOptions,
    batch_denominator,
    objective_loss,
    step_loss_scales,
)
from masklm.objectives.registry import OBJECTIVE_NAMES, OBJECTIVES, build_objective
from masklm.objectives.schedule import ObjectiveSchedule, ScheduledObjectives, build_schedule

__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "ObjectiveBatch",
    "ObjectiveOptions",
    "ObjectiveSchedule",
    "ScheduledObjectives",
    "batch_denominator",
    "build_objective",
    "build_schedule",
    "objective_loss",
    "step_loss_scales",
]
