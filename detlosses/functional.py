"""Element-wise losses with no reduction: ``from detlosses import functional as F``."""

from .losses.distribution_focal import distribution_focal_loss, distribution_integral
from .losses.focal import sigmoid_focal_loss
from .losses.iou import iou_loss
from .losses.quality_focal import quality_focal_loss
from .losses.varifocal import varifocal_loss

__all__ = [
    "distribution_focal_loss",
    "distribution_integral",
    "iou_loss",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "varifocal_loss",
]
