"""The course's trained model: one line loads it; one function makes the shipped file from a training run.

    import mrcnn_lite as ml
    model = ml.load_course_model()          # data/checkpoints/tiny_shapes.pt, float32, eval mode
    info = ml.course_model_info()           # its config, held-out metrics, training history, command

The shipped file is a *training* checkpoint (``checkpoint.pt`` written by ``Trainer`` / the ``train``
command) with everything inference does not need taken out (optimizer, scheduler, random states) and the
weights stored in float16, which halves the file (the course model fits in about 4 MB). Loading copies
them into the float32 model, so inference runs in float32 as usual; the held-out metrics saved in the
file were measured on those float16-rounded weights, not on the float32 ones before rounding.

    python -m mrcnn_lite export --checkpoint runs/demo/checkpoint.pt --out data/checkpoints/tiny_shapes.pt

It stays a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs) and ``ml.load_checkpoint`` reads it too.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .course_data import course_data
from .engine.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

# The repository's data/checkpoints/tiny_shapes.pt, or the installed wheel's copy (course_data.py).
COURSE_CHECKPOINT = course_data("checkpoints/tiny_shapes.pt")
# Marks a file written by ``export_checkpoint`` (a training checkpoint has no "format" key).
FORMAT = "mrcnn_lite inference checkpoint v1"


def load_course_model(path=None, map_location="cpu"):
    """The trained course model (``tiny-shapes`` recipe), in float32 and eval mode.

    Args:
        path: a file written by ``export_checkpoint`` (or any ``checkpoint.pt``); default
            ``data/checkpoints/tiny_shapes.pt`` of the repository.
        map_location: device to put the model on.

    Returns the ``MaskRCNN`` (classes 1 = circle, 2 = square, 3 = triangle; 0 = background), which takes
    a list of ``(3, H, W)`` float images in [0, 1] and returns ``boxes``, ``labels``, ``scores`` and
    ``masks (m, 1, H, W)`` per image, like any model of the package.
    """
    path = COURSE_CHECKPOINT if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"course checkpoint not found: {path} (it ships with the repository; data/README.md gives "
            f"the commands that make it again)")
    # load_state_dict copies each float16 tensor into the float32 parameter (or buffer) of the same name.
    return load_checkpoint(path, map_location=map_location).float()


def course_model_info(path=None) -> Dict[str, Any]:
    """Everything in the shipped file except the weights: ``model_config``, ``meta`` (class names, the
    training command), ``train_config``, ``metrics`` (held-out COCO AP, how it was measured) and
    ``history`` (``{"train": [one dict per step], "eval": [...]}`` as ``Trainer`` records it)."""
    path = COURSE_CHECKPOINT if path is None else Path(path)
    state = read_checkpoint(path)
    return {k: v for k, v in state.items() if k != "model"}


def export_checkpoint(src, dst, *, eval_seed: Optional[int] = 99, num_eval: int = 100,
                      threads: Optional[int] = None, verbose: bool = True) -> Dict[str, Any]:
    """Turn a training checkpoint into the shipped inference file, written atomically.

    Keeps the weights (float16; integer buffers such as BatchNorm's ``num_batches_tracked`` as they are),
    the model config, ``meta``, the training config and the training history; drops the optimizer,
    scheduler, scaler and random states. With ``eval_seed`` (a shapes model only), it measures COCO box
    and mask AP of the float16 weights on ``ShapesDataset(num_eval, seed=eval_seed)`` through the package's
    evaluation path (``engine.coco_eval.evaluate``) and stores them as ``metrics["heldout"]``; the seed
    must not be one the training drew from (the ``train`` command uses ``--seed`` and ``--seed + 1``).

    Returns the written dict (weights included).
    """
    src, dst = Path(src), Path(dst)
    state = read_checkpoint(src)
    if not isinstance(state, dict) or "model" not in state or not state.get("model_config"):
        raise ValueError(f"{src} is not a mrcnn_lite training checkpoint (needs 'model' and 'model_config')")
    weights = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state["model"].items()}
    history = state.get("history", {"train": [], "eval": []})
    out = {
        "format": FORMAT,
        "model": weights,
        "model_config": state["model_config"],
        "meta": _portable_meta(state.get("meta", {})),
        "train_config": state.get("train_config", {}),
        "global_step": state.get("global_step"),
        "history": history,
        "metrics": {"train_eval": history["eval"][-1] if history.get("eval") else None, "heldout": None},
    }
    if eval_seed is not None:
        out["metrics"]["heldout"] = measure_heldout(out, eval_seed, num_eval, threads=threads, verbose=verbose)
    save_checkpoint(out, dst)
    return out


def measure_heldout(state: Dict[str, Any], seed: int, num_images: int, threads: Optional[int] = None,
                    verbose: bool = False) -> Dict[str, Any]:
    """COCO AP of the weights in ``state`` (as loaded: float16 -> float32) on a fresh shapes split."""
    from .config import MaskRCNNConfig
    from .data import ShapesDataset
    from .engine.coco_eval import evaluate
    from .build import build_model

    used = _training_seeds(state)
    if seed in used:
        raise ValueError(f"eval seed {seed} is one the training drew its images from (seeds {sorted(used)}); "
                         f"pick another so that the split is held out")
    if threads:
        torch.set_num_threads(threads)
    model = build_model(MaskRCNNConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.float().eval()
    dataset = ShapesDataset(num_images, seed=seed)
    start = time.perf_counter()
    metrics = evaluate(model, dataset, verbose=verbose)
    return {"dataset": f"ShapesDataset({num_images}, seed={seed})", "seed": seed, "num_images": num_images,
            "seconds": round(time.perf_counter() - start, 1), **metrics}


def _portable_meta(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``meta`` with the training command written as one would type it (``python -m mrcnn_lite train ...``),
    not with the absolute path of the ``__main__.py`` that ``sys.argv[0]`` holds on the training machine."""
    meta = dict(meta)
    command = meta.get("command")
    if isinstance(command, str) and command.split(" ", 1)[0].endswith("__main__.py"):
        meta["command"] = "python -m mrcnn_lite" + command[len(command.split(" ", 1)[0]):]
    return meta


def _training_seeds(state: Dict[str, Any]) -> set:
    """Shapes seeds the ``train`` command drew from: ``seed`` (train) and ``seed + 1`` (its val split)."""
    seed = state.get("train_config", {}).get("seed", 0)
    return {int(seed), int(seed) + 1}
