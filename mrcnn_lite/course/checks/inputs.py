"""The checkers' random inputs: the fixed ``SEEDS`` of their cases, a generator per seed (``gen``), random
boxes and masks, and ``Fresh`` (an input built anew for every call). Re-exported by ``runner.py``, which the
checkers import them from.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

SEEDS = (0, 1, 2, 3, 4)  # random cases per checker; fixed so that a failure can be reproduced


def random_boxes(n: int, g: torch.Generator, scale: float = 100.0, min_size: float = 2.0,
                 max_size: float = 40.0, dtype=torch.float64) -> Tensor:
    """``(n, 4)`` xyxy boxes with positive width and height."""
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * (max_size - min_size) + min_size
    return torch.cat([xy, xy + wh], dim=1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + seed)


def random_masks(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """``(n, h, w)`` uint8 masks: a random ellipse each."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64)
    r = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64) / 3 + 2
    d = ((xs - c[:, None, None, 0]) / r[:, None, None, 0]) ** 2 + ((ys - c[:, None, None, 1]) / r[:, None, None, 1]) ** 2
    return (d <= 1).to(torch.uint8)


class Fresh:
    """An input built afresh for every call (the function under test changes it in place: a model's
    weights, an optimizer's state). Shown as ``text`` in a failure message."""

    def __init__(self, text: str, build: Callable):
        self.text, self.build = text, build

    def __repr__(self) -> str:
        return self.text
