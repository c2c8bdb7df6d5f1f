"""TIDE's error breakdown of box detections (Bolya et al., "TIDE: A General Toolbox for
Identifying Object Detection Errors", ECCV 2020), with the definitions of the ``tidecv``
package (v1.0.1) and its default thresholds, computed with NumPy.

At a foreground IoU of ``pos_thr`` (0.5) every image's detections are sorted by score, cut to
``max_dets`` (100, over all classes) and matched greedily, each to the unmatched same-class
ground truth of highest IoU if that IoU >= pos_thr. An unmatched detection that covers a crowd
region of its class by more than pos_thr (intersection over its own area) is ignored. Each
other unmatched detection gets exactly one error, tested in this order:

* bkg — the image has no (non-crowd) ground truth;
* loc — its best same-class IoU is in [bg_thr, pos_thr] (bg_thr = 0.1);
* cls — it overlaps a ground truth of another class with IoU >= pos_thr;
* dupe — it overlaps an already matched same-class ground truth with IoU >= pos_thr;
* bkg — its best IoU with any ground truth is <= bg_thr;
* both — anything else (wrong class and badly localised).

A ground truth left unmatched is a false negative; it is a "miss" unless a loc or cls error
points at it. AP is TIDE's AP50: per class, precision made monotone and sampled at the 101
recall points 0, 0.01, ..., 1 (the nearest recall at or above), times 100, averaged over the
classes that have ground truth or detections. The dAP of an error type is the AP gained by
fixing all errors of that type alone (clamped at 0): a loc / cls error becomes a true positive
of the ground truth it points at — only the highest-scored one per ground truth, the others
and those pointing at matched ground truth are removed; dupe, bkg and both detections are
removed; a miss is removed from the ground-truth count. The special errors are the AP gained
by scoring every false positive below every true positive (fp), and by dropping every false
negative from the ground-truth count (fn). Tied scores are broken in tidecv's order, so the
figures are tidecv's own, not just close to them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ERROR_NAMES", "SPECIAL_ERROR_NAMES", "TIDEErrors", "tide_errors"]

ERROR_NAMES = ("cls", "loc", "both", "dupe", "bkg", "miss")
SPECIAL_ERROR_NAMES = ("fp", "fn")
_RECALL_POINTS = np.arange(101) / 100
# error codes of unmatched detections
_NONE, _CLS, _LOC, _BOTH, _DUPE, _BKG = range(6)
_CODE = {"cls": _CLS, "loc": _LOC, "both": _BOTH, "dupe": _DUPE, "bkg": _BKG}


@dataclass
class TIDEErrors:
    """Result of :func:`tide_errors` (AP figures in points, 0-100, as tidecv prints them).

    Attributes:
        ap: TIDE's AP at ``pos_thr``.
        main: dAP of each of :data:`ERROR_NAMES`.
        special: dAP of "fp" and "fn".
        counts: number of errors of each main type.
        pos_thr, bg_thr, max_dets: the settings.
        det_index / det_tp: index into the checked detections of every detection evaluated
            (non-ignored, in the top max_dets of its image) and whether it is a true positive
            at pos_thr; used for the per-class F1-optimal thresholds.
    """

    ap: float
    main: dict[str, float]
    special: dict[str, float]
    counts: dict[str, int]
    pos_thr: float
    bg_thr: float
    max_dets: int
    det_index: np.ndarray = field(repr=False)
    det_tp: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "main": dict(self.main),
            "special": dict(self.special),
            "counts": dict(self.counts),
            "ap": self.ap,
            "pos_thr": self.pos_thr,
            "bg_thr": self.bg_thr,
            "max_dets": self.max_dets,
        }

    def format(self) -> str:
        """Two text tables like tidecv's summary: main and special dAP."""
        main = "  ".join(f"{name:>6}" for name in ERROR_NAMES)
        special = "  ".join(f"{name:>6}" for name in SPECIAL_ERROR_NAMES)
        return "\n".join(
            [
                f"TIDE errors (bbox AP @ {round(self.pos_thr * 100)}: {self.ap:.2f}; dAP in AP points)",
                f"  main     {main}",
                "  dAP      " + "  ".join(f"{self.main[name]:6.2f}" for name in ERROR_NAMES),
                "  count    " + "  ".join(f"{self.counts[name]:6d}" for name in ERROR_NAMES),
                f"  special  {special}",
                "  dAP      " + "  ".join(f"{self.special[name]:6.2f}" for name in SPECIAL_ERROR_NAMES),
            ]
        )


