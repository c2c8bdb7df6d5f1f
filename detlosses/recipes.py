"""Loss set-ups of published dense detectors, as ``DetectionCriterion`` keyword arguments.

| recipe  | assigner                                 | cls loss                      | box loss      | DFL        |
|---------|------------------------------------------|-------------------------------|---------------|------------|
| tood    | TAL topk 13, alpha 1, beta 6             | QFL (beta 2) on TAL targets   | GIoU, w 2.0   | no         |
| gfl     | ATSS topk 9                              | QFL (beta 2) on IoU targets   | GIoU, w 2.0   | w 0.25     |
| ppyoloe | TAL topk 13, alpha 1, beta 6             | VFL alpha 0.75, gamma 2       | GIoU, w 2.5   | w 0.5      |
| yolov8  | TAL topk 10, alpha 0.5, beta 6, CIoU     | BCE (focal, gamma 0), w 0.5   | CIoU, w 7.5   | w 1.5      |

Sources: TOOD (Feng et al., ICCV 2021) and its mmdetection config; GFL (Li et al., NeurIPS
2020); PP-YOLOE (Xu et al., 2022); YOLOv8 (ultralytics, default hyper-parameters box 7.5,
cls 0.5, dfl 1.5). Differences from the originals: TOOD's ATSS warm-up (the first 4 epochs
with ATSS top-9 in its config) is optional, one override away:
``DetectionCriterion.from_recipe("tood", 80, initial_assigner={"type": "ATSSAssigner",
"topk": 9}, initial_epochs=4)``, with the training loop calling ``criterion.set_epoch``
(``OneStageDetector`` does); every recipe uses ``reg_max + 1`` bins a side (YOLOv8 itself
uses ``reg_max`` bins).

The TOOD classification loss is the plain QFL of mmdetection's TOOD config; the soft-target
focal form with ``alpha`` (PaddleDetection) is one override away:
``DetectionCriterion.from_recipe("tood", 80, cls_loss={"type": "QualityFocalLoss", "alpha": 0.25})``.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["RECIPES", "get_recipe"]

_TAL = {"type": "TaskAlignedAssigner", "topk": 13, "alpha": 1.0, "beta": 6.0}

RECIPES: dict[str, dict[str, Any]] = {
    "tood": {
        "assigner": _TAL,
        "cls_loss": {"type": "QualityFocalLoss", "beta": 2.0},
        "box_loss": {"type": "GIoULoss"},
        "dfl_loss": None,
        "weights": {"cls": 1.0, "box": 2.0, "dfl": 0.0},
        "cls_normalizer": "score_sum",
        "box_weighting": "target_score",
    },
    "gfl": {
        "assigner": {"type": "ATSSAssigner", "topk": 9},
        "cls_loss": {"type": "QualityFocalLoss", "beta": 2.0},
        "box_loss": {"type": "GIoULoss"},
        "dfl_loss": {"type": "DistributionFocalLoss"},
        "weights": {"cls": 1.0, "box": 2.0, "dfl": 0.25},
        "cls_normalizer": "num_pos",
        "box_weighting": "pred_score",
    },
    "ppyoloe": {
        "assigner": _TAL,
        "cls_loss": {"type": "VarifocalLoss", "alpha": 0.75, "gamma": 2.0},
        "box_loss": {"type": "GIoULoss"},
        "dfl_loss": {"type": "DistributionFocalLoss"},
        "weights": {"cls": 1.0, "box": 2.5, "dfl": 0.5},
        "cls_normalizer": "score_sum",
        "box_weighting": "target_score",
    },
    "yolov8": {
        "assigner": {"type": "TaskAlignedAssigner", "topk": 10, "alpha": 0.5, "beta": 6.0, "iou_type": "ciou"},
        "cls_loss": {"type": "FocalLoss", "gamma": 0.0, "alpha": -1.0},
        "box_loss": {"type": "CIoULoss"},
        "dfl_loss": {"type": "DistributionFocalLoss"},
        "weights": {"cls": 0.5, "box": 7.5, "dfl": 1.5},
        "cls_normalizer": "score_sum",
        "box_weighting": "target_score",
    },
}


def get_recipe(name: str) -> dict[str, Any]:
    """A deep copy of the named recipe's ``DetectionCriterion`` keyword arguments."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return copy.deepcopy(RECIPES[name])
