"""AnchorGenerator equals torchvision's, exactly, for several sizes, ratios, image and feature sizes."""
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from mrcnn_lite.config import r50_fpn, tiny
from mrcnn_lite.model.anchors import AnchorGenerator, generate_base_anchors, grid_anchors
from mrcnn_lite.model.transform import ImageList as OurImageList


def _features(batch, grid_sizes, dtype=torch.float32):
    return [torch.zeros(batch, 2, h, w, dtype=dtype) for h, w in grid_sizes]


def test_torchvision_own_test_case():
    # torchvision's test_anchor_generator: one 10-px size, ratio 1, a 15x15 image with a 3x3 feature map.
    images = torch.zeros(2, 3, 15, 15)
    features = _features(2, [(3, 3)])
    anchors = AnchorGenerator(((10,),), ((1.0,),))(images, features)
    expected = torch.tensor([
        [-5.0, -5.0, 5.0, 5.0], [0.0, -5.0, 10.0, 5.0], [5.0, -5.0, 15.0, 5.0],
        [-5.0, 0.0, 5.0, 10.0], [0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0],
        [-5.0, 5.0, 5.0, 15.0], [0.0, 5.0, 10.0, 15.0], [5.0, 5.0, 15.0, 15.0],
    ])
    assert len(anchors) == 2
    for a in anchors:
        assert a.shape == (9, 4)
        assert torch.equal(a, expected)


CASES = [
    # sizes, aspect_ratios, padded image (H, W), feature grid sizes
    (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5, (128, 160),
     [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]),
    (((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5, (128, 128),
     [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]),
    (((10, 20, 33),), ((0.25, 0.7, 1.0, 3.0),), (97, 131), [(13, 17)]),       # strides 7 x 7, odd sizes
    (((16, 24), (48,)), ((1.0, 2.0), (0.5,)), (64, 96), [(16, 24), (8, 12)]),  # different A per level
    ((128, 256, 512), (0.5, 1.0, 2.0), (200, 304), [(25, 38), (13, 19), (7, 10)]),  # flat forms
]


@pytest.mark.parametrize("sizes, ratios, image_size, grid_sizes", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torchvision(sizes, ratios, image_size, grid_sizes, dtype):
    images = torch.zeros(2, 3, *image_size, dtype=dtype)
    features = _features(2, grid_sizes, dtype)
    ours = AnchorGenerator(sizes, ratios)
    theirs = TVAnchorGenerator(sizes, ratios)
    a = ours(images, features)
    b = theirs(ImageList(images, [image_size] * 2), features)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location()
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == dtype
        assert torch.equal(x, y)
    expected = sum(h * w * n for (h, w), n in zip(grid_sizes, ours.num_anchors_per_location()))
    assert a[0].shape == (expected, 4)


def test_accepts_image_list_and_padded_batch():
    gen = AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
    images = torch.zeros(3, 3, 64, 64)
    features = _features(3, [(16, 16), (8, 8)])
    a = gen(images, features)
    b = gen(ImageList(images, [(64, 64)] * 3), features)
    assert len(a) == len(b) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    a[0].add_(1.0)  # each image gets its own tensor
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])


def test_image_list_over_one_3d_image_as_torchvision():
    """torchvision's AnchorGenerator reads the padded size from ``tensors.shape[-2:]`` and the batch size from
    ``image_sizes``, so an ImageList whose ``tensors`` is one (C, H, W) image works; ours too, same anchors."""
    image = torch.zeros(3, 64, 96)
    features = _features(1, [(16, 24), (8, 12)])
    sizes, ratios = ((16,), (32,)), ((0.5, 1.0, 2.0),) * 2
    ref = TVAnchorGenerator(sizes, ratios)(ImageList(image, [(64, 96)]), features)
    for image_list in (ImageList(image, [(64, 96)]), OurImageList(image, [(64, 96)])):
        ours = AnchorGenerator(sizes, ratios)(image_list, features)
        assert len(ours) == len(ref) == 1 and torch.equal(ours[0], ref[0])
    with pytest.raises(TypeError, match="padded batch tensor"):
        AnchorGenerator(sizes, ratios)(image, features)  # a bare 3-D tensor: which is the batch size?


def test_base_anchors_and_order():
    base = generate_base_anchors((32,), (0.5, 1.0, 2.0))
    # ratio h/w = 0.5 -> wide box: w = 32 / sqrt(0.5) = 45.25 -> half widths round to +-23, half heights +-11
    assert base.tolist() == [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    anchors = grid_anchors(base, (2, 3), (8, 8))
    # order y -> x -> anchor: the 4th anchor (index 3) is location (y=0, x=1), first ratio.
    assert anchors.shape == (2 * 3 * 3, 4)
    assert anchors[3].tolist() == [-15.0, -11.0, 31.0, 11.0]
    assert anchors[3 * 3].tolist() == [-23.0 + 0, -11.0 + 8, 23.0 + 0, 11.0 + 8]  # (y=1, x=0)


def test_anchor_counts_for_presets():
    cfg = tiny()
    gen = AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios)
    a = gen(torch.zeros(1, 3, 128, 128), _features(1, [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]))
    assert a[0].shape[0] == 3 * (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2)
    cfg = r50_fpn()
    gen = AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios)
    assert gen.num_anchors_per_location() == [3] * 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator(((16,), (32,)), ((1.0,),) * 3)
    with pytest.raises(ValueError, match="level 1"):
        AnchorGenerator(((16,), (0,)), ((1.0,),) * 2)
    gen = AnchorGenerator(((16,), (32,)), ((1.0,),) * 2)
    with pytest.raises(ValueError, match="2 levels"):
        gen(torch.zeros(1, 3, 32, 32), _features(1, [(8, 8)]))
    with pytest.raises(TypeError, match="padded batch"):
        gen(torch.zeros(3, 32, 32), _features(1, [(8, 8), (4, 4)]))
