"""Training recipes: the settings the ``train``, ``ablate`` commands and the benchmarks start from.

Plain data, no code: a recipe (``*_RECIPE``) holds the training and data settings, a model dict
(``*_MODEL``) the ``config.tiny(...)`` fields it changes. Every value can be overridden on the
command line (``python -m mrcnn_lite train --help``).
"""

# The default course run (``train --config tiny-shapes``), tuned to finish `make demo` in a few minutes
# on 2 CPU cores. How each choice was measured: benchmarks/recipe_bench_cpu.txt (this recipe against
# v1 below) and docs/recipe.md.
# - AdamW, not SGD: from scratch and in a few thousand steps it learned several times faster (held-out
#   mask AP 0.15 vs 0.03 after 300 steps).
# - Fresh images every step (one epoch of 2200 steps), each with 5-12 shapes where the held-out images
#   have 1-6: a step then shows the heads twice as many objects (and their occlusions) for little more
#   work, since the anchors and RoIs sampled per image are fixed in number. That taught more than extra
#   steps of sparse images did.
# - bf16 autocast: on a CPU with bfloat16 instructions the convolutions and matrix products run at
#   bfloat16 speed for the same held-out AP as float32; where the CPU lacks them, --amp off is faster.
# - The held-out AP every 500 steps, for notebook 10's curve.
TINY_SHAPES_RECIPE = dict(num_train=8800, num_val=50, epochs=1, batch_size=4, optimizer="adamw", lr=2e-3,
                          weight_decay=0.05, warmup=50, amp="bf16", eval_every_steps=500, min_shapes=5,
                          max_shapes=12)
# Model changes for the course run:
# - trainable BatchNorm (training from scratch);
# - the 128-px images enlarged to 192 px inside the model (min_size = max_size = 192): a shape of 12 px
#   then covers 4-5 cells of the stride-4 map P2 instead of 3, enough to tell a small rotated square from
#   a circle (held-out mask AP 0.66 -> 0.75, AP50 0.87 -> 0.92 after the same 3000 steps of v1). The
#   step's time goes mostly to the RoI heads, whose inputs are 7x7 and 14x14 whatever the image size.
#   Predictions come back at the input images' own size;
# - training only, the architecture is unchanged: 64 sampled RoIs per image instead of 128; the mask
#   loss on 8 of them at most (the mask branch, on every positive, took over a third of a step, and an
#   image's positives crowd on the same few objects); and fewer RPN proposals (the top 300 per level
#   before NMS instead of 600, 150 after it instead of 300), which saves NMS time.
TINY_SHAPES_MODEL = dict(norm="bn", box_batch_size_per_image=64, min_size=192, max_size=192,
                         mask_batch_size_per_image=8, rpn_pre_nms_top_n_train=300,
                         rpn_post_nms_top_n_train=150)
# v1, the baseline tools/recipe_bench.py times the course recipe against (`train --recipe v1`
# trains it), and the model every ablation variant starts from: float32, 3000 steps of images with
# 1-6 shapes, the paper's mask loss on every positive RoI, the tiny config's 600 / 300 RPN proposals.
# Held-out mask AP 0.74.
V1_RECIPE = dict(num_train=12000, num_val=50, epochs=1, batch_size=4, optimizer="adamw", lr=2e-3,
                 weight_decay=0.05, warmup=50, amp="off", eval_every_steps=0, min_shapes=1, max_shapes=6)
V1_MODEL = dict(norm="bn", box_batch_size_per_image=64, min_size=192, max_size=192)

# recipe name (``train --recipe NAME``) -> (recipe, model changes)
RECIPES = {"course": (TINY_SHAPES_RECIPE, TINY_SHAPES_MODEL), "v1": (V1_RECIPE, V1_MODEL)}

# Steps per run of `ablate`: each variant trains this long (mrcnn_lite/experiments/ablations.py).
ABLATION_STEPS = 1000
