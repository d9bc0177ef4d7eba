"""Resuming a run: a Trainer continues from its checkpoint, refusing one it cannot continue."""
from __future__ import annotations

from dataclasses import asdict

import torch

from .checkpoint import read_checkpoint, set_rng_state
from .train_config import lr_factor


def resume_from(trainer, path) -> None:
    """Continue ``trainer`` (a :class:`~mrcnn_lite.engine.Trainer`) from checkpoint ``path``.

    A different model, number of classes or optimizer is a ValueError naming what differs; other
    changed settings (batch size, lr, epochs, ...) are applied from the trainer's config and listed in
    ``trainer.resume_changes`` (and printed).
    """
    state = read_checkpoint(path, map_location=trainer.device)
    need = ("model", "optimizer", "scheduler", "epoch", "global_step", "rng", "train_config")
    if not isinstance(state, dict) or any(k not in state for k in need):
        raise ValueError(f"cannot resume from {path}: it is not a Trainer checkpoint "
                         f"(missing {[k for k in need if not isinstance(state, dict) or k not in state]})")
    saved_model = state.get("model_config") or {}
    if saved_model and trainer.model_config and saved_model != trainer.model_config:
        # a field one side lacks reads as None, which for mask_batch_size_per_image is its default
        diff = [f"{k}: {saved_model.get(k)!r} in the checkpoint, {trainer.model_config.get(k)!r} now"
                for k in sorted(set(saved_model) | set(trainer.model_config))
                if saved_model.get(k) != trainer.model_config.get(k)]
        if diff:
            raise ValueError(f"cannot resume from {path}: the model differs ({'; '.join(diff)})")
    old = state["train_config"]
    if old.get("optimizer") != trainer.cfg.optimizer:
        raise ValueError(f"cannot resume from {path}: it was trained with optimizer {old.get('optimizer')!r}, "
                         f"this run uses {trainer.cfg.optimizer!r} (their states do not convert)")
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as e:
        # torch lists every mismatch on its own line after a header; the first one says enough
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ValueError(f"cannot resume from {path}: its weights do not fit this model "
                         f"({lines[1] if len(lines) > 1 else lines[0]}"
                         f"{' ...' if len(lines) > 2 else ''})") from e
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"cannot resume from {path}: its optimizer state does not fit this model's "
                         f"parameters ({e})") from e
    trainer.scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.global_step = state["epoch"], state["global_step"]
    trainer.epoch_samples = state.get("epoch_samples", 0)
    trainer.saved_step = trainer.global_step
    trainer.history = state["history"]
    set_rng_state({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state["rng"].items()})

    now = asdict(trainer.cfg)
    trainer.resume_changes = [f"{k} {old[k]!r} -> {now[k]!r}" for k in now
                              if k in old and k not in ("progress", "num_workers") and
                              (list(old[k]) if isinstance(old[k], (list, tuple)) else old[k]) !=
                              (list(now[k]) if isinstance(now[k], (list, tuple)) else now[k])]
    if trainer.resume_changes:
        # The optimizer state carries the old hyperparameters; this run's config wins.
        for g in trainer.optimizer.param_groups:
            g["initial_lr"] = trainer.cfg.lr
            g["weight_decay"] = trainer.cfg.weight_decay
            if "momentum" in g:
                g["momentum"] = trainer.cfg.momentum
        trainer.scheduler.base_lrs = [trainer.cfg.lr for _ in trainer.optimizer.param_groups]
        factor = lr_factor(trainer.global_step, trainer.total_iters, trainer.cfg)
        for g in trainer.optimizer.param_groups:
            g["lr"] = trainer.cfg.lr * factor
        if trainer.rank == 0:
            print(f"note: resuming {path} at step {trainer.global_step} with changed settings: "
                  + ", ".join(trainer.resume_changes), flush=True)
