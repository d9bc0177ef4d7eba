"""Real intermediate tensors of a briefly trained course model, for the debugging labs' checkers.

A lab's checker runs the learner's fixed component against the package's reference twice: on fresh
random inputs, and on what a trained Mask R-CNN really produces at that stage (anchors and RPN deltas,
per-level head outputs, proposals, ground truth, mask logits...). Those tensors are stored once in
``mrcnn_lite/course/data/lab_case.pt`` (a few hundred KB) and made by::

    python -m mrcnn_lite.course.lab_case --steps 300      # about a minute on 2 CPU cores

which trains the tiny course model (the ``tiny-shapes`` model of ``python -m mrcnn_lite train``) for
``--steps`` steps on generated shapes (seed 0) and records a held-out image (the first of seed 7 with at least 4 shapes) going through it.
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Dict

import torch

PATH = Path(__file__).resolve().parent / "data" / "lab_case.pt"


@functools.lru_cache(maxsize=1)
def _load() -> Dict[str, object]:
    if not PATH.is_file():
        raise FileNotFoundError(f"the labs' stored tensors are missing: {PATH} "
                                f"(make them with `python -m mrcnn_lite.course.lab_case`)")
    return torch.load(PATH, weights_only=True)


def load_lab_case() -> Dict[str, object]:
    """The stored tensors (a fresh copy each call, so a function under test cannot change them)."""
    def copy(v):
        if isinstance(v, torch.Tensor):
            return v.clone()
        if isinstance(v, list):
            return [copy(x) for x in v]
        if isinstance(v, dict):
            return {k: copy(x) for k, x in v.items()}
        return v
    return copy(_load())


def make_lab_case(steps: int = 300, seed: int = 0) -> Dict[str, object]:
    """Train the tiny model for ``steps`` steps of 4 images, then record one held-out image's tensors."""
    from .. import config
    from ..build import build_model
    from ..data import ShapesDataset, collate_fn

    torch.manual_seed(seed)
    model = build_model(config.tiny(num_classes=4, norm="bn", box_batch_size_per_image=64, min_size=192,
                                    max_size=192))
    data = ShapesDataset(steps * 4, seed=seed)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False, collate_fn=collate_fn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    for step, (images, targets) in enumerate(loader):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step}: " + ", ".join(f"{k}={v.item():.3f}" for k, v in losses.items()), flush=True)

    held_out = ShapesDataset(20, seed=7)
    image, target = next(held_out[i] for i in range(len(held_out)) if len(held_out[i][1]["boxes"]) >= 4)
    case: Dict[str, object] = {"steps": steps, "image": image, "target": target}
    with torch.no_grad():
        model.eval()
        _, inter = model([image], return_intermediates=True)
        feats = list(inter["features"].values())
        objectness, deltas = model.rpn.head(feats)
        # The three coarsest levels only (P4, P5, pool): the finer ones are large and add nothing new.
        case["head_objectness"] = [o.clone() for o in objectness[-3:]]
        case["head_deltas"] = [d.clone() for d in deltas[-3:]]
        # The best-scored anchors of P3 and their predicted deltas (anchor order: y -> x -> anchor).
        obj3 = objectness[1].permute(0, 2, 3, 1).reshape(-1)
        d3 = deltas[1].view(1, -1, 4, *deltas[1].shape[-2:]).permute(0, 3, 4, 1, 2).reshape(-1, 4)
        n_before = sum(o[0].numel() for o in objectness[:1])
        top = obj3.topk(200).indices
        case["rpn_anchors"] = inter["anchors"][0][n_before + top].clone()
        case["rpn_deltas"] = d3[top].clone()
        case["proposals"] = inter["proposals"][0].clone()
        case["image_size"] = list(inter["image_sizes"][0])
        # A real feature map and batch-norm statistics: the stem's conv output, and its BatchNorm's buffers.
        stem_conv = model.backbone.body.conv1
        x = stem_conv(inter["images"])[:, :, 40:64, 40:64]
        bn = model.backbone.body.bn1
        case["bn_input"] = x.clone()
        case["bn"] = {k: getattr(bn, k).detach().clone() for k in ("weight", "bias", "running_mean", "running_var")}
        case["bn_eps"] = float(bn.eps)

        model.train()
        _, inter = model([image], [target], return_intermediates=True)
        t = inter["targets"][0]
        case["gt_boxes"], case["gt_labels"], case["gt_masks"] = t["boxes"].clone(), t["labels"].clone(), t["masks"].clone()
        keep = slice(0, 16)
        case["mask_proposals"] = inter["mask_proposals"][0][keep].clone()
        labels = inter["labels"][0]
        pos = torch.where(labels > 0)[0][keep]
        case["mask_matched_idxs"] = inter["matched_idxs"][0][pos].clone()
        case["mask_labels"] = labels[pos].clone()
        case["mask_logits"] = inter["mask_logits"][:16].clone()
    return case


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Make the labs' stored tensors (mrcnn_lite/course/data/lab_case.pt).")
    p.add_argument("--steps", type=int, default=300, help="training steps of 4 images (default 300)")
    p.add_argument("--out", type=Path, default=PATH)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    case = make_lab_case(args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save(case, tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
