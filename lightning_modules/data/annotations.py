"""Reading a COCO annotation json and its images, and cleaning its boxes.

Annotation hygiene (done once when a dataset is built): ``iscrowd`` boxes are ignored
(pycocotools does not count them either); boxes are clipped to the image; boxes that are
non-finite or have w or h <= 1 px after clipping are dropped; both are counted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from detlosses.evaluation import COCOInputError, InvalidGroundTruthError, load_ground_truth

__all__ = [
    "MIN_BOX_SIZE",
    "DataError",
    "check_image_file",
    "clean_boxes",
    "decode_image",
    "list_files",
    "read_annotations",
    "read_categories",
    "read_ground_truth",
    "read_image_size",
    "sorted_categories",
]

MIN_BOX_SIZE = 1.0  # json boxes with w or h <= this (pixels, after clipping) are dropped
_MAX_LISTED_FILES = 10  # file names listed in one message
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}  # a complete file has one in its last bytes
_TAIL_BYTES = 1024  # JPEG writers may pad after the end-of-image marker


class DataError(COCOInputError):
    """Images or annotations that cannot be used, named with their files (a ValueError; the
    command lines end with exit code 2 on it)."""


def read_annotations(ann_file: str | os.PathLike) -> dict:
    """The COCO json of ``ann_file``; FileNotFoundError / ValueError name the file."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    with open(ann_file) as f:
        try:
            coco = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"annotation file {ann_file} is not valid JSON: {e}") from e
    for key in ("images", "categories"):
        if not isinstance(coco, dict) or key not in coco:
            raise ValueError(f"annotation file {ann_file} has no {key!r} list")
    return coco


def read_ground_truth(ann_file: str | os.PathLike) -> dict:
    """The validation json, checked as the COCO evaluation will check it
    (:func:`detlosses.evaluation.load_ground_truth`: no repeated or unknown ids, well-formed
    boxes), so that a problem is found when the data module is built rather than at the end
    of the first validation. Training jsons go through :func:`read_annotations`, whose bad
    boxes are dropped and counted instead."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        return load_ground_truth(ann_file)
    except InvalidGroundTruthError as e:
        raise DataError(str(e)) from e


def sorted_categories(coco: dict, ann_file: str | os.PathLike) -> list[dict]:
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if not cats:
        raise ValueError(f"annotation file {ann_file} has no categories")
    if len(set(ids)) != len(ids):
        raise ValueError(f"annotation file {ann_file} has duplicate category ids: {ids}")
    return cats


def read_categories(ann_file: str | os.PathLike) -> list[dict]:
    """COCO categories of ``ann_file`` sorted by id: list position = contiguous index."""
    return sorted_categories(read_annotations(ann_file), ann_file)


def list_files(paths: Sequence[str]) -> str:
    more = len(paths) - _MAX_LISTED_FILES
    return ", ".join(paths[:_MAX_LISTED_FILES]) + (f" and {more} more" if more > 0 else "")


def decode_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; FileNotFoundError / ValueError naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def check_image_file(path: str, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(h, w)`` of the image at ``path`` from its header, after checking that it exists, that its
    header decodes, that it is ``size`` (h, w) when given, and that a JPEG or PNG file is complete
    (ends with its end marker: a truncated download fails here, not in the middle of training).

    Raises FileNotFoundError or ValueError naming ``path``. Reads the header and the last
    kilobyte only, so checking a large data set takes seconds.
    """
    height, width, image_format = _read_header(path)
    if size is not None and (height, width) != tuple(size):
        raise ValueError(f"image {path} is {width}x{height} pixels but its annotation says {size[1]}x{size[0]}")
    marker = _END_MARKERS.get(image_format)
    if marker is not None:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
            if marker not in f.read():
                raise ValueError(f"image {path} is truncated (no end-of-image marker)")
    return height, width


def read_image_size(path: str) -> tuple[int, int]:
    """(h, w) from the file header, for json images without width/height."""
    height, width, _ = _read_header(path)
    return height, width


def _read_header(path: str) -> tuple[int, int, str]:
    """(h, w, format) from the file header; FileNotFoundError / ValueError naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.height, im.width, im.format or ""
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def clean_boxes(
    anns: Sequence[dict], height: int, width: int, cat_index: dict[int, int], ann_file: str
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Clipped (n, 4) float32 COCO xywh boxes, (n,) labels, #clipped, #dropped."""
    boxes, labels, clipped, dropped = [], [], 0, 0
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue
        if ann["category_id"] not in cat_index:
            raise DataError(f"{ann_file}: annotation {ann.get('id')} has unknown category_id {ann['category_id']}")
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            dropped += 1
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            dropped += 1
            continue
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x1 - x0 <= MIN_BOX_SIZE or y1 - y0 <= MIN_BOX_SIZE:
            dropped += 1
            continue
        clipped += (x0, y0, x1, y1) != (x, y, x + w, y + h)
        boxes.append((x0, y0, x1 - x0, y1 - y0))
        labels.append(cat_index[ann["category_id"]])
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        clipped,
        dropped,
    )
