"""What a check found, and how it tells: ``CheckResult`` and ``RESULTS`` (every result of the session, which
the autograder reads), ``fmt`` (inputs and outputs printed compactly in a failure message) and ``compare``
(the learner's output against the reference's, with the first difference named). The checker engine,
``runner.py``, uses them (and re-exports them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor


@dataclass
class CheckResult:
    """What a checker found. ``points`` is ``max_points`` when passed; 0, or the points of the parts
    that passed (:func:`run_parts`), when not."""

    name: str
    passed: bool
    points: float
    max_points: float
    message: str
    implemented: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def status(self) -> str:
        return "PASS" if self.passed else ("TODO" if not self.implemented else "FAIL")

    def __repr__(self) -> str:
        # The points alone: a check cell's value is its score (nbgrader reads it as partial credit).
        return f"{self.points:g}"


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
