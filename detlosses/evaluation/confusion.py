"""Confusion matrix of box detections and per-class F1-optimal score thresholds (NumPy).

Confusion matrix, at an IoU threshold ``iou_thr`` and a score threshold ``score_thr``: in each
image the detections scoring >= score_thr are paired with the (non-crowd) ground truth of any
class, pairs of IoU >= iou_thr taken in decreasing IoU (ties: the higher-scored detection,
then the earlier detection and box of the file), each box and each detection at most once.

* a pair adds 1 to ``matrix[ground-truth class, predicted class]`` (the diagonal is correct);
* a box left alone adds 1 to ``matrix[its class, background]`` (missed);
* a detection left alone adds 1 to ``matrix[background, its class]`` (a false detection),
  unless it lies in a crowd region (intersection over its own area >= iou_thr), which
  COCO ignores, and so does the matrix.

Rows are ground truth, columns predictions, in the order of the dataset's categories, with
"background" last; ``matrix[background, background]`` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TIDEErrors, box_iou_xywh
from .inputs import _category_names

__all__ = ["BACKGROUND", "ConfusionMatrix", "best_f1_thresholds", "confusion_matrix"]

BACKGROUND = "background"


@dataclass
class ConfusionMatrix:
    """Result of :func:`confusion_matrix`.

    Attributes:
        classes: category names then "background" (K + 1).
        category_ids: the K category ids, in the same order.
        matrix: (K + 1, K + 1) int64 counts; rows ground truth, columns predictions.
        iou_thr, score_thr: the thresholds used.
    """

    classes: list[str]
    category_ids: list
    matrix: np.ndarray
    iou_thr: float
    score_thr: float

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "matrix": self.matrix.tolist(),
            "iou_thr": self.iou_thr,
            "score_thr": self.score_thr,
        }


def confusion_matrix(
    dataset: dict, detections: list[dict], iou_thr: float = 0.5, score_thr: float = 0.25
) -> ConfusionMatrix:
    """The (K + 1, K + 1) confusion matrix of checked ``detections`` on checked ``dataset``.

    Args:
        dataset: checked COCO ground truth (see :func:`load_ground_truth`).
        detections: checked result entries (see :func:`validate_predictions`).
        iou_thr: IoU from which a detection and a box pair up.
        score_thr: detections scoring below it are not counted.
    """
    if not 0 < iou_thr <= 1:
        raise ValueError(f"iou_thr must be in (0, 1], got {iou_thr!r}")
    categories = dataset["categories"]
    column = {category["id"]: k for k, category in enumerate(categories)}
    background = len(categories)
    image_pos = {image["id"]: i for i, image in enumerate(dataset["images"])}
    anns = dataset["annotations"]
    gt_img = np.array([image_pos[a["image_id"]] for a in anns], dtype=np.int64)
    gt_cls = np.array([column[a["category_id"]] for a in anns], dtype=np.int64)
    gt_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)

    kept = [d for d in detections if d["score"] >= score_thr]
    det_img = np.array([image_pos[d["image_id"]] for d in kept], dtype=np.int64)
    det_cls = np.array([column[d["category_id"]] for d in kept], dtype=np.int64)
    det_box = np.array([d["bbox"] for d in kept], dtype=np.float64).reshape(-1, 4)
    det_score = np.array([d["score"] for d in kept], dtype=np.float64)

    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    gt_order = np.argsort(gt_img, kind="stable")
    gt_starts = np.searchsorted(gt_img[gt_order], np.arange(len(image_pos) + 1))
    det_order = np.argsort(det_img, kind="stable")
    det_starts = np.searchsorted(det_img[det_order], np.arange(len(image_pos) + 1))
    for i in range(len(image_pos)):
        in_image = gt_order[gt_starts[i] : gt_starts[i + 1]]
        gts, crowds = in_image[~gt_crowd[in_image]], in_image[gt_crowd[in_image]]
        dets = det_order[det_starts[i] : det_starts[i + 1]]
        gt_matched = np.zeros(len(gts), bool)
        det_matched = np.zeros(len(dets), bool)
        if len(gts) and len(dets):
            iou = box_iou_xywh(det_box[dets], gt_box[gts])  # (D, G)
            d_idx, g_idx = np.nonzero(iou >= iou_thr)
            # decreasing IoU, then higher score, then file order (d_idx, g_idx ascending)
            for p in np.lexsort((g_idx, d_idx, -det_score[dets][d_idx], -iou[d_idx, g_idx])):
                d, g = d_idx[p], g_idx[p]
                if not (det_matched[d] or gt_matched[g]):
                    det_matched[d], gt_matched[g] = True, True
                    matrix[gt_cls[gts[g]], det_cls[dets[d]]] += 1
        np.add.at(matrix[:, background], gt_cls[gts[~gt_matched]], 1)
        alone = dets[~det_matched]
        if len(crowds) and len(alone):
            alone = alone[~(box_iou_xywh(det_box[alone], gt_box[crowds], crowd=True) >= iou_thr).any(axis=1)]
        np.add.at(matrix[background], det_cls[alone], 1)
    return ConfusionMatrix(
        classes=[*_category_names(categories), BACKGROUND],
        category_ids=[category["id"] for category in categories],
        matrix=matrix,
        iou_thr=iou_thr,
        score_thr=score_thr,
    )


def best_f1_thresholds(dataset: dict, detections: list[dict], errors: TIDEErrors) -> dict[str, dict]:
    """Per class, the score threshold that maximises F1 = 2PR / (P + R), with P and R there.

    Detections are matched as in :func:`tide_errors` (``errors`` is its result on the same
    inputs: IoU >= its ``pos_thr``, the ``max_dets`` best per image, crowd-ignored ones left
    out). Keeping the detections scoring >= t gives P(t) = TP / (TP + FP) and R(t) = TP / number
    of (non-crowd) boxes of the class; t runs over the detection scores, and of equal F1 the
    highest t wins. Classes without ground truth are left out; a class without a true positive
    gets ``score_thr`` None and zeros.

    Returns:
        {category name: {"score_thr", "precision", "recall", "f1"}}.
    """
    names = _category_names(dataset["categories"])
    ids = [category["id"] for category in dataset["categories"]]
    gt_ids = [a["category_id"] for a in dataset["annotations"] if not a.get("iscrowd", 0)]
    num_gt = dict(zip(*np.unique(np.array(gt_ids, dtype=object), return_counts=True), strict=True)) if gt_ids else {}
    det_cls = np.array([detections[i]["category_id"] for i in errors.det_index.tolist()], dtype=object)
    det_score = np.array([detections[i]["score"] for i in errors.det_index.tolist()], dtype=np.float64)
    out = {}
    for name, cid in zip(names, ids, strict=True):
        if cid not in num_gt:
            continue
        mine = det_cls == cid
        order = np.argsort(-det_score[mine], kind="stable")
        scores, tp = det_score[mine][order], errors.det_tp[mine][order]
        true = np.cumsum(tp)
        last = np.flatnonzero(np.append(np.diff(scores) != 0, True))  # end of each run of equal scores
        if not len(scores) or true[-1] == 0:
            out[name] = {"score_thr": None, "precision": 0.0, "recall": 0.0, "f1": 0.0}
            continue
        precision = true[last] / (last + 1)
        recall = true[last] / num_gt[cid]
        f1 = np.divide(
            2 * precision * recall, precision + recall, out=np.zeros(len(last)), where=precision + recall > 0
        )
        best = int(np.argmax(f1))
        out[name] = {
            "score_thr": float(scores[last[best]]),
            "precision": float(precision[best]),
            "recall": float(recall[best]),
            "f1": float(f1[best]),
        }
    return out
