"""One training run of a recipe variant for the course recipe's search: trains the tiny model on shapes
from v1's settings (``V1_RECIPE`` / ``V1_MODEL`` in ``mrcnn_lite/recipes.py``) changed by the JSON options,
then prints and appends one JSON row: steps, training time (wall and CPU seconds of this process, one torch
thread) and COCO AP on the course's held-out split ``ShapesDataset(100, seed=99)``.

    python tools/recipe_search.py TAG [--model JSON] [--recipe JSON] [--data JSON] [--seed 0]
                                       [--out benchmarks/recipe_search/runs.jsonl]

    --model   MaskRCNNConfig fields, e.g. '{"mask_batch_size_per_image": 8, "rpn_post_nms_top_n_train": 150}'
    --recipe  num_train (images = steps x batch_size), batch_size, lr, warmup, weight_decay, amp, ...
    --data    ShapesDataset options of the training images, e.g. '{"min_shapes": 5, "max_shapes": 12}'

The search's runs, two at a time on a 2-core machine, are in ``benchmarks/recipe_search/runs.jsonl``; the
docs/recipe.md summarises them. Rows A-H shared the machine with other work (their wall time
far above their CPU time); compare CPU seconds. The rows with ``mask_batch_size_per_image`` ran an earlier
form of the cap (a random permutation drawn even when an image had fewer positives than the cap), which
draws other random numbers: a rerun agrees up to seed noise, not bit for bit. The course recipe, row ``S``, is what ``make demo`` trains,
and ``tools/recipe_bench.py`` times it against v1 in one run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mrcnn_lite.build import build_model
from mrcnn_lite import config as C
from mrcnn_lite.recipes import V1_MODEL, V1_RECIPE
from mrcnn_lite.data import CLASSES, ShapesDataset
from mrcnn_lite.engine import TrainConfig, Trainer
from mrcnn_lite.engine.coco_eval import evaluate


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tag")
    ap.add_argument("--model", type=json.loads, default={})
    ap.add_argument("--recipe", type=json.loads, default={})
    ap.add_argument("--data", type=json.loads, default={})
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/recipe_search/runs.jsonl"))
    ap.add_argument("--run-dir", type=Path, default=Path("runs/recipe_search"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = {**V1_RECIPE, **args.recipe}
    torch.manual_seed(args.seed)
    model = build_model(C.tiny(num_classes=len(CLASSES), **{**V1_MODEL, **args.model}))
    tcfg = TrainConfig(epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], optimizer=r["optimizer"],
                       weight_decay=r["weight_decay"], warmup_iters=r["warmup"], clip_grad_norm=10.0, amp=r["amp"],
                       seed=args.seed, progress=False, eval_every=0)
    data = {"min_shapes": r["min_shapes"], "max_shapes": r["max_shapes"], **args.data}
    trainer = Trainer(model, ShapesDataset(r["num_train"], seed=args.seed, **data), tcfg,
                      args.run_dir / f"{args.tag}_seed{args.seed}")
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    m = evaluate(trainer.model, ShapesDataset(100, seed=99))
    row = {"tag": args.tag, "seed": args.seed, "model": args.model, "recipe": args.recipe, "data": args.data,
           "steps": trainer.global_step, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "box_AP": round(m["bbox"]["AP"], 4), "mask_AP": round(m["segm"]["AP"], 4),
           "mask_AP50": round(m["segm"]["AP50"], 4), "mask_AP75": round(m["segm"]["AP75"], 4)}
    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
