"""Constants made once instead of on every call: the normalisation mean and std, and the anchors.

The reference transform builds ``mean`` and ``std`` from Python lists for every image, and the reference
anchor generator lays out every anchor for every batch. Both results depend only on things that rarely
change (the dtype and device; the padded size and the feature-map sizes), so the fast floor keeps them:

* on a GPU a tensor built from a Python list is a host-to-device copy that waits for the GPU, one per
  image; the cached one is made once per (values, dtype, device);
* the anchors of a 1344x800 batch are 250k boxes; they are made once per padded size.

Same numbers as the reference classes (tests/test_fast.py).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..model.anchors import AnchorGenerator
from ..model.transform import GeneralizedRCNNTransform


class CachedNormalizeTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` whose ``normalize`` keeps its mean and std tensors per (dtype, device)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._mean_std_cache: Dict[tuple, Tuple[Tensor, Tensor]] = {}

    def normalize(self, image: Tensor) -> Tensor:
        """``(image - mean) / std`` per channel; ``image (3, h, w)`` float."""
        key = (tuple(self.image_mean), tuple(self.image_std), image.dtype, image.device)
        if key not in self._mean_std_cache:
            self._mean_std_cache[key] = (torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device),
                                         torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device))
        mean, std = self._mean_std_cache[key]
        return (image - mean[:, None, None]) / std[:, None, None]


class CachedAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` that keeps the anchors of the last few (grid sizes, padded size, dtype, device)."""

    max_cached = 16  # image sizes vary in training; keep the cache small

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: Dict[tuple, Tensor] = {}

    def anchors_for(
        self,
        image_size: Tuple[int, int],
        grid_sizes: Sequence[Tuple[int, int]],
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
    ) -> Tensor:
        """``AnchorGenerator.anchors_for``, made once per key. Callers get a copy per image (``forward``)."""
        key = (tuple(image_size), tuple(tuple(g) for g in grid_sizes), dtype, torch.device(device))
        if key not in self._cache:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            self._cache[key] = super().anchors_for(image_size, grid_sizes, dtype, device)
        return self._cache[key]
