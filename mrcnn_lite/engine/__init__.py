"""Training and evaluation: ``Trainer``, COCO AP, atomic checkpoints.

Modules: ``trainer`` (the loop), ``train_config`` (its settings and learning-rate schedule), ``train_step``
(one step and the finite checks), ``resume`` (continuing a run), ``metrics`` (the run's records on disk),
``checkpoint`` (atomic writes, ``weights_only`` loads), ``coco_eval`` (COCO AP with pycocotools).
"""
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .coco_eval import coco_from_targets, coco_summary, detections_to_coco, evaluate
from .metrics import plot_losses
from .train_config import TrainConfig, lr_factor
from .train_step import NonFiniteLossError, train_step
from .trainer import Trainer

__all__ = ["Trainer", "train_step", "TrainConfig", "NonFiniteLossError", "lr_factor", "plot_losses",
           "save_checkpoint", "read_checkpoint", "load_checkpoint", "evaluate", "coco_from_targets", "coco_summary",
           "detections_to_coco"]
