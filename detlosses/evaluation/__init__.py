"""COCO box evaluation: pycocotools' exact numbers, strict input checks, TIDE's error breakdown,
a confusion matrix and plots. NumPy only at import; pycocotools, faster-coco-eval and
matplotlib are imported inside the functions that need them, and torch never is.

* :mod:`.inputs` — reading and checking ground truth and results (``load_ground_truth``,
  ``validate_predictions``, the ``COCOInputError`` family);
* :mod:`.metric` — ``coco_evaluate`` and ``COCOReport`` (pycocotools / faster-coco-eval);
* :mod:`.errors` — TIDE's error dAPs (``tide_errors``);
* :mod:`.confusion` — confusion matrix and per-class F1-optimal score thresholds;
* :mod:`.plots` — precision-recall curves and the confusion matrix as PNG.
"""

from .confusion import ConfusionMatrix, best_f1_thresholds, confusion_matrix
from .errors import ERROR_NAMES, SPECIAL_ERROR_NAMES, TIDEErrors, tide_errors
from .inputs import (
    COCOInputError,
    InvalidGroundTruthError,
    InvalidPredictionsError,
    format_problems,
    load_ground_truth,
    load_predictions,
    validate_predictions,
)
from .metric import BACKENDS, STAT_NAMES, COCOReport, coco_evaluate
from .plots import plot_confusion_matrix, plot_pr_curves, pr_curves

__all__ = [
    "BACKENDS",
    "ERROR_NAMES",
    "SPECIAL_ERROR_NAMES",
    "STAT_NAMES",
    "COCOInputError",
    "COCOReport",
    "ConfusionMatrix",
    "InvalidGroundTruthError",
    "InvalidPredictionsError",
    "TIDEErrors",
    "best_f1_thresholds",
    "coco_evaluate",
    "confusion_matrix",
    "format_problems",
    "load_ground_truth",
    "load_predictions",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "pr_curves",
    "tide_errors",
    "validate_predictions",
]
