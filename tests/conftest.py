"""Fixtures and helpers shared by several test modules.

Test modules never import each other; what two of them need lives here. Fixtures are found by name;
plain helpers are imported: ``from conftest import write_coco, ann`` (pytest puts ``tests/`` on the path).
"""
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

# ------------------------------------------------------------------------------ numbers


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the reference); 0.0 for empty tensors."""
    a, b = a.detach(), b.detach()
    if b.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def assert_same_detections(a: list, b: list) -> None:
    """Two models' outputs on the same images are bit-identical, and there is something to compare."""
    assert sum(len(o["boxes"]) for o in a) > 0
    for oa, ob in zip(a, b):
        for k in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(oa[k], ob[k]), k


# ------------------------------------------------------------------------------ models


def randomise_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Give every (frozen) batch norm non-trivial statistics so that a mix-up of mean/var/weight/bias shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "running_mean") and hasattr(m, "running_var") and hasattr(m, "weight"):
            c = m.running_mean.numel()
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


@pytest.fixture(name="randomise_norm_stats", scope="session")
def randomise_norm_stats_fixture():
    """``randomise_norm_stats(model, seed=0)`` for the tests that take it as a fixture."""
    return randomise_norm_stats


# A small torchvision Mask R-CNN: few proposals and detections, small images, so a float64 R50 runs fast.
TV_SMALL = dict(
    min_size=128, max_size=192,
    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64, box_detections_per_img=8,
)


def tv_r50_coco_layout(**kwargs) -> nn.Module:
    """torchvision's COCO-v1 layout (ResNet-50, FrozenBatchNorm2d eps 0, 3 trainable layers), random
    weights (seed 0), float64, eval mode; ``kwargs`` (default ``TV_SMALL``) go to torchvision's MaskRCNN."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    body = resnet50(norm_layer=partial(FrozenBatchNorm2d, eps=0.0))
    tv = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, **(kwargs or TV_SMALL))
    with torch.no_grad():  # random weights give near-uniform class scores: sharpen them to get detections
        tv.roi_heads.box_predictor.cls_score.weight.mul_(50)
    return tv.double().eval()


# ------------------------------------------------------------------------------ COCO files

COCO_H, COCO_W = 20, 30  # the images write_coco makes


def write_coco(tmp_path, annotations, images=None, categories=None, pixels=None, image_files=True):
    """A small COCO dataset in ``tmp_path``: ``(images folder, annotations JSON)``.

    images: the ``images`` list (default: ids 1 and 2, ``a.png`` and ``b.png``, 20x30). Each entry with
        a plain file name gets a PNG (``pixels``, default grey) unless ``image_files`` is False.
    categories: default ``[{1, "thing"}, {5, "other"}]``.
    """
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    if images is None:
        images = [{"id": 1, "file_name": "a.png", "height": COCO_H, "width": COCO_W},
                  {"id": 2, "file_name": "b.png", "height": COCO_H, "width": COCO_W}]
    for im in images if image_files else []:
        if isinstance(im, dict) and isinstance(im.get("file_name"), str) and "/" not in im["file_name"]:
            arr = np.full((COCO_H, COCO_W, 3), 100, np.uint8) if pixels is None else pixels
            Image.fromarray(arr).save(img_dir / im["file_name"])
    if categories is None:
        categories = [{"id": 1, "name": "thing"}, {"id": 5, "name": "other"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))  # json writes NaN / Infinity as Python's json reads them
    return img_dir, path


def rect_rle(x1=2, y1=3, x2=6, y2=8):
    """Compressed RLE of the rectangle [x1, x2) x [y1, y2) in a write_coco image."""
    from mrcnn_lite.data import mask_to_rle

    m = np.zeros((COCO_H, COCO_W), np.uint8)
    m[y1:y2, x1:x2] = 1
    return mask_to_rle(m)


def ann(id, seg=None, bbox=(2, 3, 4, 5), image_id=1, category_id=1, **kw):
    """One COCO annotation (default segmentation: ``rect_rle()``, which matches the default bbox)."""
    return dict(id=id, image_id=image_id, category_id=category_id, bbox=list(bbox),
                segmentation=rect_rle() if seg is None else seg, area=20.0, iscrowd=0, **kw)


# ------------------------------------------------------------------------------ nbgrader


def nbgrader_course_dir(root: Path, course_id: str, cell_timeout: int, timeout: int, config_extra: str = "",
                        **env_changes):
    """Make ``root`` a standard nbgrader course folder (its ``nbgrader_config.py``) and return
    ``nbgrader(*args)``: nbgrader's command line run there by this interpreter, one thread, Agg; it asserts
    success (showing nbgrader's output) and returns the ``CompletedProcess``.

    cell_timeout: nbgrader's ``Execute.timeout`` per cell; timeout: seconds allowed per nbgrader command.
    env_changes: set in the commands' environment; ``None`` removes the variable.
    """
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.CourseDirectory.course_id = {course_id!r}\n"
        f"c.Execute.timeout = {cell_timeout}\n" + config_extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    py = sys.executable
    env["PATH"] = f"{Path(py).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs the venv's `alembic`
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value

    def nbgrader(*args):
        proc = subprocess.run([py, "-m", "nbgrader", *args], cwd=root, capture_output=True, text=True, env=env,
                              timeout=timeout)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    return nbgrader


# ------------------------------------------------------------------------------ threads


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one intra-op thread, then restore the setting.

    For modules of many tiny tensors: with a busy 2-core machine, intra-op threads only add waiting
    (measured 30x slower). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
