"""COCO box evaluation with pycocotools' exact numbers, strict input checks and a fuller report.

``coco_evaluate(gt, predictions)`` runs the COCO bbox protocol (Lin et al., "Microsoft COCO:
Common Objects in Context", ECCV 2014): for each category, IoU threshold t in
{0.50, 0.55, ..., 0.95}, area range and detection budget, detections are matched greedily by
score to unmatched ground truth with IoU >= t, and the precision is sampled at 101 recall
thresholds r in {0, 0.01, ..., 1} after making it monotone (p(r) = max_{r' >= r} p(r')).
AP is the mean of those samples over r, t and the categories that have ground truth. The
numbers are pycocotools' own (``backend="pycocotools"``) or faster-coco-eval's C++ port of the
same algorithm (``backend="faster"``, agrees to ~1e-16).

pycocotools, faster-coco-eval and matplotlib are imported lazily, inside the functions that
need them: ``import detlosses`` never loads them.

Conventions (those of pycocotools' ``summarize``): a stat whose slice has no ground truth at all
(say APs when the set has no small objects, or a category absent from the ground truth) is
-1. Empty predictions are evaluated, not rejected: every slice that has ground truth scores 0
(pycocotools' ``loadRes([])`` raises IndexError, so the empty result set is built directly).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "STAT_NAMES",
    "COCOInputError",
    "COCOReport",
    "InvalidGroundTruthError",
    "InvalidPredictionsError",
    "coco_evaluate",
    "format_problems",
    "load_ground_truth",
    "plot_pr_curves",
    "validate_predictions",
]

BACKENDS = ("pycocotools", "faster")
REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")
MAX_SHOWN_PROBLEMS = 5

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


class COCOInputError(ValueError):
    """Ground truth or predictions that cannot be evaluated (raised before any evaluation)."""


class InvalidGroundTruthError(COCOInputError):
    """The ground truth is unreadable, not JSON, or not a COCO detection dataset."""


class InvalidPredictionsError(COCOInputError):
    """The predictions are not a list of valid COCO result entries."""


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
            cells = [
                f"{row[key]:6.3f}" if row[key] >= 0 else f"{'-':>6}"
                for key in ("AP", "AP50", "AR100")
            ]
            lines.append(f"{name:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """{"stats": {...}, "per_class": {...}} (JSON-serialisable)."""
        return {
            "stats": dict(self.stats),
            "per_class": {k: dict(v) for k, v in self.per_class.items()},
        }


# ---------------------------------------------------------------------------------------------
# Inputs


def _read_json(path: str | os.PathLike, what: str, error: type[COCOInputError]) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise error(f"cannot read {what} file {os.fspath(path)!r}: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} file {os.fspath(path)!r} is not valid JSON: {e}") from e


def load_ground_truth(gt: str | os.PathLike | dict | Any) -> dict:
    """The checked COCO ground-truth dataset of a path, a dict, or a COCO object (``.dataset``).

    A dict or COCO object given by the caller is copied (top level and annotation dicts, which
    COCOeval writes into). An empty "info" is added when absent: pycocotools 2.0.9 and 2.0.10
    raise KeyError without it. Raises InvalidGroundTruthError naming the file when it is
    unreadable, not JSON, or lacks the "images" / "annotations" / "categories" lists.
    """
    owned = isinstance(gt, (str, os.PathLike))  # loaded here: no one else holds it
    if owned:
        source = repr(os.fspath(gt))
        dataset = _read_json(gt, "ground-truth", InvalidGroundTruthError)
    elif isinstance(gt, dict):
        source, dataset = "(dict)", gt
    elif isinstance(getattr(gt, "dataset", None), dict):
        source, dataset = f"({type(gt).__name__} object)", gt.dataset
    else:
        raise InvalidGroundTruthError(
            f"gt must be a path, a COCO dataset dict or a COCO object, got {type(gt).__name__}"
        )
    if not isinstance(dataset, dict):
        raise InvalidGroundTruthError(
            f"ground truth {source} must be a JSON object, got {type(dataset).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise InvalidGroundTruthError(f"ground truth {source} has no {key!r} list")
    for key in ("images", "categories"):
        if not all(isinstance(item, dict) and "id" in item for item in dataset[key]):
            raise InvalidGroundTruthError(
                f"ground truth {source}: every entry of {key!r} needs an 'id'"
            )
    if not owned:
        dataset = dict(dataset)
        dataset["annotations"] = [dict(ann) for ann in dataset["annotations"]]
    dataset.setdefault("info", {})
    return dataset


def _is_real(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:  # fast path: the ABC check below costs ~1 us
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _contains(ids: set, value: Any) -> bool:
    try:
        return value in ids
    except TypeError:  # unhashable
        return False


def _entry_problem(entry: Any, image_ids: set, category_ids: set) -> str | None:
    """Why one result entry is invalid, or None."""
    if not isinstance(entry, dict):
        return f"not an object ({type(entry).__name__})"
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        return "missing key(s) " + ", ".join(repr(key) for key in missing)
    bbox, score = entry["bbox"], entry["score"]
    if (
        not isinstance(bbox, (list, tuple, np.ndarray))
        or len(bbox) != 4
        or not all(map(_is_real, bbox))
    ):
        return f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    if not all(map(math.isfinite, bbox)):
        return f"bbox has non-finite values {list(bbox)!r}"
    if not (bbox[2] > 0 and bbox[3] > 0):
        return f"bbox width and height must be > 0, got w={bbox[2]!r}, h={bbox[3]!r}"
    if not _is_real(score) or not math.isfinite(score):
        return f"score must be a finite number, got {score!r}"
    if not _contains(image_ids, entry["image_id"]):
        return f"image_id {entry['image_id']!r} is not in the ground truth"
    if not _contains(category_ids, entry["category_id"]):
        return f"category_id {entry['category_id']!r} is not in the ground truth"
    return None


def _load_predictions(predictions: str | os.PathLike | list) -> list:
    if isinstance(predictions, (str, os.PathLike)):
        where = f"results file {os.fspath(predictions)!r}"
        predictions = _read_json(predictions, "results", InvalidPredictionsError)
    else:
        where = "predictions"
    if not isinstance(predictions, list):
        raise InvalidPredictionsError(
            f"{where} must be a list of result entries {{image_id, category_id, bbox, score}}, "
            f"got {type(predictions).__name__}"
        )
    return predictions


def format_problems(problems: list[tuple[int, str]], limit: int = MAX_SHOWN_PROBLEMS) -> str:
    """The first ``limit`` (entry index, reason) pairs, one indented line each."""
    lines = [f"  entry {index}: {reason}" for index, reason in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def _as_id(value: Any) -> Any:
    """Numeric ids as Python ints (numpy ints, 42.0); anything else unchanged."""
    if type(value) is int:
        return value
    return int(value) if _is_real(value) and float(value).is_integer() else value


def _check_entries(entries: list, dataset: dict) -> tuple[list[dict], list[tuple[int, str]]]:
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    valid, problems = [], []
    for index, entry in enumerate(entries):
        reason = _entry_problem(entry, image_ids, category_ids)
        if reason is not None:
            problems.append((index, reason))
            continue
        valid.append(
            {
                "image_id": _as_id(entry["image_id"]),
                "category_id": _as_id(entry["category_id"]),
                "bbox": [float(v) for v in entry["bbox"]],
                "score": float(entry["score"]),
            }
        )
    return valid, problems


def validate_predictions(
    predictions: str | os.PathLike | list, gt: str | os.PathLike | dict | Any
) -> tuple[list[dict], list[tuple[int, str]]]:
    """Check COCO result entries against the ground truth, before any evaluation.

    An entry is valid when it is a dict with "image_id", "category_id", "bbox", "score"; bbox
    is 4 finite numbers [x, y, w, h] with w > 0 and h > 0; score is a finite number; and both
    ids exist in the ground truth.

    Returns:
        (valid, problems): fresh dicts holding the four keys of every valid entry (inputs are
        never modified; numbers as Python floats/ints), and (entry index, reason) for every
        invalid one.

    Raises:
        InvalidPredictionsError: predictions (or the file's content) are not a list.
        InvalidGroundTruthError: see :func:`load_ground_truth`.
    """
    return _check_entries(_load_predictions(predictions), load_ground_truth(gt))


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
        raise ImportError(
            'backend="faster" needs faster-coco-eval: pip install "detlosses[fast]"'
        ) from e

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


def _unique_names(categories: list[dict]) -> list[str]:
    names = [str(category.get("name", category["id"])) for category in categories]
    return [
        f"{name} (id {category['id']})" if names.count(name) > 1 else name
        for name, category in zip(names, categories, strict=True)
    ]


def coco_evaluate(
    gt: str | os.PathLike | dict | Any,
    predictions: str | os.PathLike | list,
    backend: str = "pycocotools",
    classwise: bool = True,
    drop_invalid: bool = False,
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
    entries = _load_predictions(predictions)
    detections, problems = _check_entries(entries, dataset)
    if problems and not drop_invalid:
        raise InvalidPredictionsError(
            f"{len(problems)} of {len(entries)} prediction entries are invalid:\n"
            f"{format_problems(problems)}\n"
            "Fix them, or drop them with drop_invalid=True (--drop-invalid)."
        )

    evaluator = _BACKENDS[backend](dataset, detections)
    params, accumulated = evaluator.params, evaluator.eval
    precision = np.asarray(accumulated["precision"], dtype=np.float64)  # (T, R, K, A, M)
    recall = np.asarray(accumulated["recall"], dtype=np.float64)  # (T, K, A, M)
    stats = dict(zip(STAT_NAMES, map(float, evaluator.stats[: len(STAT_NAMES)]), strict=True))

    category_ids = [_as_id(cid) for cid in params.catIds]
    by_id = {category["id"]: category for category in dataset["categories"]}
    category_names = _unique_names([by_id[cid] for cid in category_ids])
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
    )


# ---------------------------------------------------------------------------------------------
# Plots


def _masked_mean(values: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Mean over ``axis`` of the entries > -1 (pycocotools' "no ground truth" mark); NaN if none."""
    valid = values > -1
    count = valid.sum(axis=axis)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)


