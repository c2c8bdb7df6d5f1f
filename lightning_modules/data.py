"""COCO-format detection data for the reference detector: dataset, transforms, DataModule.

A batch is ``(images, targets)``: ``images`` float (B, 3, S, S) in [0, 1] (S = image_size,
letterboxed square) and ``targets`` a list of B dicts

* ``boxes``: float32 (n, 4) xyxy in network-input pixels,
* ``labels``: int64 (n,) contiguous class index in [0, num_classes),
* ``image_id``: int, the COCO image id,
* ``orig_size``: (h, w) ints of the original image,
* ``scale``: float and ``pad``: (pad_x, pad_y) floats, so that original-image coordinates are
  ``(input_xy - pad) / scale``. Exact for validation / prediction samples; for training
  samples they describe the letterbox only (a flip or mosaic is applied on top).

Pipelines (albumentations 2.0.x, ``BboxParams(format="coco", clip=True,
filter_invalid_bboxes=True)``, ``strict=True``):

* eval: :class:`Letterbox` — resize the longest side to S with one scale factor, centre on
  an S x S canvas filled with grey 114 (the same image scale in x and y, so the inverse
  mapping is exact).
* train: :class:`Letterbox` with a random extra scale factor (``scale_jitter``) at a random
  position (padding or cropping), horizontal flip, colour jitter; optionally a 4-image
  mosaic (written here: albumentations 2.0.8 has none) — four augmented S x S tiles on a
  2S x 2S canvas, randomly cropped back to S x S.

Annotation hygiene (done once when the dataset is built): ``iscrowd`` boxes are ignored
(pycocotools does not count them either); boxes are clipped to the image; boxes that are
non-finite or have w or h <= 1 px after clipping are dropped. Both are counted
(``num_clipped_boxes``, ``num_dropped_boxes``) and reported in one warning. Images without
boxes are kept. A missing or undecodable image raises ``FileNotFoundError`` /
``ValueError`` naming the file, or with ``skip_bad_images=True`` is skipped with a warning
naming it (missing files when the dataset is built; undecodable ones when first read, the
next readable image taking their place).
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.core.type_definitions import Targets
from PIL import Image
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "COCODataModule",
    "COCODetectionDataset",
    "Letterbox",
    "build_transforms",
    "collate_fn",
    "read_annotations",
    "read_categories",
    "seed_worker",
]

PAD_VALUE = 114  # grey of letterbox padding (as in YOLO detectors)
MIN_BOX_SIZE = 1.0  # json boxes with w or h <= this (pixels, after clipping) are dropped
_MAX_LISTED_FILES = 10  # file names listed in one warning


# ----------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------
class Letterbox(A.DualTransform):
    """Resize by one scale factor and place the result on a ``size`` x ``size`` canvas.

    The scale is ``s = size / max(h, w) * r`` with ``r ~ U(scale_range)``; a point maps as
    ``x' = s * x + offset_x`` (pixel-corner coordinates, exact for boxes). ``position``
    places the resized image: "center" (offset = (size - round(s * w)) // 2, likewise in y),
    "top_left" (offset 0) or "random" (uniform integer offset, negative when the resized
    image is larger than the canvas, i.e. a random crop). The applied ``scale`` and
    ``offset`` are in ``self.params`` after each call. Targets: image, bboxes.
    """

    _targets = (Targets.IMAGE, Targets.BBOXES)

    class InitSchema(BaseTransformInitSchema):
        size: int = Field(ge=1)
        scale_range: tuple[float, float]
        position: Literal["center", "top_left", "random"]
        fill: float

    def __init__(
        self,
        size: int,
        scale_range: tuple[float, float] = (1.0, 1.0),
        position: Literal["center", "top_left", "random"] = "center",
        fill: float = PAD_VALUE,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.size = size
        self.scale_range = tuple(scale_range)
        self.position = position
        self.fill = fill

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        h, w = params["shape"][:2]
        scale = self.size / max(h, w) * self.py_random.uniform(*self.scale_range)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))  # cv2.resize's size
        if self.position == "center":
            offset = ((self.size - new_w) // 2, (self.size - new_h) // 2)
        elif self.position == "top_left":
            offset = (0, 0)
        else:
            offset = tuple(
                self.py_random.randint(min(0, self.size - n), max(0, self.size - n))
                for n in (new_w, new_h)
            )
        return {"scale": scale, "offset": offset}

    def apply(
        self, img: np.ndarray, scale: float, offset: tuple[int, int], **params: Any
    ) -> np.ndarray:
        if scale != 1.0:
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            # fx/fy without dsize: OpenCV maps with exactly this factor (the output size is
            # rounded), so the image agrees with the analytically scaled boxes
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=interp)
        if img.ndim == 2:
            img = img[..., None]
        canvas = np.full((self.size, self.size, img.shape[2]), self.fill, dtype=img.dtype)
        ox, oy = offset
        src_x0, src_y0 = max(0, -ox), max(0, -oy)
        dst_x0, dst_y0 = max(0, ox), max(0, oy)
        w = min(img.shape[1] - src_x0, self.size - dst_x0)
        h = min(img.shape[0] - src_y0, self.size - dst_y0)
        if w > 0 and h > 0:
            canvas[dst_y0 : dst_y0 + h, dst_x0 : dst_x0 + w] = img[
                src_y0 : src_y0 + h, src_x0 : src_x0 + w
            ]
        return canvas

    def apply_to_bboxes(
        self, bboxes: np.ndarray, scale: float, offset: tuple[int, int], **params: Any
    ) -> np.ndarray:
        # bboxes: (N, 4 + extra) normalised xyxy of the input -> normalised to the canvas
        h, w = params["shape"][:2]
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * (w * scale) + offset[0]) / self.size
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * (h * scale) + offset[1]) / self.size
        return out


def _bbox_params(train: bool) -> A.BboxParams:
    # train: drop boxes cut to slivers by the random crop (< 20 % visible or < 2 px)
    extra = {"min_visibility": 0.2, "min_width": 2.0, "min_height": 2.0} if train else {}
    return A.BboxParams(
        format="coco", label_fields=["labels"], clip=True, filter_invalid_bboxes=True, **extra
    )


def build_transforms(
    image_size: int,
    train: bool = False,
    hflip: float = 0.5,
    scale_jitter: tuple[float, float] = (0.5, 1.5),
    color_jitter: bool = True,
) -> A.Compose:
    """The albumentations pipeline of one sample (uint8 HWC image, COCO xywh boxes).

    eval: centred :class:`Letterbox` to ``image_size``. train: :class:`Letterbox` with an
    extra scale ``r ~ U(scale_jitter)`` at a random position, ``HorizontalFlip(p=hflip)``,
    and ``ColorJitter`` (brightness/contrast 0.3, saturation 0.5, hue 0.015, p 0.8) when
    ``color_jitter``.
    """
    if train:
        transforms: list[A.BasicTransform] = [
            Letterbox(image_size, scale_range=scale_jitter, position="random")
        ]
        if hflip > 0:
            transforms.append(A.HorizontalFlip(p=hflip))
        if color_jitter:
            transforms.append(
                A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.5, hue=0.015, p=0.8)
            )
    else:
        transforms = [Letterbox(image_size, position="center")]
    return A.Compose(
        transforms, bbox_params=_bbox_params(train), strict=True, save_applied_params=True
    )


def _set_compose_seed(compose: A.Compose, seed: int) -> None:
    """One generator pair shared by all transforms (``Compose(seed=...)`` gives each
    transform its own copy of the same stream, which correlates their draws)."""
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


# ----------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------
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


def _sorted_categories(coco: dict, ann_file: str | os.PathLike) -> list[dict]:
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if not cats:
        raise ValueError(f"annotation file {ann_file} has no categories")
    if len(set(ids)) != len(ids):
        raise ValueError(f"annotation file {ann_file} has duplicate category ids: {ids}")
    return cats


def read_categories(ann_file: str | os.PathLike) -> list[dict]:
    """COCO categories of ``ann_file`` sorted by id: list position = contiguous index."""
    return _sorted_categories(read_annotations(ann_file), ann_file)


def _list_files(paths: Sequence[str]) -> str:
    more = len(paths) - _MAX_LISTED_FILES
    return ", ".join(paths[:_MAX_LISTED_FILES]) + (f" and {more} more" if more > 0 else "")


def _decode_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; FileNotFoundError / ValueError naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def _image_size(path: str) -> tuple[int, int]:
    """(h, w) from the file header, for json images without width/height."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def _clean_boxes(
    anns: Sequence[dict], height: int, width: int, cat_index: dict[int, int], ann_file: str
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Clipped (n, 4) float32 COCO xywh boxes, (n,) labels, #clipped, #dropped."""
    boxes, labels, clipped, dropped = [], [], 0, 0
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue
        if ann["category_id"] not in cat_index:
            raise ValueError(
                f"{ann_file}: annotation {ann.get('id')} has unknown category_id "
                f"{ann['category_id']}"
            )
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


# ----------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------
class COCODetectionDataset(Dataset):
    """Images of a COCO json, letterboxed to ``image_size`` (augmented when ``train``).

    ``dataset[i]`` is ``(image uint8 (3, S, S), target dict)`` with the target keys of the
    module docstring; :func:`collate_fn` makes the float batch.

    Args:
        ann_file: COCO annotation json (``images``, ``annotations``, ``categories``).
        image_dir: folder that ``images[i]["file_name"]`` is relative to.
        image_size: side S of the square network input.
        train: augment (scale jitter, flip, colour jitter, mosaic); else deterministic.
        hflip, scale_jitter, color_jitter: see :func:`build_transforms` (train only).
        mosaic: probability of a 4-image mosaic sample (train only).
        category_ids: enforce this contiguous index -> category id mapping (ValueError if
            the json's categories differ); default: the json's ids in increasing order.
        skip_bad_images: warn about and skip missing / undecodable images instead of
            raising.
        cache_images: decode every image once when the dataset is built and keep it in
            memory (shared copy-on-write with forked DataLoader workers).
        seed: seed of the augmentation streams (re-seeded per worker by
            :func:`seed_worker`).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        image_size: int = 320,
        train: bool = False,
        hflip: float = 0.5,
        scale_jitter: tuple[float, float] = (0.5, 1.5),
        color_jitter: bool = True,
        mosaic: float = 0.0,
        category_ids: Sequence[int] | None = None,
        skip_bad_images: bool = False,
        cache_images: bool = False,
        seed: int = 0,
    ):
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if not 0.0 <= mosaic <= 1.0:
            raise ValueError(f"mosaic must be a probability in [0, 1], got {mosaic}")
        self.ann_file = os.fspath(ann_file)
        self.image_dir = os.fspath(image_dir)
        self.image_size = image_size
        self.train = train
        self.mosaic = mosaic if train else 0.0
        self.skip_bad_images = skip_bad_images
        self.skipped_images: list[str] = []

        coco = read_annotations(self.ann_file)
        cats = _sorted_categories(coco, self.ann_file)
        json_ids = [c["id"] for c in cats]
        if category_ids is not None and sorted(category_ids) != json_ids:
            raise ValueError(
                f"{self.ann_file} has category ids {json_ids}, expected {sorted(category_ids)}"
            )
        self.category_ids: list[int] = list(category_ids) if category_ids else json_ids
        by_id = {c["id"]: c["name"] for c in cats}
        self.class_names: list[str] = [by_id[i] for i in self.category_ids]
        self.num_classes = len(self.category_ids)
        self._build_records(coco, {cid: k for k, cid in enumerate(self.category_ids)})

        self._cache: list[np.ndarray] | None = None
        if cache_images:
            self._fill_cache()
        self.transforms = build_transforms(image_size, train, hflip, scale_jitter, color_jitter)
        self._mosaic_crop = A.Compose(
            [A.RandomCrop(image_size, image_size)], bbox_params=_bbox_params(True), strict=True
        )
        self._bad: set[int] = set()
        self.reseed(seed)

    # ------------------------------------------------------------------ set-up
    def _build_records(self, coco: dict, cat_index: dict[int, int]) -> None:
        anns_by_image: dict[int, list[dict]] = {}
        for ann in coco.get("annotations", []):
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        self.records: list[dict] = []
        self.num_clipped_boxes = self.num_dropped_boxes = 0
        missing: list[str] = []
        for img in coco["images"]:
            path = os.path.join(self.image_dir, img["file_name"])
            try:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"image file not found: {path}")
                if "height" in img and "width" in img:
                    height, width = int(img["height"]), int(img["width"])
                else:
                    height, width = _image_size(path)
            except (FileNotFoundError, ValueError):
                if not self.skip_bad_images:
                    raise
                missing.append(path)
                continue
            boxes, labels, clipped, dropped = _clean_boxes(
                anns_by_image.get(img["id"], []), height, width, cat_index, self.ann_file
            )
            self.num_clipped_boxes += clipped
            self.num_dropped_boxes += dropped
            self.records.append(
                {"id": int(img["id"]), "path": path, "size": (height, width),
                 "boxes": boxes, "labels": labels}
            )  # fmt: skip
        if missing:
            self._skip(missing)
        if self.num_clipped_boxes or self.num_dropped_boxes:
            warnings.warn(
                f"{self.ann_file}: clipped {self.num_clipped_boxes} boxes to their image and "
                f"dropped {self.num_dropped_boxes} degenerate or non-finite boxes "
                f"(w or h <= {MIN_BOX_SIZE:g} px after clipping)",
                stacklevel=3,
            )
        if not self.records:
            raise ValueError(f"{self.ann_file}: no usable images")

    def _skip(self, paths: list[str]) -> None:
        self.skipped_images.extend(paths)
        warnings.warn(
            f"{self.ann_file}: skipping {len(paths)} missing or unreadable image(s): "
            f"{_list_files(paths)}",
            stacklevel=3,
        )

    def _fill_cache(self) -> None:
        cache, records, bad = [], [], []
        for rec in self.records:
            try:
                cache.append(self._checked_decode(rec))
                records.append(rec)
            except (FileNotFoundError, ValueError):
                if not self.skip_bad_images:
                    raise
                bad.append(rec["path"])
        if bad:
            self._skip(bad)
        if not records:
            raise ValueError(f"{self.ann_file}: no usable images")
        self.records, self._cache = records, cache

    def reseed(self, seed: int) -> None:
        """Reset the augmentation random streams (mosaic choice and albumentations)."""
        seeds = np.random.SeedSequence(seed).generate_state(3)
        self._rng = np.random.default_rng(seeds[0])
        _set_compose_seed(self.transforms, int(seeds[1]))
        _set_compose_seed(self._mosaic_crop, int(seeds[2]))

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _checked_decode(rec: dict) -> np.ndarray:
        image = _decode_image(rec["path"])
        if image.shape[:2] != rec["size"]:
            raise ValueError(
                f"image {rec['path']} is {image.shape[1]}x{image.shape[0]} pixels but its "
                f"annotation says {rec['size'][1]}x{rec['size'][0]}"
            )
        return image

    def _read(self, index: int) -> tuple[int, np.ndarray]:
        """(index actually read, image): the next readable image when skipping bad ones."""
        if self._cache is not None:
            return index, self._cache[index]
        for step in range(len(self.records)):
            i = (index + step) % len(self.records)
            if i in self._bad:
                continue
            try:
                return i, self._checked_decode(self.records[i])
            except (FileNotFoundError, ValueError):
                if not self.skip_bad_images:
                    raise
                self._bad.add(i)
                self._skip([self.records[i]["path"]])
        raise ValueError(f"{self.ann_file}: no readable image left")

    def _transformed(self, index: int) -> tuple[int, dict]:
        i, image = self._read(index)
        rec = self.records[i]
        out = self.transforms(image=image, bboxes=rec["boxes"], labels=rec["labels"])
        return i, out

    @staticmethod
    def _letterbox_params(out: dict) -> tuple[float, tuple[float, float]]:
        params = next(p for name, p in out["applied_transforms"] if name == "Letterbox")
        return float(params["scale"]), tuple(float(v) for v in params["offset"])

    def _mosaic(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        s = self.image_size
        others = self._rng.integers(0, len(self.records), size=3)
        canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, dtype=np.uint8)
        boxes, labels, read = [], [], []
        for k, j in enumerate([index, *others.tolist()]):
            i, out = self._transformed(j)
            read.append(i)
            ox, oy = (k % 2) * s, (k // 2) * s
            canvas[oy : oy + s, ox : ox + s] = out["image"]
            tile_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            boxes.append(tile_boxes + np.array([ox, oy, 0, 0], dtype=np.float32))
            labels.append(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        out = self._mosaic_crop(
            image=canvas, bboxes=np.concatenate(boxes), labels=np.concatenate(labels)
        )
        return read[0], out["image"], out["bboxes"], out["labels"]

    # ------------------------------------------------------------------ Dataset API
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.mosaic > 0 and self._rng.random() < self.mosaic:
            i, image, boxes, labels = self._mosaic(index)
            scale, pad = 1.0, (0.0, 0.0)
        else:
            i, out = self._transformed(index)
            image, boxes, labels = out["image"], out["bboxes"], out["labels"]
            scale, pad = self._letterbox_params(out)
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        boxes[:, 2:] += boxes[:, :2]  # (n, 4) xywh -> xyxy
        rec = self.records[i]
        target = {
            "boxes": boxes,
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": rec["id"],
            "orig_size": rec["size"],
            "scale": scale,
            "pad": pad,
        }
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids in dataset order."""
        return [rec["id"] for rec in self.records]


def collate_fn(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack uint8 images into float (B, 3, S, S) in [0, 1]; keep targets as a list."""
    images = torch.stack([image for image, _ in batch]).float().div_(255.0)
    return images, [target for _, target in batch]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python, numpy and the dataset's augmentations
    from the worker's torch seed (distinct per worker, derived from the loader's generator).
    """
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


# ----------------------------------------------------------------------------------------
# LightningDataModule
# ----------------------------------------------------------------------------------------
class COCODataModule(pl.LightningDataModule):
    """COCO json + image folder for training and validation (prediction = validation set).

    ``num_classes``, ``class_names`` (contiguous order), ``category_ids`` (contiguous index
    -> COCO category id, increasing) and ``val_ann`` are set in ``__init__`` from the
    validation json, so LightningCLI can link them to the model with
    ``apply_on="instantiate"``; the training json must have the same categories.

    Args:
        train_ann, train_images, val_ann, val_images: annotation jsons and image folders.
        image_size: side S of the square letterboxed network input.
        batch_size: images per batch (train, val and predict).
        num_workers: DataLoader worker processes (persistent when > 0).
        hflip: horizontal-flip probability (train).
        scale_jitter: range of the random extra scale of the training letterbox.
        color_jitter: colour jitter on training images.
        mosaic: probability of a 4-image mosaic training sample.
        skip_bad_images: skip missing / undecodable images with a warning instead of
            raising.
        cache_images: keep decoded images in memory (small sets, CPU training).
        seed: seed of shuffling and augmentation (mixed with the global rank).
    """

    def __init__(
        self,
        train_ann: str,
        train_images: str,
        val_ann: str,
        val_images: str,
        image_size: int = 320,
        batch_size: int = 16,
        num_workers: int = 2,
        hflip: float = 0.5,
        scale_jitter: tuple[float, float] = (0.5, 1.5),
        color_jitter: bool = True,
        mosaic: float = 0.0,
        skip_bad_images: bool = False,
        cache_images: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
            )
        if not 0.0 <= hflip <= 1.0 or not 0.0 <= mosaic <= 1.0:
            raise ValueError(f"hflip and mosaic must be in [0, 1], got {hflip}, {mosaic}")
        if len(scale_jitter) != 2 or not 0 < scale_jitter[0] <= scale_jitter[1]:
            raise ValueError(
                f"scale_jitter must be (low, high), 0 < low <= high, got {scale_jitter}"
            )
        self.save_hyperparameters()
        self.train_ann, self.train_images = train_ann, train_images
        self.val_ann, self.val_images = val_ann, val_images
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.seed = seed
        cats = read_categories(val_ann)
        self.category_ids: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [c["name"] for c in cats]
        self.num_classes: int = len(cats)
        self.train_dataset: COCODetectionDataset | None = None
        self.val_dataset: COCODetectionDataset | None = None

    def _dataset(self, train: bool) -> COCODetectionDataset:
        hp = self.hparams
        return COCODetectionDataset(
            self.train_ann if train else self.val_ann,
            self.train_images if train else self.val_images,
            image_size=self.image_size,
            train=train,
            hflip=hp.hflip,
            scale_jitter=tuple(hp.scale_jitter),
            color_jitter=hp.color_jitter,
            mosaic=hp.mosaic,
            category_ids=self.category_ids,
            skip_bad_images=hp.skip_bad_images,
            cache_images=hp.cache_images,
            seed=self.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(train=True)
        if self.val_dataset is None:
            self.val_dataset = self._dataset(train=False)

    def _rank_seed(self) -> int:
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        return int(np.random.SeedSequence([self.seed, rank]).generate_state(1)[0])

    def _loader(self, dataset: COCODetectionDataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before requesting a dataloader")
        seed = self._rank_seed()
        dataset.reseed(seed)  # the stream of the main process (num_workers = 0)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)
