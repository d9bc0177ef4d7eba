"""Training and evaluation: ``Trainer``, COCO AP, atomic checkpoints."""
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .coco_eval import coco_from_targets, coco_summary, detections_to_coco, evaluate
from .trainer import NonFiniteLossError, TrainConfig, Trainer, collate, lr_factor, plot_losses, train_step

__all__ = ["Trainer", "train_step", "TrainConfig", "NonFiniteLossError", "collate", "lr_factor", "plot_losses",
           "save_checkpoint", "read_checkpoint", "load_checkpoint", "evaluate", "coco_from_targets", "coco_summary",
           "detections_to_coco"]