def _pr_curves(precision: np.ndarray, iou_thrs: np.ndarray) -> dict[str, np.ndarray]:
    """Precision at each recall threshold for IoU 0.50, 0.75 and averaged over 0.50:0.95.

    precision: (T, R, K) at area "all", maxDets 100 -> {label: (R,)}, averaged over the
    categories (and, for 0.50:0.95, the thresholds) that have ground truth.
    """
    return {
        "IoU=0.50": _masked_mean(precision[iou_thrs == 0.5], axis=(0, 2)),
        "IoU=0.75": _masked_mean(precision[iou_thrs == 0.75], axis=(0, 2)),
        "IoU=0.50:0.95": _masked_mean(precision, axis=(0, 2)),
    }


def _save_pr_figure(
    curves: dict[str, np.ndarray], rec_thrs: np.ndarray, title: str, path: Path
) -> None:
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend state

    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    for label, curve in curves.items():
        ax.plot(rec_thrs, curve, label=f"{label} (AP {np.mean(curve):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(path, format="png")


def plot_pr_curves(
    report: COCOReport, out_dir: str | os.PathLike, per_class: bool = True
) -> list[Path]:
    """Write precision-recall curves (IoU 0.50, 0.75 and the 0.50:0.95 mean) as PNG files.

    ``pr_all.png`` averages over the categories with ground truth; with ``per_class`` each such
    category also gets ``pr_<category id>_<name>.png``. Curves are at area "all", maxDets 100,
    so the mean of each curve is the matching AP of the report. Returns the written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    area, last = report.area_labels.index("all"), len(report.max_dets) - 1
    precision = report.precision[:, :, :, area, last]  # (T, R, K)
    paths = [out / "pr_all.png"]
    _save_pr_figure(
        _pr_curves(precision, report.iou_thrs), report.rec_thrs, "all categories", paths[0]
    )
    if per_class:
        for k, (cid, name) in enumerate(
            zip(report.category_ids, report.category_names, strict=True)
        ):
            if not (precision[:, :, k] > -1).any():  # no ground truth for this category
                continue
            slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            path = out / f"pr_{cid}_{slug}.png"
            _save_pr_figure(
                _pr_curves(precision[:, :, k : k + 1], report.iou_thrs), report.rec_thrs, name, path
            )
            paths.append(path)
    return paths
