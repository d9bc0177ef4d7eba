"""Exercise checkers: compare a learner's function with the package's reference.

Every exercise in the notebooks is followed by a check cell such as::

    from mrcnn_lite.course import checks
    checks.check_box_iou(my_box_iou, points=2)

The machinery (a check's spec, calling the learner's function, judging its outputs against the reference,
reporting) is in :mod:`.runner`, with the results and comparisons in :mod:`.results`, the random inputs
in :mod:`.inputs` and the fallback to the reference in :mod:`.fallback`; what a checked function may not call
(the package's or torchvision's implementation of the exercise) is in :mod:`.off_limits`; the
checkers of each notebook are in their own module, ``nb01_boxes`` ... ``nb12_own_data``, and are
imported here so that a notebook needs only ``checks.<name>``. Three kinds of exercise:

* build: write a fully specified function (``check_box_iou``, ``check_paste_mask``, ...);
* debugging lab (``check_<...>_lab``): a component with a planted bug is handed out; the learner finds
  the bug with the notebook's pictures and fixes it; graded on random inputs *and* on real tensors of a
  briefly trained model (:mod:`mrcnn_lite.course.lab_case`);
  before the fix, each lab asks where the bug is (``check_<...>_locate_lab``: one of the lab's named candidates,
  :func:`.runner.check_choice`), for its own point;
* cross-stage lab (``check_model_<...>_locate_lab`` and ``check_model_<...>_lab``): a whole model with one
  planted bug (:mod:`mrcnn_lite.course.labs`); the learner names the broken stage (one of a list of suspects),
  then writes the broken part correctly;
* predict-then-run (``check_prediction``): a number or a choice written before the cell that computes it.
"""
from .runner import RESULTS, CheckResult, check_choice, check_prediction, compare, or_reference, run_check, run_parts
from .nb01_boxes import (check_box_iou, check_decode_lab, check_decode_locate_lab, check_encode, check_nms,
                         reference_decode, reference_encode)
from .nb02_backbone import check_bottleneck, check_frozen_bn_lab, check_frozen_bn_locate_lab, reference_frozen_bn
from .nb03_fpn import check_fpn_top_down, reference_fpn_top_down
from .nb04_anchors import check_base_anchors, check_grid_anchors, reference_grid_anchors
from .nb05_rpn import (check_flatten_head_lab, check_flatten_head_locate_lab, check_rpn_loss, check_top_n_per_level,
                       reference_flatten_head, reference_rpn_loss, reference_top_n_per_level)
from .nb06_roi import (check_bilinear, check_level_lab, check_level_locate_lab, check_roi_align_one_box,
                       reference_bilinear, reference_level_for_boxes, reference_roi_align_one_box)
from .nb07_box_head import (check_decode_class_boxes, check_fastrcnn_loss, check_sample_balanced,
                            check_training_proposals_lab, check_training_proposals_locate_lab,
                            reference_decode_class_boxes, reference_fastrcnn_loss,
                            reference_training_proposals)
from .nb08_mask_head import (check_mask_loss_lab, check_mask_loss_locate_lab, check_mask_targets, reference_mask_loss,
                             reference_mask_targets)
from .nb09_mask_rcnn import (check_model_nine_lab, check_model_nine_locate_lab, check_paste_mask,
                             reference_mask_roi_pool, reference_paste_mask)
from .nb10_training import (check_lr_at, check_train_step_accumulate, reference_lr_at, reference_train_step,
                            reference_train_step_accumulate)
from .nb11_evaluation import (check_coco_ap, check_model_eleven_lab, check_model_eleven_locate_lab,
                              coco_ap_by_pycocotools, reference_coco_ap, reference_detection_candidates)
from .nb12_own_data import check_rle_decode, reference_rle_decode, rle_counts
from .nb16_experiments import (check_experiment_anchors, check_experiment_anchors_prediction, check_experiment_levels,
                               check_experiment_levels_prediction, check_experiment_mask_res,
                               check_experiment_mask_res_prediction, check_experiment_misalign,
                               check_experiment_misalign_prediction)
