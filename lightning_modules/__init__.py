"""Reference one-stage detector on PyTorch Lightning, built from detlosses components.

``OneStageDetector`` (LightningModule), ``COCODataModule`` (COCO json + image folder) and
``DenseDetectorModel`` (backbone, FPN/PAN neck, dense anchor-free head). Train with
``detlosses-train fit --config configs/shapes_tood.yaml`` (see ``train_cli``).
"""

from .data import COCODataModule
from .detector import OneStageDetector
from .models import DenseDetectorModel

__all__ = ["COCODataModule", "DenseDetectorModel", "OneStageDetector"]
