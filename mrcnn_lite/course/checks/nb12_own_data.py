"""Checkers of notebook 12: your own data (uncompressed COCO RLE)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from .runner import SEEDS, CheckResult, gen, random_masks, run_check


def reference_rle_decode(counts: Sequence[int], height: int, width: int) -> Tensor:
    """An uncompressed COCO RLE -> ``(height, width)`` uint8 mask, decoded by pycocotools (what the package's
    COCO loader uses)."""
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
    return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rle)))


def rle_counts(mask) -> List[int]:
    """``(H, W)`` binary mask -> uncompressed COCO RLE counts: run lengths of 0s, 1s, 0s, ... in
    column-major order (down the first column, then the next), starting with a (maybe empty) run of 0s."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    counts, value, run = [], 0, 0
    for v in flat.tolist():
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return counts


def _rle_decode_cases():
    yield "all background: one run of 0s", dict(counts=[12], height=3, width=4)
    yield "all foreground: an empty first run of 0s", dict(counts=[0, 12], height=3, width=4)
    bar = np.zeros((3, 4), dtype=np.uint8)
    bar[1] = 1
    yield "a horizontal bar (column-major order matters)", dict(counts=rle_counts(bar), height=3, width=4)
    yield "one pixel in the last corner", dict(counts=[19, 1], height=4, width=5)
    yield "a one-column image", dict(counts=[1, 2, 1, 1], height=5, width=1)
    for seed in SEEDS:
        g = gen(seed)
        h, w = int(torch.randint(6, 30, (1,), generator=g)), int(torch.randint(6, 30, (1,), generator=g))
        mask = random_masks(int(torch.randint(1, 4, (1,), generator=g)), h, w, g).amax(dim=0)
        yield f"random, seed {seed}: {h}x{w}", dict(counts=rle_counts(mask.numpy()), height=h, width=w)


def _call_rle_decode(fn: Callable, inputs: Dict[str, Any]):
    out = fn(list(inputs["counts"]), inputs["height"], inputs["width"])
    return torch.from_numpy(np.ascontiguousarray(out)) if isinstance(out, np.ndarray) else out


def check_rle_decode(fn: Callable, points: float = 2, name: str = "rle_decode") -> CheckResult:
    """``fn(counts, height, width) -> (height, width)`` 0/1 mask from an uncompressed COCO RLE, against the
    package's loader (pycocotools)."""
    return run_check(name, fn, reference_rle_decode, _rle_decode_cases(), points, exact=True, call=_call_rle_decode,
                     what="the package's COCO loader (pycocotools' decoder)",
                     off_limits=(mask_utils.decode, mask_utils.frPyObjects))
