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
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as tnf
from torch import nn

from ._validation import check_boxes, check_floating
from .boxes import bbox2distance
from .registry import ASSIGNERS, LOSSES

__all__ = ["DetectionCriterion", "pad_targets", "reduce_mean"]

CLS_NORMALIZERS = ("score_sum", "num_pos", "num_pos_per_image")
BOX_WEIGHTINGS = ("target_score", "pred_score", "centerness")
CLS_TARGETS = ("score", "onehot")


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
    bool, with G the largest box count in the batch (0 when no image has a box). Labels
    must be integers in [0, num_classes) and boxes finite (one check each for the batch).
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
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['labels'] must be an integer (long) tensor, got dtype {labels.dtype}")
        counts.append(len(labels))
    batch, max_gt = len(targets), max(counts, default=0)
    gt_labels = torch.zeros(batch, max_gt, dtype=torch.long, device=device)
    gt_bboxes = torch.zeros(batch, max_gt, 4, dtype=torch.float32, device=device)
    gt_mask = torch.zeros(batch, max_gt, dtype=torch.bool, device=device)
    for i, (target, n) in enumerate(zip(targets, counts, strict=True)):
        gt_labels[i, :n] = target["labels"]
        gt_bboxes[i, :n] = target["boxes"]
        gt_mask[i, :n] = True
    bad_label = gt_mask & ((gt_labels < 0) | (gt_labels >= num_classes))
    if bad_label.any():
        i = int(bad_label.any(1).nonzero()[0])
        raise ValueError(f"targets[{i}]['labels'] must lie in [0, {num_classes}), got {targets[i]['labels'].tolist()}")
    if not torch.isfinite(gt_bboxes).all():
        i = int((~torch.isfinite(gt_bboxes)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"targets[{i}]['boxes'] must be finite, got NaN or inf")
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
        weights: factor of each term in the total, keys ``cls``, ``box``, ``dfl``. These are
            the only weights: a loss given with ``loss_weight != 1`` is an error.
        cls_normalizer: the classification loss is divided by ``"score_sum"``, the sum of
            the target scores (TOOD, PP-YOLOE, YOLOv8); ``"num_pos"``, the positive count;
            or ``"num_pos_per_image"``, the sum over images of max(positives, 1) (GFL).
        box_weighting: each positive's weight in the box and DFL losses (their normaliser is
            the sum of the weights): ``"target_score"``, the sum of its target scores (TOOD,
            PP-YOLOE, YOLOv8); ``"pred_score"``, its highest predicted probability (GFL); or
            ``"centerness"``, the FCOS centerness of its anchor point in its GT (TOOD's
            warm-up).
        cls_target: ``"score"``, the assigner's soft scores, or ``"onehot"``, 1 at the class
            of each positive (TOOD's warm-up focal loss).
        dfl_target_margin: DFL targets are clamped to ``[0, reg_max - dfl_target_margin]``
            (0.01; mmdetection's GFL uses 0.1).
        warmup: what changes during the first ``warmup_epochs`` epochs, a dict with any of
            the keys ``assigner``, ``cls_loss``, ``cls_target``, ``cls_normalizer``,
            ``box_weighting`` (TOOD's ATSS epochs, PP-YOLOE's static-ATSS epochs), or None.
        warmup_epochs: length of that phase; the training loop calls :meth:`set_epoch` at
            the start of every epoch (``OneStageDetector`` does). 0 (the default): no phase,
            so a loop that never calls ``set_epoch`` is never stuck in one.

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
        cls_target: str = "score",
        dfl_target_margin: float = 0.01,
        warmup: Mapping[str, Any] | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        weights = {"cls": 1.0, "box": 1.0, "dfl": 1.0, **(weights or {})}
        unknown = set(weights) - {"cls", "box", "dfl"}
        if unknown:
            raise KeyError(f"weights takes the keys 'cls', 'box', 'dfl', got {sorted(unknown)}")
        if not 0 < dfl_target_margin < reg_max:
            raise ValueError(f"dfl_target_margin must lie in (0, reg_max = {reg_max}), got {dfl_target_margin!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        if warmup_epochs and not warmup:
            raise ValueError(f"warmup_epochs={warmup_epochs} needs a warmup dict of what changes in that phase")
        warmup = dict(warmup or {})
        unknown = set(warmup) - set(_PHASE_KEYS)
        if unknown:
            raise KeyError(f"warmup takes the keys {list(_PHASE_KEYS)}, got {sorted(unknown)}")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.weights = weights
        self.dfl_target_margin = dfl_target_margin
        self.warmup_epochs = warmup_epochs
        self.epoch = 0
        self.assigner = ASSIGNERS.build(assigner)
        self.cls_loss = _build_loss("cls_loss", cls_loss, weights["cls"], "cls")
        self.box_loss = _build_loss("box_loss", box_loss, weights["box"], "box")
        self.dfl_loss = None if dfl_loss is None else _build_loss("dfl_loss", dfl_loss, weights["dfl"], "dfl")
        self.steady_phase = _Phase(cls_normalizer, box_weighting, cls_target)
        _check_phase(self.steady_phase)
        self.warmup_assigner = ASSIGNERS.build(warmup["assigner"]) if "assigner" in warmup else None
        self.warmup_cls_loss = None
        if "cls_loss" in warmup:
            self.warmup_cls_loss = _build_loss("warmup['cls_loss']", warmup["cls_loss"], weights["cls"], "cls")
        self.warmup_phase = _Phase(
            warmup.get("cls_normalizer", cls_normalizer),
            warmup.get("box_weighting", box_weighting),
            warmup.get("cls_target", cls_target),
        )
        _check_phase(self.warmup_phase)

    @classmethod
    def from_recipe(cls, name: str, num_classes: int, warmup_epochs: int = 0, **overrides: Any) -> DetectionCriterion:
        """Build one of :data:`detlosses.recipes.RECIPES` ("tood", "gfl", "ppyoloe", "yolov8").

        ``warmup_epochs=N > 0`` turns on the recipe's warm-up phase for the first N epochs
        (tood: mmdetection's ATSS epochs, 4 in its config; ppyoloe: PaddleDetection's
        static-ATSS epochs); ``overrides`` replace recipe arguments (``warmup`` included).
        """
        from .recipes import get_recipe

        kwargs = {**get_recipe(name), **overrides}
        if warmup_epochs and not kwargs.get("warmup"):
            raise ValueError(f"recipe {name!r} has no warm-up phase; warmup_epochs={warmup_epochs} needs warmup=...")
        if not warmup_epochs:
            kwargs.pop("warmup", None)
        return cls(num_classes=num_classes, warmup_epochs=warmup_epochs, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Tell the criterion the training epoch (0-based), which picks the phase; a training
        loop calls it at the start of every epoch, like ``DistributedSampler``'s."""
        self.epoch = int(epoch)

    @property
    def in_warmup(self) -> bool:
        """True during the first ``warmup_epochs`` epochs (as set by :meth:`set_epoch`)."""
        return self.epoch < self.warmup_epochs

    @property
    def active_assigner(self) -> nn.Module:
        """The assigner of the current phase."""
        if self.in_warmup and self.warmup_assigner is not None:
            return self.warmup_assigner
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
        phase = self.warmup_phase if self.in_warmup else self.steady_phase
        cls_loss_fn = self.warmup_cls_loss if self.in_warmup and self.warmup_cls_loss is not None else self.cls_loss

        with torch.no_grad():
            pred_scores = cls_logits.detach().float().sigmoid()  # (B, A, C)
            assigned = self.active_assigner(
                pred_scores,
                box_preds.detach().float(),
                anchor_points.float(),
                gt_labels,
                gt_bboxes,
                gt_mask,
                strides=strides.float(),
            )
        fg_mask = assigned.fg_mask  # (B, A)
        num_pos = fg_mask.sum()
        if phase.cls_target == "score":
            cls_targets = assigned.scores  # (B, A, C)
        else:  # one-hot at the class of each positive
            cls_targets = torch.zeros_like(assigned.scores)
            cls_targets[fg_mask] = tnf.one_hot(assigned.labels[fg_mask], self.num_classes).float()

        if phase.cls_normalizer == "score_sum":
            cls_avg = cls_targets.sum()
        elif phase.cls_normalizer == "num_pos":
            cls_avg = num_pos.float()
        else:  # per image, at least one
            cls_avg = fg_mask.sum(1).clamp(min=1).sum().float()
        loss_cls = cls_loss_fn(cls_logits, cls_targets, avg_factor=reduce_mean(cls_avg).clamp(min=1.0))

        # Positives only from here on: P = num_pos.
        target_bboxes = assigned.bboxes[fg_mask]  # (P, 4)
        fg_points = anchor_points[None].expand(*fg_mask.shape, 2)[fg_mask].float()  # (P, 2)
        if phase.box_weighting == "target_score":
            box_weight = assigned.scores.sum(-1)[fg_mask]  # (P,)
        elif phase.box_weighting == "pred_score":
            box_weight = pred_scores.max(-1).values[fg_mask]  # (P,)
        else:
            box_weight = _centerness(fg_points, target_bboxes)  # (P,)
        box_avg = reduce_mean(box_weight.sum()).clamp(min=1.0)
        loss_box = self.box_loss(box_preds[fg_mask], target_bboxes, weight=box_weight, avg_factor=box_avg)

        loss_dfl = cls_logits.new_zeros((), dtype=torch.float32)
        if self.dfl_loss is not None:
            fg_strides = strides[None].expand_as(fg_mask)[fg_mask].float()[:, None]  # (P, 1)
            dist_targets = bbox2distance(
                fg_points / fg_strides, target_bboxes / fg_strides, max_dis=self.reg_max, eps=self.dfl_target_margin
            )
            dist_logits = box_dist_logits[fg_mask].reshape(-1, 4, self.reg_max + 1)  # (P, 4, n_bins)
            # Mean over the four sides, weighted per positive, normalised like the box loss.
            loss_dfl = self.dfl_loss(dist_logits, dist_targets, weight=box_weight, avg_factor=4.0 * box_avg)

        total = self.weights["cls"] * loss_cls + self.weights["box"] * loss_box + self.weights["dfl"] * loss_dfl
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
        for name, tensor in (("cls_logits", cls_logits), ("box_preds", box_preds)):
            if not torch.isfinite(tensor.detach()).all():
                raise ValueError(f"{name} must be finite, got NaN or inf")

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, reg_max={self.reg_max}, weights={self.weights}, "
            f"steady_phase={self.steady_phase}, warmup_phase={self.warmup_phase}, warmup_epochs={self.warmup_epochs}, "
            f"dfl_target_margin={self.dfl_target_margin}"
        )


class _Phase(NamedTuple):
    """How the classification targets, their normaliser and the box weights are formed."""

    cls_normalizer: str
    box_weighting: str
    cls_target: str


_PHASE_KEYS = ("assigner", "cls_loss", "cls_target", "cls_normalizer", "box_weighting")


def _check_phase(phase: _Phase) -> None:
    for name, value, allowed in zip(_Phase._fields, phase, (CLS_NORMALIZERS, BOX_WEIGHTINGS, CLS_TARGETS), strict=True):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _build_loss(name: str, cfg: Mapping[str, Any] | nn.Module, weight: float, key: str) -> nn.Module:
    """LOSSES.build, refusing a second weight: the criterion's ``weights`` alone scale the terms."""
    loss = LOSSES.build(cfg)
    loss_weight = getattr(loss, "loss_weight", 1.0)
    if loss_weight != 1:
        raise ValueError(
            f"{name} has loss_weight={loss_weight} and weights['{key}']={weight}: the criterion scales each term "
            f"by weights only; set weights={{'{key}': {weight * loss_weight}}} and leave loss_weight at 1"
        )
    return loss


def _centerness(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of (P, 2) points in (P, 4) boxes."""
    left, top = (points - boxes[:, :2]).unbind(-1)
    right, bottom = (boxes[:, 2:] - points).unbind(-1)
    ratio_x = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-12)
    ratio_y = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=1e-12)
    return (ratio_x.clamp(min=0) * ratio_y.clamp(min=0)).sqrt()
