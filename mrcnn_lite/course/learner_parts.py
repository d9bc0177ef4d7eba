"""The parts of the learner's model: which exercise of notebooks 01-09 is which part (``PARTS``), storing and
loading a learner's function as source code (``save_part``, ``load_parts``), and the reference solutions (the
package's own functions with the exercises' signatures). ``learner_model.py`` builds the model from them
(and re-exports these names).

Getting your functions from notebooks 01-09 to notebook 10::

    from mrcnn_lite.course.learner_model import save_part
    save_part("box_iou", my_box_iou)                         # in notebook 01, after the check
    save_part("fastrcnn_loss", fastrcnn_loss_by_hand, smooth_l1)   # helpers your function calls go too

``save_part`` stores the function's *source code* (not a pickle) in ``~/.mrcnn_lite/parts/<name>.py``
(or the folder in the environment variable ``MRCNN_LITE_PARTS``). ``load_parts()`` runs each file in a
fresh namespace in which ``torch``, ``math``, ``F`` (``torch.nn.functional``), ``nn``, ``Tensor``, the
``typing`` names, ``ops`` (``mrcnn_lite.ops``) and ``BoxCoder`` are already imported, and returns ``{name: function}``. The files are plain Python: read
them, edit them, delete one to go back to the package's part. Loading runs that code, so load only files
you wrote yourself.
"""
from __future__ import annotations

import inspect
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.rpn import RegionProposalNetwork


@dataclass(frozen=True)
class Part:
    """One exercise that is a part of the model. ``name``: the key of ``save_part`` / ``load_parts``;
    ``function``: the name the notebook gives it; ``checker``: its check in ``mrcnn_lite.course.checks``;
    ``seam``: where the model calls it."""

    name: str
    notebook: str
    function: str
    checker: str
    seam: str


PARTS: Tuple[Part, ...] = (
    Part("box_iou", "01", "my_box_iou", "check_box_iou",
         "IoU of the RPN's anchor matching (rpn.box_similarity) and of the RoI heads' proposal matching"),
    Part("encode", "01", "my_encode", "check_encode", "BoxCoder.encode_single: the RPN's and the box head's targets"),
    Part("decode", "01", "fixed_decode", "check_decode_lab", "the RPN's BoxCoder.decode_single: proposals from deltas"),
    Part("nms", "01", "my_nms", "check_nms", "batched_nms (one call per class or level): proposals and detections"),
    Part("base_anchors", "04", "base_anchors", "check_base_anchors", "AnchorGenerator's cell anchors"),
    Part("grid_anchors", "04", "grid_anchors", "check_grid_anchors", "AnchorGenerator.anchors_for"),
    Part("rpn_loss", "05", "rpn_loss", "check_rpn_loss", "RegionProposalNetwork.compute_loss"),
    Part("top_n_per_level", "05", "top_n_per_level", "check_top_n_per_level",
         "RegionProposalNetwork._get_top_n_idx"),
    Part("roi_align", "06", "roi_align_one_box", "check_roi_align_one_box",
         "roi_align of the box and mask poolers (looped over boxes and channels)"),
    Part("sample_balanced", "07", "sample_balanced", "check_sample_balanced",
         "the RPN's and the RoI heads' fg_bg_sampler"),
    Part("fastrcnn_loss", "07", "fastrcnn_loss_by_hand", "check_fastrcnn_loss", "RoIHeads.box_loss"),
    Part("decode_class_boxes", "07", "decode_class_boxes", "check_decode_class_boxes",
         "the box head's BoxCoder.decode (one call per class): final boxes"),
    Part("mask_targets", "08", "mask_targets", "check_mask_targets", "RoIHeads.mask_loss's targets"),
    Part("paste_mask", "09", "paste_mask", "check_paste_mask", "paste_masks_in_image (one call per mask)"),
)
_BY_NAME = {p.name: p for p in PARTS}

# Exercises of notebooks 01-09 that are *not* parts of the learner's model, and why (for the report).
NOT_WIRED = {
    "bottleneck, top_down (02, 03)": "modules with weights: the course model's own backbone and FPN are built",
    "frozen_bn lab (02)": "the course recipe trains with BatchNorm (norm='bn'), not frozen BN",
    "flatten_head lab (05)": "RegionProposalNetwork.forward calls concat_box_prediction_layers directly (no hook)",
    "bilinear (06)": "part of roi_align_one_box, which is wired",
    "level lab (06)": "MultiScaleRoIAlign maps levels itself (no hook)",
    "training_proposals lab (07), mask_loss lab (08)": "labs: their fixes are add_gt_proposals and the mask loss, "
                                                        "whose parts (box_iou, mask_targets) are wired",
}


