"""Loss set-ups of published dense detectors, as ``DetectionCriterion`` keyword arguments.

Each recipe reproduces the loss of one reference code on identical head outputs and
targets (every term within 1e-4 relative; ``tests/data/peers/`` holds the golden values,
``tools/peer_golden_*.py`` makes them):

* tood — mmdetection 3.3 ``TOODHead.loss_by_feat``: TAL topk 13, alpha 1, beta 6,
  ``order="topk_first"``, ``resolve="claimants"``, margin 0.01, eps 1e-7; QFL (beta 2) on the
  alignment scores / their sum; GIoU weighted by the target score, w 2.0; no DFL.
* gfl — mmdetection 3.3 ``GFLHead.loss_by_feat``: ATSS topk 9 (anchor boxes 8 strides,
  margin 0.01); QFL on the IoU of the predicted box / sum over images of max(num_pos_i, 1);
  GIoU weighted by the highest predicted probability, w 2.0; DFL w 0.25, targets clamped
  at reg_max - 0.1.
* ppyoloe — PaddleDetection 2.6 ``PPYOLOEHead.get_loss``: TAL topk 13, alpha 1, beta 6,
  ``resolve="all"``; VFL (alpha 0.75, gamma 2) / target-score sum; GIoU weighted by the
  target score, w 2.5; DFL w 0.5.
* yolov8 — ultralytics 8.4.190 ``v8DetectionLoss``: TAL topk 10, alpha 0.5, beta 6, CIoU,
  ``resolve="inside"``, GT sides grown to 16 px for the inside test; BCE / target-score sum,
  w 0.5; CIoU weighted by the target score, w 7.5; DFL w 1.5.

Warm-up phases (opt-in: ``DetectionCriterion.from_recipe(name, C, warmup_epochs=N)``, with
the training loop calling ``criterion.set_epoch(epoch)``):

* tood — mmdetection's ``initial_epoch`` (4 in its config): ATSS top-9 (anchor boxes 8
  strides, margin 0.01), focal loss (alpha 0.25, gamma 2) on one-hot labels divided by the
  positive count, GIoU weighted by the centerness of each positive's anchor in its GT.
* ppyoloe — PaddleDetection's ``static_assigner_epoch`` (100 in PP-YOLOE, 30 in PP-YOLOE+):
  ATSS top-9 (anchor boxes 5 strides, conflicts to the highest anchor IoU of all GTs),
  VFL on the IoU of the predicted box.

Deliberate differences (the rest is the peer's arithmetic):

* ultralytics multiplies its total by the batch size; we do not (divide theirs by B).
* YOLOv8's 16 bins a side are our ``reg_max=15`` (we count ``reg_max + 1`` bins); the
  detector passes its ``reg_max``.
* normalisers are all-reduced and averaged over DDP ranks (mmdetection's ``reduce_mean``;
  ultralytics divides by each rank's own target-score sum, PaddleDetection averages too).
* every peer computes the classification loss on probabilities (mmdetection's TOOD and
  PaddleDetection) or logits; ours always takes logits (the same values to ~1e-7).
* ultralytics and PaddleDetection may pick zero-metric anchors into a GT's top-k when it
  has fewer than k anchors with a positive metric (``topk`` over ties); such anchors get
  a zero target and weight, so no loss term changes, but they count as foreground there
  and can contest an anchor. We keep t > 0 only (DESIGN.md step 3).
* PaddleDetection's ATSS keeps IoU > threshold, mmdetection (and ours) IoU >= threshold:
  they differ only when all of a GT's candidates have the same IoU.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["RECIPES", "get_recipe"]

_TAL = {"type": "TaskAlignedAssigner", "topk": 13, "alpha": 1.0, "beta": 6.0}

RECIPES: dict[str, dict[str, Any]] = {
    "tood": {
        "assigner": {**_TAL, "eps": 1e-7, "order": "topk_first", "resolve": "claimants", "inside_margin": 0.01},
        "cls_loss": {"type": "QualityFocalLoss", "beta": 2.0},
        "box_loss": {"type": "GIoULoss"},
        "dfl_loss": None,
        "weights": {"cls": 1.0, "box": 2.0, "dfl": 0.0},
        "cls_normalizer": "score_sum",
        "box_weighting": "target_score",
        "warmup": {
            "assigner": {"type": "ATSSAssigner", "topk": 9, "octave_base_scale": 8.0, "inside_margin": 0.01},
            "cls_loss": {"type": "FocalLoss", "alpha": 0.25, "gamma": 2.0},
            "cls_target": "onehot",
            "cls_normalizer": "num_pos",
            "box_weighting": "centerness",
        },
    },
    "gfl": {
        "assigner": {"type": "ATSSAssigner", "topk": 9, "octave_base_scale": 8.0, "inside_margin": 0.01},
        "cls_loss": {"type": "QualityFocalLoss", "beta": 2.0},
        "box_loss": {"type": "GIoULoss"},
        "dfl_loss": {"type": "DistributionFocalLoss"},
        "weights": {"cls": 1.0, "box": 2.0, "dfl": 0.25},
        "cls_normalizer": "num_pos_per_image",
        "box_weighting": "pred_score",
        "dfl_target_margin": 0.1,
    },
    "ppyoloe": {
        "assigner": {**_TAL, "resolve": "all"},
        "cls_loss": {"type": "VarifocalLoss", "alpha": 0.75, "gamma": 2.0},
        "box_loss": {"type": "GIoULoss"},
        "dfl_loss": {"type": "DistributionFocalLoss"},
        "weights": {"cls": 1.0, "box": 2.5, "dfl": 0.5},
        "cls_normalizer": "score_sum",
        "box_weighting": "target_score",
        "warmup": {
            "assigner": {"type": "ATSSAssigner", "topk": 9, "octave_base_scale": 5.0, "resolve": "all"},
        },
    },
    "yolov8": {
        "assigner": {
            "type": "TaskAlignedAssigner",
            "topk": 10,
            "alpha": 0.5,
            "beta": 6.0,
            "iou_type": "ciou",
            "resolve": "inside",
            "min_gt_size": 16.0,
        },
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
