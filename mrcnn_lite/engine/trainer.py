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

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data.transforms import collate_fn
from .checkpoint import remove_stale_temporaries, rng_state, save_checkpoint
from .metrics import write_metrics
from .resume import resume_from
from .train_config import TrainConfig, lr_factor
from .train_step import NonFiniteLossError, first_non_finite, train_step



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
                          num_workers=self.cfg.num_workers, collate_fn=collate_fn,
                          generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    # ----------------------------------------------------------------- one step
    def train_step(self, images, targets, on_checked: Optional[Callable[[], None]] = None) -> Dict[str, float]:
        """:func:`train_step` with this trainer's model, optimizer, scaler and clipping; then the
        learning-rate schedule advances one step. Returns the loss terms as floats."""
        losses = train_step(  # the function of train_step.py, not this method
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
        """Continue from checkpoint ``path`` (see :func:`~mrcnn_lite.engine.resume.resume_from`)."""
        resume_from(self, path)

    def write_metrics(self, plot: bool = True) -> None:
        """``metrics.json``, ``metrics.csv`` and (``plot``) ``losses.png`` in the run folder."""
        write_metrics(self.out_dir, self.history, plot)
