"""See an assignment: which anchors each ground truth wins, on which level, and why.

Tables and statistics (torch only)::

    res = assigner(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask, strides=strides)
    metric, overlap = alignment_of_positives(res, pred_scores, pred_bboxes, alpha=1.0, beta=6.0)
    rows = assignment_table(gt_bboxes[0], gt_labels[0], strides, res, metric, overlap, index=0)
    print(format_assignment_table(rows))      # per GT: anchors won per level, max score / t / IoU
    assignment_summary(res, strides, gt_mask)  # positives per GT (mean, min, share with none) per level

Drawings (matplotlib, imported inside the drawing functions only; the ``eval`` extra)::

    fig = draw_assignment(image, gt_bboxes[0], gt_labels[0], anchor_points, strides, res, metric, overlap)
    fig = draw_assignment_comparison(image, gt_bboxes[0], gt_labels[0], anchor_points, strides,
                                     res_a, res_b, names=("TAL", "ATSS"))
    fig.savefig("assign.png")                 # or render(fig) -> (H, W, 3) uint8 array

``draw_assignment`` makes one panel per pyramid level (anchors grouped by stride): the image,
every GT box in its colour (:data:`GT_COLOURS`, cycled by GT row; dashed when the GT won no
anchor), each foreground anchor of the level as a dot in its GT's colour whose diameter grows
with its target score (0.3 to 0.9 of the anchor spacing), and a side table per GT.
``draw_assignment_comparison`` puts two assignments of the same image one above the other and
crosses out (black ``x``, :data:`DIFF_COLOUR`) in both the anchors where they disagree
(:func:`assignment_differences`).

Every function takes one image of a batched :class:`~detlosses.assigners.AssignResult`
(``index``) and that image's valid GT rows (``gt_bboxes (G, 4)``, ``gt_labels (G,)``; padding
rows of the batch may be left out, as the assigners never give them anchors). Coordinates are
those the assigner saw (network-input pixels); pass the image at that size.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._validation import check_boxes
from .assigners import AssignResult
from .boxes import box_iou

if TYPE_CHECKING:  # matplotlib and numpy are needed by the drawing functions only
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DIFF_COLOUR",
    "GT_COLOURS",
    "GTAssignment",
    "alignment_of_positives",
    "assignment_differences",
    "assignment_summary",
    "assignment_table",
    "draw_assignment",
    "draw_assignment_comparison",
    "format_assignment_table",
    "render",
]

#: RGB colour of GT row ``j`` is ``GT_COLOURS[j % len(GT_COLOURS)]`` (matplotlib's tab10 without grey).
GT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
)
#: RGB colour of the cross marking an anchor two assignments disagree on.
DIFF_COLOUR: tuple[int, int, int] = (0, 0, 0)

_IOU_TYPES = ("iou", "ciou")
_DOT_RANGE = (0.3, 0.9)  # dot diameter in anchor spacings at target score 0 and 1
_MIN_DOT_PX = 4.0
_MAX_CROSS_PX = 24.0
_TABLE_FONT = 7.0  # points, monospace
_TITLE_IN = 0.3  # inches above each panel for its title
_GAP_IN = 0.1


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
# ----------------------------------------------------------------------------------------
def _image_array(image: Any) -> np.ndarray:
    """(H, W, 3) array for imshow from a (3, H, W) / (H, W, 3) tensor, array or PIL image."""
    import numpy as np

    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (3, H, W), (H, W, 3) or (H, W), got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    return array


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in colour)


def _gt_colour(g: int) -> tuple[float, float, float]:
    return _rgb(GT_COLOURS[g % len(GT_COLOURS)])


@dataclass
class _Grid:
    """Panel geometry in inches: rows x columns of image panels, a text column on the right."""

    rows: int
    cols: int
    panel_w: float
    panel_h: float
    text_w: float
    width: float
    height: float

    @classmethod
    def make(cls, rows: int, cols: int, image_hw: tuple[int, int], panel_size: float, text: str) -> _Grid:
        h, w = image_hw
        panel_w, panel_h = (panel_size, panel_size * h / w) if w >= h else (panel_size * w / h, panel_size)
        lines = text.splitlines() or [""]
        char_w, line_h = 0.65 * _TABLE_FONT / 72, 1.2 * _TABLE_FONT / 72  # DejaVu Sans Mono: 0.6 em + hinting
        text_w = max(len(line) for line in lines) * char_w + 2 * _GAP_IN
        width = cols * (panel_w + _GAP_IN) + _GAP_IN + text_w
        height = max(rows * (panel_h + _TITLE_IN) + 2 * _GAP_IN, len(lines) * line_h + 2 * _GAP_IN)
        return cls(rows, cols, panel_w, panel_h, text_w, width, height)

    def panel(self, row: int, col: int) -> list[float]:
        left = _GAP_IN + col * (self.panel_w + _GAP_IN)
        top = _GAP_IN + row * (self.panel_h + _TITLE_IN) + _TITLE_IN
        return [
            left / self.width,
            1 - (top + self.panel_h) / self.height,
            self.panel_w / self.width,
            self.panel_h / self.height,
        ]

    def text(self) -> list[float]:
        left = self.cols * (self.panel_w + _GAP_IN) + _GAP_IN
        return [left / self.width, _GAP_IN / self.height, self.text_w / self.width, 1 - 2 * _GAP_IN / self.height]


def _figure(grid: _Grid, dpi: float) -> Figure:
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend state

    return Figure(figsize=(grid.width, grid.height), dpi=dpi, facecolor="white")


def _dot_sizes(score: torch.Tensor, stride: int, axes_px: float, image_w: int, dpi: float) -> list[float]:
    """Marker areas (points^2): diameter from 0.3 to 0.9 anchor spacings with the score."""
    spacing = stride * axes_px / image_w  # pixels between neighbouring anchors of the level
    low, high = _DOT_RANGE
    diameter = (spacing * (low + (high - low) * score.clamp(0, 1))).clamp(min=_MIN_DOT_PX)  # pixels
    return (diameter * 72 / dpi).square().tolist()


def _draw_level(
    ax: Axes,
    image: np.ndarray,
    gt_bboxes: torch.Tensor,
    unassigned: Sequence[bool],
    points: torch.Tensor,
    fg: torch.Tensor,
    gt_index: torch.Tensor,
    score: torch.Tensor,
    stride: int,
    dpi: float,
    show_anchors: bool,
) -> None:
    """One level's panel: image, GT boxes, the level's anchors, its foreground dots."""
    from matplotlib.patches import Rectangle

    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest", zorder=0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    for g, (x1, y1, x2, y2) in enumerate(gt_bboxes.tolist()):
        style = "--" if unassigned[g] else "-"
        ax.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=_gt_colour(g), lw=1.5, ls=style, zorder=2)
        )
        ax.text(
            x1,
            y1,
            f" {g}",
            color="white",
            fontsize=6,
            va="bottom",
            zorder=4,
            bbox={"facecolor": _gt_colour(g), "edgecolor": "none", "pad": 0.5},
        )
    if show_anchors:
        ax.scatter(points[:, 0], points[:, 1], s=0.5, c=[(0.85, 0.85, 0.85)], marker=".", lw=0, zorder=1)
    if fg.any():
        axes_px = ax.get_position().width * ax.figure.get_figwidth() * dpi
        colours = [_gt_colour(g) for g in gt_index[fg].tolist()]
        sizes = _dot_sizes(score[fg], stride, axes_px, w, dpi)
        ax.scatter(points[fg, 0], points[fg, 1], s=sizes, c=colours, marker="o", edgecolors="none", zorder=3)


def _panels(
    fig: Figure,
    grid: _Grid,
    row: int,
    image: np.ndarray,
    gt_bboxes: torch.Tensor,
    anchor_points: torch.Tensor,
    strides: torch.Tensor,
    result: AssignResult,
    index: int,
    num_gt: int,
    label: str,
    show_anchors: bool,
) -> list[Axes]:
    """One row of level panels for ``result``; returns their axes (finest level first)."""
    levels, level_of = _levels(strides)
    fg = result.fg_mask[index].detach().cpu()
    gt_index = result.gt_index[index].detach().cpu().long()
    score = result.scores[index].detach().cpu().float().amax(-1)  # (A,) target score at the assigned class
    won = torch.zeros(num_gt, dtype=torch.long).index_add_(0, gt_index[fg], torch.ones_like(gt_index[fg]))
    unassigned = (won == 0).tolist()
    points = anchor_points.detach().cpu().float()
    axes = []
    for k, stride in enumerate(levels):
        on_level = level_of == k
        ax = fig.add_axes(grid.panel(row, k))
        _draw_level(
            ax,
            image,
            gt_bboxes,
            unassigned,
            points[on_level],
            fg[on_level],
            gt_index[on_level],
            score[on_level],
            stride,
            fig.dpi,
            show_anchors,
        )
        ax.set_title(f"{label}s{stride}: {int(fg[on_level].sum())} positives", fontsize=8)
        axes.append(ax)
    return axes


def _with_title(title: str | None, table: str) -> str:
    """``title`` wrapped to the table's width (at least 40 characters) above ``table``."""
    if title is None:
        return table
    width = max(40, *(len(line) for line in table.splitlines()))
    return "\n".join([*textwrap.wrap(title, width), "", table])


