"""The training loop: optimizer, warmup + decay schedule, AMP, checkpoints, resume, DDP.

    trainer = Trainer(model, train_set, TrainConfig(epochs=12), out_dir="runs/x", val_set=val_set)
    history = trainer.fit()            # or trainer.fit(resume=True) to continue a stopped run

``model(images, targets)`` must return a dict of scalar losses in training mode (the Mask R-CNN
contract). One step (:func:`train_step`): forward, sum the loss terms, check they are finite,
backward, check the gradients are finite, (clip), step.

Checkpoints (``out_dir/checkpoint.pt``) are written every ``save_every`` steps, at the end of
every epoch and at the end of the run, atomically. A checkpoint is only ever written with weights
that have been *proven* good: the save due after step k happens inside step k + 1, once the loss
and the gradients computed with those weights are known to be finite, and before the optimizer
changes them. So when a run diverges (a NaN or infinite loss or gradient), training stops with
``NonFiniteLossError`` naming the step, the loss term and the images of the batch, and the
checkpoint on disk is the last state whose loss and gradients were finite.

Resuming gives the same weights as a run that was never stopped, also from the middle of an
epoch: the data order of epoch ``e`` is a pure function of ``(seed, e)``, the checkpoint records
how many samples of the epoch were used and every random generator as it was before the next batch
was read. (Exact with ``num_workers=0``; with worker processes the data order is the same but
random augmentations run in the workers, whose generators are not restored mid-epoch.)
Under ``torchrun`` (``torch.distributed`` initialised) the model is wrapped in
DistributedDataParallel and each process reads its share of every batch.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .checkpoint import (atomic_write_text, read_checkpoint, remove_stale_temporaries, rng_state,
                         save_checkpoint, set_rng_state)


class NonFiniteLossError(FloatingPointError):
    """A loss term, a gradient or a weight became NaN or infinite; training stops and the last
    checkpoint (the last state with finite loss and gradients) is kept."""


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


def _batch_where(step, epoch, targets) -> str:
    where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step}"
    ids = [t["image_id"] for t in targets if isinstance(t, dict) and "image_id" in t]
    if ids:
        where += f", images {[int(i) for i in ids]}"
    return where


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images, targets, *,
               clip_grad_norm: Optional[float] = None, scaler=None, amp_dtype=None, device=None,
               world: int = 1, step: Optional[int] = None, epoch: Optional[int] = None,
               on_checked: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """One training step: forward, finite check, backward, gradient check, (clip), optimizer step.

    model: ``model(images, targets) -> {name: scalar loss}`` (train mode).
    images: list of (3, H, W) tensors; targets: list of dicts (moved to ``device`` when given).
    clip_grad_norm: clip the total gradient norm to this (None: no clipping).
    scaler: a ``torch.amp.GradScaler`` for fp16 (None or disabled: plain backward and step).
    amp_dtype: run the forward under ``torch.autocast`` with this dtype (None: full precision).
    world: processes to average the reported losses over (DDP averages the gradients itself).
    step, epoch: only for the error message. on_checked: called once the loss and the gradients
        are known to be finite, before the optimizer changes the weights -- the moment the current
        weights are proven good (the Trainer writes its checkpoint there).
    Returns the loss terms and their sum ``"loss"`` as floats (averaged over processes).
    Raises NonFiniteLossError naming the step, the loss term (or parameter) and the batch's images.
    """
    if device is not None:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    device_type = images[0].device.type if images else "cpu"
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss_dict = model(images, targets)
    loss = sum(loss_dict.values())
    names = list(loss_dict)
    values = torch.stack([v.detach().float() for v in loss_dict.values()])
    if world > 1:
        dist.all_reduce(values)
        values /= world
    floats = values.tolist()
    bad = [n for n, v in zip(names, floats) if not math.isfinite(v)]
    if bad:
        detail = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, floats))
        raise NonFiniteLossError(
            f"non-finite loss at {_batch_where(step, epoch, targets)} "
            f"(term{'s' if len(bad) > 1 else ''} {', '.join(bad)}): {detail}")
    optimizer.zero_grad(set_to_none=True)
    scaling = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if scaling else loss).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if scaling:
        # fp16: an infinite gradient is routine (the loss scale was too high); the scaler skips
        # that step and lowers the scale, so it is not an error here.
        if clip_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
    else:
        # clip_grad_norm_ returns the norm before clipping; either way one pass over the gradients
        norm = (nn.utils.clip_grad_norm_(params, clip_grad_norm) if clip_grad_norm
                else nn.utils.get_total_norm([p.grad for p in params]))
        if not torch.isfinite(norm):
            first = next((n for n, p in model.named_parameters()
                          if p.grad is not None and not torch.isfinite(p.grad).all()), "(the norm overflowed)")
            raise NonFiniteLossError(
                f"non-finite gradient at {_batch_where(step, epoch, targets)} (parameter {first}; "
                f"loss {sum(floats):.4g}: " + ", ".join(f"{n}={v:.4g}" for n, v in zip(names, floats)) + ")")
    if on_checked is not None:
        on_checked()
    if scaling:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    out = dict(zip(names, floats))
    out["loss"] = sum(out.values())
    return out


def first_non_finite(named_tensors) -> Optional[str]:
    """Name of the first floating-point tensor with a NaN or infinite value, or None."""
    for name, t in named_tensors:
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


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
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        if model_config is None and hasattr(model, "cfg") and hasattr(model.cfg, "to_dict"):
            # num_classes from the model: a fine-tuning script may have replaced the predictors
            model_config = {**model.cfg.to_dict(), "num_classes": getattr(model, "num_classes", model.cfg.num_classes)}
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
        self.total_iters = self.iters_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, self.total_iters, self.cfg))
        if cfg.amp == "fp16" and self.device.type != "cuda":
            # fp16 needs loss scaling and fast fp16 kernels, which only CUDA has; bf16 runs anywhere
            raise ValueError(f"amp='fp16' needs a CUDA device (this run is on {self.device.type}); "
                             "use amp='bf16' or 'off'")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.epoch = 0          # epochs completed
        self.epoch_samples = 0  # samples of the current epoch already trained on
        self.global_step = 0
        self.saved_step = None  # global_step of the checkpoint on disk (None: none written by us)
        self.history: Dict[str, List[dict]] = {"train": [], "eval": []}
        self.resume_changes: List[str] = []

    # ----------------------------------------------------------------- data
    def _loader(self, epoch: int, skip: int = 0) -> DataLoader:
        """The batches of ``epoch`` (0-based), leaving out its first ``skip`` samples (a resumed epoch)."""
        per_process = self.cfg.batch_size // self.world
        if self.world > 1:
            sampler = DistributedSampler(self.train_set, self.world, self.rank, shuffle=True, seed=self.cfg.seed)
            sampler.set_epoch(epoch)
            sampler = list(sampler)[skip // self.world:]
        else:
            # The same permutation DistributedSampler draws, so one process sees the same batches
            # that several processes share between them.
            g = torch.Generator().manual_seed(self.cfg.seed + epoch)
            sampler = torch.randperm(len(self.train_set), generator=g).tolist()[skip:]
        # Its own generator: creating the loader then draws nothing from the global RNG, so where
        # a run (or a resumed run) creates it does not shift the random numbers of the steps.
        return DataLoader(self.train_set, batch_size=per_process, sampler=sampler,
                          num_workers=self.cfg.num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    # ----------------------------------------------------------------- one step
    def train_step(self, images, targets, on_checked: Optional[Callable[[], None]] = None) -> Dict[str, float]:
        """:func:`train_step` with this trainer's model, optimizer, scaler and clipping; then the
        learning-rate schedule advances one step. Returns the loss terms as floats."""
        losses = train_step(  # the module-level function above, not this method
            self.ddp_model, self.optimizer, images, targets, clip_grad_norm=self.cfg.clip_grad_norm,
            scaler=self.scaler, amp_dtype=self.amp_dtype, device=self.device, world=self.world,
            step=self.global_step + 1, epoch=self.epoch + 1, on_checked=on_checked)
        self.scheduler.step()
        self.global_step += 1
        return losses

    def _save_due(self) -> bool:
        """Is the state now (before the next step) one to checkpoint? Epoch ends and every save_every
        steps, counting the start (so a run that diverges at once still leaves a checkpoint to resume)."""
        if self.saved_step == self.global_step:
            return False
        if self.global_step == 0:
            return bool(self.cfg.save_every)
        return self.epoch_samples == 0 or bool(self.cfg.save_every and self.global_step % self.cfg.save_every == 0)

    def train_one_epoch(self) -> Dict[str, float]:
        from tqdm.auto import tqdm

        self.ddp_model.train()
        loader = self._loader(self.epoch, skip=self.epoch_samples)
        bar = tqdm(total=self.iters_per_epoch, initial=math.ceil(self.epoch_samples / self.cfg.batch_size),
                   desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   disable=not self.cfg.progress or self.rank != 0, leave=False)
        batches = iter(loader)
        while True:
            # The random state before the batch is read (transforms draw from it) is the one a
            # checkpoint written during this step must restore.
            rng = rng_state()
            try:
                images, targets = next(batches)
            except StopIteration:
                break
            on_checked = None
            if self._save_due():
                # The forward pass updates BatchNorm's running statistics before the weights are
                # proven good, so keep the buffers as they are now for the checkpoint.
                buffers = {n: b.detach().clone() for n, b in self.model.named_buffers()}
                on_checked = lambda: self.save(self.checkpoint_path, rng=rng, buffers=buffers)  # noqa: E731
            losses = self.train_step(images, targets, on_checked=on_checked)
            self.epoch_samples += self.cfg.batch_size
            self.history["train"].append({"epoch": self.epoch + 1, "step": self.global_step,
                                          "lr": self.optimizer.param_groups[0]["lr"], **losses})
            if self._eval_due():
                self.evaluate_now()
            bar.update()
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in losses.items()})
        bar.close()
        self.epoch += 1
        self.epoch_samples = 0
        rows = [r for r in self.history["train"] if r["epoch"] == self.epoch]
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.startswith("loss")} if rows else {}

    def _epoch_end_evaluated(self, epoch: int) -> bool:
        """Does ``fit`` evaluate at the end of ``epoch`` (1-based)? Every ``eval_every`` epochs, and the last."""
        return bool(self.evaluate_fn is not None and self.cfg.eval_every
                    and (epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs))

    def _eval_due(self) -> bool:
        """Evaluation every ``eval_every_steps`` steps, except at an epoch's end that ``fit`` evaluates anyway."""
        n = self.cfg.eval_every_steps
        if not (n and self.evaluate_fn is not None and self.rank == 0 and self.global_step % n == 0):
            return False
        epoch_ends = self.global_step % self.iters_per_epoch == 0
        return not (epoch_ends and self._epoch_end_evaluated(self.epoch + 1))

    def evaluate_now(self) -> dict:
        """Evaluate on the validation set, record it in ``history["eval"]`` with the step, and go on training."""
        result = self.evaluate_fn(self.model, self.val_set)
        self.model.train()
        self.history["eval"].append({"epoch": self.epoch + (self.epoch_samples > 0), "step": self.global_step,
                                     **result})
        return result

    # ----------------------------------------------------------------- the run
    def fit(self, resume: bool = False, until_epoch: Optional[int] = None) -> Dict[str, List[dict]]:
        """Train until ``cfg.epochs`` epochs are done; with ``resume`` continue from ``checkpoint.pt``.

        ``until_epoch`` stops early after that many epochs (the schedule still spans ``cfg.epochs``),
        e.g. to split a long run over several sessions: ``fit(until_epoch=2)`` then ``fit(resume=True)``.
        A run can also be stopped (or killed) at any step: ``fit(resume=True)`` continues from the
        last checkpoint, mid-epoch if need be.
        """
        stop = self.cfg.epochs if until_epoch is None else min(until_epoch, self.cfg.epochs)
        if self.rank == 0:
            for name in ("checkpoint.pt", "metrics.json", "metrics.csv"):
                remove_stale_temporaries(self.out_dir / name)  # left by a run that was killed mid-write
        if resume and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)
        elif not resume:
            torch.manual_seed(self.cfg.seed)
        while self.epoch < stop:
            t0 = time.perf_counter()
            running = self.train_one_epoch()
            record = {"epoch": self.epoch, "seconds": round(time.perf_counter() - t0, 2), **running}
            if self._epoch_end_evaluated(self.epoch):
                if self.rank == 0:
                    record["eval"] = self.evaluate_now()
            if self.rank == 0:
                self.write_metrics()
                if self.cfg.progress:
                    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in record.items() if k != "eval"), flush=True)
        if self.rank == 0 and self.saved_step != self.global_step:
            # The end of the run: no next step will vouch for these weights, so check them directly.
            self.save(self.checkpoint_path)
        if self.rank == 0 and self.history["train"] and not (self.out_dir / "losses.png").exists():
            self.write_metrics()  # e.g. a resumed run that had nothing left to do
        return self.history

    # ----------------------------------------------------------------- state
    def state_dict(self, rng: Optional[dict] = None, buffers: Optional[dict] = None) -> dict:
        model_state = self.model.state_dict()
        model_state.update({k: v for k, v in (buffers or {}).items() if k in model_state})
        return {
            "model": model_state,
            "model_config": self.model_config,
            "meta": self.meta,
            "train_config": asdict(self.cfg),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_samples": self.epoch_samples,
            "global_step": self.global_step,
            "rng": rng if rng is not None else rng_state(),
            "history": self.history,
        }

    def save(self, path, rng: Optional[dict] = None, buffers: Optional[dict] = None) -> Path:
        """Write the checkpoint (and the metrics) atomically, after checking every weight and every
        optimizer statistic is finite; raises NonFiniteLossError (writing nothing) otherwise."""
        state = self.state_dict(rng, buffers)
        bad = first_non_finite(state["model"].items()) or first_non_finite(
            (f"optimizer state {k} of parameter {i}", v)
            for i, s in state["optimizer"]["state"].items() for k, v in s.items())
        if bad:
            raise NonFiniteLossError(f"non-finite value in {bad} after step {self.global_step}; not saved, "
                                     f"the last good checkpoint is kept")
        path = save_checkpoint(state, path)
        self.saved_step = self.global_step
        self.write_metrics(plot=False)  # the numbers with every checkpoint; the picture once an epoch
        return path

    def load(self, path) -> None:
        """Continue from checkpoint ``path``. A different model, number of classes or optimizer is a
        ValueError naming what differs; other changed settings (batch size, lr, epochs, ...) are
        applied from this trainer's config and listed in ``self.resume_changes`` (and printed)."""
        state = read_checkpoint(path, map_location=self.device)
        need = ("model", "optimizer", "scheduler", "epoch", "global_step", "rng", "train_config")
        if not isinstance(state, dict) or any(k not in state for k in need):
            raise ValueError(f"cannot resume from {path}: it is not a Trainer checkpoint "
                             f"(missing {[k for k in need if not isinstance(state, dict) or k not in state]})")
        saved_model = state.get("model_config") or {}
        if saved_model and self.model_config and saved_model != self.model_config:
            # a field one side lacks reads as None, which for mask_batch_size_per_image is its default
            diff = [f"{k}: {saved_model.get(k)!r} in the checkpoint, {self.model_config.get(k)!r} now"
                    for k in sorted(set(saved_model) | set(self.model_config))
                    if saved_model.get(k) != self.model_config.get(k)]
            if diff:
                raise ValueError(f"cannot resume from {path}: the model differs ({'; '.join(diff)})")
        old = state["train_config"]
        if old.get("optimizer") != self.cfg.optimizer:
            raise ValueError(f"cannot resume from {path}: it was trained with optimizer {old.get('optimizer')!r}, "
                             f"this run uses {self.cfg.optimizer!r} (their states do not convert)")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            # torch lists every mismatch on its own line after a header; the first one says enough
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise ValueError(f"cannot resume from {path}: its weights do not fit this model "
                             f"({lines[1] if len(lines) > 1 else lines[0]}"
                             f"{' ...' if len(lines) > 2 else ''})") from e
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"cannot resume from {path}: its optimizer state does not fit this model's "
                             f"parameters ({e})") from e
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.epoch_samples = state.get("epoch_samples", 0)
        self.saved_step = self.global_step
        self.history = state["history"]
        set_rng_state({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state["rng"].items()})

        now = asdict(self.cfg)
        self.resume_changes = [f"{k} {old[k]!r} -> {now[k]!r}" for k in now
                               if k in old and k not in ("progress", "num_workers") and
                               (list(old[k]) if isinstance(old[k], (list, tuple)) else old[k]) !=
                               (list(now[k]) if isinstance(now[k], (list, tuple)) else now[k])]
        if self.resume_changes:
            # The optimizer state carries the old hyperparameters; this run's config wins.
            for g in self.optimizer.param_groups:
                g["initial_lr"] = self.cfg.lr
                g["weight_decay"] = self.cfg.weight_decay
                if "momentum" in g:
                    g["momentum"] = self.cfg.momentum
            self.scheduler.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]
            factor = lr_factor(self.global_step, self.total_iters, self.cfg)
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.lr * factor
            if self.rank == 0:
                print(f"note: resuming {path} at step {self.global_step} with changed settings: "
                      + ", ".join(self.resume_changes), flush=True)

    def write_metrics(self, plot: bool = True) -> None:
        """``metrics.json`` (everything), ``metrics.csv`` (one row per step) and (``plot``)
        ``losses.png``, each written atomically."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / "metrics.json", json.dumps(self.history, indent=1))
        rows = self.history["train"]
        if rows:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())
            if plot:
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
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.png")
        fig.savefig(tmp, dpi=80, bbox_inches="tight")
        os.replace(tmp, path)  # a reader never sees half a picture
    return ax
