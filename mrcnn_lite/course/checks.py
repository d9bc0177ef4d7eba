"""Exercise checkers: compare a learner's function with the package's reference.

Every exercise in the notebooks is followed by a check cell such as::

    from mrcnn_lite.course import checks
    checks.check_box_iou(my_box_iou, points=2)

A checker runs the learner's function and the reference (from ``mrcnn_lite``) on the same inputs:
a few hand-picked edge cases (empty inputs, a single box, ties, ...) and fresh random inputs from
several seeds. It prints one line ``PASS`` / ``FAIL`` / ``TODO`` (not implemented yet) and, on a
failure, the first case that went wrong: the input, the expected result and what the function
returned. It never raises: an exception inside the learner's code becomes a ``FAIL`` message.

Each call returns a :class:`CheckResult` and appends it to :data:`RESULTS`; the autograder
(``python -m mrcnn_lite.course grade``) reads that list at the end of the notebook.

Adding an exercise takes three things (see ``check_box_iou`` for a complete example):

1. a generator of test cases: ``(label, inputs)`` pairs, ``inputs`` a dict of the positional arguments;
2. a reference that takes the same arguments (a package function, or a thin wrapper around one);
3. a ``check_<name>(fn, points=...)`` function that hands both to :func:`run_check`.

Fall back to the reference in later cells with :func:`or_reference`, so that a learner who has not
solved an exercise can still run the rest of the notebook.
"""
from __future__ import annotations

import functools
import math
import traceback
from collections import OrderedDict
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import ops
from ..data.coco import CocoInstances, _segmentation_to_mask
from ..engine.trainer import TrainConfig, Trainer, lr_factor
from ..model.anchors import generate_base_anchors, grid_anchors
from ..model.backbone import Bottleneck
from ..model.box_head import fastrcnn_loss
from ..model.fpn import FeaturePyramidNetwork
from ..model.mask_head import project_masks_on_boxes
from ..model.rpn import RegionProposalNetwork
from ..model.transform import GeneralizedRCNNTransform

__all__ = [
    "CheckResult", "RESULTS", "run_check", "or_reference", "compare",
    "check_box_iou", "check_encode", "check_nms", "check_bottleneck", "check_fpn_top_down",
    "check_base_anchors", "check_grid_anchors", "check_rpn_loss", "check_bilinear",
    "check_roi_align_one_box",
    "reference_encode", "reference_grid_anchors", "reference_fpn_top_down", "reference_rpn_loss",
    "reference_bilinear", "reference_roi_align_one_box",
    "check_fastrcnn_loss", "check_decode_class_boxes", "check_mask_targets", "check_to_original",
    "reference_fastrcnn_loss", "reference_decode_class_boxes", "reference_mask_targets", "reference_to_original",
    "check_train_step", "check_lr_at", "check_coco_ap", "check_coco_boxes", "check_rle_decode",
    "reference_train_step", "reference_lr_at", "reference_coco_ap", "coco_ap_by_pycocotools",
    "reference_coco_boxes", "reference_rle_decode", "rle_counts",
]

SEEDS = (0, 1, 2, 3, 4)  # random cases per checker; fixed so that a failure can be reproduced


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """What a checker found. ``points`` is ``max_points`` when passed, else 0."""

    name: str
    passed: bool
    points: float
    max_points: float
    message: str
    implemented: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        status = "PASS" if self.passed else ("TODO" if not self.implemented else "FAIL")
        return f"<CheckResult {self.name}: {status} {self.points:g}/{self.max_points:g}>"


RESULTS: List[CheckResult] = []
"""Every result of this Python session, in order. The autograder reads it after the last cell."""


# ----------------------------------------------------------------------------------------------
# Printing inputs and outputs compactly
# ----------------------------------------------------------------------------------------------
def _fmt_number(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return repr(v)


def _nested(values) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_nested(v) for v in values) + "]"
    return _fmt_number(values)


def fmt(value, max_numel: int = 24) -> str:
    """A short, readable text for a value: small tensors in full, big ones as shape + first values."""
    if isinstance(value, Tensor):
        head = f"tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).replace('torch.', '')})"
        if value.numel() == 0:
            return head + " (empty)"
        v = value.detach().cpu()
        if v.numel() <= max_numel:
            return _nested(v.tolist()) + f"   {head}"
        flat = v.reshape(-1)[:6].tolist()
        return f"{head} first values {_nested(flat)} ..."
    if isinstance(value, torch.nn.Module):
        return f"{type(value).__name__}(...)"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, Tensor) for v in value):
            inner = ", ".join(fmt(v, max_numel=8) for v in value)
            return f"{type(value).__name__} of {len(value)}: [{inner}]"
        return _nested(list(value)) if not isinstance(value, tuple) else "(" + ", ".join(fmt(v) for v in value) + ")"
    if isinstance(value, float):
        return _fmt_number(value)
    return repr(value)


# ----------------------------------------------------------------------------------------------
# Comparing results
# ----------------------------------------------------------------------------------------------
def _as_tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return torch.as_tensor(x)


def compare(expected, got, atol: float = 1e-6, rtol: float = 1e-5, exact: bool = False) -> Optional[str]:
    """``None`` when ``got`` matches ``expected``; otherwise a sentence saying where they first differ.

    Tensors must have the same shape; values are compared with ``atol``/``rtol`` (or exactly), NaN
    equal to NaN. Lists and tuples are compared element by element.
    """
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"expected a {type(expected).__name__} of {len(expected)} items, got {type(got).__name__}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            problem = compare(e, g, atol, rtol, exact)
            if problem:
                return f"item {i}: {problem}"
        return None
    expected = _as_tensor(expected)
    try:
        got = _as_tensor(got)
    except Exception:
        return f"expected a tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        if got.numel() == expected.numel() == 1:
            got = got.reshape(expected.shape)
        else:
            return f"wrong shape: expected {tuple(expected.shape)}, got {tuple(got.shape)}"
    if expected.numel() == 0:
        return None
    e = expected.detach().cpu()
    g = got.detach().cpu()
    if exact:
        if e.dtype.is_floating_point or g.dtype.is_floating_point:
            bad = ~((e.double() == g.double()) | (e.double().isnan() & g.double().isnan()))
        else:
            bad = e.long() != g.long()
    else:
        e64, g64 = e.double(), g.double()
        close = torch.isclose(g64, e64, rtol=rtol, atol=atol, equal_nan=True)
        bad = ~close
    if not bad.any():
        return None
    idx = tuple(int(i) for i in bad.nonzero()[0])
    where = f"[{', '.join(map(str, idx))}]" if idx else "(the value)"
    n_bad = int(bad.sum())
    tol = "exactly" if exact else f"within atol={atol:g}, rtol={rtol:g}"
    return (f"{n_bad} of {e.numel()} values differ ({tol}); first difference at {where}: "
            f"expected {_fmt_number(e[idx].item())}, got {_fmt_number(g[idx].item())}")


