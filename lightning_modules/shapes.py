"""Synthetic COCO-format detection data: coloured shapes on textured backgrounds.

The embedded demo set of the reference detector. Each image has a textured background
(a two-colour gradient, sinusoidal stripes or low-frequency colour blotches, plus uniform
pixel noise) and 0 to ``max_objects`` shapes of five classes. The class is the *shape*; the
colour is random, so a detector must learn geometry, not colour.

Boxes are the **full extent of each object** (amodal), measured on its rasterised mask,
so they are tight and exact in the COCO pixel-corner convention: a shape covering pixel
columns ``x0 .. x1`` has ``bbox[0] = x0`` and ``bbox[2] = x1 + 1 - x0``. Objects always lie
fully inside the image; a later object may cover part of an earlier one, but every object
keeps at least ``min_visible`` of its pixels visible. ``area`` is the object's pixel count
(the COCO convention of segment area), which pycocotools uses for its S/M/L ranges.

Category ids are deliberately non-contiguous (1, 3, 5, 7, 9) so that the data module's
id <-> contiguous-index mapping is exercised.

Generation is deterministic for a seed (each image draws from its own
``numpy.random.default_rng([seed, split, index])``) and takes a few milliseconds per
image at 160 px.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPE_CATEGORIES", "make_shapes", "tight_box"]

#: COCO categories of the shapes set (non-contiguous ids on purpose).
SHAPE_CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "circle"},
    {"id": 3, "name": "rectangle"},
    {"id": 5, "name": "triangle"},
    {"id": 7, "name": "star"},
    {"id": 9, "name": "cross"},
)

_SPLIT_CODES = {"train": 0, "val": 1}
_MAX_PLACEMENT_TRIES = 20
_MIN_COLOUR_DISTANCE = 90.0  # L1 distance (sum over RGB) between object and local background


# ----------------------------------------------------------------------------------------
# Backgrounds: (S, S, 3) float32 arrays in [0, 255]
# ----------------------------------------------------------------------------------------
def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour: a grey level plus a small tint."""
    return (rng.uniform(40, 215) + rng.uniform(-35, 35, size=3)).astype(np.float32)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)  # (S, S) in [0, 1]
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    return c0 + t[..., None] * (c1 - c0)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.05, 0.25) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    t = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * math.pi))  # (S, S)
    c0 = _muted_colour(rng)
    c1 = c0 + rng.uniform(-60, 60, size=3).astype(np.float32)
    return c0 + t[..., None] * (c1 - c0)


def _blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(2, 7))
    base = _muted_colour(rng)
    grid = np.clip(base + rng.uniform(-45, 45, size=(cells, cells, 3)), 0, 255)
    small = Image.fromarray(grid.astype(np.uint8), "RGB")
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32)


_BACKGROUNDS: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
    _gradient,
    _stripes,
    _blotches,
)


# ----------------------------------------------------------------------------------------
# Shapes: polygons/ellipses inside the box (x, y, w, h), rasterised as "L" masks
# ----------------------------------------------------------------------------------------
def _triangle(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> list:
    corners = [(x, y + h), (x + w, y + h), (x + w / 2, y)]  # apex up
    turn = int(rng.integers(4))  # apex up / right / down / left
    cx, cy = x + w / 2, y + h / 2
    for _ in range(turn):  # quarter turns about the centre, rescaled to keep w x h
        corners = [(cx - (py - cy) * w / h, cy + (px - cx) * h / w) for px, py in corners]
    return corners


def _star(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> list:
    rot = rng.uniform(0, 2 * math.pi / 5)
    inner = rng.uniform(0.4, 0.55)
    pts = []
    for k in range(10):
        r = 0.5 if k % 2 == 0 else 0.5 * inner
        a = rot + k * math.pi / 5
        pts.append((x + w * (0.5 + r * math.cos(a)), y + h * (0.5 + r * math.sin(a))))
    return pts


def _cross(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> list:
    t = rng.uniform(0.28, 0.4)  # arm thickness as a fraction of the side
    x0, x1 = x + w * (0.5 - t / 2), x + w * (0.5 + t / 2)
    y0, y1 = y + h * (0.5 - t / 2), y + h * (0.5 + t / 2)
    return [
        (x0, y), (x1, y), (x1, y0), (x + w, y0), (x + w, y1), (x1, y1),
        (x1, y + h), (x0, y + h), (x0, y1), (x, y1), (x, y0), (x0, y0),
    ]  # fmt: skip


def _draw_mask(rng: np.random.Generator, label: int, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) mask of shape ``label`` (index into SHAPE_CATEGORIES) filling its box."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    # PIL fills [x0, x1] inclusively: pass the last covered pixel (w - 1, h - 1)
    if label == 0:
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif label == 1:
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)
    else:
        polygon = (_triangle, _star, _cross)[label - 2](rng, 0, 0, w - 1, h - 1)
        draw.polygon(polygon, fill=255)
    return np.asarray(canvas) > 0


def tight_box(mask: np.ndarray, x: int, y: int) -> list[float]:
    """[x, y, w, h] of a patch mask placed at (x, y), in the COCO pixel-corner convention."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return [float(x + x0), float(y + y0), float(x1 + 1 - x0), float(y1 + 1 - y0)]


def _object_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A saturated random colour that stands out from the local background."""
    colour = background_mean
    for _ in range(10):
        hsv = (rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0))
        colour = 255.0 * np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32)
        if np.abs(colour - background_mean).sum() >= _MIN_COLOUR_DISTANCE:
            break
    return colour