# ----------------------------------------------------------------------------------------------
# Saving and loading the learner's functions as source code
# ----------------------------------------------------------------------------------------------
def parts_dir(path=None) -> Path:
    """Where parts are stored: ``path``, else ``$MRCNN_LITE_PARTS``, else ``~/.mrcnn_lite/parts``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("MRCNN_LITE_PARTS")
    return Path(env) if env else Path.home() / ".mrcnn_lite" / "parts"


def save_part(name: str, fn: Callable, *helpers: Callable, path=None) -> Path:
    """Store the source of ``fn`` (and of the ``helpers`` it calls) as part ``name``; returns the file.

    ``name``: one of ``PARTS`` (``box_iou``, ``encode``, ...). The file is written atomically.
    """
    if name not in _BY_NAME:
        raise ValueError(f"save_part: unknown part {name!r}; the parts are {', '.join(_BY_NAME)}")
    sources = []
    for f in (*helpers, fn):
        f = inspect.unwrap(f)  # checks.or_reference wraps a function with functools.wraps
        if not inspect.isfunction(f):
            raise TypeError(f"save_part({name!r}): {f!r} is not a function defined with def")
        try:
            sources.append(textwrap.dedent(inspect.getsource(f)))
        except (OSError, TypeError) as exc:
            raise ValueError(f"save_part({name!r}): the source of {f.__name__} cannot be read ({exc}); "
                             f"define it with def in a notebook cell or a file") from exc
    text = f"# part: {name}\n# function: {inspect.unwrap(fn).__name__}\n\n" + "\n\n".join(sources)
    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.py"
    tmp = target.with_suffix(".py.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target


def _namespace() -> dict:
    import typing

    # ops and BoxCoder: the notebooks hand them to two exercises (mask_targets crops with ops.roi_align,
    # decode_class_boxes decodes with a BoxCoder), so a saved part may use them as its notebook did.
    from .. import ops
    from ..ops import BoxCoder

    ns = {"torch": torch, "math": math, "F": F, "nn": nn, "Tensor": Tensor, "ops": ops, "BoxCoder": BoxCoder,
          "__name__": "learner_part"}
    ns.update({k: getattr(typing, k) for k in ("Any", "Dict", "List", "Optional", "Sequence", "Tuple")})
    return ns


def load_parts(path=None) -> Dict[str, Callable]:
    """``{name: function}`` of every stored part; each file is run in a fresh namespace (see the module doc)."""
    folder = parts_dir(path)
    parts = {}
    for name in _BY_NAME:
        file = folder / f"{name}.py"
        if not file.exists():
            continue
        text = file.read_text()
        header = [line for line in text.splitlines()[:3] if line.startswith("# function: ")]
        if not header:
            raise ValueError(f"load_parts: {file} has no '# function: NAME' line (write it with save_part)")
        ns = _namespace()
        exec(compile(text, str(file), "exec"), ns)
        fn_name = header[0][len("# function: "):].strip()
        if fn_name not in ns:
            raise ValueError(f"load_parts: {file} defines no function {fn_name!r}")
        parts[name] = ns[fn_name]
    return parts


def course_solutions(notebooks_dir=None) -> Dict[str, Callable]:
    """``{name: function}``: the course's own solution of every part, read from the solution notebooks (the
    ``def`` statements and imports of their nbgrader solution cells), run as a learner's ``save_part`` files
    are, in a fresh namespace. Unlike ``reference_parts`` these are written code, not the package's functions,
    so the checkers (which refuse the package's own implementation) accept them."""
    import ast
    import json

    from .items import course_notebooks_dir

    folder = Path(notebooks_dir) if notebooks_dir is not None else course_notebooks_dir()
    solutions: Dict[str, Callable] = {}
    for number in sorted({p.notebook for p in PARTS}):
        path = next(folder.glob(f"{number}_*.ipynb"))
        ns = _namespace()
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code" or not cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
                continue
            tree = ast.parse("".join(cell["source"]))
            tree.body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.Import, ast.ImportFrom))]
            exec(compile(tree, f"<answer {path.stem}>", "exec"), ns)
        for part in PARTS:
            if part.notebook == number:
                solutions[part.name] = ns[part.function]
    return solutions


# ----------------------------------------------------------------------------------------------
# The reference solutions: the package's own functions, with the exercises' signatures
# ----------------------------------------------------------------------------------------------
def reference_sample_balanced(labels: Tensor, batch_size_per_image: int, positive_fraction: float,
                              generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``BalancedPositiveNegativeSampler``'s draw for one image, from ``generator``: ``(pos_idx, neg_idx)``."""
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    pos = positive[torch.randperm(positive.numel(), generator=generator, device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), generator=generator, device=labels.device)[:num_neg]]
    return pos, neg


def reference_top_n_per_level(objectness: Tensor, num_anchors_per_level: Sequence[int], pre_nms_top_n: int) -> Tensor:
    """``RegionProposalNetwork._get_top_n_idx`` with ``pre_nms_top_n``: ``(B, K)`` indices, level by level.
    (The checker's reference builds an RPN, which draws random weights: it would move the sampler's draws.)"""
    class TopN:
        def pre_nms_top_n(self):
            return int(pre_nms_top_n)

    return RegionProposalNetwork._get_top_n_idx(TopN(), objectness, list(num_anchors_per_level))


def reference_parts() -> Dict[str, Callable]:
    """Every part as the package computes it, with the exercise's signature (what a correct solution gives)."""
    from .. import ops
    from ..model.anchors import generate_base_anchors
    from . import checks

    return {
        "box_iou": ops.box_iou, "encode": checks.reference_encode, "decode": checks.reference_decode,
        "nms": ops.nms, "base_anchors": generate_base_anchors, "grid_anchors": checks.reference_grid_anchors,
        "rpn_loss": checks.reference_rpn_loss, "top_n_per_level": reference_top_n_per_level,
        "roi_align": checks.reference_roi_align_one_box, "sample_balanced": reference_sample_balanced,
        "fastrcnn_loss": checks.reference_fastrcnn_loss, "decode_class_boxes": checks.reference_decode_class_boxes,
        "mask_targets": checks.reference_mask_targets, "paste_mask": checks.reference_paste_mask,
    }
