"""Box operations: format conversion, IoU-family overlaps and point/distance encoding.

Boxes are ``xyxy`` float tensors with the coordinates in the last dim. Every function
computes in float32 (float64 stays float64): fp16/bf16 inputs are cast at the top, because
products of pixel coordinates around 1e4 overflow fp16 and an eps below 6e-8 underflows
to 0 there. An inverted box (``x2 < x1`` or ``y2 < y1``) counts as zero-width/-height,
so every ratio has a positive denominator and results stay finite for finite input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision

from ._validation import check_boxes, check_floating, check_number
from ._validation import upcast as _upcast

__all__ = [
    "BOX_FORMATS",
    "IOU_MODES",
    "PAIRWISE_CHUNK_ELEMS",
    "bbox2distance",
    "box_convert",
    "box_iou",
    "distance2bbox",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
IOU_MODES = ("iou", "giou", "diou", "ciou")

# Elements in one (rows, M) temporary of a pairwise chunk: 2**20 floats = 4 MiB, so the
# temporaries of a CIoU chunk peak around 70 MiB (measured, tests/test_boxes.py) whatever N and
# M are. Read at call time: lower it to trade speed for memory.
PAIRWISE_CHUNK_ELEMS = 1 << 20
_FOUR_OVER_PI2 = 4.0 / math.pi**2


def _check_mode(mode: str, modes: Sequence[str]) -> None:
    if mode not in modes:
        raise ValueError(f"mode must be one of {tuple(modes)}, got {mode!r}")


def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    """Convert ``boxes`` (..., 4) between ``xyxy``, ``xywh`` (x1, y1, w, h) and ``cxcywh``.

    The arithmetic of :func:`torchvision.ops.box_convert`, with input checks, computed like
    every function here in float32: fp16/bf16 boxes are upcast first (x1 + x2 of boxes near
    33 000 px overflows fp16), and the result is float32 (float64 stays float64), not the
    input's dtype as torchvision returns.
    """
    check_boxes("boxes", boxes)
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{name} must be one of {BOX_FORMATS}, got {fmt!r}")
    return torchvision.ops.box_convert(_upcast(boxes), in_fmt=in_fmt, out_fmt=out_fmt)


def _overlap(a: torch.Tensor, b: torch.Tensor, mode: str, eps: float) -> torch.Tensor:
    """IoU-variant of broadcastable ``a`` (..., 4) and ``b`` (..., 4) -> broadcast shape (...).

    Pairwise callers pass ``a`` (n, 1, 4) and ``b`` (1, m, 4): the per-box terms (widths,
    areas, centres) are computed on (n, 1) and (1, m) and only the pair terms are (n, m).
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    aw, ah = (ax2 - ax1).clamp(min=0), (ay2 - ay1).clamp(min=0)
    bw, bh = (bx2 - bx1).clamp(min=0), (by2 - by1).clamp(min=0)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    iou = inter / (union + eps)
    if mode == "iou":
        return iou
    # smallest enclosing box
    cw = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    ch = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    if mode == "giou":
        area_c = cw * ch
        return iou - (area_c - union) / (area_c + eps)
    # centre distance: ((bx1 + bx2) / 2 - (ax1 + ax2) / 2) ** 2 + (same in y)
    rho2 = ((bx1 + bx2 - ax1 - ax2).square() + (by1 + by2 - ay1 - ay2).square()) * 0.25
    diou = iou - rho2 / (cw.square() + ch.square() + eps)
    if mode == "diou":
        return diou
    v = _FOUR_OVER_PI2 * (torch.atan(bw / (bh + eps)) - torch.atan(aw / (ah + eps))).square()
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def _rows_per_chunk(n_rows: int, row_elems: int) -> int:
    """Rows per pairwise chunk: one (rows, row_elems) temporary holds <= PAIRWISE_CHUNK_ELEMS elements.

    At least one row, at most ``n_rows``.
    """
    return max(1, min(n_rows, PAIRWISE_CHUNK_ELEMS // max(row_elems, 1)))


def box_iou(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    mode: str = "iou",
    aligned: bool = False,
    eps: float = 1e-7,
) -> torch.Tensor:
    """IoU, GIoU, DIoU or CIoU between ``xyxy`` boxes, pairwise or aligned.

    Args:
        boxes1: (..., N, 4) pairwise, or (..., 4) aligned.
        boxes2: (..., M, 4) pairwise (batch dims broadcast with ``boxes1``'s), or (..., 4)
            aligned (broadcastable against ``boxes1``).
        mode: ``"iou"`` | ``"giou"`` | ``"diou"`` | ``"ciou"``.
        aligned: compare ``boxes1[i]`` with ``boxes2[i]`` instead of every pair.
        eps: added to every denominator.

    Returns:
        (..., N, M) pairwise or (...) aligned, float32 (float64 for float64 input).

    With I the intersection, U the union, C the smallest enclosing box, rho the distance
    between the box centres and c the diagonal of C:

    * IoU  = I / (U + eps)
    * GIoU = IoU - (|C| - U) / (|C| + eps)                        (Rezatofighi et al. 2019)
    * DIoU = IoU - rho^2 / (c^2 + eps)                            (Zheng et al. 2020)
    * CIoU = DIoU - alpha * v, v = 4 / pi^2 * (atan(w2 / (h2 + eps)) - atan(w1 / (h1 + eps)))^2,
      alpha = v / (1 - IoU + v + eps) computed without gradient   (Zheng et al. 2020)

    These match :func:`torchvision.ops.box_iou`, ``generalized_box_iou``,
    ``distance_box_iou`` and ``complete_box_iou``. Pairwise results are computed in chunks
    of rows written into one preallocated output, so temporaries stay bounded (each at most
    ``PAIRWISE_CHUNK_ELEMS`` elements, 4 MiB by default) for any N and M.
    """
    check_boxes("boxes1", boxes1)
    check_boxes("boxes2", boxes2)
    _check_mode(mode, IOU_MODES)
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    if boxes1.dtype != boxes2.dtype:
        boxes1, boxes2 = boxes1.double(), boxes2.double()
    if aligned:
        try:
            torch.broadcast_shapes(boxes1.shape, boxes2.shape)
        except RuntimeError:
            raise ValueError(
                "aligned box_iou needs boxes1 and boxes2 of the same (or broadcastable) shape (..., 4), "
                f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
            ) from None
        return _overlap(boxes1, boxes2, mode, eps)

    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.dim() < 2:
            raise ValueError(f"pairwise box_iou needs {name} of shape (..., N, 4), got {tuple(boxes.shape)}")
    try:
        batch = torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dims of boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)} do not broadcast"
        ) from None
    n, m = boxes1.shape[-2], boxes2.shape[-2]
    b = boxes2.unsqueeze(-3)  # (..., 1, M, 4)
    out = boxes1.new_empty((*batch, n, m))
    rows = _rows_per_chunk(n, m * math.prod(batch))
    for start in range(0, n, rows):
        a = boxes1[..., start : start + rows, None, :]  # (..., rows, 1, 4)
        out[..., start : start + rows, :] = _overlap(a, b, mode, eps)
    return out


