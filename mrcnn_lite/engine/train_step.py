"""One training step, and the check that makes a diverging run stop cleanly.

:func:`train_step`: forward, sum the loss terms, check they are finite, backward, check the gradients
are finite, (clip), step. A NaN or infinite loss or gradient raises :class:`NonFiniteLossError` naming
the step, the loss term (or parameter) and the images of the batch, before the optimizer changes a
weight, so the last checkpoint stays the last good state.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn


class NonFiniteLossError(FloatingPointError):
    """A loss term, a gradient or a weight became NaN or infinite; training stops and the last
    checkpoint (the last state with finite loss and gradients) is kept."""


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