def _side_text(fig: Figure, grid: _Grid, text: str) -> None:
    ax = fig.add_axes(grid.text())
    ax.set_axis_off()
    ax.text(0, 1, text, family="monospace", fontsize=_TABLE_FONT, va="top", ha="left", transform=ax.transAxes)


def _check_drawing_inputs(
    gt_bboxes: torch.Tensor,
    gt_labels: torch.Tensor,
    anchor_points: torch.Tensor,
    strides: torch.Tensor,
    num_anchors: int,
) -> None:
    _check_gts(gt_bboxes, gt_labels)
    if not isinstance(anchor_points, torch.Tensor) or anchor_points.shape != (num_anchors, 2):
        shape = tuple(anchor_points.shape) if isinstance(anchor_points, torch.Tensor) else type(anchor_points).__name__
        raise ValueError(f"anchor_points must have shape (A, 2) = ({num_anchors}, 2), got {shape}")
    _check_strides(strides, num_anchors)


def draw_assignment(
    image: Any,
    gt_bboxes: torch.Tensor,
    gt_labels: torch.Tensor,
    anchor_points: torch.Tensor,
    strides: torch.Tensor,
    result: AssignResult,
    metric: torch.Tensor | None = None,
    overlap: torch.Tensor | None = None,
    index: int = 0,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    panel_size: float = 3.0,
    dpi: float = 100,
    show_anchors: bool = True,
) -> Figure:
    """One panel per pyramid level of the assignment of image ``index``, and the per-GT table.

    Args:
        image: the image the assigner saw, (3, H, W) tensor in [0, 1] or uint8, or (H, W, 3)
            array / PIL image; boxes and anchors are in its pixels.
        gt_bboxes: (G, 4) xyxy; gt_labels: (G,) — the image's GT rows.
        anchor_points: (A, 2) anchor centres; strides: (A,) their strides (one panel per value).
        result: the batched AssignResult; metric, overlap: see :func:`assignment_table`.
        class_names: names of the class indices, for the table.
        title: figure title (default none).
        panel_size: longer side of a panel in inches; dpi: figure resolution.
        show_anchors: mark every anchor of a level with a faint dot.

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot): ``fig.savefig(path)`` or
        :func:`render`. ``fig.axes[k]`` is the panel of the k-th smallest stride; the panels
        show the image at its own pixel coordinates (``ax.transData`` maps them).
    """
    _, num_anchors = _check_result(result)
    _check_drawing_inputs(gt_bboxes, gt_labels, anchor_points, strides, num_anchors)
    rows = assignment_table(gt_bboxes, gt_labels, strides, result, metric, overlap, index, class_names)
    text = _with_title(title, format_assignment_table(rows))
    array = _image_array(image)
    levels, _ = _levels(strides)
    grid = _Grid.make(1, len(levels), array.shape[:2], panel_size, text)
    fig = _figure(grid, dpi)
    _panels(
        fig,
        grid,
        0,
        array,
        gt_bboxes.detach().cpu().float(),
        anchor_points,
        strides,
        result,
        index,
        len(rows),
        "",
        show_anchors,
    )
    _side_text(fig, grid, text)
    return fig