def _render_image(
    rng: np.random.Generator,
    size: int,
    max_objects: int,
    size_range: tuple[float, float],
    empty_fraction: float,
    min_visible: float,
) -> tuple[np.ndarray, list[dict]]:
    """One image (S, S, 3) uint8 and its objects [{"label", "bbox", "area"}]."""
    image = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))](rng, size)  # (S, S, 3)
    image = image.astype(np.float32, copy=False)
    num = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    owner = np.full((size, size), -1, dtype=np.int64)  # index of the object on top, -1: none
    visible: list[int] = []  # visible pixel count of each placed object
    objects: list[dict] = []
    lo, hi = (f * size for f in size_range)
    for _ in range(num):
        label = int(rng.integers(len(SHAPE_CATEGORIES)))
        side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = math.sqrt(rng.uniform(0.7, 1.4))
        w = round(min(max(side * aspect, 6), size))
        h = round(min(max(side / aspect, 6), size))
        mask = _draw_mask(rng, label, w, h)  # (h, w) bool
        for _ in range(_MAX_PLACEMENT_TRIES):
            x = int(rng.integers(0, size - w + 1))
            y = int(rng.integers(0, size - h + 1))
            window = owner[y : y + h, x : x + w]
            hidden = np.bincount(window[mask] + 1, minlength=len(objects) + 1)[1:]
            if all(v - c >= min_visible * o["area"] for v, c, o in zip(visible, hidden, objects, strict=True)):
                break
        else:
            continue  # no placement keeps the others visible enough: skip this object
        visible = [v - int(c) for v, c in zip(visible, hidden, strict=True)]
        patch = image[y : y + h, x : x + w]  # view
        patch[mask] = _object_colour(rng, patch[mask].mean(axis=0))
        window[mask] = len(objects)
        area = int(mask.sum())
        visible.append(area)
        objects.append({"label": label, "bbox": tight_box(mask, x, y), "area": float(area)})
    noise_std = rng.uniform(2.0, 10.0)  # uniform noise (cheaper to draw than Gaussian)
    image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (noise_std * math.sqrt(12))
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _write_split(out_dir: str, split: str, num_images: int, image_size: int, seed: int, options: dict) -> str:
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        pixels, objects = _render_image(rng, image_size, **options)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(pixels, "RGB").save(os.path.join(image_dir, file_name), quality=95, subsampling=0)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": SHAPE_CATEGORIES[obj["label"]]["id"],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    ann_path = os.path.join(out_dir, "annotations", f"{split}.json")
    coco = {
        "info": {"description": "detlosses synthetic shapes", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="shape") for c in SHAPE_CATEGORIES],
    }
    with open(ann_path, "w") as f:
        json.dump(coco, f)
    return ann_path


def make_shapes(
    out_dir: str,
    num_train: int = 3000,
    num_val: int = 300,
    image_size: int = 160,
    seed: int = 0,
    *,
    max_objects: int = 6,
    size_range: tuple[float, float] = (0.0625, 0.5),
    empty_fraction: float = 0.05,
    min_visible: float = 0.6,
) -> dict:
    """Write the synthetic shapes set in COCO format.

    Layout: ``out_dir/train/NNNNNN.jpg``, ``out_dir/val/NNNNNN.jpg`` and
    ``out_dir/annotations/{train,val}.json`` (image ids and annotation ids start at 1).

    Args:
        out_dir: output folder (created if needed; existing files are overwritten).
        num_train, num_val: number of images per split (>= 0).
        image_size: side S of the square images in pixels (>= 32).
        seed: generation seed; the same seed gives the same files.
        max_objects: each non-empty image holds 1 .. max_objects shapes (fewer when a
            shape cannot be placed without hiding an earlier one).
        size_range: (min, max) object side as a fraction of S, sampled log-uniformly
            (default 10 to 80 px at S = 160).
        empty_fraction: probability that an image has no objects.
        min_visible: every object keeps at least this fraction of its pixels visible.

    Returns:
        dict with ``train_ann``, ``train_images``, ``val_ann``, ``val_images`` (paths),
        ``num_classes`` and ``class_names``.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    lo, hi = size_range
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"size_range must satisfy 0 < min <= max <= 1, got {size_range}")
    if not 0 <= empty_fraction <= 1 or not 0 <= min_visible <= 1:
        raise ValueError(f"empty_fraction and min_visible must be in [0, 1], got {empty_fraction}, {min_visible}")
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    options = {
        "max_objects": max_objects,
        "size_range": (lo, hi),
        "empty_fraction": empty_fraction,
        "min_visible": min_visible,
    }
    result: dict = {}
    for split, num in (("train", num_train), ("val", num_val)):
        result[f"{split}_ann"] = _write_split(out_dir, split, num, image_size, seed, options)
        result[f"{split}_images"] = os.path.join(out_dir, split)
    result["num_classes"] = len(SHAPE_CATEGORIES)
    result["class_names"] = [c["name"] for c in SHAPE_CATEGORIES]
    return result
