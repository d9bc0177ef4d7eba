"""RoIPool, RoIAlign and MultiScaleRoIAlign in pure PyTorch (issue 5 fills these in)."""
from __future__ import annotations

from torch import nn


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    raise NotImplementedError("roi_pool arrives with the RoI issue")


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    raise NotImplementedError("roi_align arrives with the RoI issue")


class MultiScaleRoIAlign(nn.Module):
    def __init__(self, featmap_names, output_size, sampling_ratio, *, canonical_scale=224, canonical_level=4):
        super().__init__()
        raise NotImplementedError("MultiScaleRoIAlign arrives with the RoI issue")
