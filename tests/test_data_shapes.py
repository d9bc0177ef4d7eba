"""ShapesDataset: determinism, the target contract, occlusion, transforms and collate."""
import numpy as np
import pytest
import torch

from mrcnn_lite.data import (CLASSES, Compose, RandomHorizontalFlip, ShapesDataset, collate_fn,
                             hflip, masks_to_boxes)

N = 40


@pytest.fixture(scope="module")
def ds():
    return ShapesDataset(N, image_size=96, seed=3)


@pytest.fixture(scope="module")
def items(ds):
    return [ds[i] for i in range(N)]


def same(a, b):
    (ia, ta), (ib, tb) = a, b
    return torch.equal(ia, ib) and all(
        torch.equal(ta[k], tb[k]) for k in ("boxes", "labels", "masks", "area", "iscrowd")
    ) and ta["image_id"] == tb["image_id"]


def test_classes():
    assert CLASSES == ("__background__", "circle", "square", "triangle")
    assert ShapesDataset.class_names == CLASSES


def test_same_seed_same_data(ds, items):
    again = ShapesDataset(N, image_size=96, seed=3)
    assert all(same(items[i], again[i]) for i in range(N))


def test_index_order_does_not_matter(ds, items):
    fresh = ShapesDataset(N, image_size=96, seed=3)
    for i in reversed(range(0, N, 3)):
        assert same(fresh[i], items[i])
    # the dataset length does not change item i either
    longer = ShapesDataset(N + 10, image_size=96, seed=3)
    assert same(longer[5], items[5])


def test_different_seeds_differ(items):
    other = ShapesDataset(N, image_size=96, seed=4)
    assert not torch.equal(other[0][0], items[0][0])
    assert sum(same(other[i], items[i]) for i in range(10)) == 0


def test_contract(items):
    for i, (image, t) in enumerate(items):
        assert image.dtype == torch.float32 and image.shape == (3, 96, 96)
        assert 0.0 <= image.min() and image.max() <= 1.0
        # 8-bit values, so a PNG keeps them exactly
        assert torch.equal((image * 255).round() / 255, image)
        n = len(t["labels"])
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (n, 4)
        assert t["labels"].dtype == torch.int64
        assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (n, 96, 96)
        assert t["area"].dtype == torch.float32 and t["area"].shape == (n,)
        assert t["iscrowd"].dtype == torch.int64 and not t["iscrowd"].any()
        assert t["image_id"] == i and isinstance(t["image_id"], int)
        if n == 0:
            continue
        assert set(t["labels"].tolist()) <= {1, 2, 3}
        masks, b = t["masks"].numpy(), t["boxes"].numpy()  # numpy: cheaper for many small checks
        assert set(np.unique(masks).tolist()) <= {0, 1}
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 96).all()
        assert (b[:, 2:] > b[:, :2]).all()
        # box = tight box of the mask (x2, y2 exclusive)
        for j in range(n):
            ys, xs = np.nonzero(masks[j])
            assert b[j].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert (t["area"].numpy() == masks.sum((1, 2))).all()
        assert (t["area"].numpy() >= 12).all()  # min_visible
        # visible masks never overlap
        assert masks.sum(0).max() <= 1


def test_all_classes_and_sizes_appear(items):
    labels = torch.cat([t["labels"] for _, t in items])
    assert set(labels.tolist()) == {1, 2, 3}
    areas = torch.cat([t["area"] for _, t in items])
    assert areas.min() < 100 and areas.max() > 600


def test_occlusion_happens():
    """Some instances are cut by a shape painted on top: visible area < the unoccluded shape."""
    ds = ShapesDataset(30, image_size=96, seed=3)
    occluded = 0
    for i in range(30):
        _, labels, masks = ds.render(i)
        # a mask that touches a later mask along a shared border was cut by it
        for j in range(len(masks)):
            later = masks[j + 1:].any(0) if j + 1 < len(masks) else np.zeros_like(masks[j])
            grown = masks[j].copy()
            grown[1:] |= masks[j][:-1]
            grown[:-1] |= masks[j][1:]
            occluded += bool((grown & later).any())
    assert occluded >= 5


