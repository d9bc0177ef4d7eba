"""The training loop: optimizer, warmup + decay schedule, AMP, checkpoints, resume, DDP.

    trainer = Trainer(model, train_set, TrainConfig(epochs=12), out_dir="runs/x", val_set=val_set)
    history = trainer.fit()            # or trainer.fit(resume=True) to continue a stopped run

``model(images, targets)`` must return a dict of scalar losses in training mode (the Mask R-CNN
contract). One step: forward, sum the loss terms, check they are finite, backward, (clip), step.

Resuming gives the same weights as a run that was never stopped: the data order of epoch ``e`` is a
pure function of ``(seed, e)``, and every random generator is saved with the checkpoint.
Under ``torchrun`` (``torch.distributed`` initialised) the model is wrapped in
DistributedDataParallel and each process reads its share of every batch.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .checkpoint import read_checkpoint, rng_state, save_checkpoint, set_rng_state


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss term becomes NaN or infinite; training stops, the last checkpoint is kept."""


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
    amp: str = "off"                    # "off", "bf16" or "fp16" (CUDA only)
    eval_every: int = 1                 # epochs between evaluations (0: never)
    seed: int = 0
    num_workers: int = 0
    progress: bool = True


def collate(batch):
    """``[(image, target), ...]`` -> ``([images], [targets])``: Mask R-CNN takes lists, not a stacked batch."""
    images, targets = zip(*batch)
    return list(images), list(targets)


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


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


