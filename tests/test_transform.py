"""GeneralizedRCNNTransform: same numbers as torchvision's, targets never modified in place."""
import torch
import pytest
from torchvision.models.detection.transform import GeneralizedRCNNTransform as TVTransform

from mrcnn_lite.model.transform import GeneralizedRCNNTransform, ImageList, resize_boxes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sample(h, w, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, h, w, generator=g, dtype=dtype)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w * 0.6, h * 0.6], dtype=dtype)
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 30 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    masks = (torch.rand(n, h, w, generator=g) > 0.5).to(torch.uint8)
    labels = torch.randint(1, 5, (n,), generator=g)
    return img, {"boxes": boxes, "labels": labels, "masks": masks}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [False, True])
def test_matches_torchvision(dtype, training):
    sizes = [(97, 133, 3), (150, 80, 0), (64, 64, 2)]
    samples = [_sample(h, w, n, i, dtype) for i, (h, w, n) in enumerate(sizes)]
    images = [s[0] for s in samples]
    targets = [s[1] for s in samples]
    ours = GeneralizedRCNNTransform((96, 112, 128), 160, MEAN, STD, 32).train(training)
    ref = TVTransform((96, 112, 128), 160, list(MEAN), list(STD), 32).train(training)
    torch.manual_seed(3)
    il, t = ours(images, targets)
    torch.manual_seed(3)
    il_ref, t_ref = ref(images, targets)
    assert isinstance(il, ImageList)
    assert il.image_sizes == [tuple(s) for s in il_ref.image_sizes]
    assert il.tensors.shape == il_ref.tensors.shape and il.tensors.dtype == dtype
    assert il.tensors.shape[-1] % 32 == 0 and il.tensors.shape[-2] % 32 == 0
    assert torch.equal(il.tensors, il_ref.tensors)
    for a, b in zip(t, t_ref):
        assert torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["masks"], b["masks"]) and a["masks"].dtype == torch.uint8
        assert torch.equal(a["labels"], b["labels"])


def test_targets_not_modified_in_place():
    img, target = _sample(100, 120, 2, 0)
    before = {k: v.clone() for k, v in target.items()}
    tr = GeneralizedRCNNTransform(64, 100, MEAN, STD).train()
    _, new = tr([img], [target])
    assert new[0] is not target
    for k in before:
        assert torch.equal(before[k], target[k])
    assert new[0]["masks"].shape[-2:] != target["masks"].shape[-2:]


def test_postprocess_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[3.2, 4.0, 50.5, 60.1], [0.0, 0.0, 127.9, 95.0], [40.0, 10.0, 41.5, 12.0]], dtype=torch.float64)
    masks = torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64)
    res = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "scores": torch.rand(3, dtype=torch.float64), "masks": masks}]
    ours = GeneralizedRCNNTransform(128, 200, MEAN, STD).eval()
    ref = TVTransform(128, 200, list(MEAN), list(STD)).eval()
    a = ours.postprocess([dict(r) for r in res], [(96, 128)], [(150, 200)])
    b = ref.postprocess([dict(r) for r in res], [(96, 128)], [(150, 200)])
    assert torch.equal(a[0]["boxes"], b[0]["boxes"])
    assert a[0]["masks"].shape == (3, 1, 150, 200)
    assert (a[0]["masks"] - b[0]["masks"]).abs().max() < 1e-12


def test_resize_boxes_float32_ratio_like_torchvision():
    from torchvision.models.detection.transform import resize_boxes as tv_resize_boxes

    b = torch.tensor([[1.0, 2.0, 33.3, 44.4]], dtype=torch.float64)
    assert torch.equal(resize_boxes(b, (97, 131), (160, 216)), tv_resize_boxes(b, [97, 131], [160, 216]))
