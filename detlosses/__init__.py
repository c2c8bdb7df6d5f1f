"""detlosses: object-detection losses, assigners and NMS for PyTorch.

Imports only torch and torchvision; COCO evaluation (``detlosses.evaluation``) loads
pycocotools lazily.
"""

from . import assigners, functional, losses, nms, recipes
from .criterion import DetectionCriterion
from .registry import ASSIGNERS, LOSSES, NMS, Registry

__version__ = "0.1.0"
__all__ = [
    "ASSIGNERS",
    "LOSSES",
    "NMS",
    "DetectionCriterion",
    "Registry",
    "__version__",
    "assigners",
    "functional",
    "losses",
    "nms",
    "recipes",
]
