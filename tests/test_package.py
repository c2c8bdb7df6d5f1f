"""Package-level contract: what `import detlosses` pulls in and what it exports."""

import subprocess
import sys


def test_import_detlosses_needs_only_torch_and_torchvision():
    code = (
        "import sys, detlosses\n"
        "heavy = [m for m in ('pytorch_lightning', 'lightning', 'lightning_fabric', 'pycocotools',\n"
        "         'faster_coco_eval', 'albumentations', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import detlosses imported {out.stdout.strip()}"


def test_public_names():
    import detlosses
    from detlosses import functional

    for name in ("LOSSES", "ASSIGNERS", "NMS", "Registry", "DetectionCriterion", "recipes", "functional"):
        assert hasattr(detlosses, name), name
    for name in ("sigmoid_focal_loss", "quality_focal_loss", "varifocal_loss", "distribution_focal_loss",
                 "iou_loss", "distribution_integral"):
        assert callable(getattr(functional, name)), name
