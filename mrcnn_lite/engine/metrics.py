"""A run's records on disk: ``metrics.json`` (everything), ``metrics.csv`` (one row per step), ``losses.png``."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Dict, List

from .checkpoint import atomic_write_text


def write_metrics(out_dir, history: Dict[str, List[dict]], plot: bool = True) -> None:
    """``metrics.json`` (``history``: ``{"train": [row per step], "eval": [...]}``), ``metrics.csv`` (the
    training rows) and (``plot``) ``losses.png`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(history, indent=1))
    rows = history["train"]
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out_dir / "metrics.csv", buf.getvalue())
        if plot:
            plot_losses(rows, out_dir / "losses.png")


def plot_losses(rows: List[dict], path=None, ax=None):
    """Plot every ``loss*`` column of the step history against the step; save to ``path`` if given.

    Uses a standalone ``Figure`` when saving, so it never changes the notebook's plotting backend.
    """
    fig = None
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
    steps = [r["step"] for r in rows]
    for k in rows[0]:
        if k.startswith("loss"):
            ax.plot(steps, [r[k] for r in rows], label=k, lw=2 if k == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    if path is not None and fig is not None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.png")
        fig.savefig(tmp, dpi=80, bbox_inches="tight")
        os.replace(tmp, path)  # a reader never sees half a picture
    return ax
