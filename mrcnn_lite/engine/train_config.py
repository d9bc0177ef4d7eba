"""What a training run is told: :class:`TrainConfig`, and the learning-rate schedule it describes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 4                 # total over all processes
    optimizer: str = "sgd"              # "sgd" (momentum 0.9) or "adamw"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100             # linear warmup from lr * warmup_factor
    warmup_factor: float = 1e-3
    schedule: str = "cosine"            # "cosine" or "step"
    step_milestones: Tuple[float, ...] = (0.75, 0.9)  # "step": fractions of all iterations
    gamma: float = 0.1                  # "step": lr multiplier at each milestone
    clip_grad_norm: Optional[float] = None
    amp: str = "off"                    # "off", "bf16" (CPU or CUDA) or "fp16" (CUDA only)
    eval_every: int = 1                 # epochs between evaluations (0: never)
    eval_every_steps: int = 0           # also evaluate every this many steps (0: only at epoch ends)
    save_every: int = 0                 # steps between checkpoints (0: only at epoch ends and the end)
    seed: int = 0
    num_workers: int = 0
    progress: bool = True


def lr_factor(it: int, total: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at iteration ``it`` of ``total``: linear warmup, then cosine or step decay."""
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * min(it, total) / max(total, 1)))
    elif cfg.schedule == "step":
        decay = cfg.gamma ** sum(it >= m * total for m in cfg.step_milestones)
    else:
        raise ValueError(f"schedule must be 'cosine' or 'step', got {cfg.schedule!r}")
    return warm * decay
