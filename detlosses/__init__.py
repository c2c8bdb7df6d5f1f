"""detlosses: object-detection losses, assigners and NMS for PyTorch.

Needs only torch and torchvision. The names below are loaded on first access (PEP 562), so
``import detlosses`` itself is instant and ``detlosses.evaluation`` (NumPy; pycocotools and
faster-coco-eval lazily) can be used without importing torch at all. The registries
(``LOSSES``, ``ASSIGNERS``, ``NMS``) import the built-in components on their first lookup, so
every built-in name is registered by the time it is looked up.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("assigners", "boxes", "criterion", "evaluation", "functional", "losses", "nms", "recipes", "registry")
_REGISTRIES = ("ASSIGNERS", "LOSSES", "NMS", "Registry")
_ATTRIBUTES = {"DetectionCriterion": "criterion"}

__all__ = [
    "ASSIGNERS",
    "LOSSES",
    "NMS",
    "DetectionCriterion",
    "Registry",
    "__version__",
    "assigners",
    "boxes",
    "criterion",
    "evaluation",
    "functional",
    "losses",
    "nms",
    "recipes",
    "registry",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _REGISTRIES:
        value = getattr(importlib.import_module(".registry", __name__), name)
    elif name in _ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # cache: __getattr__ runs once per name
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
