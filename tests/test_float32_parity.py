"""float32 parity with torchvision: the reference floor computes torchvision's formulas in torchvision's order.

In float64 the model is compared with torchvision within a tolerance (tests/test_mask_rcnn.py). In float32 a
single rounding step can matter: the model has integer steps downstream of its features (a pasted mask's
pixel box is its grown box truncated, a box's FPN level is a floor), and a detection 1e-5 px away from
torchvision's can land on the other side of one and get a visibly different mask. So the reference floor
computes in the same order as torchvision and these tests compare with ``torch.equal``.
"""
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
import torchvision.ops as tvo  # noqa: E402
from torchvision.models.detection import MaskRCNN  # noqa: E402
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste_masks_in_image  # noqa: E402
from torchvision.ops.poolers import LevelMapper  # noqa: E402

import mrcnn_lite as ml  # noqa: E402
from mrcnn_lite.data import ShapesDataset  # noqa: E402
from mrcnn_lite.model.transform import expand_boxes, paste_masks_in_image  # noqa: E402
from mrcnn_lite.ops.poolers import map_levels  # noqa: E402
from mrcnn_lite.ops.roi_ops import roi_align  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_roi_align_adds_each_bins_samples_in_the_kernels_order():
    """A constructed bin whose average depends on the order of its four additions.

    Box (0, 0, 28, 28) at scale 1, 7 x 7 bins of 4 x 4 cells, 2 x 2 samples per bin: the samples sit
    exactly on cells (1, 1), (1, 3), (3, 1), (3, 3) of each bin, so each sample is one cell's value.
    With samples 1, 0 (first row) and 2^-24, 2^-24 (second row), torchvision's kernel adds them in row
    order: ((1 + 0) + 2^-24) + 2^-24 = 1, since 2^-24 is half a float32 step at 1 and the tie rounds to
    even; the bin is 1 / 4 exactly. Adding the second row first gives 1 + 2^-23, one step up.
    """
    x = torch.zeros(1, 256, 28, 28)
    for (row, col), value in zip([(1, 1), (1, 3), (3, 1), (3, 3)], [1.0, 0.0, 2.0 ** -24, 2.0 ** -24]):
        x[0, :, row::4, col::4] = value
    rois = torch.tensor([[0.0, 0.0, 0.0, 28.0, 28.0]])
    expected = tvo.roi_align(x, rois, 7, 1.0, 2)
    assert torch.equal(expected, torch.full((1, 256, 7, 7), 0.25))
    assert torch.equal(roi_align(x, rois, 7, 1.0, 2), expected)


@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_float32_equals_torchvision_bit_for_bit(sampling_ratio, aligned):
    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    x = torch.randn(2, 16, 40, 52, generator=g)
    for scale in (1.0, 0.25, 0.125):
        size = torch.tensor([52.0, 40.0]) / scale
        xy = (torch.rand(60, 2, generator=g) * 1.2 - 0.1) * size  # some boxes stick out of the map
        wh = torch.rand(60, 2, generator=g) * size * 0.6
        rois = torch.cat([torch.randint(0, 2, (60, 1), generator=g).float(), xy, xy + wh], dim=1)
        for output_size in (7, 14, (3, 5)):
            expected = tvo.roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
            ours = roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
            assert torch.equal(ours, expected), (scale, output_size, (ours - expected).abs().max().item())


def _float32_neighbours(value: float, steps: int) -> torch.Tensor:
    """``value`` and the ``steps`` float32 numbers on either side of it."""
    out = [torch.tensor(value)]
    for direction in (0.0, 1e9):
        v = torch.tensor(value)
        for _ in range(steps):
            v = torch.nextafter(v, torch.tensor(direction))
            out.append(v)
    return torch.stack(out)


def test_fpn_level_at_the_boundaries_equals_torchvision():
    """Square boxes whose side is within 50 float32 steps of 224 * 2^k: the floor in FPN eq. 1 decides them."""
    sides = torch.cat([_float32_neighbours(224.0 * 2.0 ** k, 50) for k in (-2, -1, 0, 1)])
    for x0 in (0.0, 3.25, 517.5):  # the subtraction x1 - x0 rounds differently away from 0
        boxes = torch.stack([torch.full_like(sides, x0), torch.full_like(sides, x0), x0 + sides, x0 + sides], 1)
        expected = LevelMapper(2, 5)([boxes])
        assert torch.equal(map_levels([boxes], 2, 5), expected)
        assert len(expected.unique()) == 4  # the neighbours do fall on both sides of the boundaries


def test_pasted_mask_at_the_truncation_boundary_equals_torchvision():
    """Boxes within 20 float32 steps of one whose grown edges are whole pixels: the truncation decides them."""
    g = torch.Generator().manual_seed(0)
    x1s = _float32_neighbours(38.0, 20)
    boxes = torch.stack([torch.full_like(x1s, 10.0), torch.full_like(x1s, 12.0), x1s, torch.full_like(x1s, 40.0)], 1)
    masks = torch.rand(len(boxes), 1, 28, 28, generator=g)
    ours = paste_masks_in_image(masks, boxes, (64, 64))
    assert torch.equal(ours, tv_paste_masks_in_image(masks, boxes, (64, 64)))
    grown = expand_boxes(boxes, 30 / 28).to(torch.int64)
    assert len(grown[:, 2].unique()) == 2 and len(grown[:, 0].unique()) == 2  # both sides of the boundary


@pytest.mark.slow
def test_reference_floor_float32_detections_equal_torchvision(randomise_norm_stats):
    """The whole model in float32, on shapes images: every box, score, label and pasted mask bit for bit.

    The backbone runs in NCHW here: ``cfg.channels_last`` (the default) hands the convolutions to
    kernels that add in another order, a documented speed choice, same numbers up to float rounding.
    """
    torch.manual_seed(0)
    tv = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=4, min_size=128,
                  max_size=160, box_score_thresh=0.0, box_detections_per_img=30)
    randomise_norm_stats(tv)
    tv.eval()
    model = ml.from_torchvision(tv, kernels="reference")
    model.cfg = model.cfg.replace(channels_last=False)
    model.backbone.to(memory_format=torch.contiguous_format)
    data = ShapesDataset(2, seed=1, max_shapes=3, empty_prob=0.0)
    images = [data[0][0], data[1][0][:, :, :100]]  # two sizes: a square and an oblong image
    with torch.no_grad():
        expected, ours = tv(images), model(images)
    for e, o in zip(expected, ours):
        assert len(e["boxes"]) == 30
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(o[key], e[key]), (key, (o[key].double() - e[key].double()).abs().max().item())
