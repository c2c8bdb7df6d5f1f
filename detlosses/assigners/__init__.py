"""Label assigners for dense detectors: task-aligned (TOOD / PP-YOLOE / YOLOv8) and ATSS.

Both are registered in ``ASSIGNERS`` and called the same way::

    res = assigner(pred_scores, pred_bboxes, anchor_points,
                   gt_labels, gt_bboxes, gt_mask, strides=None)

and return an :class:`AssignResult` (labels, bboxes, scores, fg_mask, gt_index).
"""

from .assign_result import AssignResult
from .atss import ATSSAssigner
from .task_aligned import TaskAlignedAssigner

__all__ = ["ATSSAssigner", "AssignResult", "TaskAlignedAssigner"]
