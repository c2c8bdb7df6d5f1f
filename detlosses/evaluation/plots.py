"""Plots of an evaluation as PNG files: precision-recall curves and the confusion matrix.

matplotlib is imported inside the functions (its object API: no pyplot, no global backend).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .confusion import ConfusionMatrix
    from .metric import COCOReport

__all__ = ["plot_confusion_matrix", "plot_pr_curves", "pr_curves"]


def _masked_mean(values: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Mean over ``axis`` of the entries > -1 (pycocotools' "no ground truth" mark); NaN if none."""
    valid = values > -1
    count = valid.sum(axis=axis)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)


def pr_curves(precision: np.ndarray, iou_thrs: np.ndarray) -> dict[str, np.ndarray]:
    """Precision at each recall threshold for IoU 0.50, 0.75 and averaged over 0.50:0.95.

    precision: (T, R, K) at area "all", maxDets 100 -> {label: (R,)}, averaged over the
    categories (and, for 0.50:0.95, the thresholds) that have ground truth.
    """
    return {
        "IoU=0.50": _masked_mean(precision[iou_thrs == 0.5], axis=(0, 2)),
        "IoU=0.75": _masked_mean(precision[iou_thrs == 0.75], axis=(0, 2)),
        "IoU=0.50:0.95": _masked_mean(precision, axis=(0, 2)),
    }


def _save_pr_figure(curves: dict[str, np.ndarray], rec_thrs: np.ndarray, title: str, path: Path) -> None:
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


def plot_pr_curves(report: COCOReport, out_dir: str | os.PathLike, per_class: bool = True) -> list[Path]:
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
    _save_pr_figure(pr_curves(precision, report.iou_thrs), report.rec_thrs, "all categories", paths[0])
    if per_class:
        for k, (cid, name) in enumerate(zip(report.category_ids, report.category_names, strict=True)):
            if not (precision[:, :, k] > -1).any():  # no ground truth for this category
                continue
            slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            path = out / f"pr_{cid}_{slug}.png"
            _save_pr_figure(pr_curves(precision[:, :, k : k + 1], report.iou_thrs), report.rec_thrs, name, path)
            paths.append(path)
    return paths


def plot_confusion_matrix(confusion: ConfusionMatrix, path: str | os.PathLike, normalize: bool = True) -> Path:
    """Write the confusion matrix as a PNG: rows ground truth, columns predictions, background
    last; with ``normalize`` each row is divided by its sum (the counts are in the report).
    Cells are written as numbers when there are at most 30 classes. Returns the path."""
    from matplotlib.figure import Figure

    matrix = confusion.matrix.astype(np.float64)
    if normalize:
        rows = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(confusion.classes)
    side = min(max(4.0, 0.35 * n + 2.5), 30.0)
    fig = Figure(figsize=(side + 1, side), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n)
    ax.set_xticks(ticks, confusion.classes, rotation=90, fontsize="small")
    ax.set_yticks(ticks, confusion.classes, fontsize="small")
    ax.set(xlabel="predicted", ylabel="ground truth")
    ax.set_title(f"confusion matrix (IoU >= {confusion.iou_thr:g}, score >= {confusion.score_thr:g})")
    if n <= 30:
        for (row, col), value in np.ndenumerate(confusion.matrix):
            if value:
                ax.text(
                    col,
                    row,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if matrix[row, col] > 0.5 * (matrix.max() or 1) else "black",
                )
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)
