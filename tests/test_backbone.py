"""ResNet body, FrozenBatchNorm2d and ResNet+FPN backbone against torchvision (same weights, float64)."""
from collections import OrderedDict

import pytest
import torch
import torchvision
from conftest import rel_err
from torch import nn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

import mrcnn_lite as ml
from mrcnn_lite import config
from mrcnn_lite.model.fpn import BackboneWithFPN
from mrcnn_lite.model.backbone import (
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm2d,
    ResNet,
    resnet,
    resnet_fpn_backbone,
    stage_specs,
)

TV_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
              50: torchvision.models.resnet50, 101: torchvision.models.resnet101}


def tv_r50_fpn_backbone(trainable_layers: int = 3):
    """torchvision's Mask R-CNN v1 backbone as built for the COCO checkpoint: FrozenBatchNorm2d with eps 0."""
    torch.manual_seed(0)
    bb = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=TVFrozenBatchNorm2d), trainable_layers)
    for m in bb.modules():  # what torchvision's _utils.overwrite_eps(model, 0.0) does
        if isinstance(m, TVFrozenBatchNorm2d):
            m.eps = 0.0
    return bb


@pytest.fixture(scope="module")
def r50_pair(randomise_norm_stats):
    """(ours, torchvision's) R-50-FPN backbones in float64, eval mode, holding the same random weights."""
    tv = tv_r50_fpn_backbone()
    randomise_norm_stats(tv)
    ours = resnet_fpn_backbone(config.r50_fpn())  # the backbone of the COCO v1 layout, without the heads
    ours.load_state_dict(tv.state_dict(), strict=True)
    return ours.double().eval(), tv.double().eval()


# ---------------------------------------------------------------------------------------------- state dict
def test_r50_fpn_state_dict_keys_and_shapes_equal_torchvision():
    ours = resnet_fpn_backbone(config.r50_fpn()).state_dict()  # the COCO v1 layout (FrozenBatchNorm2d)
    ref = tv_r50_fpn_backbone().state_dict()
    assert set(ours) == set(ref)
    assert list(ours) == list(ref)  # same order too
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert "body.conv1.weight" in ours and "body.layer1.0.downsample.0.weight" in ours
    assert "fpn.inner_blocks.0.0.weight" in ours and "fpn.layer_blocks.3.0.bias" in ours
    assert not any(k.startswith(("body.fc", "body.avgpool")) for k in ours)


def test_torchvision_maskrcnn_backbone_state_dict_loads_strictly():
    # weights=None builds torchvision's backbone with BatchNorm2d: same keys plus num_batches_tracked,
    # which FrozenBatchNorm2d drops on load (as torchvision's does).
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91).backbone.state_dict()
    ours = resnet_fpn_backbone(config.r50_fpn())
    assert set(ours.state_dict()) == {k for k in tv if not k.endswith("num_batches_tracked")}
    result = ours.load_state_dict(tv, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in ours.state_dict().items():
        assert torch.equal(v, tv[k]), k


# ---------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("shape", [(2, 3, 64, 96), (1, 3, 100, 75), (1, 3, 33, 47)])
def test_r50_fpn_outputs_equal_torchvision_float64(r50_pair, shape):
    ours, tv = r50_pair
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        a, b = ours(x), tv(x)
    assert list(a) == list(b) == ["0", "1", "2", "3", "pool"]
    worst = 0.0
    for k in b:
        assert a[k].shape == b[k].shape, k
        assert a[k].dtype == torch.float64
        worst = max(worst, rel_err(a[k], b[k]))
    print(f"R-50-FPN {shape}: worst relative error {worst:.3e}")
    assert worst < 1e-10


def test_r50_fpn_frozen_bn_eps_is_zero():
    bb = resnet_fpn_backbone(config.r50_fpn())
    eps = {m.eps for m in bb.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert eps == {0.0}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())


@pytest.mark.parametrize("trainable_layers", [0, 3, 5])
def test_trainable_layers_match_torchvision(trainable_layers):
    with torch.device("meta"):  # names and flags only: no memory, no weight init
        ours = resnet_fpn_backbone(config.r50_fpn(trainable_layers=trainable_layers))
        tv = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=TVFrozenBatchNorm2d), trainable_layers)
    train_ours = {n for n, p in ours.named_parameters() if p.requires_grad}
    train_tv = {n for n, p in tv.named_parameters() if p.requires_grad}
    assert train_ours == train_tv
    assert {n for n, _ in ours.named_parameters()} == {n for n, _ in tv.named_parameters()}
    if trainable_layers == 0:
        assert all(n.startswith("fpn.") for n in train_ours)
    if trainable_layers == 5:
        assert len(train_ours) == len(list(ours.parameters()))


def test_trainable_layers_out_of_range():
    with pytest.raises(ValueError, match="trainable_layers"):
        resnet_fpn_backbone(config.r50_fpn(trainable_layers=6))


