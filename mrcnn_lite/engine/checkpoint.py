"""Checkpoints that cannot be half-written, and that load without running pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``. Writes go to a temporary file in the same folder, are
flushed to disk, then renamed over the old file: a crash mid-write leaves the previous checkpoint
untouched (``os.replace`` is atomic on POSIX and Windows).
"""
from __future__ import annotations

import glob
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def _atomic_write(path, write) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``.

    The temporary file is created private (mode 0600, ``mkstemp``); before the rename it gets the
    mode any new file of the user gets (0666 minus the umask), like ``open(path, "w")`` would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        # Leave no stray temporary file behind; the old file is still intact.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(state: Dict[str, Any], path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + rename). Returns the path."""
    return _atomic_write(path, lambda f: torch.save(state, f))


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one, never half."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(path) -> list:
    """Delete ``<name>.*.tmp`` files beside ``path`` that a killed writer left behind. Returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(glob.escape(path.name) + ".*.tmp")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) with a clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or unsafe pickled objects
        raise ValueError(f"could not load checkpoint {path}: {e}") from e


def rng_state() -> Dict[str, Any]:
    """Every random number generator training touches, as weights_only-safe values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path, map_location="cpu"):
    """Rebuild a trained Mask R-CNN from a ``checkpoint.pt`` written by ``Trainer`` (or the ``train`` CLI).

    The file is read with ``weights_only=True`` (no pickled code runs); the model is rebuilt from the
    ``MaskRCNNConfig`` saved in it (``state["model_config"]``) and its weights are loaded strictly.
    Returns the model in eval mode, on ``map_location``.

        model = ml.load_checkpoint("runs/demo/checkpoint.pt")
        outputs = model([image])

    Raises FileNotFoundError (no file), ValueError (corrupt file, or no model weights / config in it).
    """
    from ..config import MaskRCNNConfig
    from ..build import build_model

    state = read_checkpoint(path, map_location=map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a mrcnn_lite checkpoint: it has no 'model' weights "
                         f"(keys: {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    cfg = state.get("model_config")
    if not cfg:
        raise ValueError(f"{path} has model weights but no 'model_config', so the model cannot be rebuilt; "
                         f"build it yourself (ml.build_model(cfg)) and call model.load_state_dict(state['model'])")
    try:
        cfg = MaskRCNNConfig.from_dict(cfg)
    except TypeError as e:
        raise ValueError(f"{path}: the saved model_config does not match this version of mrcnn_lite: {e}") from e
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit the model built from its config: {e}") from e
    return model.to(map_location).eval()
