"""``torch.compile`` for the fixed-shape part of the model (opt-in; nothing else in the package compiles)."""
from __future__ import annotations

from typing import Optional

from torch import nn


def compile_backbone(model: nn.Module, mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
    """Compile the fixed-shape part of ``model`` with ``torch.compile``: the backbone (ResNet + FPN) and the
    RPN head. In place; returns ``model``. Opt-in: nothing else in the package compiles.

    Why only these: they are pure convolution stacks whose shapes depend only on the padded batch's shape,
    so one compiled graph serves every step when that shape is fixed (e.g. all images of one size). The
    rest of the model -- proposal filtering, NMS, sampling, RoI heads -- has data-dependent shapes (how many
    boxes survive), which a compiler can only handle with graph breaks or dynamic shapes, for little gain.

    What it buys: the compiler fuses the elementwise work (frozen BN, ReLU, the residual adds, the FPN's
    upsample-and-add) into the convolutions' epilogues, and on a GPU ``mode="reduce-overhead"`` records
    the kernels in a CUDA graph and replays them with one launch, which removes the per-kernel launch
    overhead (a few microseconds each, for a couple of hundred kernels per forward pass: it matters at
    batch 1-2). A change of input shape triggers a recompilation (and a new CUDA graph); keep shapes
    fixed, or pass ``dynamic=True``.

    Args:
        mode: ``torch.compile``'s mode: ``None`` (default), ``"reduce-overhead"`` (CUDA graphs) or
            ``"max-autotune"``.
        compile_kwargs: passed on to ``torch.compile``, e.g. ``backend="eager"`` to check that the code
            traces as one graph (``fullgraph=True``) without the C++/Triton compiler the default backend needs.

    ``nn.Module.compile`` compiles a module in place, so state-dict keys stay the same (no ``_orig_mod.``)
    and checkpoints load unchanged. The first call of each new shape (and of train vs eval) compiles:
    seconds to minutes.
    """
    model.backbone.compile(mode=mode, **compile_kwargs)
    model.rpn.head.compile(mode=mode, **compile_kwargs)
    return model
