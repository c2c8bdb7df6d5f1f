"""The assignment as data: per-GT rows, the alignment of each positive, summary statistics and
the anchors two assignments disagree on (torch only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_boxes
from ..assigners import AssignResult
from ..boxes import box_iou

__all__ = [
    "GTAssignment",
    "alignment_of_positives",
    "assignment_differences",
    "assignment_summary",
    "assignment_table",
    "format_assignment_table",
]

_IOU_TYPES = ("iou", "ciou")


# ----------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------
def _check_result(result: AssignResult, name: str = "result") -> tuple[int, int]:
    """(B, A) of an AssignResult; ValueError when it is not one."""
    if not isinstance(result, AssignResult):
        raise ValueError(f"{name} must be an AssignResult, got {type(result).__name__}")
    if result.fg_mask.dim() != 2 or result.gt_index.shape != result.fg_mask.shape:
        raise ValueError(
            f"{name}.fg_mask and {name}.gt_index must have shape (B, A), got "
            f"{tuple(result.fg_mask.shape)} and {tuple(result.gt_index.shape)}"
        )
    return tuple(result.fg_mask.shape)


def _check_index(index: int, batch: int) -> None:
    if not isinstance(index, int) or not 0 <= index < batch:
        raise ValueError(f"index must be an image of the batch, an int in [0, {batch}), got {index!r}")


def _check_strides(strides: torch.Tensor, num_anchors: int) -> None:
    if not isinstance(strides, torch.Tensor) or strides.shape != (num_anchors,):
        shape = tuple(strides.shape) if isinstance(strides, torch.Tensor) else type(strides).__name__
        raise ValueError(f"strides must have shape (A,) = ({num_anchors},), got {shape}")


def _check_gts(gt_bboxes: torch.Tensor, gt_labels: torch.Tensor) -> int:
    check_boxes("gt_bboxes", gt_bboxes)
    if gt_bboxes.dim() != 2:
        raise ValueError(f"gt_bboxes must have shape (G, 4) (one image), got {tuple(gt_bboxes.shape)}")
    g = gt_bboxes.shape[0]
    if not isinstance(gt_labels, torch.Tensor) or gt_labels.shape != (g,):
        shape = tuple(gt_labels.shape) if isinstance(gt_labels, torch.Tensor) else type(gt_labels).__name__
        raise ValueError(f"gt_labels must have shape (G,) = ({g},), got {shape}")
    return g


def _per_anchor(name: str, values: torch.Tensor | None, index: int, shape: tuple[int, int]) -> torch.Tensor | None:
    """(A,) float values of image ``index`` from (B, A) or (A,) ``values`` (None stays None)."""
    if values is None:
        return None
    if not isinstance(values, torch.Tensor) or values.shape not in (shape, shape[1:]):
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{name} must have shape (B, A) = {shape} or (A,) = {shape[1:]}, got {got}")
    return (values[index] if values.dim() == 2 else values).detach().float().cpu()


# ----------------------------------------------------------------------------------------
# Tables and statistics
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GTAssignment:
    """One row of :func:`assignment_table`: what a ground-truth box won.

    Attributes:
        gt: the GT row. label: its class index; name: its class name (the index as text
        when no names are given). box: its ``xyxy`` box.
        per_level: foreground anchors won on each level, ``{stride: count}`` (every level).
        num_pos: all foreground anchors won.
        max_score: largest target score among them (0 when none).
        max_metric, max_overlap: largest alignment metric t and overlap (IoU of the predicted
            box) among them when those were given, else None; 0 when none were won.
    """

    gt: int
    label: int
    name: str
    box: tuple[float, float, float, float]
    per_level: dict[int, int]
    num_pos: int
    max_score: float
    max_metric: float | None
    max_overlap: float | None

    @property
    def unassigned(self) -> bool:
        """True when the GT won no anchor at all."""
        return self.num_pos == 0

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``per_level`` keys are ``"s<stride>"``) with ``unassigned``."""
        return {
            "gt": self.gt,
            "label": self.label,
            "name": self.name,
            "box": list(self.box),
            "per_level": {f"s{s}": n for s, n in self.per_level.items()},
            "num_pos": self.num_pos,
            "max_score": self.max_score,
            "max_metric": self.max_metric,
            "max_overlap": self.max_overlap,
            "unassigned": self.unassigned,
        }


