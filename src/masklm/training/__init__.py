"""Training: optimizers and LR schedules, checkpoints, distributed set-up and the loop."""
