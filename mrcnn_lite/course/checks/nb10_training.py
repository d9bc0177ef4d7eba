"""Checkers of notebook 10: training."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ...engine.trainer import TrainConfig, lr_factor, train_step
from ..toy_detector import ToyDetector
from .runner import SEEDS, CheckResult, Fresh, gen, run_check


def reference_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: List[Tensor],
                         targets: List[Dict[str, Tensor]], clip_grad_norm: Optional[float] = None) -> Dict[str, float]:
    """One training step of the package's Trainer on the whole batch (no AMP, one process): forward, sum
    the loss terms, ``zero_grad``, backward, clip the gradient norm if asked, step. Returns the loss terms
    and their sum ``"loss"`` as plain floats: ``mrcnn_lite.engine.trainer.train_step``."""
    return train_step(model, optimizer, images, targets, clip_grad_norm=clip_grad_norm)


def reference_train_step_accumulate(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: List[Tensor],
                                    targets: List[Dict[str, Tensor]], micro_batch: int,
                                    clip_grad_norm: Optional[float] = None) -> Dict[str, float]:
    """What gradient accumulation must equal: one step on the whole batch (every loss term is a mean over
    the batch's images, and the micro-batches are equal in size)."""
    return reference_train_step(model, optimizer, images, targets, clip_grad_norm)


def _train_step_inputs(label: str, seed: int, names: Sequence[str], batch: int, micro_batch: int,
                       size: Tuple[int, int], clip: Optional[float], optimizer: str = "sgd",
                       constant: Sequence[str] = (), frozen_stem: bool = False, steps: int = 3):
    g = gen(200 + seed)
    f64 = dict(dtype=torch.float64)

    def build_model():
        model = ToyDetector(names, constant, frozen_stem).double()
        with torch.no_grad():
            wg = gen(300 + seed)
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=wg, **f64) * 0.5)
        return model

    if optimizer == "sgd":
        opt = Fresh("SGD(lr=0.1, momentum=0.9, weight_decay=1e-4) over the parameters with requires_grad",
                    lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1,
                                              momentum=0.9, weight_decay=1e-4))
    else:
        opt = Fresh("AdamW(lr=0.05, weight_decay=1e-2) over the parameters with requires_grad",
                    lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.05,
                                                weight_decay=1e-2))
    frozen = ", stem frozen" if frozen_stem else ""
    const = f", {list(constant)} constant 0" if constant else ""
    return label, dict(
        model=Fresh(f"a toy detector (float64) with the losses {list(names)}{const}{frozen}, weights from seed {seed}",
                    build_model),
        optimizer=opt,
        images=[torch.rand(3, *size, generator=g, **f64) for _ in range(batch)],
        targets=[{"boxes": torch.rand(1, 4, generator=g, **f64) * 48,
                  "labels": torch.randint(1, 4, (1,), generator=g)} for _ in range(batch)],
        micro_batch=micro_batch, clip_grad_norm=clip, steps=steps)


def _loss_floats(out, names: Sequence[str]) -> List[float]:
    """The values of ``out`` in the order ``names + ["loss"]``; a clear error when ``out`` is not such a dict."""
    want = list(names) + ["loss"]
    if not isinstance(out, dict):
        raise TypeError(f"the step must return a dict {{name: float}} with the keys {want}, got {type(out).__name__}")
    if sorted(out) != sorted(want):
        raise ValueError(f"the step must return the keys {want} (every loss term and their sum 'loss'), "
                         f"got {sorted(out)}")
    for k in want:
        if isinstance(out[k], Tensor):
            raise TypeError(f"out['{k}'] is a tensor: return plain floats (`.item()`); a history of loss tensors "
                            f"keeps every step's autograd graph alive")
    return [float(out[k]) for k in want]