def _levels(strides: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Sorted distinct strides (as ints) and the level of each anchor (A,) long."""
    values, level_of = torch.unique(strides.detach().cpu().float(), sorted=True, return_inverse=True)
    return [round(float(v)) for v in values], level_of


def _gt_counts(fg: torch.Tensor, gt_index: torch.Tensor, level_of: torch.Tensor, num_gt: int, num_levels: int):
    """(G, L) long: foreground anchors of each level per GT row."""
    counts = torch.zeros(num_gt * num_levels, dtype=torch.long)
    counts.index_add_(0, gt_index[fg] * num_levels + level_of[fg], torch.ones_like(gt_index[fg]))
    return counts.view(num_gt, num_levels)


def _gt_max(values: torch.Tensor, fg: torch.Tensor, gt_index: torch.Tensor, num_gt: int) -> torch.Tensor:
    """(G,) largest of ``values`` (A,) over each GT's foreground anchors (0 when none)."""
    return torch.zeros(num_gt).scatter_reduce(0, gt_index[fg], values[fg].float(), "amax")


def assignment_table(
    gt_bboxes: torch.Tensor,
    gt_labels: torch.Tensor,
    strides: torch.Tensor,
    result: AssignResult,
    metric: torch.Tensor | None = None,
    overlap: torch.Tensor | None = None,
    index: int = 0,
    class_names: Sequence[str] | None = None,
) -> list[GTAssignment]:
    """Per GT of image ``index``: anchors won per level, max target score, max t, max IoU.

    Args:
        gt_bboxes: (G, 4) xyxy, the image's GT rows (those the assigner saw, in order).
        gt_labels: (G,) long class indices.
        strides: (A,) stride of each anchor; its distinct values are the levels.
        result: the batched AssignResult; image ``index`` is tabulated.
        metric, overlap: (B, A) or (A,) alignment metric t and overlap of each anchor with
            its assigned GT (e.g. from :func:`alignment_of_positives`), or None.
        class_names: name of each class index.

    Returns:
        One :class:`GTAssignment` per GT row, in order; ``unassigned`` marks the GTs that won
        nothing. ValueError when the result gives an anchor to a GT row >= G.
    """
    batch, num_anchors = _check_result(result)
    _check_index(index, batch)
    _check_strides(strides, num_anchors)
    num_gt = _check_gts(gt_bboxes, gt_labels)
    metric = _per_anchor("metric", metric, index, (batch, num_anchors))
    overlap = _per_anchor("overlap", overlap, index, (batch, num_anchors))
    fg = result.fg_mask[index].detach().cpu()
    gt_index = result.gt_index[index].detach().cpu().long()
    if fg.any() and int(gt_index[fg].max()) >= num_gt:
        raise ValueError(
            f"result gives anchors of image {index} to GT row {int(gt_index[fg].max())}, "
            f"but gt_bboxes has only G = {num_gt} rows"
        )
    levels, level_of = _levels(strides)
    counts = _gt_counts(fg, gt_index, level_of, num_gt, len(levels))  # (G, L)
    max_score = _gt_max(result.scores[index].detach().cpu().amax(-1), fg, gt_index, num_gt)
    max_metric = None if metric is None else _gt_max(metric, fg, gt_index, num_gt).tolist()
    max_overlap = None if overlap is None else _gt_max(overlap, fg, gt_index, num_gt).tolist()
    labels = gt_labels.detach().cpu().long().tolist()
    if class_names is not None and labels and not 0 <= min(labels) <= max(labels) < len(class_names):
        raise ValueError(f"gt_labels must index class_names ({len(class_names)} names), got labels {labels}")
    boxes = gt_bboxes.detach().cpu().float().tolist()
    rows = []
    for g in range(num_gt):
        name = str(class_names[labels[g]]) if class_names is not None else str(labels[g])
        rows.append(
            GTAssignment(
                gt=g,
                label=labels[g],
                name=name,
                box=tuple(boxes[g]),
                per_level=dict(zip(levels, counts[g].tolist(), strict=True)),
                num_pos=int(counts[g].sum()),
                max_score=float(max_score[g]),
                max_metric=None if max_metric is None else max_metric[g],
                max_overlap=None if max_overlap is None else max_overlap[g],
            )
        )
    return rows


def format_assignment_table(rows: Sequence[GTAssignment]) -> str:
    """The rows of :func:`assignment_table` as a fixed-width text table (one line per GT).

    Columns: GT row, class, box, anchors won per level (``s8`` ...), total, max target score,
    max t, max IoU ("-" when not given); GTs that won nothing end in ``NO ANCHOR``.
    """
    if not rows:
        return "no ground truth"
    levels = list(rows[0].per_level)
    head = ["gt", "class", "box (xyxy)", *(f"s{s}" for s in levels), "pos", "score", "max t", "max IoU", ""]
    lines = []
    for r in rows:
        box = ",".join(f"{v:.0f}" for v in r.box)
        score = "-" if r.unassigned else f"{r.max_score:.3g}"
        t = "-" if r.max_metric is None or r.unassigned else f"{r.max_metric:.3g}"
        iou = "-" if r.max_overlap is None or r.unassigned else f"{r.max_overlap:.3f}"
        mark = "NO ANCHOR" if r.unassigned else ""
        lines.append(
            [
                str(r.gt),
                r.name,
                box,
                *(str(r.per_level[s]) for s in levels),
                str(r.num_pos),
                score,
                t,
                iou,
                mark,
            ]
        )
    widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head))]
    text = [
        " ".join(
            cell.rjust(w) if i != 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in [head, *lines]
    ]
    unassigned = sum(r.unassigned for r in rows)
    text.append(f"{len(rows)} GTs, {sum(r.num_pos for r in rows)} positives, {unassigned} GTs without an anchor")
    return "\n".join(text)


def alignment_of_positives(
    result: AssignResult,
    pred_scores: torch.Tensor,
    pred_bboxes: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 6.0,
    iou_type: str = "iou",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment metric t and the overlap of each foreground anchor with its assigned GT.

    overlap = IoU (``iou_type="iou"``) or CIoU clamped at 0 (``"ciou"``) between the anchor's
    predicted box and the assigned GT box (``result.bboxes``); t = s**alpha * overlap**beta,
    with s the predicted probability of the assigned class (TOOD's metric, as the
    task-aligned assigner computes it before normalisation).

    Args:
        result: AssignResult of a (B, A) batch.
        pred_scores: (B, A, C) probabilities the assigner saw; pred_bboxes: (B, A, 4) xyxy.

    Returns:
        (metric, overlap), each (B, A) float32, zero on background anchors.
    """
    shape = _check_result(result)
    if iou_type not in _IOU_TYPES:
        raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
    if not isinstance(pred_scores, torch.Tensor) or pred_scores.dim() != 3 or pred_scores.shape[:2] != shape:
        got = tuple(pred_scores.shape) if isinstance(pred_scores, torch.Tensor) else type(pred_scores).__name__
        raise ValueError(f"pred_scores must have shape (B, A, C) with (B, A) = {shape}, got {got}")
    check_boxes("pred_bboxes", pred_bboxes)
    if pred_bboxes.shape != (*shape, 4):
        raise ValueError(f"pred_bboxes must have shape (B, A, 4) = {(*shape, 4)}, got {tuple(pred_bboxes.shape)}")
    fg = result.fg_mask
    metric = torch.zeros(shape, dtype=torch.float32, device=fg.device)
    overlap = torch.zeros_like(metric)
    iou = box_iou(pred_bboxes.detach()[fg].float(), result.bboxes[fg].float(), mode=iou_type, aligned=True)  # (P,)
    iou = iou.clamp(min=0)
    score = pred_scores.detach()[fg].float().gather(1, result.labels[fg][:, None]).squeeze(1)  # (P,)
    overlap[fg] = iou
    metric[fg] = (score.double().pow(alpha) * iou.double().pow(beta)).float()
    return metric, overlap


def assignment_differences(result_a: AssignResult, result_b: AssignResult, index: int = 0) -> torch.Tensor:
    """(A,) bool: the anchors of image ``index`` that two assignments treat differently —
    foreground in one and background in the other, or foreground in both for different GTs."""
    shape = _check_result(result_a, "result_a")
    if _check_result(result_b, "result_b") != shape:
        raise ValueError(
            f"result_a and result_b must have the same (B, A), got {shape} and {tuple(result_b.fg_mask.shape)}"
        )
    _check_index(index, shape[0])
    fg_a, fg_b = result_a.fg_mask[index], result_b.fg_mask[index]
    other_gt = fg_a & fg_b & (result_a.gt_index[index] != result_b.gt_index[index])
    return (fg_a != fg_b) | other_gt


def assignment_summary(result: AssignResult, strides: torch.Tensor, gt_mask: torch.Tensor) -> dict[str, float]:
    """Positives per GT over every valid GT of the batch, overall and per level.

    Keys: ``num_gt``; ``pos_per_gt_mean``, ``pos_per_gt_min`` and ``gt_without_pos`` (the
    share of GTs that won no anchor), and the same three per level as ``s<stride>/...``
    (anchors won on that level; a GT usually wins on one or two levels only). Empty when the
    batch has no valid GT.

    Args:
        result: AssignResult (B, A); strides: (A,); gt_mask: (B, G) bool, the valid GT rows.
    """
    batch, num_anchors = _check_result(result)
    _check_strides(strides, num_anchors)
    if not isinstance(gt_mask, torch.Tensor) or gt_mask.dtype != torch.bool or gt_mask.dim() != 2:
        raise ValueError(f"gt_mask must be a bool tensor of shape (B, G), got {getattr(gt_mask, 'shape', gt_mask)}")
    if gt_mask.shape[0] != batch:
        raise ValueError(f"gt_mask must have shape (B, G) with B = {batch}, got {tuple(gt_mask.shape)}")
    num_gt = gt_mask.shape[1]
    valid = gt_mask.detach().cpu().reshape(-1)
    if not valid.any():
        return {}
    levels, level_of = _levels(strides)
    fg = result.fg_mask.detach().cpu().reshape(-1)
    gt_flat = (torch.arange(batch)[:, None] * num_gt + result.gt_index.detach().cpu().long()).reshape(-1)
    counts = _gt_counts(fg, gt_flat, level_of.repeat(batch), batch * num_gt, len(levels))[valid]  # (V, L)
    columns = [("", counts.sum(1))] + [(f"s{s}/", counts[:, k]) for k, s in enumerate(levels)]
    stats = {"num_gt": float(valid.sum())}
    for prefix, per_gt in columns:
        stats[f"{prefix}pos_per_gt_mean"] = float(per_gt.float().mean())
        stats[f"{prefix}pos_per_gt_min"] = float(per_gt.min())
        stats[f"{prefix}gt_without_pos"] = float((per_gt == 0).float().mean())
    return stats


# ----------------------------------------------------------------------------------------
# Drawings
