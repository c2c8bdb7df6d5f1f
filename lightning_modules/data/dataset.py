"""The COCO detection dataset of the reference detector, its collate function and worker seeding.

A batch is ``(images, targets)``: ``images`` float (B, 3, S, S) in [0, 1] (S = image_size,
letterboxed square) and ``targets`` a list of B dicts

* ``boxes``: float32 (n, 4) xyxy in network-input pixels,
* ``labels``: int64 (n,) contiguous class index in [0, num_classes),
* ``image_id``: int, the COCO image id,
* ``orig_size``: (h, w) ints of the original image,
* ``scale``: float and ``pad``: (pad_x, pad_y) floats, so that original-image coordinates are
  ``(input_xy - pad) / scale``. Exact for validation / prediction samples; for training
  samples they describe the letterbox only (a flip or mosaic is applied on top).

The optional 4-image mosaic (written here: albumentations 2.0.8 has none) puts four augmented
S x S tiles on a 2S x 2S canvas and crops it randomly back to S x S. A missing or undecodable
image raises ``FileNotFoundError`` / ``ValueError`` naming the file, or with
``skip_bad_images=True`` is skipped with a warning naming it (missing files when the dataset is
built; undecodable ones when first read, the next readable image taking their place).
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from .annotations import (
    MIN_BOX_SIZE,
    DataError,
    check_image_file,
    clean_boxes,
    decode_image,
    list_files,
    read_annotations,
    sorted_categories,
)
from .transforms import PAD_VALUE, bbox_params, build_transforms, set_compose_seed

__all__ = ["COCODetectionDataset", "collate_fn", "seed_worker"]

_MAX_LISTED_PROBLEMS = 5  # unusable images named in one error


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
        coco: the json of ``ann_file`` when the caller has read it already (it is not re-read).
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
        coco: dict | None = None,
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

        coco = read_annotations(self.ann_file) if coco is None else coco
        cats = sorted_categories(coco, self.ann_file)
        json_ids = [c["id"] for c in cats]
        if category_ids is not None and sorted(category_ids) != json_ids:
            raise ValueError(f"{self.ann_file} has category ids {json_ids}, expected {sorted(category_ids)}")
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
            [A.RandomCrop(image_size, image_size)], bbox_params=bbox_params(True), strict=True
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
        bad: list[tuple[str, str]] = []  # (path, problem) of every unusable image
        for img in coco["images"]:
            path = os.path.join(self.image_dir, img["file_name"])
            size = (int(img["height"]), int(img["width"])) if "height" in img and "width" in img else None
            try:
                height, width = check_image_file(path, size)
            except (FileNotFoundError, ValueError) as e:
                bad.append((path, str(e)))
                continue
            boxes, labels, clipped, dropped = clean_boxes(
                anns_by_image.get(img["id"], []), height, width, cat_index, self.ann_file
            )
            self.num_clipped_boxes += clipped
            self.num_dropped_boxes += dropped
            self.records.append(
                {"id": int(img["id"]), "path": path, "size": (height, width),
                 "boxes": boxes, "labels": labels}
            )  # fmt: skip
        if bad and not self.skip_bad_images:
            shown = "\n  ".join(problem for _, problem in bad[:_MAX_LISTED_PROBLEMS])
            more = f"\n  and {len(bad) - _MAX_LISTED_PROBLEMS} more" if len(bad) > _MAX_LISTED_PROBLEMS else ""
            raise DataError(
                f"{self.ann_file}: {len(bad)} of {len(coco['images'])} images cannot be used:\n  {shown}{more}\n"
                f"Fix or remove them, or skip them with skip_bad_images=True (data.skip_bad_images)."
            )
        if bad:
            self._skip([path for path, _ in bad])
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
            f"{self.ann_file}: skipping {len(paths)} missing or unreadable image(s): {list_files(paths)}",
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
        set_compose_seed(self.transforms, int(seeds[1]))
        set_compose_seed(self._mosaic_crop, int(seeds[2]))

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _checked_decode(rec: dict) -> np.ndarray:
        image = decode_image(rec["path"])
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
        out = self._mosaic_crop(image=canvas, bboxes=np.concatenate(boxes), labels=np.concatenate(labels))
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
