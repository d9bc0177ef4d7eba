"""The torchvision fine-tuning flow, verbatim with ``ml`` in place of ``torchvision.models.detection``.

The "TorchVision Object Detection Finetuning Tutorial" builds a Mask R-CNN, swaps in new
``FastRCNNPredictor`` / ``MaskRCNNPredictor`` heads for its classes, trains with ``train_one_epoch`` from
torchvision's ``references/detection/engine.py`` and evaluates. Here the data is a tiny COCO-format folder
the test writes (no downloads), the predictors come from torchvision or from mrcnn_lite (same
signatures), and ``train_one_epoch`` follows the references' contract line by line (the references are
scripts, not an installed package). ResNet-50 on 128-px images: a few seconds per variant.
"""
import math

import pytest
import torch
import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVFastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TVMaskRCNNPredictor

import mrcnn_lite as ml
from mrcnn_lite import detection
from mrcnn_lite.data import CocoInstances, ShapesDataset, export_coco
from mrcnn_lite.engine import evaluate

NUM_CLASSES = 4  # background + circle, square, triangle


def collate_fn(batch):  # references/detection/utils.py's collate_fn
    return tuple(zip(*batch))


def train_one_epoch(model, optimizer, data_loader, device, epoch, print_freq=10, scaler=None):
    """references/detection/engine.py's train_one_epoch, without the MetricLogger (same steps, same order)."""
    model.train()
    lr_scheduler = None
    if epoch == 0:
        warmup_factor = 1.0 / 1000
        warmup_iters = min(1000, len(data_loader) - 1)
        lr_scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=warmup_factor,
                                                         total_iters=warmup_iters)
    history = []
    for images, targets in data_loader:
        images = list(image.to(device) for image in images)
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
        loss_value = losses.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"Loss is {loss_value}, stopping training: {loss_dict}")
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        history.append({k: v.item() for k, v in loss_dict.items()})
    return history


def reference_iou_types(model):
    """references/detection/engine.py's _get_iou_types: which COCO metrics engine.evaluate computes."""
    iou_types = ["bbox"]
    if isinstance(model, torchvision.models.detection.MaskRCNN):
        iou_types.append("segm")
    return iou_types


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    """A tiny COCO-format dataset: 4 training and 2 test images of the shapes data, written as PNG + JSON."""
    root = tmp_path_factory.mktemp("coco")
    export_coco(ShapesDataset(4, seed=0, max_shapes=3, empty_prob=0.0), root, "train")
    export_coco(ShapesDataset(2, seed=1, max_shapes=3, empty_prob=0.0), root, "test")
    return root


def _loaders(root):
    train = CocoInstances(root / "train" / "images", root / "train" / "annotations.json")
    test = CocoInstances(root / "test" / "images", root / "test" / "annotations.json")
    return (torch.utils.data.DataLoader(train, batch_size=2, shuffle=True, collate_fn=collate_fn),
            torch.utils.data.DataLoader(test, batch_size=1, shuffle=False, collate_fn=collate_fn))


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("predictors", ["torchvision", "mrcnn_lite"])
def test_finetuning_flow(coco_folder, predictors):
    FastRCNNPredictor, MaskRCNNPredictor = {
        "torchvision": (TVFastRCNNPredictor, TVMaskRCNNPredictor),
        "mrcnn_lite": (detection.FastRCNNPredictor, detection.MaskRCNNPredictor),
    }[predictors]
    torch.manual_seed(0)
    device = torch.device("cpu")

    # --- the tutorial's get_model_instance_segmentation, with ml for torchvision.models.detection ---
    model = ml.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=128, max_size=128,
                                     box_batch_size_per_image=64)
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, NUM_CLASSES)
    in_features_mask = model.roi_heads.mask_predictor.conv5_mask.in_channels
    hidden_layer = 256
    model.roi_heads.mask_predictor = MaskRCNNPredictor(in_features_mask, hidden_layer, NUM_CLASSES)
    model.to(device)
    # the model's class count follows the new predictors: labels are checked against it, checkpoints record it
    assert model.num_classes == NUM_CLASSES and model.cfg.num_classes == 91
    with pytest.raises(ValueError, match="label 4"):
        model.train()([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]),
                                                 "labels": torch.tensor([4]),
                                                 "masks": torch.ones(1, 64, 64, dtype=torch.uint8)}])

    data_loader, data_loader_test = _loaders(coco_folder)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
    before = model.roi_heads.mask_predictor.mask_fcn_logits.weight.detach().clone()

    history = train_one_epoch(model, optimizer, data_loader, device, epoch=0, print_freq=10)

    assert len(history) == 2
    for losses in history:
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        assert all(math.isfinite(v) for v in losses.values()), losses
    assert abs(history[0]["loss_objectness"] - math.log(2)) < 0.1  # a normalised network's first step
    assert not torch.equal(before, model.roi_heads.mask_predictor.mask_fcn_logits.weight)  # the new head trained

    # --- evaluate: our evaluate takes the same (model, data_loader, device) as engine.evaluate ---
    metrics = evaluate(model, data_loader_test, device=device)
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) >= {"AP", "AP50"}
        assert all(-1.0 <= v <= 1.0 for v in metrics[iou_type].values())
    model.eval()
    with torch.no_grad():
        out = model([data_loader_test.dataset[0][0]])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"} and out["masks"].shape[1:] == (1, 128, 128)

    # torchvision's engine.evaluate would compute box AP only for this model (an isinstance check): the
    # docs/torchvision.md gives the one-line workaround, engine._get_iou_types = lambda model: ["bbox", "segm"].
    assert reference_iou_types(model) == ["bbox"]


def test_evaluate_takes_a_torchvision_model_and_loader(coco_folder):
    """Our evaluate accepts what torchvision's engine.evaluate accepts: a torchvision MaskRCNN and a loader."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    tv = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=NUM_CLASSES,
                  min_size=128, max_size=128, box_detections_per_img=5)
    _, data_loader_test = _loaders(coco_folder)
    a = evaluate(tv, data_loader_test, torch.device("cpu"))
    b = evaluate(ml.from_torchvision(tv), data_loader_test, torch.device("cpu"))
    assert set(a) == set(b) == {"bbox", "segm"}
    for iou_type in a:  # same weights, same detections: the same numbers
        for k in a[iou_type]:
            assert abs(a[iou_type][k] - b[iou_type][k]) < 1e-6, (iou_type, k)
