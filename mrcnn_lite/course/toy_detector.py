"""A toy detector with Mask R-CNN's training contract, for the training checker and the engine's tests.

``model(images, targets) -> {name: scalar loss}`` in a few hundred weights, so that several training
steps take milliseconds. Each loss term regresses one number of the image's target -- the first box
divided by 16, then the first label -- from mean-pooled conv features, with a squared error (so that a
far too large learning rate diverges, as the engine's tests need).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

LOSS_NAMES = ("loss_box_reg", "loss_classifier")


class ToyDetector(nn.Module):
    """Args:
        names: the loss terms, at most 5 (``targets[i]["boxes"][0] / 16`` gives 4 goals, the label a 5th).
        constant: terms that are a constant 0 without a gradient, like the box and mask losses of an
            image without objects.
        frozen_stem: freeze the conv (``requires_grad=False``), like a frozen backbone stage.
        p_drop: dropout before the last layer (0: deterministic).
        nan_at_call: make the last term NaN on this call (1-based), to test how training stops.
    """

    def __init__(self, names: Sequence[str] = LOSS_NAMES, constant: Sequence[str] = (), frozen_stem: bool = False,
                 p_drop: float = 0.0, nan_at_call: Optional[int] = None):
        super().__init__()
        if not 1 <= len(names) <= 5:
            raise ValueError(f"names: between 1 and 5 loss terms, got {list(names)}")
        self.names, self.constant = tuple(names), tuple(constant)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(p_drop)
        self.fc = nn.Linear(8, len(self.names))
        if frozen_stem:
            self.conv.requires_grad_(False)
        self.calls = 0
        self.nan_at_call = nan_at_call

    def forward(self, images: List[Tensor], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """images: list of (3, H, W); targets: list of {"boxes": (n>=1, 4), "labels": (n,)}."""
        self.calls += 1
        feats = torch.stack([torch.relu(self.conv(im[None])).mean(dim=(0, 2, 3)) for im in images])   # (B, 8)
        out = self.fc(self.drop(feats))                                                    # (B, K)
        goal = torch.stack([torch.cat([t["boxes"][0] / 16, t["labels"][:1].to(out.dtype)]) for t in targets])
        losses = {name: (out.new_zeros(()) if name in self.constant else
                         nn.functional.mse_loss(out[:, k], goal[:, k].to(out.dtype)))
                  for k, name in enumerate(self.names)}
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            losses[self.names[-1]] = losses[self.names[-1]] * float("nan")
        return losses
