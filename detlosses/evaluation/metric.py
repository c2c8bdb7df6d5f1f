"""COCO box evaluation with pycocotools' exact numbers, strict input checks and a fuller report.

``coco_evaluate(gt, predictions)`` runs the COCO bbox protocol (Lin et al., "Microsoft COCO:
Common Objects in Context", ECCV 2014): for each category, IoU threshold t in
{0.50, 0.55, ..., 0.95}, area range and detection budget, detections are matched greedily by
score to unmatched ground truth with IoU >= t, and the precision is sampled at 101 recall
thresholds r in {0, 0.01, ..., 1} after making it monotone (p(r) = max_{r' >= r} p(r')).
AP is the mean of those samples over r, t and the categories that have ground truth. The
numbers are pycocotools' own (``backend="pycocotools"``) or faster-coco-eval's C++ port of the
same algorithm (``backend="faster"``, agrees to ~1e-16).

pycocotools and faster-coco-eval are imported lazily, inside the functions that need them:
``import detlosses.evaluation`` loads NumPy only.

Conventions (those of pycocotools' ``summarize``): a stat whose slice has no ground truth at all
(say APs when the set has no small objects, or a category absent from the ground truth) is
-1. Empty predictions are evaluated, not rejected: every slice that has ground truth scores 0
(pycocotools' ``loadRes([])`` raises IndexError, so the empty result set is built directly).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .confusion import ConfusionMatrix, best_f1_thresholds, confusion_matrix
from .errors import TIDEErrors, tide_errors
from .inputs import (
    InvalidPredictionsError,
    _as_id,
    _category_names,
    _check_entries,
    format_problems,
    load_ground_truth,
    load_predictions,
)

__all__ = ["BACKENDS", "STAT_NAMES", "COCOReport", "coco_evaluate"]

BACKENDS = ("pycocotools", "faster")

# pycocotools' summarize() for bbox, in order: (name, is_ap, iou threshold or None for
# 0.50:0.95, area range, maxDets). Index i here is index i of COCOeval.stats.
_SUMMARY_ROWS = (
    ("AP", True, None, "all", 100),
    ("AP50", True, 0.5, "all", 100),
    ("AP75", True, 0.75, "all", 100),
    ("APs", True, None, "small", 100),
    ("APm", True, None, "medium", 100),
    ("APl", True, None, "large", 100),
    ("AR1", False, None, "all", 1),
    ("AR10", False, None, "all", 10),
    ("AR100", False, None, "all", 100),
    ("ARs", False, None, "small", 100),
    ("ARm", False, None, "medium", 100),
    ("ARl", False, None, "large", 100),
)
STAT_NAMES = tuple(row[0] for row in _SUMMARY_ROWS)
_SUMMARY_LINE = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"


@dataclass
class COCOReport:
    """Result of :func:`coco_evaluate`.

    Attributes:
        stats: the 12 numbers of pycocotools' summary under :data:`STAT_NAMES` (-1 where the
            slice has no ground truth).
        per_class: {category name: {"AP", "AP50", "AR100"}} at area "all", maxDets 100
            (empty unless ``classwise``).
        precision: (T=10, R=101, K, A=4, M=3) array of COCOeval.eval["precision"]; -1 where a
            category has no ground truth in that area range.
        recall: (T, K, A, M) array of COCOeval.eval["recall"].
        iou_thrs: (T,) IoU thresholds; rec_thrs: (R,) recall thresholds.
        category_ids / category_names: the K categories, in the order of the K axis.
        area_labels: the A area ranges ("all", "small", "medium", "large").
        max_dets: the M detection budgets (1, 10, 100).
        num_predictions: entries evaluated; dropped: (entry index, reason) of the entries
            removed by ``drop_invalid``.
        errors: TIDE's error breakdown (:func:`tide_errors`), with ``errors=True``.
        confusion: the confusion matrix (:func:`confusion_matrix`), with ``errors=True``.
        best_f1: per class, the F1-optimal score threshold (:func:`best_f1_thresholds`), with
            ``errors=True``.
    """

    stats: dict[str, float]
    per_class: dict[str, dict[str, float]]
    precision: np.ndarray
    recall: np.ndarray
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    category_ids: list[int]
    category_names: list[str]
    area_labels: list[str]
    max_dets: list[int]
    backend: str
    num_predictions: int
    dropped: list[tuple[int, str]] = field(default_factory=list)
    errors: TIDEErrors | None = None
    confusion: ConfusionMatrix | None = None
    best_f1: dict[str, dict] | None = None

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)

    @property
    def summary(self) -> str:
        """pycocotools' 12-line summary, character for character."""
        lines = []
        for name, is_ap, iou_thr, area, max_dets in _SUMMARY_ROWS:
            title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
            iou = "0.50:0.95" if iou_thr is None else f"{iou_thr:0.2f}"
            lines.append(_SUMMARY_LINE.format(title, kind, iou, area, max_dets, self.stats[name]))
        return "\n".join(lines)

    def format_per_class(self) -> str:
        """The per-class AP / AP50 / AR100 table as aligned text ("-" where undefined)."""
        if not self.per_class:
            return "(no per-class results)"
        width = max(len("category"), *(len(name) for name in self.per_class))
        header = f"{'category':<{width}}  {'AP':>6}  {'AP50':>6}  {'AR100':>6}"
        lines = [header, "-" * len(header)]
        for name, row in self.per_class.items():
            cells = [f"{row[key]:6.3f}" if row[key] >= 0 else f"{'-':>6}" for key in ("AP", "AP50", "AR100")]
            lines.append(f"{name:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)

    def format_best_f1(self) -> str:
        """The per-class F1-optimal score threshold table as aligned text."""
        if not self.best_f1:
            return "(no per-class F1 thresholds)"
        width = max(len("category"), *(len(name) for name in self.best_f1))
        header = f"{'category':<{width}}  {'score':>6}  {'P':>6}  {'R':>6}  {'F1':>6}"
        lines = [header, "-" * len(header)]
        for name, row in self.best_f1.items():
            thr = f"{'-':>6}" if row["score_thr"] is None else f"{row['score_thr']:6.3f}"
            lines.append(
                f"{name:<{width}}  {thr}  " + "  ".join(f"{row[k]:6.3f}" for k in ("precision", "recall", "f1"))
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """{"stats", "per_class"} and, when computed, {"errors", "confusion", "best_f1"}
        (JSON-serialisable)."""
        out: dict[str, Any] = {
            "stats": dict(self.stats),
            "per_class": {k: dict(v) for k, v in self.per_class.items()},
        }
        if self.errors is not None:
            out["errors"] = self.errors.to_dict()
        if self.confusion is not None:
            out["confusion"] = self.confusion.to_dict()
        if self.best_f1 is not None:
            out["best_f1"] = {k: dict(v) for k, v in self.best_f1.items()}
        return out


# ---------------------------------------------------------------------------------------------
# Backends: each returns an accumulated and summarized COCOeval-like object


def _run_pycocotools(dataset: dict, detections: list[dict]) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:  # loadRes([]) raises IndexError: build the empty result set directly
            coco_dt = COCO()
            coco_dt.dataset = {
                "info": {},
                "images": list(dataset["images"]),
                "categories": copy.deepcopy(dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _run_faster(dataset: dict, detections: list[dict]) -> Any:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError('backend="faster" needs faster-coco-eval: pip install "detlosses[fast]"') from e

    def silent(*args: Any, **kwargs: Any) -> None:
        return None

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(dataset, print_function=silent)
        coco_dt = coco_gt.loadRes(detections)  # handles [] itself
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=silent)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


_BACKENDS = {"pycocotools": _run_pycocotools, "faster": _run_faster}


def _slice_mean(values: np.ndarray) -> float:
    """pycocotools' summarize reduction: mean over entries > -1, or -1 if there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def coco_evaluate(
    gt: str | os.PathLike | dict | Any,
    predictions: str | os.PathLike | list,
    backend: str = "pycocotools",
    classwise: bool = True,
    drop_invalid: bool = False,
    errors: bool = False,
    confusion_iou_thr: float = 0.5,
    confusion_score_thr: float = 0.25,
) -> COCOReport:
    """Evaluate COCO box results against COCO ground truth (bbox protocol, 12 standard stats).

    Args:
        gt: path to a COCO annotation json, the dataset dict, or a COCO object (pycocotools or
            faster-coco-eval).
        predictions: path to a COCO results json or a list of dicts {"image_id",
            "category_id", "bbox": [x, y, w, h] in original-image pixels, "score"}.
        backend: "pycocotools" (reference) or "faster" (faster-coco-eval, optional extra).
        classwise: also fill ``per_class`` (AP, AP50, AR100 per category, area "all",
            maxDets 100), reduced from the precision/recall arrays as pycocotools' summarize
            does (entries of -1 excluded).
        drop_invalid: drop the invalid entries (see :func:`validate_predictions`) and record
            them in ``report.dropped`` instead of raising.
        errors: also compute TIDE's error breakdown, the confusion matrix (at
            ``confusion_iou_thr`` and ``confusion_score_thr``) and the per-class F1-optimal
            score thresholds (``report.errors``, ``.confusion``, ``.best_f1``).

    Returns:
        COCOReport.

    Raises:
        InvalidPredictionsError: predictions are not a list, or some entries are invalid and
            ``drop_invalid`` is False; the message gives the count and the first few entries.
        InvalidGroundTruthError: unreadable / non-JSON / malformed ground truth (names the file).
        ValueError: unknown backend.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dataset = load_ground_truth(gt)
    entries = load_predictions(predictions)
    detections, problems = _check_entries(entries, dataset)
    if problems and not drop_invalid:
        raise InvalidPredictionsError(
            f"{len(problems)} of {len(entries)} prediction entries are invalid:\n"
            f"{format_problems(problems)}\n"
            "Fix them, or drop them with drop_invalid=True (--drop-invalid)."
        )

    extras: dict[str, Any] = {}
    if errors:  # before the backend, which writes into the detection dicts
        extras["errors"] = tide_errors(dataset, detections)
        extras["confusion"] = confusion_matrix(dataset, detections, confusion_iou_thr, confusion_score_thr)
        extras["best_f1"] = best_f1_thresholds(dataset, detections, extras["errors"])
    evaluator = _BACKENDS[backend](dataset, detections)
    params, accumulated = evaluator.params, evaluator.eval
    precision = np.asarray(accumulated["precision"], dtype=np.float64)  # (T, R, K, A, M)
    recall = np.asarray(accumulated["recall"], dtype=np.float64)  # (T, K, A, M)
    stats = dict(zip(STAT_NAMES, map(float, evaluator.stats[: len(STAT_NAMES)]), strict=True))

    category_ids = [_as_id(cid) for cid in params.catIds]
    by_id = {category["id"]: category for category in dataset["categories"]}
    category_names = _category_names([by_id[cid] for cid in category_ids])
    area, last = list(params.areaRngLbl).index("all"), len(params.maxDets) - 1
    iou_thrs = np.asarray(params.iouThrs)
    per_class = {}
    if classwise:
        t50 = np.where(iou_thrs == 0.5)[0]  # the exact comparison summarize() makes
        for k, name in enumerate(category_names):
            per_class[name] = {
                "AP": _slice_mean(precision[:, :, k, area, last]),
                "AP50": _slice_mean(precision[t50, :, k, area, last]),
                "AR100": _slice_mean(recall[:, k, area, last]),
            }
    return COCOReport(
        stats=stats,
        per_class=per_class,
        precision=precision,
        recall=recall,
        iou_thrs=iou_thrs,
        rec_thrs=np.asarray(params.recThrs),
        category_ids=category_ids,
        category_names=category_names,
        area_labels=list(params.areaRngLbl),
        max_dets=[int(m) for m in params.maxDets],
        backend=backend,
        num_predictions=len(detections),
        dropped=problems,
        **extras,
    )
