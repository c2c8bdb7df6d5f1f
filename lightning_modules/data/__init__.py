"""COCO-format detection data for the reference detector.

* :mod:`.transforms` — the albumentations pipelines (letterbox, jitter, flip, colour);
* :mod:`.annotations` — reading and cleaning a COCO json and its images;
* :mod:`.dataset` — ``COCODetectionDataset`` (cache, mosaic, bad-image handling), collate and
  worker seeding;
* :mod:`.datamodule` — ``COCODataModule``.
"""

from .annotations import DataError, read_annotations, read_categories
from .datamodule import COCODataModule
from .dataset import COCODetectionDataset, collate_fn, seed_worker
from .transforms import Letterbox, build_transforms

__all__ = [
    "COCODataModule",
    "COCODetectionDataset",
    "DataError",
    "Letterbox",
    "build_transforms",
    "collate_fn",
    "read_annotations",
    "read_categories",
    "seed_worker",
]