def _check_points(name: str, points: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    check_floating(name, points)
    if points.dim() < 1 or points.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (..., 2) holding (x, y), got {tuple(points.shape)}")
    try:
        torch.broadcast_shapes(points.shape[:-1], other.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{name} {tuple(points.shape)} and {other_name} {tuple(other.shape)} must have broadcastable "
            "leading dims: (..., 2) and (..., 4)"
        ) from None


def distance2bbox(
    points: torch.Tensor,
    distance: torch.Tensor,
    max_shape: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode distances from points to the four sides into ``xyxy`` boxes.

    Args:
        points: (..., 2) anchor points (x, y).
        distance: (..., 4) distances (left, top, right, bottom), broadcastable with ``points``.
        max_shape: image size ``(h, w)`` (or a tensor (..., 2) broadcastable with the boxes);
            when given, x is clamped to [0, w] and y to [0, h].

    Returns:
        (..., 4) boxes ``(x - left, y - top, x + right, y + bottom)``, float32.
    """
    check_boxes("distance", distance)
    _check_points("points", points, "distance", distance)
    points, distance = _upcast(points), _upcast(distance)
    boxes = torch.cat((points - distance[..., :2], points + distance[..., 2:]), dim=-1)
    if max_shape is None:
        return boxes
    wh = torch.as_tensor(max_shape, dtype=boxes.dtype, device=boxes.device)
    if wh.shape[-1:] != (2,):
        raise ValueError(f"max_shape must be (h, w) or a tensor of shape (..., 2), got {tuple(wh.shape)}")
    wh = wh.flip(-1)  # (h, w) -> (w, h)
    return torch.minimum(boxes.clamp(min=0), torch.cat((wh, wh), dim=-1))


def bbox2distance(
    points: torch.Tensor,
    bbox: torch.Tensor,
    max_dis: float | None = None,
    eps: float = 0.01,
) -> torch.Tensor:
    """Encode ``xyxy`` boxes as distances from points to their sides (inverse of distance2bbox).

    Args:
        points: (..., 2) anchor points (x, y).
        bbox: (..., 4) ``xyxy`` boxes, broadcastable with ``points``.
        max_dis: when given (a number: python, NumPy or a one-element tensor), distances are
            clamped to [0, max_dis - eps] (the DFL target for ``reg_max = max_dis``: bin
            ``reg_max`` must exist to the right of the target).
        eps: the margin below ``max_dis``.

    Returns:
        (..., 4) distances (left, top, right, bottom) = (x - x1, y - y1, x2 - x, y2 - y), float32.
    """
    check_boxes("bbox", bbox)
    _check_points("points", points, "bbox", bbox)
    points, bbox = _upcast(points), _upcast(bbox)
    distance = torch.cat((points - bbox[..., :2], bbox[..., 2:] - points), dim=-1)
    if max_dis is not None:
        max_dis, eps = check_number("max_dis", max_dis), check_number("eps", eps, minimum=0.0)
        if max_dis - eps <= 0:
            raise ValueError(f"max_dis must be greater than eps={eps}, got {max_dis}")
        distance = distance.clamp(min=0, max=max_dis - eps)
    return distance
