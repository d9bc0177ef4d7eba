"""Checkers of notebook 02: the Bottleneck block."""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from torch import Tensor

from ...model.backbone import Bottleneck
from ...model.frozen_bn import FrozenBatchNorm2d
from .runner import SEEDS, CheckResult, check_choice, gen, run_check


def _randomize(module: torch.nn.Module, g: torch.Generator) -> None:
    """Random weights and batch-norm statistics, so that no layer is accidentally the identity."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype) * 0.2)
            elif isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g, dtype=m.bias.dtype) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g, dtype=m.running_mean.dtype) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g, dtype=m.running_var.dtype) + 0.5)


def _bottleneck_cases():
    configs = [(64, 16, 1, "identity shortcut"), (32, 16, 1, "downsample: channels change"),
               (64, 16, 2, "downsample: stride 2"), (16, 8, 2, "stride 2, odd-sized input")]
    for seed, (cin, planes, stride, what) in enumerate(configs):
        g = gen(seed)
        h, w = (9, 7) if "odd" in what else (8, 8)
        yield f"in_channels={cin}, planes={planes}, stride={stride} ({what})", dict(
            in_channels=cin, planes=planes, stride=stride,
            x=torch.randn(2, cin, h, w, generator=g, dtype=torch.float64), seed=seed)


def _call_block(cls, inputs):
    """Build the reference block with random weights; build ``cls`` and load the same state dict."""
    torch.manual_seed(0)
    ref = Bottleneck(inputs["in_channels"], inputs["planes"], inputs["stride"]).double()
    _randomize(ref, gen(100 + inputs["seed"]))
    if cls is Bottleneck:
        block = ref
    else:
        block = cls(inputs["in_channels"], inputs["planes"], inputs["stride"]).double()
        result = block.load_state_dict(ref.state_dict(), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"the block's parameter names differ from the package's Bottleneck: "
                             f"it lacks {result.unexpected_keys}, it has extra {result.missing_keys}")
    block.eval()
    with torch.no_grad():
        return block(inputs["x"])


def check_bottleneck(cls: type, points: float = 3, name: str = "bottleneck") -> CheckResult:
    """``cls(in_channels, planes, stride)`` is an ``nn.Module`` with the package's layer names
    (conv1/bn1, conv2/bn2, conv3/bn3, downsample); its ``forward`` must equal ``Bottleneck``'s
    (eval mode, float64, the same random weights loaded into both)."""
    return run_check(name, cls, Bottleneck, _bottleneck_cases(), points, atol=1e-10, rtol=1e-8,
                     call=_call_block, what="mrcnn_lite.model.backbone.Bottleneck (eval, same weights)",
                     off_limits=("torchvision.models.resnet:Bottleneck",))


# ----------------------------------------------------------------------------------------------
# Lab: batch norm at inference (a planted bug: the batch's own statistics)
# ----------------------------------------------------------------------------------------------
def reference_frozen_bn(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
                        eps: float) -> Tensor:
    """``x (N, C, H, W)`` normalised with the stored statistics: the package's ``FrozenBatchNorm2d``."""
    bn = FrozenBatchNorm2d(x.shape[1], eps=eps).to(x.dtype)
    bn.load_state_dict(dict(weight=weight, bias=bias, running_mean=running_mean, running_var=running_var))
    return bn(x)


def _frozen_bn_inputs(n: int, c: int, h: int, w: int, g: torch.Generator) -> Dict[str, Any]:
    f64 = dict(dtype=torch.float64)
    return dict(x=torch.randn(n, c, h, w, generator=g, **f64) * 2 + 1,
                weight=torch.rand(c, generator=g, **f64) + 0.5, bias=torch.randn(c, generator=g, **f64) * 0.1,
                running_mean=torch.randn(c, generator=g, **f64), running_var=torch.rand(c, generator=g, **f64) + 0.5,
                eps=1e-5)


def _frozen_bn_cases():
    from ..lab_case import load_lab_case

    yield "batch of 1 (as at inference)", _frozen_bn_inputs(1, 3, 4, 5, gen(40))
    yield "one pixel per channel", _frozen_bn_inputs(2, 4, 1, 1, gen(41))
    for seed in SEEDS:
        g = gen(seed)
        n, c = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        h, w = int(torch.randint(1, 8, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g))
        yield f"random, seed {seed}: {n} images, {c} channels, {h}x{w}", _frozen_bn_inputs(n, c, h, w, g)
    case = load_lab_case()
    yield (f"the trained model's stem: a real conv output and its BatchNorm's statistics "
           f"({case['steps']} training steps)"), dict(x=case["bn_input"], **case["bn"], eps=case["bn_eps"])


def check_frozen_bn_lab(fn: Callable, points: float = 2, name: str = "frozen_bn_lab") -> CheckResult:
    """Lab: ``fn(x (N, C, H, W), weight, bias, running_mean, running_var (C,), eps) -> (N, C, H, W)``, against
    ``mrcnn_lite.model.frozen_bn.FrozenBatchNorm2d``."""
    return run_check(name, fn, reference_frozen_bn, _frozen_bn_cases(), points, atol=1e-5, rtol=1e-5,
                     what="mrcnn_lite.model.frozen_bn.FrozenBatchNorm2d",
                     off_limits=(FrozenBatchNorm2d, "torchvision.ops.misc:FrozenBatchNorm2d"))


# The candidates the lab's text names, in its order; where the bug is (Lab 2).
FROZEN_BN_PARTS = ("mean", "scale", "eps", "bias")


def check_frozen_bn_locate_lab(fn: Callable, points: float = 1, name: str = "frozen_bn_locate_lab") -> CheckResult:
    """Lab, step 1 (before the fix): ``fn()`` names where the bug is: one of ``FROZEN_BN_PARTS``, or a list of them
    for a lab with two bugs. Only the right part(s) earn the point."""
    return check_choice(fn, "mean", FROZEN_BN_PARTS, points=points, name=name,
                        what="the mean is the batch's own, not the stored running_mean")
