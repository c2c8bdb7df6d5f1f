"""The composite loss a dense one-stage detector calls once per step.

``DetectionCriterion`` pads the per-image targets, assigns anchors to ground truth under
``torch.no_grad`` and combines a classification loss, a box (IoU-family) loss and an
optional distribution focal loss, each normalised the way the published recipes do
(:mod:`detlosses.recipes`).

Normalisers (``avg_factor``) are global: under ``torch.distributed`` they are all-reduced
and averaged over ranks, then clamped to at least 1, so the loss does not change with the
number of GPUs and never divides by zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ._validation import check_boxes, check_floating
from .boxes import bbox2distance
from .registry import ASSIGNERS, LOSSES

__all__ = ["DetectionCriterion", "pad_targets", "reduce_mean"]

CLS_NORMALIZERS = ("score_sum", "num_pos")
BOX_WEIGHTINGS = ("target_score", "pred_score")


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over DDP ranks (itself when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def pad_targets(
    targets: Sequence[Mapping[str, torch.Tensor]], num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-image targets into padded tensors.

    Returns ``gt_labels (B, G)`` long, ``gt_bboxes (B, G, 4)`` float32 and ``gt_mask (B, G)``
    bool, with G the largest box count in the batch (0 when no image has a box).
    """
    counts = []
    for i, target in enumerate(targets):
        if "boxes" not in target or "labels" not in target:
            raise KeyError(f"targets[{i}] needs 'boxes' (n, 4) and 'labels' (n,), got keys {sorted(target)}")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"targets[{i}]: expected boxes (n, 4) and labels (n,), "
                f"got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in [0, {num_classes}), got {labels.tolist()}")
        counts.append(len(labels))
    batch, max_gt = len(targets), max(counts, default=0)
    gt_labels = torch.zeros(batch, max_gt, dtype=torch.long, device=device)
    gt_bboxes = torch.zeros(batch, max_gt, 4, dtype=torch.float32, device=device)
    gt_mask = torch.zeros(batch, max_gt, dtype=torch.bool, device=device)
    for i, (target, n) in enumerate(zip(targets, counts, strict=True)):
        gt_labels[i, :n] = target["labels"]
        gt_bboxes[i, :n] = target["boxes"]
        gt_mask[i, :n] = True
    return gt_labels, gt_bboxes, gt_mask


