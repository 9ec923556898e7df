"""Training objectives: each turns a packed batch into (inputs, labels, attention mode, loss weighting).

``mlm`` (BERT), ``clm`` (causal), ``mntp`` (GPT-BERT masked next-token) and ``diffusion`` (MDLM), plus
``schedule``: AntLM phases and micro-batch mixes of them.
"""

from masklm.objectives.base import (
    OBJECTIVE_NAMES,
    ObjectiveBatch,
    batch_denominator,
    build_objective,
    objective_loss,
    step_loss_scales,
)
from masklm.objectives.schedule import ObjectiveSchedule, ScheduledObjectives, build_schedule

__all__ = [
    "OBJECTIVE_NAMES",
    "ObjectiveBatch",
    "ObjectiveSchedule",
    "ScheduledObjectives",
    "batch_denominator",
    "build_objective",
    "build_schedule",
    "objective_loss",
    "step_loss_scales",
]
