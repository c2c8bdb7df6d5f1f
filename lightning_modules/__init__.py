"""Reference one-stage detector on PyTorch Lightning, built from detlosses components.

``OneStageDetector`` (LightningModule), ``COCODataModule`` (COCO json + image folder) and
``DenseDetectorModel`` (backbone, FPN/PAN neck, dense anchor-free head). Train with
``detlosses-train fit --config configs/shapes_tood.yaml`` (see ``train_cli``).

The names are loaded on first access (PEP 562): importing a submodule such as
``lightning_modules.eval_cli`` does not import torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_ATTRIBUTES = {
    "COCODataModule": "data",
    "DenseDetectorModel": "models",
    "OneStageDetector": "detector",
}

__all__ = ["COCODataModule", "DenseDetectorModel", "OneStageDetector"]


def __getattr__(name: str) -> Any:
    if name not in _ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