class DetectionCriterion(nn.Module):
    """Assign, then classification + box (+ DFL) losses of a dense anchor-free detector.

    Args:
        num_classes: number of foreground classes C.
        assigner: ASSIGNERS config (``{"type": "TaskAlignedAssigner", ...}``) or module.
        cls_loss: LOSSES config of a soft-target classification loss (logits, (B, A, C)).
        box_loss: LOSSES config of an IoU-family loss on decoded xyxy boxes.
        dfl_loss: LOSSES config of the distribution focal loss, or None.
        reg_max: DFL distances span ``[0, reg_max]`` strides (``reg_max + 1`` bins a side).
        weights: factor of each term in the total, keys ``cls``, ``box``, ``dfl``.
        cls_normalizer: ``"score_sum"`` divides the classification loss by the sum of the
            target scores (TOOD, PP-YOLOE, YOLOv8); ``"num_pos"`` by the positive count (GFL).
        box_weighting: each positive's weight in the box and DFL losses and their normaliser:
            ``"target_score"``, the sum of its target scores (TOOD, PP-YOLOE, YOLOv8), or
            ``"pred_score"``, its highest predicted probability (GFL).
        initial_assigner: ASSIGNERS config used instead of ``assigner`` while the epoch set by
            :meth:`set_epoch` is below ``initial_epochs`` (TOOD's ATSS warm-up:
            ``{"type": "ATSSAssigner", "topk": 9}`` for 4 epochs), or None.
        initial_epochs: length of that warm-up in epochs.

    Call with ``cls_logits (B, A, C)``, ``box_preds (B, A, 4)`` (decoded xyxy pixels),
    ``box_dist_logits (B, A, 4 * (reg_max + 1))`` or None, ``anchor_points (A, 2)``,
    ``strides (A,)`` and ``targets``, a list of B dicts ``{"boxes": (n, 4), "labels": (n,)}``.
    Returns ``{"loss", "loss_cls", "loss_box", "loss_dfl", "num_pos"}``; ``loss`` is the
    weighted total, the others are the unweighted terms (detached) for logging.
    """

    def __init__(
        self,
        num_classes: int,
        assigner: Mapping[str, Any] | nn.Module,
        cls_loss: Mapping[str, Any] | nn.Module,
        box_loss: Mapping[str, Any] | nn.Module,
        dfl_loss: Mapping[str, Any] | nn.Module | None = None,
        reg_max: int = 16,
        weights: Mapping[str, float] | None = None,
        cls_normalizer: str = "score_sum",
        box_weighting: str = "target_score",
        initial_assigner: Mapping[str, Any] | nn.Module | None = None,
        initial_epochs: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if cls_normalizer not in CLS_NORMALIZERS:
            raise ValueError(f"cls_normalizer must be one of {CLS_NORMALIZERS}, got {cls_normalizer!r}")
        if box_weighting not in BOX_WEIGHTINGS:
            raise ValueError(f"box_weighting must be one of {BOX_WEIGHTINGS}, got {box_weighting!r}")
        weights = {"cls": 1.0, "box": 1.0, "dfl": 1.0, **(weights or {})}
        unknown = set(weights) - {"cls", "box", "dfl"}
        if unknown:
            raise KeyError(f"weights takes the keys 'cls', 'box', 'dfl', got {sorted(unknown)}")
        if isinstance(initial_epochs, bool) or not isinstance(initial_epochs, int) or initial_epochs < 0:
            raise ValueError(f"initial_epochs must be an int >= 0, got {initial_epochs!r}")
        if initial_epochs and initial_assigner is None:
            raise ValueError(f"initial_epochs={initial_epochs} needs an initial_assigner")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.weights = weights
        self.cls_normalizer = cls_normalizer
        self.box_weighting = box_weighting
        self.assigner = ASSIGNERS.build(assigner)
        self.initial_assigner = None if initial_assigner is None else ASSIGNERS.build(initial_assigner)
        self.initial_epochs = initial_epochs
        self.epoch = 0
        self.cls_loss = LOSSES.build(cls_loss)
        self.box_loss = LOSSES.build(box_loss)
        self.dfl_loss = None if dfl_loss is None else LOSSES.build(dfl_loss)

    @classmethod
    def from_recipe(cls, name: str, num_classes: int, **overrides: Any) -> DetectionCriterion:
        """Build one of :data:`detlosses.recipes.RECIPES` ("tood", "gfl", "ppyoloe", "yolov8")."""
        from .recipes import get_recipe

        return cls(num_classes=num_classes, **{**get_recipe(name), **overrides})

    def set_epoch(self, epoch: int) -> None:
        """Tell the criterion the training epoch (0-based), which picks the warm-up assigner;
        a training loop calls it at the start of every epoch, like ``DistributedSampler``'s."""
        self.epoch = int(epoch)

    @property
    def active_assigner(self) -> nn.Module:
        """``initial_assigner`` during the first ``initial_epochs`` epochs, ``assigner`` after."""
        if self.initial_assigner is not None and self.epoch < self.initial_epochs:
            return self.initial_assigner
        return self.assigner

    def forward(
        self,
        cls_logits: torch.Tensor,
        box_preds: torch.Tensor,
        box_dist_logits: torch.Tensor | None,
        anchor_points: torch.Tensor,
        strides: torch.Tensor,
        targets: Sequence[Mapping[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        self._check_inputs(cls_logits, box_preds, box_dist_logits, anchor_points, strides, targets)
        gt_labels, gt_bboxes, gt_mask = pad_targets(targets, self.num_classes, cls_logits.device)

        with torch.no_grad():
            pred_scores = cls_logits.detach().float().sigmoid()  # (B, A, C)
            assigned = self.active_assigner(
                pred_scores, box_preds.detach().float(), anchor_points.float(),
                gt_labels, gt_bboxes, gt_mask, strides=strides.float(),
            )
        fg_mask = assigned.fg_mask  # (B, A)
        target_scores = assigned.scores  # (B, A, C)
        num_pos = fg_mask.sum()

        if self.cls_normalizer == "score_sum":
            cls_avg = reduce_mean(target_scores.sum()).clamp(min=1.0)
        else:
            cls_avg = reduce_mean(num_pos.float()).clamp(min=1.0)
        loss_cls = self.cls_loss(cls_logits, target_scores, avg_factor=cls_avg)

        # Positives only from here on: P = num_pos.
        if self.box_weighting == "target_score":
            box_weight = target_scores.sum(-1)[fg_mask]  # (P,)
        else:
            box_weight = pred_scores.max(-1).values[fg_mask]  # (P,)
        box_avg = reduce_mean(box_weight.sum()).clamp(min=1.0)
        target_bboxes = assigned.bboxes[fg_mask]  # (P, 4)
        loss_box = self.box_loss(box_preds[fg_mask], target_bboxes, weight=box_weight, avg_factor=box_avg)

        loss_dfl = cls_logits.new_zeros((), dtype=torch.float32)
        if self.dfl_loss is not None:
            fg_strides = strides[None].expand_as(fg_mask)[fg_mask].float()[:, None]  # (P, 1)
            fg_points = anchor_points[None].expand(*fg_mask.shape, 2)[fg_mask].float()  # (P, 2)
            dist_targets = bbox2distance(fg_points / fg_strides, target_bboxes / fg_strides, max_dis=self.reg_max)
            dist_logits = box_dist_logits[fg_mask].reshape(-1, 4, self.reg_max + 1)  # (P, 4, n_bins)
            # Mean over the four sides, weighted per positive, normalised like the box loss.
            loss_dfl = self.dfl_loss(dist_logits, dist_targets, weight=box_weight, avg_factor=4.0 * box_avg)

        total = (
            self.weights["cls"] * loss_cls + self.weights["box"] * loss_box + self.weights["dfl"] * loss_dfl
        )
        return {
            "loss": total,
            "loss_cls": loss_cls.detach(),
            "loss_box": loss_box.detach(),
            "loss_dfl": loss_dfl.detach(),
            "num_pos": num_pos.detach(),
        }

    def _check_inputs(
        self,
        cls_logits: torch.Tensor,
        box_preds: torch.Tensor,
        box_dist_logits: torch.Tensor | None,
        anchor_points: torch.Tensor,
        strides: torch.Tensor,
        targets: Sequence[Mapping[str, torch.Tensor]],
    ) -> None:
        check_floating("cls_logits", cls_logits)
        if cls_logits.dim() != 3 or cls_logits.shape[-1] != self.num_classes:
            raise ValueError(f"cls_logits must be (B, A, {self.num_classes}), got {tuple(cls_logits.shape)}")
        batch, num_anchors = cls_logits.shape[:2]
        check_boxes("box_preds", box_preds)
        if box_preds.shape != (batch, num_anchors, 4):
            raise ValueError(f"box_preds must be (B, A, 4) = {(batch, num_anchors, 4)}, got {tuple(box_preds.shape)}")
        if anchor_points.shape != (num_anchors, 2):
            raise ValueError(f"anchor_points must be (A, 2) = {(num_anchors, 2)}, got {tuple(anchor_points.shape)}")
        if strides.shape != (num_anchors,):
            raise ValueError(f"strides must be (A,) = {(num_anchors,)}, got {tuple(strides.shape)}")
        if self.dfl_loss is not None:
            expected = (batch, num_anchors, 4 * (self.reg_max + 1))
            if box_dist_logits is None or box_dist_logits.shape != expected:
                got = None if box_dist_logits is None else tuple(box_dist_logits.shape)
                raise ValueError(f"box_dist_logits must be (B, A, 4 * (reg_max + 1)) = {expected}, got {got}")
        if len(targets) != batch:
            raise ValueError(f"targets must hold one dict per image ({batch}), got {len(targets)}")

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, reg_max={self.reg_max}, weights={self.weights}, "
            f"cls_normalizer={self.cls_normalizer!r}, box_weighting={self.box_weighting!r}, "
            f"initial_epochs={self.initial_epochs}"
        )
