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

from .draw import DIFF_COLOUR, GT_COLOURS, draw_assignment, draw_assignment_comparison, render
from .table import (
    GTAssignment,
    alignment_of_positives,
    assignment_differences,
    assignment_summary,
    assignment_table,
    format_assignment_table,
)

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