def box_iou_xywh(boxes: np.ndarray, gt: np.ndarray, crowd: bool = False) -> np.ndarray:
    """(D, 4), (G, 4) [x, y, w, h] -> (D, G) IoU, as pycocotools' ``maskUtils.iou`` computes it
    (with ``crowd`` the union is the detection's own area)."""
    x1 = np.maximum(boxes[:, None, 0], gt[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], gt[None, :, 1])
    w = np.minimum(boxes[:, None, 0] + boxes[:, None, 2], gt[None, :, 0] + gt[None, :, 2]) - x1
    h = np.minimum(boxes[:, None, 1] + boxes[:, None, 3], gt[None, :, 1] + gt[None, :, 3]) - y1
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    det_area = (boxes[:, 2] * boxes[:, 3])[:, None]
    union = det_area if crowd else det_area + (gt[:, 2] * gt[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Start offsets of the runs of equal values in sorted ``keys`` plus the end."""
    return np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1, [len(keys)]])


def _class_ap(tp: np.ndarray, num_gt: int) -> float:
    """tidecv's APDataObject.get_ap on detections already in its order (score desc, stable)."""
    if num_gt == 0:
        return 0.0
    true = np.cumsum(tp)
    precision = true / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(true / num_gt, _RECALL_POINTS, side="left")
    sampled = np.where(index < len(tp), precision[np.minimum(index, len(tp) - 1)], 0.0) if len(tp) else 0
    return float(np.sum(sampled)) / len(_RECALL_POINTS) * 100


def _mean_ap(classes: np.ndarray, scores: np.ndarray, tp: np.ndarray, seq: np.ndarray, num_gt: dict) -> float:
    """Mean of the per-class AP over the classes with detections or ground truth; detections are
    ranked by score, ties by ``seq`` (the order tidecv pushes them in)."""
    order = np.lexsort((seq, -scores, classes))
    classes, tp = classes[order], tp[order]
    starts = _group_starts(classes) if len(classes) else np.zeros(1, np.int64)
    with_dets = {int(classes[s]): tp[s:e] for s, e in itertools.pairwise(starts)}
    aps = [_class_ap(with_dets.get(k, np.zeros(0, bool)), n) for k, n in num_gt.items() if n > 0 or k in with_dets]
    aps += [0.0 for k in with_dets if k not in num_gt]
    return sum(aps) / len(aps) if aps else 0.0


def tide_errors(
    dataset: dict, detections: list[dict], pos_thr: float = 0.5, bg_thr: float = 0.1, max_dets: int = 100
) -> TIDEErrors:
    """TIDE's main and special error dAPs of ``detections`` on ``dataset``.

    Args:
        dataset: checked COCO ground truth (see :func:`load_ground_truth`).
        detections: checked result entries (see :func:`validate_predictions`).
        pos_thr: foreground IoU threshold (tidecv's ``pos_threshold``).
        bg_thr: background IoU threshold (tidecv's ``background_threshold``).
        max_dets: detections kept per image, by score.

    Returns:
        TIDEErrors (figures in AP points, like tidecv's summary).
    """
    image_pos = {image["id"]: i for i, image in enumerate(dataset["images"])}
    anns = dataset["annotations"]
    gt_img = np.array([image_pos[a["image_id"]] for a in anns], dtype=np.int64)
    gt_cls = np.array([a["category_id"] for a in anns], dtype=np.int64)
    gt_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    gt_order = np.argsort(gt_img, kind="stable")  # file order within an image, as tidecv keeps it
    gt_starts = np.searchsorted(gt_img[gt_order], np.arange(len(image_pos) + 1))

    n_all = len(detections)
    det_img = np.array([image_pos[d["image_id"]] for d in detections], dtype=np.int64)
    det_cls = np.array([d["category_id"] for d in detections], dtype=np.int64)
    det_box = np.array([d["bbox"] for d in detections], dtype=np.float64).reshape(-1, 4)
    det_score = np.array([d["score"] for d in detections], dtype=np.float64)
    # visit order: image order, then score descending, file order on ties (tidecv's stable sort)
    visit = np.lexsort((np.arange(n_all), -det_score, det_img))
    sorted_img = det_img[visit]
    det_starts = np.searchsorted(sorted_img, np.arange(len(image_pos) + 1))
    rank = np.arange(n_all) - det_starts[sorted_img]
    visit = visit[rank < max_dets]  # (N,) indices into detections, in visit order
    det_starts = np.searchsorted(det_img[visit], np.arange(len(image_pos) + 1))

    n = len(visit)
    is_tp = np.zeros(n, bool)
    ignored = np.zeros(n, bool)
    code = np.zeros(n, np.int64)  # error code per visited detection
    target = np.full(n, -1, np.int64)  # annotation index a loc / cls error points at
    gt_used = np.zeros(len(anns), bool)
    gt_usable = np.zeros(len(anns), bool)

    for i in range(len(image_pos)):
        d0, d1 = det_starts[i], det_starts[i + 1]
        if d0 == d1:
            continue
        in_image = gt_order[gt_starts[i] : gt_starts[i + 1]]
        gts, crowds = in_image[~gt_crowd[in_image]], in_image[gt_crowd[in_image]]
        dets = visit[d0:d1]
        boxes, classes = det_box[dets], det_cls[dets]
        tp = np.zeros(len(dets), bool)
        if len(gts):
            iou = box_iou_xywh(boxes, gt_box[gts])  # (D, G)
            same = classes[:, None] == gt_cls[gts][None, :]
            cls_iou = iou * same
            buffer = cls_iou.copy()
            used = np.zeros(len(gts), bool)
            for d in np.flatnonzero(cls_iou.max(axis=1) >= pos_thr):  # the others can never match
                g = int(buffer[d].argmax())
                if buffer[d, g] >= pos_thr:
                    tp[d], used[g] = True, True
                    buffer[:, g] = 0
        if len(crowds):
            crowd_iou = box_iou_xywh(boxes, gt_box[crowds], crowd=True)
            same_crowd = classes[:, None] == gt_cls[crowds][None, :]
            ignored[d0:d1] = ~tp & ((crowd_iou > pos_thr) & same_crowd).any(axis=1)
        is_tp[d0:d1] = tp
        wrong = ~tp
        if not len(gts):
            code[d0:d1] = np.where(wrong, _BKG, _NONE)
            continue
        gt_used[gts] = used
        rows = np.arange(len(dets))
        best_same = cls_iou.argmax(axis=1)
        loc = wrong & (cls_iou[rows, best_same] >= bg_thr) & (cls_iou[rows, best_same] <= pos_thr)
        other_iou = iou * ~same
        best_other = other_iou.argmax(axis=1)
        cls = wrong & ~loc & (other_iou[rows, best_other] >= pos_thr)
        dupe = wrong & ~loc & ~cls & ((cls_iou * used[None, :]).max(axis=1) >= pos_thr)
        bkg = wrong & ~loc & ~cls & ~dupe & (iou.max(axis=1) <= bg_thr)
        both = wrong & ~loc & ~cls & ~dupe & ~bkg
        code[d0:d1] = np.select([loc, cls, dupe, bkg, both], [_LOC, _CLS, _DUPE, _BKG, _BOTH], _NONE)
        target[d0:d1] = np.where(loc, gts[best_same], np.where(cls, gts[best_other], -1))
    # BestGTMatch: among the loc / cls errors pointing at an unmatched ground truth, the
    # highest-scored (first in visit order on ties) is the one that a fix turns into a hit.
    pointing = np.flatnonzero(target >= 0)
    pointing = pointing[~gt_used[target[pointing]]]
    gt_usable[target[pointing]] = True
    scores = det_score[visit]
    best = np.zeros(n, bool)
    if len(pointing):
        by_gt = pointing[np.lexsort((pointing, -scores[pointing], target[pointing]))]
        first = _group_starts(target[by_gt])[:-1]
        best[by_gt[first]] = True

    non_crowd = ~gt_crowd
    classes = det_cls[visit]
    num_gt = dict(zip(*np.unique(gt_cls[non_crowd], return_counts=True), strict=True))
    num_gt = {int(k): int(v) for k, v in num_gt.items()}
    for k in np.unique(classes[~ignored]).tolist():
        num_gt.setdefault(k, 0)  # a class with detections only: AP 0, counted
    missed = non_crowd & ~gt_used & ~gt_usable
    unmatched = non_crowd & ~gt_used

    seq = np.arange(n)
    kept = ~ignored
    base_ap = _mean_ap(classes[kept], scores[kept], is_tp[kept], seq[kept], num_gt)
    # in a fixed run tidecv pushes the error detections first, then the true positives
    fixed_seq = np.where(is_tp, n + seq, seq)

    def fixed_ap(kind: str) -> float:
        counts = dict(num_gt)
        if kind == "miss":
            for k, m in zip(*np.unique(gt_cls[missed], return_counts=True), strict=True):
                counts[int(k)] -= int(m)
            return _mean_ap(classes[kept], scores[kept], is_tp[kept], fixed_seq[kept], counts)
        this = code == _CODE[kind]
        keep = kept & ~this
        new_cls, new_tp = classes.copy(), is_tp.copy()
        if kind in ("loc", "cls"):
            promoted = this & best
            keep |= promoted
            new_tp |= promoted
            new_cls[promoted] = gt_cls[target[promoted]]
        return _mean_ap(new_cls[keep], scores[keep], new_tp[keep], fixed_seq[keep], counts)

    main = {name: max(fixed_ap(name) - base_ap, 0.0) for name in ERROR_NAMES}
    fp_scores = is_tp.astype(np.float64)  # every false positive below every true positive
    fp_ap = _mean_ap(classes[kept], fp_scores[kept], is_tp[kept], fixed_seq[kept], num_gt)
    fn_counts = dict(num_gt)
    for k, m in zip(*np.unique(gt_cls[unmatched], return_counts=True), strict=True):
        fn_counts[int(k)] -= int(m)
    fn_ap = _mean_ap(classes[kept], scores[kept], is_tp[kept], fixed_seq[kept], fn_counts)
    counts = {name: int((code == _CODE[name]).sum()) for name in _CODE}
    counts["miss"] = int(missed.sum())
    return TIDEErrors(
        ap=base_ap,
        main=main,
        special={"fp": fp_ap - base_ap, "fn": fn_ap - base_ap},
        counts={name: counts[name] for name in ERROR_NAMES},
        pos_thr=pos_thr,
        bg_thr=bg_thr,
        max_dets=max_dets,
        det_index=visit[kept],
        det_tp=is_tp[kept],
    )