# ---------------------------------------------------------------------------------------------- frozen BN
def test_frozen_batch_norm_equals_batch_norm_eval():
    torch.manual_seed(0)
    x = torch.rand(4, 8, 5, 6)
    bn = nn.BatchNorm2d(8, eps=1e-5)
    # give it non-trivial statistics by training on a few batches
    bn.train()
    for _ in range(3):
        bn(torch.randn(6, 8, 5, 6) * 2 + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    bn.eval()
    fbn = FrozenBatchNorm2d(8, eps=1e-5)
    result = fbn.load_state_dict(bn.state_dict(), strict=True)  # includes num_batches_tracked
    assert not result.missing_keys and not result.unexpected_keys
    assert "num_batches_tracked" in bn.state_dict() and "num_batches_tracked" not in fbn.state_dict()
    torch.testing.assert_close(fbn(x), bn(x), rtol=1e-5, atol=1e-6)
    assert list(fbn.parameters()) == []  # frozen: nothing to train
    assert "eps=1e-05" in repr(fbn)


def test_frozen_batch_norm_equals_torchvision_frozen_bn(randomise_norm_stats):
    tv = TVFrozenBatchNorm2d(16, eps=0.0)
    randomise_norm_stats(tv, seed=3)
    ours = FrozenBatchNorm2d(16, eps=0.0)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    ours.double(), tv.double()
    assert rel_err(ours(x), tv(x)) < 1e-14


# ---------------------------------------------------------------------------------------------- classifiers
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_classifier_resnets_equal_torchvision(depth, randomise_norm_stats):
    torch.manual_seed(depth)
    tv = TV_RESNETS[depth]()
    randomise_norm_stats(tv, seed=depth)
    ours = resnet(depth, num_classes=1000)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    ours.double().eval(), tv.double().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        err = rel_err(ours(x), tv(x))
    assert err < 1e-10, err


def test_r50_parameter_counts():
    n_cls = sum(p.numel() for p in resnet(50, num_classes=1000).parameters())
    assert n_cls == 25_557_032 == sum(p.numel() for p in torchvision.models.resnet50().parameters())
    # the detection body keeps the stages, drops avgpool + fc (2048*1000 + 1000) and freezes the BN layers
    body = resnet(50)
    assert sum(p.numel() for p in body.parameters()) == 25_557_032 - 2_049_000
    frozen = resnet_fpn_backbone(config.r50_fpn()).body
    assert sum(p.numel() for p in frozen.parameters()) == 23_454_912  # BN affine params became buffers


def test_stage_specs():
    specs = stage_specs(101)
    assert [s.block_count for s in specs] == [3, 4, 23, 3]
    assert all(s.return_features for s in specs)
    c4 = stage_specs(50, (3,))
    assert [(s.index, s.return_features) for s in c4] == [(1, False), (2, False), (3, True)]
    with pytest.raises(ValueError, match="depth"):
        stage_specs(42)
    with pytest.raises(ValueError, match="returned_layers"):
        stage_specs(50, (0, 5))


def test_returned_layers_subset_matches_torchvision_names():
    with torch.device("meta"):
        ours = resnet_fpn_backbone(config.r50_fpn(returned_layers=(2, 3, 4)))
        tv = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=TVFrozenBatchNorm2d), 3, [2, 3, 4])
        assert list(ours.state_dict()) == list(tv.state_dict())
        out = ours(torch.zeros(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    # a C4-style body stops after the last returned stage
    body = resnet(50, returned_layers=(3,))
    assert not hasattr(body, "layer4") and body.out_channels_list == [1024]


def test_blocks_shapes():
    x = torch.randn(2, 64, 16, 16)
    b = BasicBlock(64, 128, stride=2)
    assert b(x).shape == (2, 128, 8, 8) and b.downsample is not None
    assert BasicBlock(64, 64).downsample is None
    bt = Bottleneck(64, 64)  # 64 -> 256 channels: shape changes, so a projection shortcut
    assert bt(x).shape == (2, 256, 16, 16) and bt.downsample is not None
    assert Bottleneck(256, 128, stride=2).conv2.stride == (2, 2)
    assert Bottleneck(256, 128, stride=2).conv1.stride == (1, 1)  # v1.5: stride on the 3x3 conv


# ---------------------------------------------------------------------------------------------- tiny preset
def test_tiny_backbone_shapes_and_backward():
    torch.manual_seed(0)
    cfg = config.tiny()
    bb = resnet_fpn_backbone(cfg)
    assert isinstance(bb, BackboneWithFPN) and isinstance(bb.body, ResNet)
    assert bb.out_channels == cfg.fpn_out_channels == 64
    assert bb.body.out_channels_list == [16, 32, 64, 128]
    n = sum(p.numel() for p in bb.parameters())
    print(f"tiny backbone: {n} parameters ({sum(p.numel() for p in bb.body.parameters())} in the ResNet body)")
    x = torch.rand(2, 3, 128, 128)
    out = bb(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (2, 64, 32, 32), "1": (2, 64, 16, 16), "2": (2, 64, 8, 8), "3": (2, 64, 4, 4), "pool": (2, 64, 2, 2)}
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in bb.parameters() if p.requires_grad)
    assert bb.body.conv1.weight.grad.abs().sum() > 0  # trainable_layers=5: the stem trains too


def test_build_model_uses_backbone():
    m = ml.build_model(config.tiny(num_classes=4))
    assert isinstance(m.backbone, BackboneWithFPN)
    assert isinstance(m.backbone.fpn.layer_blocks[0][0], nn.Conv2d)
    assert isinstance(m.backbone.body(torch.zeros(1, 3, 64, 64)), OrderedDict)
