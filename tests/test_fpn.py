"""The feature pyramid against torchvision.ops.FeaturePyramidNetwork (same weights, float64)."""
from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TVLastLevelMaxPool

from mrcnn_lite.model.fpn import FeaturePyramidNetwork, LastLevelMaxPool


def features(sizes, channels, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (str(i), torch.randn(batch, c, h, w, generator=g, dtype=torch.float64))
        for i, (c, (h, w)) in enumerate(zip(channels, sizes))
    )


# odd sizes as a stride-2 ResNet gives them for a 100x75 image: ceil at each step
SIZES = {"even": [(16, 24), (8, 12), (4, 6), (2, 3)], "odd": [(25, 19), (13, 10), (7, 5), (4, 3)]}


@pytest.mark.parametrize("sizes", ["even", "odd"])
def test_fpn_equals_torchvision(sizes):
    channels = [8, 16, 32, 64]
    torch.manual_seed(0)
    tv = torchvision.ops.FeaturePyramidNetwork(channels, 12, extra_blocks=TVLastLevelMaxPool()).double()
    # torchvision initialises biases to 0: randomise them so that a wrong bias would show
    with torch.no_grad():
        for name, p in tv.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    ours = FeaturePyramidNetwork(channels, 12).double()
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = features(SIZES[sizes], channels)
    a, b = ours(x), tv(x)
    assert list(a) == list(b) == ["0", "1", "2", "3", "pool"]
    for k in b:
        assert a[k].shape == b[k].shape
        assert ((a[k] - b[k]).abs().max() / b[k].abs().max()).item() < 1e-12, k


def test_fpn_shapes_and_pool_level():
    fpn = FeaturePyramidNetwork([8, 16, 32, 64], 12)
    x = features(SIZES["odd"], [8, 16, 32, 64], seed=1)
    x = OrderedDict((k, v.float()) for k, v in x.items())
    out = fpn(x)
    assert [tuple(v.shape) for v in out.values()] == [
        (2, 12, 25, 19), (2, 12, 13, 10), (2, 12, 7, 5), (2, 12, 4, 3), (2, 12, 2, 2)]
    torch.testing.assert_close(out["pool"], out["3"][:, :, ::2, ::2], rtol=0, atol=0)


def test_fpn_init_like_torchvision():
    fpn = FeaturePyramidNetwork([256, 512], 256)
    for name, p in fpn.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0
        else:
            # kaiming_uniform_(a=1): U(-b, b) with b = sqrt(3 / fan_in)
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            assert p.abs().max() <= (3 / fan_in) ** 0.5


def test_fpn_without_extra_level_and_bad_input():
    fpn = FeaturePyramidNetwork([4, 8], 6, extra_blocks=None)
    out = fpn(OrderedDict(a=torch.rand(1, 4, 8, 8), b=torch.rand(1, 8, 4, 4)))
    assert list(out) == ["a", "b"]
    with pytest.raises(ValueError, match="2 levels"):
        fpn(OrderedDict(a=torch.rand(1, 4, 8, 8)))
    with pytest.raises(ValueError, match="in_channels_list"):
        FeaturePyramidNetwork([], 6)


def test_fpn_top_down_uses_nearest_upsampling():
    """With identity-like laterals, P_i's pre-conv map is L_i + nearest-upsampled M_{i+1}: check by hand."""
    fpn = FeaturePyramidNetwork([1, 1], 1, extra_blocks=None).double()
    with torch.no_grad():
        for blocks in (fpn.inner_blocks, fpn.layer_blocks):
            for seq in blocks:
                conv = seq[0]
                conv.weight.zero_()
                conv.bias.zero_()
                conv.weight[0, 0, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = 1.0  # identity
    c2 = torch.arange(15, dtype=torch.float64).reshape(1, 1, 5, 3)
    c3 = torch.tensor([[[[100.0, 200.0], [300.0, 400.0], [500.0, 600.0]]]], dtype=torch.float64)
    out = fpn(OrderedDict(c2=c2, c3=c3))
    expected = c2 + torch.nn.functional.interpolate(c3, size=(5, 3), mode="nearest")
    assert torch.equal(out["c2"], expected)
    assert torch.equal(out["c3"], c3)
    assert LastLevelMaxPool.name == "pool"
