"""``COCODataModule``: a COCO json and an image folder each for training and validation."""

from __future__ import annotations

import os

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from .annotations import DataError, read_ground_truth, sorted_categories
from .dataset import COCODetectionDataset, collate_fn, seed_worker

__all__ = ["COCODataModule"]


class COCODataModule(pl.LightningDataModule):
    """COCO json + image folder for training and validation (prediction = validation set).

    ``num_classes``, ``class_names`` (contiguous order), ``category_ids`` (contiguous index
    -> COCO category id, increasing) and ``val_ann`` are set in ``__init__`` from the
    validation json, so LightningCLI can link them to the model with
    ``apply_on="instantiate"``; the training json must have the same categories.

    Args:
        train_ann, train_images, val_ann, val_images: annotation jsons and image folders.
        image_size: side S of the square letterboxed network input in validation and prediction.
        train_size: side of the square training input (default: ``image_size``). Below
            ``image_size`` a step is cheaper and the model, evaluated at ``image_size``, sees
            its objects larger than in training; on a CPU that wins (README, "Training").
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
        train_size: int | None = None,
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
        if image_size < 32 or (train_size is not None and train_size < 32):
            raise ValueError(f"image_size and train_size must be >= 32, got {image_size}, {train_size}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if not 0.0 <= hflip <= 1.0 or not 0.0 <= mosaic <= 1.0:
            raise ValueError(f"hflip and mosaic must be in [0, 1], got {hflip}, {mosaic}")
        if len(scale_jitter) != 2 or not 0 < scale_jitter[0] <= scale_jitter[1]:
            raise ValueError(f"scale_jitter must be (low, high), 0 < low <= high, got {scale_jitter}")
        for name, folder in (("train_images", train_images), ("val_images", val_images)):
            if not os.path.isdir(folder):
                raise DataError(f"{name}: image folder not found: {folder}")
        self.save_hyperparameters()
        self.train_ann, self.train_images = train_ann, train_images
        self.val_ann, self.val_images = val_ann, val_images
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.train_size: int = image_size if train_size is None else train_size
        self.seed = seed
        self.val_coco: dict = read_ground_truth(val_ann)  # read once: datasets and evaluation share it
        cats = sorted_categories(self.val_coco, val_ann)
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
            image_size=self.train_size if train else self.image_size,
            train=train,
            hflip=hp.hflip,
            scale_jitter=tuple(hp.scale_jitter),
            color_jitter=hp.color_jitter,
            mosaic=hp.mosaic,
            category_ids=self.category_ids,
            coco=None if train else self.val_coco,
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
