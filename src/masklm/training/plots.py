"""Plots of a run's metrics (written with matplotlib's file-only backend)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: Path, out_png: Path) -> Path | None:
    """Training loss per objective and held-out loss against step, as a PNG. None when there is nothing to plot."""
    import matplotlib  # lazy: only the end of a run plots, and matplotlib takes a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train: dict[str, tuple[list[int], list[float]]] = {}
    evals: tuple[list[int], list[float]] = ([], [])
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "eval_loss" in rec:
            evals[0].append(rec["step"])
            evals[1].append(rec["eval_loss"])
        elif "loss" in rec:
            xs, ys = train.setdefault(rec["objective"], ([], []))
            xs.append(rec["step"])
            ys.append(rec["loss"])
    if not train and not evals[0]:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in train.items():
        ax.plot(xs, ys, label=f"train ({name})")
    if evals[0]:
        ax.plot(evals[0], evals[1], "o-", label="held-out (15% masked)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