def test_occlusion_masks_are_visible_parts():
    """With two big overlapping shapes forced, the bottom one's mask loses the top one's pixels."""
    ds = ShapesDataset(200, image_size=64, seed=0, min_shapes=2, max_shapes=2,
                       min_radius=20, max_radius=24, min_visible=1)
    found = 0
    for i in range(200):
        image, labels, masks = ds.render(i)
        if len(masks) == 2:
            assert not (masks[0] & masks[1]).any()
            found += 1
    assert found > 50


def test_empty_images_are_valid():
    ds = ShapesDataset(5, image_size=64, empty_prob=1.0)
    image, t = ds[0]
    assert image.shape == (3, 64, 64)
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 64, 64)
    assert t["labels"].shape == (0,) and t["area"].shape == (0,)


def test_index_out_of_range():
    with pytest.raises(IndexError, match="index 5"):
        ShapesDataset(5)[5]


def test_renders_many_images():
    # No wall-clock assertion (speed targets live in benchmarks): 100 images render without error.
    ds = ShapesDataset(100, seed=1)
    for i in range(100):
        image, labels, masks = ds.render(i)[:3]
        assert image.shape == (128, 128, 3) and masks.shape == (len(labels), 128, 128)


def test_masks_to_boxes_single_pixel():
    m = np.zeros((1, 10, 10), dtype=np.uint8)
    m[0, 3, 5] = 1
    assert masks_to_boxes(m).tolist() == [[5, 3, 6, 4]]


# ---------------------------------------------------------------- transforms and collate


def test_hflip_twice_is_identity_and_does_not_modify_input(items):
    image, t = items[0]
    saved = {k: v.clone() for k, v in t.items() if torch.is_tensor(v)}
    im2, t2 = hflip(*hflip(image, t))
    assert torch.equal(im2, image)
    for k in ("boxes", "masks", "labels"):
        assert torch.equal(t2[k], t[k])
    for k, v in saved.items():
        assert torch.equal(t[k], v)  # the input target was not changed


def test_flipped_boxes_match_flipped_masks(items):
    for image, t in items[:10]:
        im_f, t_f = hflip(image, t)
        assert torch.equal(im_f, image.flip(-1))
        expected = torch.from_numpy(masks_to_boxes(t_f["masks"].numpy()))
        assert torch.equal(t_f["boxes"], expected)
        assert t_f["image_id"] == t["image_id"]


def test_random_flip_probability(items):
    image, t = items[0]
    assert torch.equal(RandomHorizontalFlip(0.0)(image, t)[0], image)
    assert torch.equal(RandomHorizontalFlip(1.0)(image, t)[0], image.flip(-1))
    both = Compose([RandomHorizontalFlip(1.0), RandomHorizontalFlip(1.0)])
    assert torch.equal(both(image, t)[1]["boxes"], t["boxes"])
    torch.manual_seed(0)
    flips = sum(not torch.equal(RandomHorizontalFlip(0.5)(image, t)[0], image) for _ in range(40))
    assert 5 < flips < 35


def test_dataset_transforms_argument():
    ds = ShapesDataset(3, image_size=64, seed=2, transforms=RandomHorizontalFlip(1.0))
    plain = ShapesDataset(3, image_size=64, seed=2)
    assert torch.equal(ds[1][0], plain[1][0].flip(-1))


def test_collate_with_dataloader():
    ds = ShapesDataset(6, image_size=64, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert isinstance(images, tuple) and isinstance(targets, tuple)
    assert len(images) == len(targets) == 4
    assert images[0].shape == (3, 64, 64) and "boxes" in targets[0]
    assert collate_fn([]) == ()
