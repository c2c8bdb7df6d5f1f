"""Shared fixtures: a data set that looks like real COCO.

``coco_like`` is the real COCO val2014 sample shipped in ``tests/data/coco_val2014_100`` (80
categories with ids up to 90, crowd boxes, images of many sizes, both orientations) with each
image generated as block noise of its annotated size at test time, so that nothing large is
committed. ``subset_ann`` holds ``SUBSET`` of its images (landscape, portrait and two with crowd boxes among
them) for the short fits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COCO_SAMPLE = Path(__file__).parent / "data" / "coco_val2014_100" / "instances_val2014_100.json"
SUBSET = 12


def write_noise_images(coco: dict, image_dir: Path, seed: int = 0) -> None:
    """One JPEG per image of ``coco``, of its annotated width and height: 8 px blocks of noise."""
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    for image in coco["images"]:
        h, w = image["height"], image["width"]
        blocks = rng.integers(0, 256, size=(-(-h // 8), -(-w // 8), 3), dtype=np.uint8)
        pixels = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:h, :w]
        Image.fromarray(pixels).save(image_dir / image["file_name"], quality=80)


def _subset(coco: dict, count: int) -> dict:
    """The first two images with a crowd box, then the lowest ids, ``count`` in all."""
    crowded = sorted({a["image_id"] for a in coco["annotations"] if a["iscrowd"]})[:2]
    rest = [im["id"] for im in sorted(coco["images"], key=lambda im: im["id"]) if im["id"] not in crowded]
    ids = set(crowded + rest[: count - len(crowded)])
    images = [im for im in coco["images"] if im["id"] in ids]
    return {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


@pytest.fixture(scope="session")
def coco_like(tmp_path_factory) -> dict[str, str]:
    """Paths ``ann`` (all 100 images), ``subset_ann`` (the first ``SUBSET``) and ``images``."""
    root = tmp_path_factory.mktemp("coco_like")
    coco = json.loads(COCO_SAMPLE.read_text())
    write_noise_images(coco, root / "images")
    subset = root / "subset.json"
    subset.write_text(json.dumps(_subset(coco, SUBSET)))
    return {"ann": str(COCO_SAMPLE), "subset_ann": str(subset), "images": str(root / "images")}