# ----------------------------------------------------------------------------------------------
# The engine every checker uses
# ----------------------------------------------------------------------------------------------
def _clone(inputs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def _short_traceback(exc: BaseException) -> str:
    """The learner's line that raised, without the checker's own frames."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "mrcnn_lite/course" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  at line {f.lineno} of {f.name}: {f.line}" if f.line else ""


def _record(result: CheckResult, verbose: bool) -> CheckResult:
    RESULTS.append(result)
    if verbose:
        print(result.message)
    return result


def run_check(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Iterable[Tuple[str, Dict[str, Any]]],
    points: float = 1,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    exact: bool = False,
    call: Optional[Callable[[Callable, Dict[str, Any]], Any]] = None,
    what: str = "",
    verbose: bool = True,
) -> CheckResult:
    """Run ``fn`` and ``reference`` on every case; PASS if all outputs match.

    Args:
        name: the exercise's name (shown to the learner, used as key by the autograder).
        fn: the learner's function (or class).
        reference: same arguments as ``fn``, gives the right answer.
        cases: ``(label, inputs)`` pairs; ``inputs`` holds the positional arguments, in order, by name.
        points: what the exercise is worth.
        atol, rtol, exact: how outputs are compared (see :func:`compare`).
        call: how to call a function on a case; default ``f(*inputs.values())``.
        what: a few words about what was compared, for the PASS line.
    """
    call = call or (lambda f, inputs: f(*inputs.values()))
    n = 0
    for label, inputs in cases:
        n += 1
        expected = call(reference, _clone(inputs))
        shown_input = "\n".join(f"    {k} = {fmt(v)}" for k, v in inputs.items())
        try:
            got = call(fn, _clone(inputs))
        except NotImplementedError:
            return _record(CheckResult(
                name, False, 0, points,
                f"TODO  {name} (0/{points:g} points): not implemented yet -- replace the "
                f"`raise NotImplementedError` with your code, run that cell, then this one.",
                implemented=False), verbose)
        except Exception as exc:  # the learner's bug: report it, never raise from a check cell
            return _record(CheckResult(
                name, False, 0, points,
                f"FAIL  {name} (0/{points:g} points): raised {type(exc).__name__}: {exc} "
                f"on case '{label}'{_short_traceback(exc)}\n  input:\n{shown_input}\n"
                f"  expected: {fmt(expected)}"), verbose)
        problem = compare(expected, got, atol=atol, rtol=rtol, exact=exact)
        if problem:
            return _record(CheckResult(
                name, False, 0, points,
                f"FAIL  {name} (0/{points:g} points): wrong result on case '{label}'\n"
                f"  input:\n{shown_input}\n  expected: {fmt(expected)}\n  got:      {fmt(got)}\n"
                f"  {problem}"), verbose)
    return _record(CheckResult(
        name, True, points, points,
        f"PASS  {name} ({points:g}/{points:g} points): matches {what or 'the reference'} on {n} cases"), verbose)


# ----------------------------------------------------------------------------------------------
# Falling back to the reference in later cells
# ----------------------------------------------------------------------------------------------
def or_reference(mine, reference):
    """``mine``, but while it raises ``NotImplementedError`` the ``reference`` is used instead.

    Later cells of a notebook call the learner's function; wrapped with this, they keep working
    (with the package's reference) before the exercise is solved. For a function, the wrapper calls
    ``mine`` and falls back on ``NotImplementedError``. For an ``nn.Module`` class, it returns a
    subclass whose ``forward`` does the same with ``reference.forward`` (the attribute names must
    match, as the exercise asks). A note is printed the first time the reference is used.
    """
    noted = []

    def note():
        if not noted:
            noted.append(True)
            ref_name = getattr(reference, "__qualname__", repr(reference))
            mod = getattr(reference, "__module__", "")
            print(f"note: {getattr(mine, '__name__', 'your function')} is not implemented yet; "
                  f"using the reference {mod + '.' if mod else ''}{ref_name} instead.")

    if isinstance(mine, type):
        class Fallback(mine):  # type: ignore[misc, valid-type]
            def forward(self, *args, **kwargs):
                try:
                    return mine.forward(self, *args, **kwargs)
                except NotImplementedError:
                    note()
                    return reference.forward(self, *args, **kwargs)

        Fallback.__name__ = mine.__name__
        Fallback.__qualname__ = mine.__qualname__
        Fallback.__doc__ = mine.__doc__
        return Fallback

    @functools.wraps(mine)
    def wrapper(*args, **kwargs):
        try:
            return mine(*args, **kwargs)
        except NotImplementedError:
            note()
            return reference(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------
# Random inputs
# ----------------------------------------------------------------------------------------------
def random_boxes(n: int, g: torch.Generator, scale: float = 100.0, min_size: float = 2.0,
                 max_size: float = 40.0, dtype=torch.float64) -> Tensor:
    """``(n, 4)`` xyxy boxes with positive width and height."""
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * (max_size - min_size) + min_size
    return torch.cat([xy, xy + wh], dim=1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + seed)


# ==============================================================================================
# Notebook 01: boxes, IoU, encoding, NMS
# ==============================================================================================
def _box_iou_cases():
    yield "one pair", dict(boxes1=torch.tensor([[10.0, 10.0, 60.0, 50.0]], dtype=torch.float64),
                           boxes2=torch.tensor([[35.0, 25.0, 90.0, 70.0]], dtype=torch.float64))
    yield "identical, touching and disjoint boxes", dict(
        boxes1=torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]], dtype=torch.float64),
        boxes2=torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [50.0, 50.0, 60.0, 70.0]],
                            dtype=torch.float64))
    yield "boxes1 empty (N=0)", dict(boxes1=torch.zeros(0, 4, dtype=torch.float64),
                                      boxes2=random_boxes(3, _gen(99)))
    yield "boxes2 empty (M=0)", dict(boxes1=random_boxes(2, _gen(98)), boxes2=torch.zeros(0, 4, dtype=torch.float64))
    for seed in SEEDS:
        g = _gen(seed)
        n, m = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        dtype = torch.float32 if seed % 2 else torch.float64
        yield f"random, seed {seed}", dict(boxes1=random_boxes(n, g, dtype=dtype), boxes2=random_boxes(m, g, dtype=dtype))


def check_box_iou(fn: Callable, points: float = 2, name: str = "box_iou") -> CheckResult:
    """``fn(boxes1 (N, 4), boxes2 (M, 4)) -> IoU (N, M)``, against ``mrcnn_lite.ops.box_iou``."""
    return run_check(name, fn, ops.box_iou, _box_iou_cases(), points, atol=1e-6, rtol=1e-5,
                     what="mrcnn_lite.ops.box_iou")


def reference_encode(targets: Tensor, refs: Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Deltas ``(N, 4)`` that move ``refs (N, 4)`` onto ``targets (N, 4)``: ``BoxCoder(weights).encode_single``."""
    return ops.BoxCoder(weights).encode_single(targets, refs)


def _encode_cases():
    yield "the notebook's anchor and GT", dict(
        targets=torch.tensor([[30.0, 15.0, 110.0, 55.0]], dtype=torch.float64),
        refs=torch.tensor([[20.0, 20.0, 60.0, 60.0]], dtype=torch.float64), weights=(1.0, 1.0, 1.0, 1.0))
    box = torch.tensor([[3.0, 4.0, 13.0, 24.0]], dtype=torch.float64)
    yield "target == reference (all deltas 0)", dict(targets=box, refs=box.clone(), weights=(10.0, 10.0, 5.0, 5.0))
    yield "empty (N=0)", dict(targets=torch.zeros(0, 4, dtype=torch.float64),
                              refs=torch.zeros(0, 4, dtype=torch.float64), weights=(1.0, 1.0, 1.0, 1.0))
    for seed in SEEDS:
        g = _gen(seed)
        n = int(torch.randint(1, 20, (1,), generator=g))
        weights = (1.0, 1.0, 1.0, 1.0) if seed % 2 == 0 else (10.0, 10.0, 5.0, 5.0)
        yield f"random, seed {seed}, weights {weights}", dict(
            targets=random_boxes(n, g), refs=random_boxes(n, g), weights=weights)


def check_encode(fn: Callable, points: float = 2, name: str = "encode") -> CheckResult:
    """``fn(targets (N, 4), refs (N, 4), weights) -> deltas (N, 4)``, against ``BoxCoder.encode_single``."""
    return run_check(name, fn, reference_encode, _encode_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.ops.BoxCoder(weights).encode_single")


def _nms_cases():
    f64 = dict(dtype=torch.float64)
    yield "empty (N=0)", dict(boxes=torch.zeros(0, 4, **f64), scores=torch.zeros(0, **f64), iou_threshold=0.5)
    yield "one box", dict(boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]], **f64), scores=torch.tensor([0.3], **f64),
                          iou_threshold=0.5)
    yield "a chain: A suppresses B, so B cannot suppress C", dict(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0], [8.0, 0.0, 18.0, 10.0]], **f64),
        scores=torch.tensor([0.9, 0.8, 0.7], **f64), iou_threshold=0.3)
    yield "equal scores (ties keep the input order)", dict(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [30.0, 30.0, 40.0, 40.0]], **f64),
        scores=torch.tensor([0.5, 0.5, 0.5], **f64), iou_threshold=0.5)
    for seed in SEEDS:
        g = _gen(seed)
        n = int(torch.randint(2, 40, (1,), generator=g))
        boxes = random_boxes(n, g, scale=50.0)
        boxes[: n // 4] = boxes[n // 4: 2 * (n // 4)]                        # exact duplicates
        scores = (torch.rand(n, generator=g, dtype=torch.float64) * 10).round() / 10   # many ties
        thr = (0.0, 0.3, 0.5, 0.7, 1.0)[seed % 5]
        yield f"random, seed {seed}, iou_threshold {thr}", dict(boxes=boxes, scores=scores, iou_threshold=thr)


def check_nms(fn: Callable, points: float = 3, name: str = "nms") -> CheckResult:
    """``fn(boxes (N, 4), scores (N,), iou_threshold) -> kept indices (K,)``, against ``mrcnn_lite.ops.nms``."""
    return run_check(name, fn, ops.nms, _nms_cases(), points, exact=True, what="mrcnn_lite.ops.nms")


# ==============================================================================================
# Notebook 02: the Bottleneck block
# ==============================================================================================
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
        g = _gen(seed)
        h, w = (9, 7) if "odd" in what else (8, 8)
        yield f"in_channels={cin}, planes={planes}, stride={stride} ({what})", dict(
            in_channels=cin, planes=planes, stride=stride,
            x=torch.randn(2, cin, h, w, generator=g, dtype=torch.float64), seed=seed)


def _call_block(cls, inputs):
    """Build the reference block with random weights; build ``cls`` and load the same state dict."""
    torch.manual_seed(0)
    ref = Bottleneck(inputs["in_channels"], inputs["planes"], inputs["stride"]).double()
    _randomize(ref, _gen(100 + inputs["seed"]))
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
                     call=_call_block, what="mrcnn_lite.model.backbone.Bottleneck (eval, same weights)")