def draw_assignment_comparison(
    image: Any,
    gt_bboxes: torch.Tensor,
    gt_labels: torch.Tensor,
    anchor_points: torch.Tensor,
    strides: torch.Tensor,
    result_a: AssignResult,
    result_b: AssignResult,
    names: tuple[str, str] = ("A", "B"),
    index: int = 0,
    class_names: Sequence[str] | None = None,
    quality: Mapping[str, tuple[torch.Tensor | None, torch.Tensor | None]] | None = None,
    panel_size: float = 3.0,
    dpi: float = 100,
    show_anchors: bool = True,
) -> Figure:
    """Two assignments of the same image, one row of level panels each (``result_a`` on top),
    with every anchor they disagree on (:func:`assignment_differences`) crossed out in
    :data:`DIFF_COLOUR` in both rows, and both per-GT tables at the side.

    Arguments as :func:`draw_assignment`; ``names`` label the two rows and tables, and
    ``quality`` optionally maps each name to its ``(metric, overlap)`` for the tables.
    ``fig.axes[r * L + k]`` is row r's panel of the k-th smallest stride (L levels).
    """
    _, num_anchors = _check_result(result_a, "result_a")
    _check_drawing_inputs(gt_bboxes, gt_labels, anchor_points, strides, num_anchors)
    differ = assignment_differences(result_a, result_b, index).cpu()  # (A,)
    quality = quality or {}
    texts = []
    for name, result in zip(names, (result_a, result_b), strict=True):
        metric, overlap = quality.get(name, (None, None))
        rows = assignment_table(gt_bboxes, gt_labels, strides, result, metric, overlap, index, class_names)
        texts.append(f"{name}\n{format_assignment_table(rows)}")
    text = "\n\n".join([*texts, f"{int(differ.sum())} anchors assigned differently (x)"])
    array = _image_array(image)
    levels, level_of = _levels(strides)
    grid = _Grid.make(2, len(levels), array.shape[:2], panel_size, text)
    fig = _figure(grid, dpi)
    points = anchor_points.detach().cpu().float()
    boxes = gt_bboxes.detach().cpu().float()
    for row, (name, result) in enumerate(zip(names, (result_a, result_b), strict=True)):
        axes = _panels(
            fig, grid, row, array, boxes, anchor_points, strides, result, index, len(boxes), f"{name} · ", show_anchors
        )
        for k, ax in enumerate(axes):
            marked = differ & (level_of == k)
            if marked.any():
                axes_px = ax.get_position().width * fig.get_figwidth() * dpi
                size = (
                    min(max(0.6 * levels[k] * axes_px / array.shape[1], 2 * _MIN_DOT_PX), _MAX_CROSS_PX) * 72 / dpi
                ) ** 2
                ax.scatter(
                    points[marked, 0],
                    points[marked, 1],
                    s=size,
                    c=[_rgb(DIFF_COLOUR)],
                    marker="x",
                    linewidths=1.5,
                    antialiased=False,
                    zorder=5,
                )
    _side_text(fig, grid, text)
    return fig


def render(fig: Figure) -> np.ndarray:
    """The figure drawn by matplotlib's Agg backend: (H, W, 3) uint8, H = height * dpi."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
