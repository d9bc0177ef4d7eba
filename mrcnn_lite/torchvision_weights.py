"""torchvision's checkpoints, read as torchvision reads them: a state dict, a checkpoint file, or one of
torchvision's weights enums (``MaskRCNN_ResNet50_FPN_Weights``, ``ResNet50_Weights``) or its name
(``"DEFAULT"``, ``"COCO_V1"``...), taken from the torch hub cache or downloaded into it with its checksum;
offline, one line says which file to place where.

    state = read_weights("DEFAULT", "weights")       # what maskrcnn_resnet50_fpn(weights=...) loads
    skipped = load_torchvision_weights(model, "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")

The builder that uses them, ``maskrcnn_resnet50_fpn``, is in ``torchvision_compat.py`` (which re-exports
these names).
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Dict, Mapping, Optional
from urllib.error import HTTPError
from urllib.parse import urlparse

import torch
from torch import Tensor

from .downloads import DownloadError


# torchvision's weights enums for the builder's two weights arguments (in torchvision.models); each member
# holds the URL of its file, whose name carries the first digits of the file's SHA-256.
WEIGHTS_ENUMS = {"weights": "MaskRCNN_ResNet50_FPN_Weights", "weights_backbone": "ResNet50_Weights"}

# How long a download may wait for the server's next reply. torch.hub opens the URL without a timeout; with
# this one a machine whose network drops packets fails after DOWNLOAD_TIMEOUT seconds instead of minutes
# (one with no network at all fails at once: no route, no name). A slow download that keeps receiving
# data is not cut off: the timeout bounds each wait, not the whole transfer.
DOWNLOAD_TIMEOUT = 10.0


def load_torchvision_weights(model, path) -> list:
    """Load a torchvision ``maskrcnn_resnet50_fpn`` COCO state dict into ``model`` (same architecture).

    Tensors whose shape differs (the class-specific predictor layers when your dataset has another
    number of classes than COCO's 91) are skipped and keep their fresh initialisation. Returns the
    names of the skipped tensors. Loaded with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a mrcnn_lite or torchvision-references training checkpoint
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} keys are not in the model (first: {unknown[:3]}); "
                         f"is it a maskrcnn_resnet50_fpn state dict?")
    skipped = [k for k, v in state.items() if own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return sorted(skipped + missing)


def read_weights(weights, argument: str = "weights", progress: bool = True) -> Dict[str, Tensor]:
    """A state dict from what torchvision's builders take as ``weights`` (``argument``: ``"weights"`` or
    ``"weights_backbone"``, which picks the weights enum and names the argument in errors).

    ``weights``:

    - a state dict (returned as it is), or a path to a checkpoint file (loaded with ``weights_only=True``;
      a training checkpoint ``{"model": ...}`` gives its model);
    - one of torchvision's weights enums (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``,
      ``ResNet50_Weights.IMAGENET1K_V2``...) or its name (``"DEFAULT"``, ``"COCO_V1"``,
      ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``): fetched as torchvision fetches it, with
      ``weights.get_state_dict(check_hash=True)`` (``torch.hub.load_state_dict_from_url``), see
      ``fetch_torchvision_weights``. A file of that name is taken first.
    """
    if isinstance(weights, Mapping):
        return dict(weights)
    if isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
        return _load_state_dict(Path(weights), argument)
    member = _weights_member(weights, argument)
    if member is not None:
        return fetch_torchvision_weights(member, argument, progress)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a state dict, a checkpoint path or torchvision weights, "
                        f"got {type(weights).__name__}")
    raise FileNotFoundError(
        f"{argument}: {weights} not found: neither a checkpoint file nor a name of torchvision's "
        f"{WEIGHTS_ENUMS[argument]} ({', '.join(_weights_names(argument))})")


