"""Golden TIDE figures from the real ``tidecv`` package, stored for the tests.

Run with the peers' venv (it has tidecv; the project does not depend on it)::

    /root/.cache/detlosses-peers/bin/python tools/tide_golden.py

It writes ``tests/data/tide/planted_gt.json`` and ``planted_results.json`` — a generated set
with planted errors: every image has up to four ground-truth boxes on a grid (so no two
overlap), and each planted kind is made on its own boxes:

* loc: the detection is shifted by half its width (IoU 1/3 with its box);
* cls: the exact box with another class;
* both: shifted like loc and with another class;
* dupe: a second, lower-scored, slightly moved detection of an already found box;
* bkg: a box in an empty cell of the grid;
* miss: a box with no detection at all;

plus found boxes (with a small jitter), a crowd region with a detection inside it
(ignored in the AP), tied scores, and one image with more than 100 detections (tidecv keeps the 100
best). The planted counts are written beside tidecv's figures. Then ``tests/data/tide/golden.json``
gets tidecv's AP, main and special dAPs (TIDE defaults: pos 0.5, background 0.1, bbox mode)
on that set and on the real COCO val2014 sample (``tests/data/coco_val2014_100``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "tide"
SAMPLE = REPO / "tests" / "data" / "coco_val2014_100"
KINDS = ("cls", "loc", "both", "dupe", "bkg", "miss")
TIDE_NAMES = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg", "miss": "Miss"}
CELL, SIDE, GRID = 160, 80, 4  # 4 x 3 cells of 160 px on a 640 x 480 image, boxes of 80 px


def planted_set(num_images: int = 40, num_classes: int = 3, seed: int = 0) -> tuple[dict, list[dict], dict]:
    """(ground truth, results, planted counts per kind); deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    planted = dict.fromkeys(KINDS, 0)

    def add_det(image_id: int, category: int, box: list[float], score: float) -> None:
        results.append({"image_id": image_id, "category_id": category, "bbox": box, "score": score})

    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:04d}.jpg", "width": 640, "height": 480})
        cells = rng.permutation(GRID * 3)
        for slot, cell in enumerate(cells[:6]):
            x = float(cell % GRID * CELL + 40)
            y = float(cell // GRID * CELL + 40)
            box = [x, y, float(SIDE), float(SIDE)]
            category = int(rng.integers(1, num_classes + 1))
            other = category % num_classes + 1
            score = float(np.round(rng.uniform(0.05, 1.0), 2))  # 2 decimals: tied scores happen
            kind = "bkg" if slot == 5 else rng.choice(["hit", "hit", "hit", *KINDS])
            if kind != "bkg":
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": box,
                        "area": SIDE * SIDE,
                        "iscrowd": 0,
                    }
                )
            if kind == "hit":
                jitter = rng.uniform(-4, 4, 2).round(1).tolist()
                add_det(image_id, category, [x + jitter[0], y + jitter[1], SIDE, SIDE], score)
            elif kind == "loc":
                add_det(image_id, category, [x + SIDE / 2, y, SIDE, SIDE], score)
            elif kind == "cls":
                add_det(image_id, other, box, score)
            elif kind == "both":
                add_det(image_id, other, [x + SIDE / 2, y, SIDE, SIDE], score)
            elif kind == "dupe":
                add_det(image_id, category, box, score)
                add_det(image_id, category, [x + 3, y + 3, SIDE, SIDE], score / 2)
            elif kind == "bkg":
                if rng.random() < 0.3:  # an empty cell left empty
                    continue
                add_det(image_id, int(rng.integers(1, num_classes + 1)), box, score)
            if kind != "hit":  # "miss": the box has no detection
                planted[kind] += 1
            if kind == "both":  # its box is missed too: no loc or cls error points at it
                planted["miss"] += 1
    # a crowd region with one detection inside it: ignored in the AP, but tidecv still gives it
    # an error (bkg: it overlaps no other box), which no fix changes
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0.0, 440.0, 640.0, 40.0],
            "area": 640.0 * 40,
            "iscrowd": 1,
        }
    )
    add_det(1, 1, [10.0, 445.0, 30.0, 30.0], 0.99)
    planted["bkg"] += 1
    # one image with 120 tiny background detections, all below its real ones: 100 are kept
    crowded = num_images
    real = sum(1 for r in results if r["image_id"] == crowded)
    for j in range(120):
        add_det(crowded, 1, [float(2 + 5 * (j % 120)) % 600, 2.0, 3.0, 3.0], 0.01)
    planted["bkg"] += 100 - real
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "planted"} for c in range(1, num_classes + 1)]
    dataset = {
        "info": {"description": "TIDE planted errors"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return dataset, results, planted


def _tidecv(gt: dict, results: list[dict]) -> dict:
    from tidecv import TIDE, datasets

    with tempfile.TemporaryDirectory() as tmp:
        gt = json.loads(json.dumps(gt))
        for ann in gt["annotations"]:  # tidecv's loader reads a mask of every box
            x, y, w, h = ann["bbox"]
            ann.setdefault("segmentation", [[x, y, x + w, y, x + w, y + h, x, y + h]])
        gt_path, dt_path = os.path.join(tmp, "gt.json"), os.path.join(tmp, "results.json")
        Path(gt_path).write_text(json.dumps(gt))
        Path(dt_path).write_text(json.dumps(results))
        tide = TIDE()
        with contextlib.redirect_stdout(io.StringIO()):
            run = tide.evaluate(datasets.COCO(gt_path), datasets.COCOResult(dt_path), mode=TIDE.BOX)
            errors = tide.get_all_errors()
    (main,), (special,) = errors["main"].values(), errors["special"].values()
    counts = run.count_errors()
    return {
        "ap": run.ap,
        "main": {kind: main[TIDE_NAMES[kind]] for kind in KINDS},
        "special": {"fp": special["FalsePos"], "fn": special["FalseNeg"]},
        "counts": {kind: counts[next(t for t in counts if t.short_name == TIDE_NAMES[kind])] for kind in KINDS},
    }


def main() -> None:
    import tidecv  # noqa: F401  (fail early outside the peers' venv)

    OUT.mkdir(parents=True, exist_ok=True)
    dataset, results, planted = planted_set()
    (OUT / "planted_gt.json").write_text(json.dumps(dataset) + "\n")
    (OUT / "planted_results.json").write_text(json.dumps(results) + "\n")
    sample_gt = json.loads((SAMPLE / "instances_val2014_100.json").read_text())
    sample_results = json.loads((SAMPLE / "instances_val2014_fakebbox100_results.json").read_text())
    golden = {
        "source": "tidecv 1.0.1, TIDE() defaults, mode bbox; made by tools/tide_golden.py",
        "planted": {**_tidecv(dataset, results), "planted_counts": planted},
        "coco_val2014_100": _tidecv(sample_gt, sample_results),
    }
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(json.dumps(golden, indent=1))


if __name__ == "__main__":
    sys.exit(main())