class Trainer:
    """Trains a detection model that returns a loss dict; see the module docstring.

    Args:
        model: ``nn.Module``; ``model(images, targets) -> {name: scalar loss}`` in train mode.
        train_set: dataset of ``(image (3, H, W) float, target dict)``.
        cfg: ``TrainConfig``.
        out_dir: where ``checkpoint.pt``, ``metrics.json``, ``metrics.csv`` and ``losses.png`` go.
        val_set: optional dataset for periodic evaluation with ``evaluate_fn``.
        evaluate_fn: ``evaluate_fn(model, val_set) -> dict``; default: COCO AP (``engine.coco_eval.evaluate``).
        device: ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        model_config: saved in the checkpoint so ``load_checkpoint`` can rebuild the model
            (default: ``model.cfg.to_dict()`` when the model has one).
        meta: optional plain dict saved as ``checkpoint["meta"]`` (e.g. ``{"class_names": [...]}``).
    """

    def __init__(self, model: nn.Module, train_set, cfg: TrainConfig, out_dir, val_set=None,
                 evaluate_fn: Optional[Callable] = None, device="cpu", model_config: Optional[dict] = None,
                 meta: Optional[dict] = None):
        if cfg.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
        if cfg.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"amp must be 'off', 'bf16' or 'fp16', got {cfg.amp!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        if model_config is None and hasattr(model, "cfg") and hasattr(model.cfg, "to_dict"):
            model_config = model.cfg.to_dict()
        self.model_config = model_config
        self.meta = dict(meta or {})
        if evaluate_fn is None and val_set is not None:
            from .coco_eval import evaluate as evaluate_fn
        self.evaluate_fn = evaluate_fn

        self.world = dist.get_world_size() if _is_dist() else 1
        self.rank = dist.get_rank() if _is_dist() else 0
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes")
        self.ddp_model = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.iters_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
        total = self.iters_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(it, total, cfg))
        use_amp = cfg.amp != "off" and self.device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if use_amp else None
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.epoch = 0          # epochs completed
        self.global_step = 0
        self.history: Dict[str, List[dict]] = {"train": [], "eval": []}

    # ----------------------------------------------------------------- data
    def _loader(self, epoch: int) -> DataLoader:
        per_process = self.cfg.batch_size // self.world
        if self.world > 1:
            sampler = DistributedSampler(self.train_set, self.world, self.rank, shuffle=True, seed=self.cfg.seed)
            sampler.set_epoch(epoch)
        else:
            # The same permutation DistributedSampler draws, so one process sees the same batches
            # that several processes share between them.
            g = torch.Generator().manual_seed(self.cfg.seed + epoch)
            sampler = torch.randperm(len(self.train_set), generator=g).tolist()
        return DataLoader(self.train_set, batch_size=per_process, sampler=sampler,
                          num_workers=self.cfg.num_workers, collate_fn=collate)

    # ----------------------------------------------------------------- one step
    def train_step(self, images, targets) -> Dict[str, float]:
        """Forward, finite check, backward, step. Returns the loss terms as floats (averaged over processes)."""
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss_dict = self.ddp_model(images, targets)
        loss = sum(loss_dict.values())
        names = list(loss_dict)
        values = torch.stack([v.detach().float() for v in loss_dict.values()])
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        bad = [n for n, v in zip(names, values.tolist()) if not math.isfinite(v)]
        if bad:
            detail = ", ".join(f"{n}={v}" for n, v in zip(names, values.tolist()))
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.epoch + 1}, step {self.global_step + 1} "
                f"(term{'s' if len(bad) > 1 else ''} {', '.join(bad)}): {detail}. Training stopped; "
                f"the last good checkpoint is untouched: {self.checkpoint_path}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        out = dict(zip(names, values.tolist()))
        out["loss"] = sum(out.values())
        return out

    def train_one_epoch(self) -> Dict[str, float]:
        from tqdm.auto import tqdm

        self.ddp_model.train()
        running: Dict[str, float] = {}
        loader = self._loader(self.epoch)
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   disable=not self.cfg.progress or self.rank != 0, leave=False)
        for i, (images, targets) in enumerate(bar):
            losses = self.train_step(images, targets)
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + (v - running.get(k, 0.0)) / (i + 1)  # running mean
            self.history["train"].append({"epoch": self.epoch + 1, "step": self.global_step,
                                          "lr": self.optimizer.param_groups[0]["lr"], **losses})
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in running.items()})
        self.epoch += 1
        return running

    # ----------------------------------------------------------------- the run
    def fit(self, resume: bool = False, until_epoch: Optional[int] = None) -> Dict[str, List[dict]]:
        """Train until ``cfg.epochs`` epochs are done; with ``resume`` continue from ``checkpoint.pt``.

        ``until_epoch`` stops early after that many epochs (the schedule still spans ``cfg.epochs``),
        e.g. to split a long run over several sessions: ``fit(until_epoch=2)`` then ``fit(resume=True)``.
        """
        stop = self.cfg.epochs if until_epoch is None else min(until_epoch, self.cfg.epochs)
        if resume and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)
        elif not resume:
            torch.manual_seed(self.cfg.seed)
        while self.epoch < stop:
            t0 = time.perf_counter()
            running = self.train_one_epoch()
            record = {"epoch": self.epoch, "seconds": round(time.perf_counter() - t0, 2), **running}
            if self.evaluate_fn is not None and self.cfg.eval_every and (
                    self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs):
                if self.rank == 0:
                    record["eval"] = self.evaluate_fn(self.model, self.val_set)
                    self.history["eval"].append({"epoch": self.epoch, **record["eval"]})
            if self.rank == 0:
                self.save(self.checkpoint_path)
                self.write_metrics()
                if self.cfg.progress:
                    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in record.items() if k != "eval"), flush=True)
        return self.history

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": self.model_config,
            "meta": self.meta,
            "train_config": asdict(self.cfg),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": rng_state(),
            "history": self.history,
        }

    def save(self, path) -> Path:
        return save_checkpoint(self.state_dict(), path)

    def load(self, path) -> None:
        state = read_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.history = state["history"]
        set_rng_state({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state["rng"].items()})

    def write_metrics(self) -> None:
        """``metrics.json`` (everything), ``metrics.csv`` (one row per step) and ``losses.png``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "metrics.json").write_text(json.dumps(self.history, indent=1))
        rows = self.history["train"]
        if rows:
            with open(self.out_dir / "metrics.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            plot_losses(rows, self.out_dir / "losses.png")


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
        fig.savefig(path, dpi=80, bbox_inches="tight")
    return ax