# ==============================================================================================
# Notebook 03: the FPN top-down pass
# ==============================================================================================
def reference_fpn_top_down(laterals: Sequence[Tensor]) -> List[Tensor]:
    """The top-down pathway of the package's ``FeaturePyramidNetwork``, with its 1x1 lateral and
    3x3 output convs set to the identity: ``M_last = L_last``, ``M_i = L_i + nearest_upsample(M_{i+1})``."""
    laterals = list(laterals)
    c = laterals[0].shape[1]
    fpn = FeaturePyramidNetwork([c] * len(laterals), c, extra_blocks=None).to(laterals[0].dtype)
    eye = torch.eye(c, dtype=laterals[0].dtype)
    with torch.no_grad():
        for block in fpn.inner_blocks:
            block[0].weight.zero_()
            block[0].weight[:, :, 0, 0] = eye
            block[0].bias.zero_()
        for block in fpn.layer_blocks:
            block[0].weight.zero_()
            block[0].weight[:, :, 1, 1] = eye
            block[0].bias.zero_()
        out = fpn(OrderedDict((str(i), l) for i, l in enumerate(laterals)))
    return list(out.values())


def _top_down_cases():
    g = _gen(0)
    yield "one level (nothing to add)", dict(laterals=[torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)])
    for seed in SEEDS:
        g = _gen(seed)
        h, w = int(torch.randint(5, 40, (1,), generator=g)), int(torch.randint(5, 40, (1,), generator=g))
        sizes = [(h, w)]
        for _ in range(3):  # each level: ceil(size / 2), like a stride-2 conv (odd sizes included)
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        c = 3
        yield f"random, seed {seed}, sizes {sizes}", dict(
            laterals=[torch.randn(2, c, hh, ww, generator=g, dtype=torch.float64) for hh, ww in sizes])


def check_fpn_top_down(fn: Callable, points: float = 2, name: str = "fpn_top_down") -> CheckResult:
    """``fn(laterals: list of (N, C, H_i, W_i), finest first) -> list M of the same shapes``."""
    return run_check(name, fn, reference_fpn_top_down, _top_down_cases(), points, atol=1e-10, rtol=1e-8,
                     what="the top-down pass of mrcnn_lite.model.fpn.FeaturePyramidNetwork")


# ==============================================================================================
# Notebook 04: anchors
# ==============================================================================================
def _base_anchor_cases():
    yield "one size, one ratio", dict(sizes=[32], ratios=[1.0])
    yield "odd size, square (x.5 rounds to even)", dict(sizes=[33], ratios=[1.0])
    yield "the RPN's three ratios", dict(sizes=[32], ratios=[0.5, 1.0, 2.0])
    for seed in SEEDS:
        g = _gen(seed)
        sizes = sorted({int(v) for v in torch.randint(4, 300, (3,), generator=g)})
        choice = torch.randperm(6, generator=g)[: 1 + seed % 3].sort().values.tolist()
        ratios = [(0.25, 0.5, 1.0, 2.0, 3.0, 4.0)[i] for i in choice]
        yield f"random, seed {seed}", dict(sizes=sizes, ratios=ratios)


def check_base_anchors(fn: Callable, points: float = 2, name: str = "base_anchors") -> CheckResult:
    """``fn(sizes, ratios) -> (len(ratios) * len(sizes), 4)`` zero-centred anchors, ratio-major,
    against ``mrcnn_lite.model.anchors.generate_base_anchors``."""
    return run_check(name, fn, generate_base_anchors, _base_anchor_cases(), points, exact=True,
                     what="mrcnn_lite.model.anchors.generate_base_anchors")


