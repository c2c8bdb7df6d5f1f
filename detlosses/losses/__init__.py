"""Loss functions (functional, unreduced) and their registered modules."""

from .distribution_focal import DistributionFocalLoss, distribution_focal_loss, distribution_integral
from .focal import FocalLoss, sigmoid_focal_loss
from .iou import CIoULoss, DIoULoss, EIoULoss, GIoULoss, IoULoss, SIoULoss, iou_loss
from .quality_focal import QualityFocalLoss, quality_focal_loss
from .varifocal import VarifocalLoss, varifocal_loss

__all__ = [
    "CIoULoss",
    "DIoULoss",
    "DistributionFocalLoss",
    "EIoULoss",
    "FocalLoss",
    "GIoULoss",
    "IoULoss",
    "QualityFocalLoss",
    "SIoULoss",
    "VarifocalLoss",
    "distribution_focal_loss",
    "distribution_integral",
    "iou_loss",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "varifocal_loss",
]
