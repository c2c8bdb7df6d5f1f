"""COCO evaluation backends: wall time of pycocotools vs faster-coco-eval on a generated set.

A seeded synthetic COCO set (default 5000 images, 30 000 boxes over 80 categories with a
long-tailed frequency, sizes from 8 to 400 px so all three area ranges are populated) and
50 000 detections (jittered copies of ~70 % of the boxes, some duplicates and mislabels, the
rest false positives with lower scores) are written to a temporary directory. Each backend is
timed end to end from the two files: load + evaluate + accumulate + summarize, once through
the libraries directly and once through ``detlosses.evaluation.coco_evaluate`` (which adds
the input checks). Target: faster <= 0.5x pycocotools, with the same 12 stats.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (640, 640))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=30_000, help="ground-truth boxes")
    parser.add_argument("--detections", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)


def _random_boxes(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """(N, 4) xywh boxes inside images of the given (N, 2) [width, height] sizes."""
    side = np.exp(rng.uniform(np.log(8), np.log(400), len(sizes)))  # sqrt(area), log-uniform
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), len(sizes)))
    wh = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], axis=1)
    wh = np.clip(wh, 2, sizes - 1)
    xy = rng.uniform(0, 1, (len(sizes), 2)) * (sizes - wh)
    return np.concatenate([xy, wh], axis=1)


def _clip_xywh(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    x1y1 = np.clip(boxes[:, :2], 0, sizes - 1)
    x2y2 = np.clip(boxes[:, :2] + boxes[:, 2:], x1y1 + 1, sizes)
    return np.concatenate([x1y1, x2y2 - x1y1], axis=1)


def make_dataset(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """(ground-truth dataset, detections) as COCO json objects; deterministic in args.seed."""
    rng = np.random.default_rng(args.seed)
    image_sizes = np.array(IMAGE_SIZES, dtype=np.float64)[
        rng.integers(0, len(IMAGE_SIZES), args.images)
    ]
    images = [
        {"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": int(w), "height": int(h)}
        for i, (w, h) in enumerate(image_sizes)
    ]
    categories = [
        {"id": c + 1, "name": f"class_{c + 1}", "supercategory": "synthetic"}
        for c in range(args.classes)
    ]
    frequency = 1.0 / np.arange(1, args.classes + 1) ** 0.8  # long tail, like COCO
    frequency /= frequency.sum()

    # ground truth
    gt_image = rng.integers(0, args.images, args.boxes)
    gt_label = rng.choice(args.classes, args.boxes, p=frequency)
    gt_boxes = _random_boxes(rng, image_sizes[gt_image])
    annotations = [
        {
            "id": j + 1,
            "image_id": int(gt_image[j]) + 1,
            "category_id": int(gt_label[j]) + 1,
            "bbox": np.round(gt_boxes[j], 2).tolist(),
            "area": float(np.round(gt_boxes[j, 2] * gt_boxes[j, 3], 2)),
            "iscrowd": 0,
        }
        for j in range(args.boxes)
    ]

    # detections: jittered hits (10 % with a wrong label), duplicates, then false positives
    hit = np.flatnonzero(rng.random(args.boxes) < 0.7)
    duplicate = hit[rng.random(len(hit)) < 0.1]
    source = np.concatenate([hit, duplicate])[: args.detections]
    n_fp = args.detections - len(source)
    jitter = gt_boxes[source].copy()
    jitter[:, :2] += rng.normal(0, 0.08, (len(source), 2)) * jitter[:, 2:]
    jitter[:, 2:] *= np.exp(rng.normal(0, 0.12, (len(source), 2)))
    tp_label = np.where(
        rng.random(len(source)) < 0.9, gt_label[source], rng.integers(0, args.classes, len(source))
    )
    tp_score = rng.beta(4, 2, len(source)) * np.where(np.arange(len(source)) < len(hit), 1.0, 0.6)
    fp_image = rng.integers(0, args.images, n_fp)
    det_image = np.concatenate([gt_image[source], fp_image])
    det_label = np.concatenate([tp_label, rng.choice(args.classes, n_fp, p=frequency)])
    det_boxes = _clip_xywh(
        np.concatenate([jitter, _random_boxes(rng, image_sizes[fp_image])]), image_sizes[det_image]
    )
    det_score = np.concatenate([tp_score, rng.beta(1.5, 4, n_fp)])
    detections = [
        {
            "image_id": int(det_image[j]) + 1,
            "category_id": int(det_label[j]) + 1,
            "bbox": np.round(det_boxes[j], 2).tolist(),
            "score": round(float(det_score[j]), 4),
        }
        for j in range(len(det_image))
    ]
    dataset = {"info": {"description": "detlosses eval benchmark"}, "images": images}
    dataset |= {"annotations": annotations, "categories": categories}
    return dataset, detections


def _library_pycocotools(gt_path: str, dt_path: str) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        evaluator = COCOeval(gt, gt.loadRes(dt_path), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:12])


def _library_faster(gt_path: str, dt_path: str) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(gt_path)
    evaluator = COCOeval_faster(
        gt, gt.loadRes(dt_path), "bbox", print_function=lambda *a, **k: None
    )
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats[:12])


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run(args: argparse.Namespace) -> list[dict]:
    from detlosses.evaluation import STAT_NAMES, coco_evaluate

    dataset, detections = make_dataset(args)
    library = {"pycocotools": _library_pycocotools, "faster": _library_faster}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = str(Path(tmp) / "gt.json"), str(Path(tmp) / "results.json")
        Path(gt_path).write_text(json.dumps(dataset))
        Path(dt_path).write_text(json.dumps(detections))
        timings, stats = {}, {}
        for backend, fn in library.items():
            lib_stats, lib_s = _timed(fn, gt_path, dt_path)
            report, ours_s = _timed(coco_evaluate, gt_path, dt_path, backend)
            ours_stats = np.array([report.stats[name] for name in STAT_NAMES])
            if np.abs(ours_stats - lib_stats).max() > 1e-12:
                raise AssertionError(f"coco_evaluate disagrees with {backend} run directly")
            timings[backend], stats[backend] = (lib_s, ours_s), ours_stats
    reference = stats["pycocotools"]
    for backend, (lib_s, ours_s) in timings.items():
        delta = float(np.abs(stats[backend] - reference).max())
        rows.append(
            {
                "backend": backend,
                "images": args.images,
                "gt_boxes": args.boxes,
                "detections": len(detections),
                "classes": args.classes,
                "library_s": lib_s,
                "coco_evaluate_s": ours_s,
                "ratio_library": lib_s / timings["pycocotools"][0],
                "ratio_coco_evaluate": ours_s / timings["pycocotools"][1],
                "AP": float(stats[backend][0]),
                "max_abs_stat_diff": delta,
                "stats_identical": delta < 1e-12,
            }
        )
    return rows