def reference_grid_anchors(base: Tensor, grid_size: Tuple[int, int], image_size: Tuple[int, int]) -> Tensor:
    """Every base anchor at every cell of a ``grid_size`` feature map of an ``image_size`` image:
    the package's ``grid_anchors`` with stride ``(H // H_f, W // W_f)``."""
    (gh, gw), (h, w) = grid_size, image_size
    return grid_anchors(base, (gh, gw), (h // gh, w // gw))


def _grid_anchor_cases():
    yield "torchvision's 3x3 example", dict(base=generate_base_anchors([10], [1.0]), grid_size=(3, 3),
                                            image_size=(15, 15))
    yield "a 1x1 grid", dict(base=generate_base_anchors([16], [0.5, 1.0, 2.0]), grid_size=(1, 1),
                             image_size=(32, 32))
    for seed in SEEDS:
        g = _gen(seed)
        gh, gw = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        stride = int((4, 8, 16, 32, 64)[seed])
        h, w = gh * stride + int(torch.randint(0, stride, (1,), generator=g)), gw * stride
        base = generate_base_anchors([stride * 2, stride * 4][: 1 + seed % 2], [0.5, 1.0, 2.0])
        yield f"random, seed {seed}: grid {gh}x{gw}, image {h}x{w}", dict(
            base=base, grid_size=(gh, gw), image_size=(h, w))


def check_grid_anchors(fn: Callable, points: float = 2, name: str = "grid_anchors") -> CheckResult:
    """``fn(base (A, 4), grid_size (H_f, W_f), image_size (H, W)) -> (H_f * W_f * A, 4)``, order y -> x -> anchor."""
    return run_check(name, fn, reference_grid_anchors, _grid_anchor_cases(), points, exact=True,
                     what="mrcnn_lite.model.anchors.grid_anchors")


# ==============================================================================================
# Notebook 05: the RPN loss
# ==============================================================================================
def reference_rpn_loss(objectness: Tensor, pred_bbox_deltas: Tensor, labels: Tensor, regression_targets: Tensor,
                       pos_mask: Tensor, neg_mask: Tensor) -> Tuple[Tensor, Tensor]:
    """``RegionProposalNetwork.compute_loss`` for one image, with the sampled anchors given
    (``pos_mask``, ``neg_mask`` instead of a random draw). Returns ``(objectness_loss, box_loss)``."""
    fake_rpn = SimpleNamespace(fg_bg_sampler=lambda labels: ([pos_mask], [neg_mask]))
    return RegionProposalNetwork.compute_loss(fake_rpn, objectness[None], pred_bbox_deltas[None],
                                              [labels], [regression_targets])


def _rpn_loss_inputs(n: int, n_pos: int, n_neg: int, g: torch.Generator) -> Dict[str, Tensor]:
    f64 = dict(dtype=torch.float64)
    labels = torch.zeros(n, **f64)
    perm = torch.randperm(n, generator=g)
    pos, neg, ignore = perm[:n_pos], perm[n_pos:n_pos + n_neg], perm[n_pos + n_neg:]
    labels[pos] = 1.0
    labels[ignore[: len(ignore) // 2]] = -1.0                      # some ignored anchors
    pos_mask = torch.zeros(n, dtype=torch.bool)
    neg_mask = torch.zeros(n, dtype=torch.bool)
    pos_mask[pos] = True
    neg_mask[neg] = True
    return dict(objectness=torch.randn(n, generator=g, **f64) * 3,
                pred_bbox_deltas=torch.randn(n, 4, generator=g, **f64) * 0.3,
                labels=labels,
                regression_targets=torch.randn(n, 4, generator=g, **f64) * 0.3,
                pos_mask=pos_mask, neg_mask=neg_mask)


def _rpn_loss_cases():
    yield "one positive anchor (N=1)", _rpn_loss_inputs(1, 1, 0, _gen(50))
    yield "no positives: the box loss is 0", _rpn_loss_inputs(12, 0, 6, _gen(51))
    for seed in SEEDS:
        g = _gen(seed)
        n = int(torch.randint(10, 200, (1,), generator=g))
        n_pos = int(torch.randint(1, n // 4 + 2, (1,), generator=g))
        n_neg = int(torch.randint(1, n // 2, (1,), generator=g))
        yield f"random, seed {seed}: {n} anchors, {n_pos} sampled positives, {n_neg} negatives", \
            _rpn_loss_inputs(n, n_pos, n_neg, g)


def check_rpn_loss(fn: Callable, points: float = 3, name: str = "rpn_loss") -> CheckResult:
    """``fn(objectness (N,), pred_bbox_deltas (N, 4), labels (N,), regression_targets (N, 4),
    pos_mask (N,) bool, neg_mask (N,) bool) -> (objectness_loss, box_loss)``."""
    return run_check(name, fn, reference_rpn_loss, _rpn_loss_cases(), points, atol=1e-9, rtol=1e-7,
                     what="RegionProposalNetwork.compute_loss")


# ==============================================================================================
# Notebook 06: bilinear sampling and RoIAlign
# ==============================================================================================
def reference_bilinear(f: Tensor, y: float, x: float) -> Tensor:
    """The value of ``f (H, W)`` at the real point ``(y, x)`` inside the map, read with the package's
    ``roi_align``: a tiny box centred on the point, one bin, one sample (``aligned=True``)."""
    d = 0.25
    box = torch.tensor([[0.0, x + 0.5 - d, y + 0.5 - d, x + 0.5 + d, y + 0.5 + d]], dtype=f.dtype)
    return ops.roi_align(f[None, None], box, 1, spatial_scale=1.0, sampling_ratio=1, aligned=True)[0, 0, 0, 0]


def _bilinear_cases():
    g = _gen(60)
    f = torch.randn(5, 7, generator=g, dtype=torch.float64)
    yield "a grid point (no interpolation)", dict(f=f, y=2.0, x=3.0)
    yield "half way between 4 cells", dict(f=f, y=1.5, x=4.5)
    yield "on the last row and column", dict(f=f, y=4.0, x=6.0)
    yield "between the last two columns", dict(f=f, y=4.0, x=5.25)
    for seed in SEEDS:
        g = _gen(seed)
        h, w = int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
        f = torch.randn(h, w, generator=g, dtype=torch.float64)
        y = float(torch.rand(1, generator=g, dtype=torch.float64)) * (h - 1)
        x = float(torch.rand(1, generator=g, dtype=torch.float64)) * (w - 1)
        yield f"random, seed {seed}", dict(f=f, y=y, x=x)


def check_bilinear(fn: Callable, points: float = 2, name: str = "bilinear") -> CheckResult:
    """``fn(f (H, W), y, x) -> value`` at a point with ``0 <= y <= H-1``, ``0 <= x <= W-1``."""
    return run_check(name, fn, reference_bilinear, _bilinear_cases(), points, atol=1e-10, rtol=1e-8,
                     what="bilinear sampling in mrcnn_lite.ops.roi_align")


def reference_roi_align_one_box(f: Tensor, box: Sequence[float], output_size: Tuple[int, int],
                                spatial_scale: float, sampling_ratio: int) -> Tensor:
    """``roi_align`` (``aligned=True``) of one box ``(x1, y1, x2, y2)`` on one map ``f (H, W)`` -> ``(PH, PW)``."""
    boxes = torch.tensor([[0.0, *[float(v) for v in box]]], dtype=f.dtype)
    return ops.roi_align(f[None, None], boxes, tuple(output_size), spatial_scale, sampling_ratio, aligned=True)[0, 0]


def _roi_align_cases():
    g = _gen(70)
    f = torch.randn(6, 8, generator=g, dtype=torch.float64)
    yield "the whole map, one bin, one sample", dict(f=f, box=[0.5, 0.5, 7.5, 5.5], output_size=(1, 1),
                                                     spatial_scale=1.0, sampling_ratio=1)
    yield "a box inside one cell", dict(f=f, box=[2.6, 1.7, 3.2, 2.4], output_size=(2, 2),
                                        spatial_scale=1.0, sampling_ratio=2)
    for seed in SEEDS:
        g = _gen(seed)
        h, w = int(torch.randint(3, 12, (1,), generator=g)), int(torch.randint(3, 12, (1,), generator=g))
        f = torch.randn(h, w, generator=g, dtype=torch.float64)
        scale = (1.0, 0.5, 0.25, 1 / 16, 0.125)[seed]
        # In feature coordinates (after the -0.5 shift) the box stays inside [0, W-1] x [0, H-1].
        x1, x2 = sorted((torch.rand(2, generator=g, dtype=torch.float64) * (w - 1)).tolist())
        y1, y2 = sorted((torch.rand(2, generator=g, dtype=torch.float64) * (h - 1)).tolist())
        box = [(v + 0.5) / scale for v in (x1, y1, x2, y2)]
        out = (1 + seed % 3, 1 + (seed + 1) % 3)
        yield f"random, seed {seed}", dict(f=f, box=box, output_size=out, spatial_scale=scale,
                                           sampling_ratio=1 + seed % 3)


def check_roi_align_one_box(fn: Callable, points: float = 3, name: str = "roi_align_one_box") -> CheckResult:
    """``fn(f (H, W), box (x1, y1, x2, y2), output_size (PH, PW), spatial_scale, sampling_ratio) -> (PH, PW)``,
    ``aligned=True``, against ``mrcnn_lite.ops.roi_align``."""
    return run_check(name, fn, reference_roi_align_one_box, _roi_align_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.ops.roi_align (aligned=True)")


# ==============================================================================================
# Notebook 07: the box head (Fast R-CNN loss, class-specific decoding)
# ==============================================================================================
def reference_fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor,
                            regression_targets: Tensor) -> Tuple[Tensor, Tensor]:
    """``box_head.fastrcnn_loss`` for one batch of sampled RoIs given as single tensors:
    ``class_logits (S, C)``, ``box_regression (S, C * 4)``, ``labels (S,)``, ``regression_targets (S, 4)``."""
    return fastrcnn_loss(class_logits, box_regression, [labels], [regression_targets])


def _fastrcnn_loss_inputs(s: int, c: int, n_pos: int, g: torch.Generator) -> Dict[str, Tensor]:
    f64 = dict(dtype=torch.float64)
    labels = torch.zeros(s, dtype=torch.int64)
    pos = torch.randperm(s, generator=g)[:n_pos]
    labels[pos] = torch.randint(1, c, (n_pos,), generator=g) if c > 1 else 0
    return dict(class_logits=torch.randn(s, c, generator=g, **f64) * 2,
                box_regression=torch.randn(s, c * 4, generator=g, **f64) * 0.3,
                labels=labels,
                regression_targets=torch.randn(s, 4, generator=g, **f64) * 0.3)


def _fastrcnn_loss_cases():
    yield "one positive RoI (S=1)", _fastrcnn_loss_inputs(1, 4, 1, _gen(80))
    yield "no positives: the box loss is 0", _fastrcnn_loss_inputs(8, 4, 0, _gen(81))
    yield "all RoIs positive, two classes", _fastrcnn_loss_inputs(6, 2, 6, _gen(82))
    for seed in SEEDS:
        g = _gen(seed)
        s = int(torch.randint(4, 120, (1,), generator=g))
        c = int(torch.randint(2, 12, (1,), generator=g))
        n_pos = int(torch.randint(1, s // 4 + 2, (1,), generator=g))
        yield f"random, seed {seed}: {s} RoIs, {c} classes, {n_pos} positives", _fastrcnn_loss_inputs(s, c, n_pos, g)


def check_fastrcnn_loss(fn: Callable, points: float = 3, name: str = "fastrcnn_loss") -> CheckResult:
    """``fn(class_logits (S, C), box_regression (S, C*4), labels (S,), regression_targets (S, 4))
    -> (loss_classifier, loss_box_reg)``, against ``mrcnn_lite.model.box_head.fastrcnn_loss``."""
    return run_check(name, fn, reference_fastrcnn_loss, _fastrcnn_loss_cases(), points, atol=1e-9, rtol=1e-7,
                     what="mrcnn_lite.model.box_head.fastrcnn_loss")


def reference_decode_class_boxes(box_regression: Tensor, proposals: Tensor, classes: Tensor) -> Tensor:
    """Each proposal decoded with the deltas of *its* class: ``box_regression (P, C * 4)``,
    ``proposals (P, 4)``, ``classes (P,)`` -> ``(P, 4)``, with ``BoxCoder((10, 10, 5, 5))`` as the box head."""
    P, C = box_regression.shape[0], box_regression.shape[1] // 4
    boxes = ops.BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(box_regression, proposals)
    return boxes.reshape(P, C, 4)[torch.arange(P), classes]


def _decode_class_cases():
    f64 = dict(dtype=torch.float64)
    yield "empty (P=0)", dict(box_regression=torch.zeros(0, 16, **f64), proposals=torch.zeros(0, 4, **f64),
                              classes=torch.zeros(0, dtype=torch.int64))
    prop = torch.tensor([[10.0, 20.0, 50.0, 40.0]], **f64)
    deltas = torch.zeros(1, 12, **f64)
    deltas[0, 8:] = torch.tensor([10.0, -5.0, 0.5, 0.0], **f64)  # class 2 moves the box, the others do not
    yield "one proposal, only class 2's deltas non-zero", dict(box_regression=deltas, proposals=prop,
                                                               classes=torch.tensor([2]))
    yield "the same proposal, class 1 (zero deltas: the box stays)", dict(
        box_regression=deltas, proposals=prop, classes=torch.tensor([1]))
    for seed in SEEDS:
        g = _gen(seed)
        p = int(torch.randint(1, 40, (1,), generator=g))
        c = int(torch.randint(2, 10, (1,), generator=g))
        yield f"random, seed {seed}: {p} proposals, {c} classes", dict(
            box_regression=torch.randn(p, c * 4, generator=g, **f64),
            proposals=random_boxes(p, g), classes=torch.randint(0, c, (p,), generator=g))


def check_decode_class_boxes(fn: Callable, points: float = 2, name: str = "decode_class_boxes") -> CheckResult:
    """``fn(box_regression (P, C*4), proposals (P, 4), classes (P,)) -> boxes (P, 4)``: the class's deltas
    decoded with the weights (10, 10, 5, 5)."""
    return run_check(name, fn, reference_decode_class_boxes, _decode_class_cases(), points, atol=1e-8, rtol=1e-7,
                     what="BoxCoder((10, 10, 5, 5)).decode_single, the class's slot")


# ==============================================================================================
# Notebook 08: mask targets from the proposals
# ==============================================================================================
def reference_mask_targets(gt_masks: Tensor, proposals: Tensor, matched_idxs: Tensor, M: int) -> Tensor:
    """``mask_head.project_masks_on_boxes``: each GT mask cropped by its proposal, RoIAlign to ``(M, M)``."""
    return project_masks_on_boxes(gt_masks, proposals, matched_idxs, M)


def _random_masks(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """``(n, h, w)`` uint8 masks: a random ellipse each."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64)
    r = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64) / 3 + 2
    d = ((xs - c[:, None, None, 0]) / r[:, None, None, 0]) ** 2 + ((ys - c[:, None, None, 1]) / r[:, None, None, 1]) ** 2
    return (d <= 1).to(torch.uint8)


def _mask_target_cases():
    g = _gen(90)
    masks = _random_masks(2, 24, 32, g)
    yield "no positive proposals (P=0)", dict(gt_masks=masks, proposals=torch.zeros(0, 4),
                                              matched_idxs=torch.zeros(0, dtype=torch.int64), M=7)
    yield "the whole image as proposal, mask 1", dict(gt_masks=masks, proposals=torch.tensor([[0.0, 0.0, 32.0, 24.0]]),
                                                       matched_idxs=torch.tensor([1]), M=8)
    for seed in SEEDS:
        g = _gen(seed)
        h, w = int(torch.randint(16, 64, (1,), generator=g)), int(torch.randint(16, 64, (1,), generator=g))
        n = int(torch.randint(1, 5, (1,), generator=g))
        p = int(torch.randint(1, 12, (1,), generator=g))
        boxes = random_boxes(p, g, scale=float(min(h, w)) * 0.7, max_size=float(min(h, w)) * 0.5, dtype=torch.float32)
        yield f"random, seed {seed}: {n} masks {h}x{w}, {p} proposals", dict(
            gt_masks=_random_masks(n, h, w, g), proposals=boxes,
            matched_idxs=torch.randint(0, n, (p,), generator=g), M=(28, 14, 7, 28, 5)[seed])


def check_mask_targets(fn: Callable, points: float = 3, name: str = "mask_targets") -> CheckResult:
    """``fn(gt_masks (n, H, W), proposals (P, 4), matched_idxs (P,), M) -> (P, M, M)`` float targets,
    against ``mrcnn_lite.model.mask_head.project_masks_on_boxes``."""
    return run_check(name, fn, reference_mask_targets, _mask_target_cases(), points, atol=1e-5, rtol=1e-5,
                     what="mrcnn_lite.model.mask_head.project_masks_on_boxes")


# ==============================================================================================
# Notebook 09: detections back to the original image
# ==============================================================================================
def reference_to_original(boxes: Tensor, masks: Tensor, image_size: Tuple[int, int],
                          original_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """``GeneralizedRCNNTransform.postprocess`` for one image: ``boxes (m, 4)`` in the resized image's
    pixels and ``masks (m, 1, M, M)`` -> boxes in the original image's pixels and ``(m, 1, H, W)`` pasted masks."""
    out = GeneralizedRCNNTransform.postprocess(SimpleNamespace(training=False), [dict(boxes=boxes, masks=masks)],
                                               [tuple(image_size)], [tuple(original_size)])[0]
    return out["boxes"], out["masks"]


def _to_original_cases():
    g = _gen(95)
    yield "no detections (m=0)", dict(boxes=torch.zeros(0, 4), masks=torch.zeros(0, 1, 28, 28),
                                      image_size=(64, 96), original_size=(32, 48))
    yield "same size (nothing to rescale)", dict(boxes=random_boxes(2, g, scale=30.0, dtype=torch.float32),
                                                 masks=torch.rand(2, 1, 28, 28, generator=g),
                                                 image_size=(64, 64), original_size=(64, 64))
    for seed in SEEDS:
        g = _gen(seed)
        H, W = int(torch.randint(20, 90, (1,), generator=g)), int(torch.randint(20, 90, (1,), generator=g))
        s = (2.0, 0.5, 1.6, 0.75, 3.0)[seed]
        h, w = int(H * s), int(W * s)
        m = int(torch.randint(1, 6, (1,), generator=g))
        M = (28, 14, 28, 7, 28)[seed]
        yield f"random, seed {seed}: {m} detections, {h}x{w} -> {H}x{W}", dict(
            boxes=random_boxes(m, g, scale=0.6 * min(h, w), max_size=0.4 * min(h, w), dtype=torch.float32),
            masks=torch.rand(m, 1, M, M, generator=g), image_size=(h, w), original_size=(H, W))


def check_to_original(fn: Callable, points: float = 2, name: str = "to_original") -> CheckResult:
    """``fn(boxes (m, 4), masks (m, 1, M, M), image_size (h, w), original_size (H, W)) -> (boxes (m, 4),
    masks (m, 1, H, W))``, against ``GeneralizedRCNNTransform.postprocess``."""
    return run_check(name, fn, reference_to_original, _to_original_cases(), points, atol=1e-4, rtol=1e-5,
                     what="mrcnn_lite.model.transform.GeneralizedRCNNTransform.postprocess")


# ==============================================================================================
# Notebook 10: training (one training step, the learning-rate schedule)
# ==============================================================================================
class _Fresh:
    """An input built afresh for every call (the function under test changes it in place: a model's
    weights, an optimizer's state). Shown as ``text`` in a failure message."""

    def __init__(self, text: str, build: Callable):
        self.text, self.build = text, build

    def __repr__(self) -> str:
        return self.text


class _ToyDetector(torch.nn.Module):
    """A stand-in for Mask R-CNN with its training contract, ``model(images, targets) -> {name: scalar loss}``,
    small enough (float64, a few hundred weights) that several training steps take milliseconds.

    ``constant`` names loss terms that are a constant 0 without a gradient, like the box and mask losses
    of an image without objects; ``frozen_stem`` freezes the first conv (``requires_grad=False``), like a
    frozen backbone stage.
    """

    def __init__(self, names: Sequence[str], constant: Sequence[str] = (), frozen_stem: bool = False):
        super().__init__()
        self.names, self.constant = tuple(names), tuple(constant)
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.body = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, len(self.names))
        if frozen_stem:
            self.stem.requires_grad_(False)

    def forward(self, images: List[Tensor], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        feats = torch.stack([self.body(torch.relu(self.stem(im[None]))).mean(dim=(0, 2, 3)) for im in images])
        out = self.head(torch.tanh(feats))                                  # (B, K)
        goal = torch.stack([t["goal"] for t in targets])                    # (B, K)
        return {name: (out.new_zeros(()) if name in self.constant else
                       torch.nn.functional.smooth_l1_loss(out[:, k], goal[:, k]) * (k + 1))
                for k, name in enumerate(self.names)}


def reference_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: List[Tensor],
                         targets: List[Dict[str, Tensor]], clip_grad_norm: Optional[float] = None) -> Dict[str, float]:
    """One training step exactly as ``Trainer.train_step`` does it (no AMP, one process, no scheduler):
    forward, sum the loss terms, ``zero_grad``, backward, clip the gradient norm if asked, step.
    Returns the loss terms and their sum ``"loss"`` as plain floats."""
    device = next(model.parameters()).device
    trainer = SimpleNamespace(
        device=device, amp_dtype=None, ddp_model=model, model=model, world=1, epoch=0, global_step=0,
        checkpoint_path="(no checkpoint)", optimizer=optimizer, cfg=SimpleNamespace(clip_grad_norm=clip_grad_norm),
        scaler=torch.amp.GradScaler("cuda", enabled=False), scheduler=SimpleNamespace(step=lambda: None))
    return Trainer.train_step(trainer, images, targets)


def _train_step_inputs(label: str, seed: int, names: Sequence[str], batch: int, size: Tuple[int, int],
                       clip: Optional[float], optimizer: str = "sgd", constant: Sequence[str] = (),
                       frozen_stem: bool = False, steps: int = 3):
    g = _gen(200 + seed)
    f64 = dict(dtype=torch.float64)

    def build_model():
        model = _ToyDetector(names, constant, frozen_stem).double()
        with torch.no_grad():
            wg = _gen(300 + seed)
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=wg, **f64) * 0.5)
        return model

    if optimizer == "sgd":
        opt = _Fresh("SGD(lr=0.1, momentum=0.9, weight_decay=1e-4) over the parameters with requires_grad",
                     lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1,
                                               momentum=0.9, weight_decay=1e-4))
    else:
        opt = _Fresh("AdamW(lr=0.05, weight_decay=1e-2) over the parameters with requires_grad",
                     lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.05,
                                                 weight_decay=1e-2))
    frozen = ", stem frozen" if frozen_stem else ""
    const = f", {list(constant)} constant 0" if constant else ""
    return label, dict(
        model=_Fresh(f"a toy detector (float64) with the losses {list(names)}{const}{frozen}, weights from seed {seed}",
                     build_model),
        optimizer=opt,
        images=[torch.rand(3, *size, generator=g, **f64) for _ in range(batch)],
        targets=[{"goal": torch.randn(len(names), generator=g, **f64) * 3} for _ in range(batch)],
        clip_grad_norm=clip, steps=steps)


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
        out = fn(model, optimizer, inputs["images"], inputs["targets"], inputs["clip_grad_norm"])
        rows.append(_loss_floats(out, model.names))
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.tensor(rows, dtype=torch.float64), weights


def _train_step_cases():
    yield _train_step_inputs("one image, one loss term, no clipping", 50, ["loss_classifier"], 1, (6, 5), None)
    yield _train_step_inputs("a term without gradient (an image without objects: its box loss is a constant 0)", 51,
                             ["loss_classifier", "loss_box_reg"], 2, (5, 7), None, constant=["loss_box_reg"])
    yield _train_step_inputs("clip_grad_norm=0.05: the gradient is scaled down", 52,
                             ["loss_objectness", "loss_rpn_box_reg"], 2, (6, 6), 0.05)
    yield _train_step_inputs("a frozen stem (requires_grad=False) and clipping", 53,
                             ["loss_classifier", "loss_box_reg", "loss_mask"], 1, (5, 5), 0.2, frozen_stem=True)
    for seed in SEEDS:
        g = _gen(seed)
        k = int(torch.randint(2, 6, (1,), generator=g))
        names = ["loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"][:k]
        batch = int(torch.randint(1, 4, (1,), generator=g))
        size = (int(torch.randint(3, 10, (1,), generator=g)), int(torch.randint(3, 10, (1,), generator=g)))
        clip = (None, 0.1, 1.0, None, 0.05)[seed]
        opt = ("sgd", "sgd", "adamw", "sgd", "adamw")[seed]
        yield _train_step_inputs(f"random, seed {seed}: {k} loss terms, {batch} images, clip {clip}, {opt}",
                                 seed, names, batch, size, clip, opt)


def check_train_step(fn: Callable, points: float = 3, name: str = "train_step") -> CheckResult:
    """``fn(model, optimizer, images, targets, clip_grad_norm=None) -> {term: float, ..., "loss": float}``:
    one training step, called 3 times in a row on a toy model; the returned losses of every call and the
    weights after the last one must equal ``Trainer.train_step``'s. (The Trainer reports its losses in float32,
    hence ``rtol=1e-6``; a wrong step changes the numbers far more.)"""
    return run_check(name, fn, reference_train_step, _train_step_cases(), points, atol=1e-9, rtol=1e-6,
                     call=_call_train_step,
                     what="mrcnn_lite.engine.Trainer.train_step (losses of 3 steps in a row, then the weights)")


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
        g = _gen(seed)
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
                     what="base_lr * mrcnn_lite.engine.lr_factor (schedule='cosine')")


# ==============================================================================================
# Notebook 11: COCO's AP of one precision-recall curve
# ==============================================================================================
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
"""The 101 recall points ``0, 0.01, ..., 1`` exactly as pycocotools' ``Params.recThrs`` makes them."""


def reference_coco_ap(recall, precision) -> float:
    """COCO's AP of one precision-recall curve, the way ``COCOeval.accumulate`` computes it.

    ``recall (D,)``, ``precision (D,)``: after each of the ``D`` detections, ranked by score (recall
    non-decreasing). The precision is made monotone (at each rank, the best precision at this rank
    or any later one), read at the 101 recall points (the first rank whose recall reaches the point;
    0 where the recall never does) and averaged.
    """
    rc = np.asarray(recall, dtype=np.float64)
    pr = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    idx = np.searchsorted(rc, COCO_RECALL_POINTS, side="left")
    q = np.zeros(len(COCO_RECALL_POINTS))
    found = idx < len(pr)
    q[found] = pr[idx[found]]
    return float(q.mean())


def _pr_curve(tps: Sequence[bool], n_gt: int) -> Tuple[Tensor, Tensor]:
    """Recall and precision after each detection of a ranked TP/FP list, with pycocotools' formulas."""
    tp = np.cumsum(np.asarray(tps, dtype=bool)).astype(float)
    fp = np.cumsum(~np.asarray(tps, dtype=bool)).astype(float)
    return torch.from_numpy(tp / n_gt), torch.from_numpy(tp / (fp + tp + np.spacing(1)))


def coco_ap_by_pycocotools(recall, precision) -> float:
    """The AP that pycocotools itself gives for a precision-recall curve of a ranked detection list.

    The curve is turned back into what it came from -- which ranked detections were true positives,
    and the number of ground-truth objects -- and ``COCOeval.accumulate`` runs on that (one class, one
    IoU threshold, one area range; at most 100 detections per image, as COCO counts them).
    """
    import contextlib
    import copy
    import io

    from pycocotools.cocoeval import COCOeval, Params

    rc, pr = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    ranks = np.arange(1, len(pr) + 1)
    tp = np.rint(pr * ranks).astype(np.int64)
    if np.any(np.diff(np.concatenate([[0], tp])) < 0) or np.any(np.diff(np.concatenate([[0], tp])) > 1):
        raise ValueError("not the precision of a ranked list of detections")
    tps = np.diff(np.concatenate([[0], tp])).astype(bool)
    n_gt = int(np.rint(tp[-1] / rc[-1])) if len(tp) and tp[-1] > 0 else 1

    params = Params("bbox")
    params.iouThrs = np.array([0.5])
    params.catIds, params.areaRng, params.areaRngLbl, params.maxDets = [1], [[0, 1e10]], ["all"], [100]
    chunks = [np.arange(i, min(i + 100, len(tps))) for i in range(0, len(tps), 100)] or [np.arange(0)]
    params.imgIds = list(range(len(chunks)))
    scores = 1.0 - np.arange(len(tps)) / (len(tps) + 1.0)            # strictly decreasing: the ranking
    ev = COCOeval(iouType="bbox")
    ev.params, ev._paramsEval = params, copy.deepcopy(params)
    ev.evalImgs = [{"dtScores": scores[c].tolist(),
                    "dtMatches": tps[c][None].astype(np.float64),     # a matched GT id (non-zero) for a TP
                    "dtIgnore": np.zeros((1, len(c)), dtype=bool),
                    "gtIgnore": np.zeros(n_gt if i == 0 else 0)} for i, c in enumerate(chunks)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    return float(ev.eval["precision"][0, :, 0, 0, 0].mean())


def _coco_ap_cases():
    def case(label, tps, n_gt):
        recall, precision = _pr_curve(tps, n_gt)
        return label, dict(recall=recall, precision=precision)

    yield case("no detections (empty curve)", [], 3)
    yield case("only false positives", [0, 0, 0], 2)
    yield case("a perfect ranking: every object found before any mistake", [1, 1, 1, 1, 0, 0], 4)
    yield case("precision rises again after mistakes (the monotone envelope)", [1, 0, 0, 1, 1, 0, 1], 5)
    yield case("recall never reaches 1: those recall points count 0", [1, 0, 1, 1, 0], 10)
    yield case("recall exactly on recall points (0.25, 0.5, ...): the first rank that reaches it",
               [1, 0, 1, 0, 1, 1], 4)
    yield case("150 detections, 60 objects", ([1, 0, 1] * 50), 60)
    for seed in SEEDS:
        g = _gen(seed)
        n_gt = int(torch.randint(1, 40, (1,), generator=g))
        n_det = int(torch.randint(1, 120, (1,), generator=g))
        p_tp = float(torch.rand(1, generator=g))
        hits = (torch.rand(n_det, generator=g) < p_tp).tolist()
        tps, found = [], 0
        for hit in hits:                 # a true positive needs an object not found yet
            hit = hit and found < n_gt
            found += hit
            tps.append(hit)
        yield case(f"random, seed {seed}: {n_det} detections, {n_gt} objects, {found} found", tps, n_gt)


def _call_coco_ap(fn: Callable, inputs: Dict[str, Any]):
    return fn(inputs["recall"].numpy(), inputs["precision"].numpy())


def check_coco_ap(fn: Callable, points: float = 3, name: str = "coco_ap") -> CheckResult:
    """``fn(recall (D,), precision (D,)) -> AP`` (NumPy arrays in, a float out): COCO's 101-point
    interpolated AP, against pycocotools' ``COCOeval.accumulate`` on the same ranked detections."""
    return run_check(name, fn, coco_ap_by_pycocotools, _coco_ap_cases(), points, atol=1e-12, rtol=1e-9,
                     call=_call_coco_ap, what="pycocotools' COCOeval.accumulate on the same ranked detections")


# ==============================================================================================
# Notebook 12: your own data (COCO boxes, uncompressed RLE)
# ==============================================================================================
def reference_coco_boxes(anns: List[Dict[str, Any]]) -> Tuple[Tensor, Tensor, int]:
    """What ``CocoInstances(..., drop_degenerate=True)`` makes of one image's annotations: ``boxes (n, 4)``
    x1y1x2y2 float32 from the COCO ``bbox [x, y, w, h]``, ``labels (n,)`` int64 = ``category_id``, and the
    number of annotations dropped for a width or height <= 0. The annotations go through the real loader
    (a temporary JSON file; a blank image stands in for the pixels, empty masks for the segmentations)."""
    import json
    import tempfile
    from pathlib import Path

    h, w = 96, 128                                                  # every case box lies inside
    blank = {"size": [h, w], "counts": [h * w]}                      # an empty mask: only the boxes matter here
    data = {"images": [{"id": 1, "file_name": "blank.png", "width": w, "height": h}],
            "annotations": [{**a, "image_id": 1, "segmentation": blank} for a in anns],
            "categories": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "annotations.json"
        path.write_text(json.dumps(data))
        ds = CocoInstances(tmp, path, drop_degenerate=True)
    ds.load_image = lambda index: np.zeros((h, w, 3), dtype=np.uint8)
    target = ds[0][1]
    return target["boxes"], target["labels"], ds.num_dropped


def _coco_boxes_cases():
    def ann(i, cat, bbox):
        return {"id": i, "image_id": 1, "category_id": cat, "bbox": [float(v) for v in bbox]}

    yield "no annotations (an image without objects)", dict(anns=[])
    yield "one annotation", dict(anns=[ann(7, 2, [10, 20, 30, 15])])
    yield "width 0: dropped and counted", dict(anns=[ann(1, 1, [5, 5, 0, 10]), ann(2, 3, [1.5, 2.5, 4, 6])])
    yield "height 0 and a negative width", dict(anns=[ann(3, 1, [5, 5, 10, 0]), ann(4, 2, [0, 0, 8, 8]),
                                                      ann(5, 2, [30, 5, -4, 10])])
    yield "every box degenerate", dict(anns=[ann(1, 1, [0, 0, 0, 0]), ann(2, 1, [3, 3, 0, 5])])
    yield "category ids with gaps (COCO's 1..90): labels are the ids unchanged", dict(
        anns=[ann(11, 90, [1, 2, 3, 4]), ann(12, 44, [20, 10, 5.5, 7.25])])
    for seed in SEEDS:
        g = _gen(seed)
        n = int(torch.randint(1, 10, (1,), generator=g))
        xy = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 50).round(decimals=2)
        wh = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 30).round(decimals=2)
        bad = torch.rand(n, generator=g) < 0.3
        wh[bad, int(torch.randint(0, 2, (1,), generator=g))] = 0.0
        cats = torch.randint(1, 91, (n,), generator=g)
        yield f"random, seed {seed}: {n} annotations, {int(bad.sum())} degenerate", dict(
            anns=[ann(100 + i, int(cats[i]), [*xy[i].tolist(), *wh[i].tolist()]) for i in range(n)])


def check_coco_boxes(fn: Callable, points: float = 2, name: str = "coco_boxes") -> CheckResult:
    """``fn(anns: list of COCO annotation dicts) -> (boxes (n, 4) x1y1x2y2, labels (n,), num_dropped)``,
    against ``CocoInstances(..., drop_degenerate=True)``."""
    return run_check(name, fn, reference_coco_boxes, _coco_boxes_cases(), points, atol=1e-4, rtol=1e-6,
                     what="mrcnn_lite.data.CocoInstances(..., drop_degenerate=True)")


def reference_rle_decode(counts: Sequence[int], height: int, width: int) -> Tensor:
    """An uncompressed COCO RLE -> ``(height, width)`` uint8 mask, decoded by the package's loader (pycocotools)."""
    seg = {"size": [height, width], "counts": [int(c) for c in counts]}
    return torch.from_numpy(_segmentation_to_mask(seg, height, width, ann_id="(exercise)"))


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
        g = _gen(seed)
        h, w = int(torch.randint(6, 30, (1,), generator=g)), int(torch.randint(6, 30, (1,), generator=g))
        mask = _random_masks(int(torch.randint(1, 4, (1,), generator=g)), h, w, g).amax(dim=0)
        yield f"random, seed {seed}: {h}x{w}", dict(counts=rle_counts(mask.numpy()), height=h, width=w)


def _call_rle_decode(fn: Callable, inputs: Dict[str, Any]):
    out = fn(list(inputs["counts"]), inputs["height"], inputs["width"])
    return torch.from_numpy(np.ascontiguousarray(out)) if isinstance(out, np.ndarray) else out


def check_rle_decode(fn: Callable, points: float = 2, name: str = "rle_decode") -> CheckResult:
    """``fn(counts, height, width) -> (height, width)`` 0/1 mask from an uncompressed COCO RLE, against the
    package's loader (pycocotools)."""
    return run_check(name, fn, reference_rle_decode, _rle_decode_cases(), points, exact=True, call=_call_rle_decode,
                     what="the package's COCO loader (pycocotools' decoder)")