def _call_train_step(fn: Callable, inputs: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
    """Call ``fn`` ``steps`` times on a fresh model and optimizer; return (the returned losses of every
    step ``(steps, K + 1)``, all weights after the last step)."""
    model = inputs["model"].build()
    optimizer = inputs["optimizer"].build(model)
    rows = []
    for _ in range(inputs["steps"]):
        out = fn(model, optimizer, inputs["images"], inputs["targets"], inputs["micro_batch"],
                 inputs["clip_grad_norm"])
        rows.append(_loss_floats(out, model.names))
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.tensor(rows, dtype=torch.float64), weights


def _train_step_cases():
    yield _train_step_inputs("micro_batch = the whole batch (a plain step)", 50, ["loss_classifier"], 2, 2, (6, 5),
                             None)
    yield _train_step_inputs("4 images in micro-batches of 1", 54, ["loss_box_reg", "loss_classifier"], 4, 1, (5, 6),
                             None)
    yield _train_step_inputs("a term without gradient (its box loss is a constant 0), micro-batches of 2", 51,
                             ["loss_classifier", "loss_box_reg"], 4, 2, (5, 7), None, constant=["loss_box_reg"])
    yield _train_step_inputs("clip_grad_norm=0.05: clip the accumulated gradient, once", 52,
                             ["loss_objectness", "loss_rpn_box_reg"], 4, 2, (6, 6), 0.05)
    yield _train_step_inputs("a frozen stem (requires_grad=False) and clipping", 53,
                             ["loss_classifier", "loss_box_reg", "loss_mask"], 3, 1, (5, 5), 0.2, frozen_stem=True)
    for seed in SEEDS:
        g = gen(seed)
        k = int(torch.randint(2, 6, (1,), generator=g))
        names = ["loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"][:k]
        micro = int(torch.randint(1, 3, (1,), generator=g))
        batch = micro * int(torch.randint(1, 4, (1,), generator=g))
        size = (int(torch.randint(3, 10, (1,), generator=g)), int(torch.randint(3, 10, (1,), generator=g)))
        clip = (None, 0.1, 1.0, None, 0.05)[seed]
        opt = ("sgd", "sgd", "adamw", "sgd", "adamw")[seed]
        yield _train_step_inputs(f"random, seed {seed}: {k} loss terms, {batch} images in micro-batches of {micro}, "
                                 f"clip {clip}, {opt}", seed, names, batch, micro, size, clip, opt)


def check_train_step_accumulate(fn: Callable, points: float = 4, name: str = "train_step_accumulate") -> CheckResult:
    """``fn(model, optimizer, images, targets, micro_batch, clip_grad_norm=None) -> {term: float, ..., "loss": float}``:
    one optimizer step whose gradient is accumulated over micro-batches of ``micro_batch`` images, called 3
    times in a row on a toy model; the returned losses of every call and the weights after the last one must
    equal one step of the package's Trainer on the whole batch. (The Trainer reports its losses in float32,
    hence ``rtol=1e-6``; a wrong step changes the numbers far more.)"""
    return run_check(name, fn, reference_train_step_accumulate, _train_step_cases(), points, atol=1e-9, rtol=1e-6,
                     call=_call_train_step,
                     what="one mrcnn_lite.engine.trainer.train_step on the whole batch (losses of 3 steps, then the weights)",
                     off_limits=(train_step, reference_train_step))


def reference_lr_at(it: int, total: int, base_lr: float, warmup_iters: int, warmup_factor: float) -> float:
    """The learning rate at iteration ``it`` of ``total``: ``base_lr * lr_factor(it, total, cfg)`` of the
    package's Trainer, with a linear warmup from ``base_lr * warmup_factor`` and cosine decay."""
    cfg = TrainConfig(lr=base_lr, warmup_iters=warmup_iters, warmup_factor=warmup_factor, schedule="cosine")
    return base_lr * lr_factor(it, total, cfg)


def _call_lr_at(fn: Callable, inputs: Dict[str, Any]) -> Tensor:
    args = (inputs["total"], inputs["base_lr"], inputs["warmup_iters"], inputs["warmup_factor"])
    return torch.tensor([float(fn(it, *args)) for it in inputs["its"]], dtype=torch.float64)


def _lr_at_cases():
    yield "the start, the end of the warmup, half way, the end", dict(
        its=[0, 1, 50, 99, 100, 101, 500, 999, 1000], total=1000, base_lr=0.02, warmup_iters=100, warmup_factor=1e-3)
    yield "no warmup (warmup_iters=0)", dict(its=[0, 1, 5, 10], total=10, base_lr=0.1, warmup_iters=0,
                                             warmup_factor=1e-3)
    yield "past the end (it > total): the rate stays at 0", dict(its=[20, 21, 40], total=20, base_lr=0.01,
                                                                   warmup_iters=5, warmup_factor=0.1)
    yield "warmup_factor=1: no warmup ramp", dict(its=[0, 3, 7], total=8, base_lr=0.5, warmup_iters=4,
                                                  warmup_factor=1.0)
    for seed in SEEDS:
        g = gen(seed)
        total = int(torch.randint(10, 5000, (1,), generator=g))
        warmup = int(torch.randint(0, total // 2 + 1, (1,), generator=g))
        its = sorted(set(torch.randint(0, total + 1, (6,), generator=g).tolist()) | {0, warmup})
        base_lr = float(torch.rand(1, generator=g, dtype=torch.float64)) * 0.1 + 1e-3
        factor = (1e-3, 0.1, 1 / 3, 0.01, 0.5)[seed]
        yield f"random, seed {seed}", dict(its=its, total=total, base_lr=base_lr, warmup_iters=warmup,
                                           warmup_factor=factor)


def check_lr_at(fn: Callable, points: float = 2, name: str = "lr_at") -> CheckResult:
    """``fn(it, total, base_lr, warmup_iters, warmup_factor) -> lr``: linear warmup, then cosine decay,
    against the package's ``lr_factor`` (the schedule the Trainer uses)."""
    return run_check(name, fn, reference_lr_at, _lr_at_cases(), points, atol=1e-12, rtol=1e-9, call=_call_lr_at,
                     what="base_lr * mrcnn_lite.engine.lr_factor (schedule='cosine')",
                     off_limits=(lr_factor,))
