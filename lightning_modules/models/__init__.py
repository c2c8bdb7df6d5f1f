"""Detector networks for the Lightning reference detector (pure torch, randomly initialised)."""

from .backbone import CSPBackbone
from .detector_model import SIZES, DenseDetectorModel, DenseOutput
from .head import DecoupledHead, TOODHead
from .neck import PANNeck

__all__ = [
    "SIZES",
    "CSPBackbone",
    "DecoupledHead",
    "DenseDetectorModel",
    "DenseOutput",
    "PANNeck",
    "TOODHead",
]