def fetch_torchvision_weights(member, argument: str = "weights", progress: bool = True) -> Dict[str, Tensor]:
    """The state dict of torchvision's weights ``member``, the way torchvision's builders get it.

    ``member.get_state_dict(progress=progress, check_hash=True)`` reads
    ``torch.hub.get_dir()/checkpoints/<the URL's file name>`` (``$TORCH_HOME/hub/checkpoints``) if it is
    there; else ``torch.hub.download_url_to_file`` downloads the URL into a temporary file beside it, checks
    that the SHA-256 of what came starts with the digits in the file's name
    (``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``: ``bf2d0c1e``) and only then renames it into place, so
    the next call reads the cache. A file in the cache is trusted as it is (torch.hub checks the hash
    only when it downloads). Loaded with ``weights_only=True``.

    Raises ``DownloadError`` (an ``OSError``; one line: why, and which file to place where) when the file
    is not in the cache and cannot be downloaded (no network, a timeout, an HTTP error) or what came
    fails the checksum; ``ValueError`` naming the file when a file in the cache is not a readable checkpoint.
    """
    url = member.url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / os.path.basename(urlparse(url).path)  # torch.hub's name for the file
    if path.is_file():
        return _load_state_dict(path, argument, fix="delete it to download it anew, or place torchvision's "
                                                    f"file from {url} there")
    place = f"place the file from {url} at {path}"
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT):
            state = member.get_state_dict(progress=progress, check_hash=True, map_location="cpu",
                                          weights_only=True)
    except OSError as err:  # URLError, HTTPError, timeouts, refused connections; a cache folder not writable
        raise DownloadError(f"{argument}={member}: cannot download {path.name} ({_first_line(err)}); "
                            f"{place} and run again") from None
    except RuntimeError as err:
        if "invalid hash value" not in str(err):  # torch.hub's checksum error (expected ..., got ...)
            raise
        raise DownloadError(f"{argument}={member}: the download of {path.name} failed its checksum "
                            f"({_first_line(err)}); run again, or {place}") from None
    return _state_dict_of(state, path, argument)


def _weights_enum(argument: str):
    """torchvision's weights enum class for ``argument``; None when torchvision is not installed (the
    package works without it: then weights are a state dict or a path)."""
    try:
        from torchvision import models
    except ImportError:
        return None
    return getattr(models.detection, WEIGHTS_ENUMS[argument], None) or getattr(models, WEIGHTS_ENUMS[argument])


def _weights_member(weights, argument: str):
    """The member of torchvision's weights enum for ``argument`` that ``weights`` is or names (as its
    ``WeightsEnum.verify`` reads it); None when ``weights`` is a string that names none."""
    is_member = hasattr(weights, "get_state_dict") and hasattr(weights, "url")
    if not is_member and not isinstance(weights, str):
        return None
    enum = _weights_enum(argument)
    if enum is None:
        return None
    if is_member:
        if not isinstance(weights, enum):  # torchvision's own check
            raise TypeError(f"{argument}: expected {enum.__name__}, got {type(weights).__name__}.{weights.name}")
        return weights
    name = weights[len(enum.__name__) + 1:] if weights.startswith(enum.__name__ + ".") else weights
    return enum.__members__.get(name)


def _weights_names(argument: str):
    enum = _weights_enum(argument)
    return list(enum.__members__) if enum is not None else ["torchvision is not installed"]


@contextlib.contextmanager
def _network_timeout(seconds: float):
    """Sockets opened inside get ``seconds`` as their timeout, unless the program set its own default.
    torch.hub passes no timeout to ``urlopen``, so the process-wide default is the one place to give it
    one (for the download's duration, sockets other threads open then get it too)."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _first_line(err: BaseException) -> str:
    """The reason an error gives, on one line: "HTTP Error 404: Not Found", a URLError's reason ("[Errno -3]
    Temporary failure in name resolution"), else its message, else its type."""
    reason = err if isinstance(err, HTTPError) else getattr(err, "reason", None) or err
    lines = str(reason).splitlines()
    return lines[0] if lines and lines[0] else type(err).__name__


def _load_state_dict(path: Path, argument: str, fix: Optional[str] = None) -> Dict[str, Tensor]:
    if fix is None:
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: zip, pickle and weights_only errors differ
            raise ValueError(f"{argument}: {path} is not a readable checkpoint ({_first_line(err)}); "
                             f"{fix}") from None
    return _state_dict_of(state, path, argument)


def _state_dict_of(state, path: Path, argument: str) -> Dict[str, Tensor]:
    if not isinstance(state, Mapping):
        raise TypeError(f"{argument}: {path} does not hold a state dict (got {type(state).__name__})")
    if isinstance(state.get("model"), Mapping):  # a training checkpoint {"model": ..., "optimizer": ...}
        state = state["model"]
    return dict(state)
