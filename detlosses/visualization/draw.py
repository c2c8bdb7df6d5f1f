"""Drawings of an assignment: one panel per pyramid level, and two assignments compared
(matplotlib and numpy, imported inside the drawing functions only; the ``eval`` extra)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..assigners import AssignResult
from .table import (
    _check_gts,
    _check_result,
    _check_strides,
    _levels,
    assignment_differences,
    assignment_table,
    format_assignment_table,
)

if TYPE_CHECKING:  # matplotlib and numpy are needed by the drawing functions only
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DIFF_COLOUR", "GT_COLOURS", "draw_assignment", "draw_assignment_comparison", "render"]

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

_DOT_RANGE = (0.3, 0.9)  # dot diameter in anchor spacings at target score 0 and 1
_MIN_DOT_PX = 4.0
_MAX_CROSS_PX = 24.0
_TABLE_FONT = 7.0  # points, monospace
_TITLE_IN = 0.3  # inches above each panel for its title
_GAP_IN = 0.1


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
