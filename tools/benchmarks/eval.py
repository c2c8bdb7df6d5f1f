"""COCO evaluation: pycocotools vs faster-coco-eval vs the ``detlosses-eval`` command line.

A seeded synthetic COCO set (default 5000 images, 30 000 boxes over 80 categories with a
long-tailed frequency, sizes from 8 to 400 px so all three area ranges are populated) and
50 000 detections (jittered copies of ~70 % of the boxes, some duplicates and mislabels, the
rest false positives with lower scores) are written to a temporary directory. Timed from the
two files, interleaved round by round (``--repeat`` rounds, median):

* pycocotools and faster-coco-eval run directly in this process (load, evaluate, accumulate,
  summarize) — what a user would write instead; pycocotools is the reference (ratio 1);
* ``detlosses.evaluation.coco_evaluate`` with each backend, in process (adds the input checks);
* the ``detlosses-eval --gt --pred`` command line in a fresh interpreter, as a user runs it
  (start-up, reading, checks, evaluation, printing, writing report.json), with
  ``--backend faster``, and with ``--errors`` too (TIDE breakdown, confusion matrix, F1);
* the command line's start-up: ``--help`` in a fresh interpreter, and the import time of its
  module from ``python -X importtime`` (which also shows whether torch is imported).

Every run's 12 stats must equal pycocotools' (the command line's are read from its report).
Target: the command line with ``--backend faster`` at most 0.3x pycocotools' in-process time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (640, 640))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median)")
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
    image_sizes = np.array(IMAGE_SIZES, dtype=np.float64)[rng.integers(0, len(IMAGE_SIZES), args.images)]
    images = [
        {"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": int(w), "height": int(h)}
        for i, (w, h) in enumerate(image_sizes)
    ]
    categories = [{"id": c + 1, "name": f"class_{c + 1}", "supercategory": "synthetic"} for c in range(args.classes)]
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
    tp_label = np.where(rng.random(len(source)) < 0.9, gt_label[source], rng.integers(0, args.classes, len(source)))
    tp_score = rng.beta(4, 2, len(source)) * np.where(np.arange(len(source)) < len(hit), 1.0, 0.6)
    fp_image = rng.integers(0, args.images, n_fp)
    det_image = np.concatenate([gt_image[source], fp_image])
    det_label = np.concatenate([tp_label, rng.choice(args.classes, n_fp, p=frequency)])
    det_boxes = _clip_xywh(np.concatenate([jitter, _random_boxes(rng, image_sizes[fp_image])]), image_sizes[det_image])
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
    evaluator = COCOeval_faster(gt, gt.loadRes(dt_path), "bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats[:12])


REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "tools" / "coco_eval.py"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(CLI), *args], capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"detlosses-eval {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return run


def _import_time_s(module: str) -> tuple[float, bool]:
    """(cumulative import time of ``module`` in s from -X importtime, whether torch was imported)."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    lines = [line for line in run.stderr.splitlines() if line.rstrip().endswith(f"| {module}")]
    return int(lines[-1].split("|")[1]) / 1e6, run.stdout.strip() == "True"


def run(args: argparse.Namespace) -> list[dict]:
    import faster_coco_eval  # noqa: F401  (imported before timing: the in-process runs would pay it once)
    import pycocotools.cocoeval  # noqa: F401

    from detlosses.evaluation import STAT_NAMES, coco_evaluate

    dataset, detections = make_dataset(args)
    times: dict[str, list[float]] = {}
    stats: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = str(Path(tmp) / "gt.json"), str(Path(tmp) / "results.json")
        report_path = str(Path(tmp) / "report.json")
        Path(gt_path).write_text(json.dumps(dataset))
        Path(dt_path).write_text(json.dumps(detections))

        def report_stats(report) -> np.ndarray:
            return np.array([report.stats[name] for name in STAT_NAMES])

        def cli_stats(*extra: str) -> np.ndarray:
            _cli("--gt", gt_path, "--pred", dt_path, "--backend", "faster", "--out", report_path, *extra)
            written = json.loads(Path(report_path).read_text())["stats"]
            return np.array([written[name] for name in STAT_NAMES])

        cases = {
            "pycocotools, in process": lambda: _library_pycocotools(gt_path, dt_path),
            "faster-coco-eval, in process": lambda: _library_faster(gt_path, dt_path),
            "coco_evaluate pycocotools": lambda: report_stats(coco_evaluate(gt_path, dt_path, "pycocotools")),
            "coco_evaluate faster": lambda: report_stats(coco_evaluate(gt_path, dt_path, "faster")),
            "detlosses-eval --backend faster": lambda: cli_stats(),
            "detlosses-eval --backend faster --errors": lambda: cli_stats("--errors"),
            "detlosses-eval --help (start-up)": lambda: _cli("--help") and None,
        }
        for _ in range(args.repeat):  # interleaved: load from other processes hits all alike
            for name, fn in cases.items():
                start = time.perf_counter()
                out = fn()
                times.setdefault(name, []).append(time.perf_counter() - start)
                if out is not None:
                    stats[name] = out
    import_s, imports_torch = _import_time_s("lightning_modules.eval_cli")
    reference = stats["pycocotools, in process"]
    base = statistics.median(times["pycocotools, in process"])
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        row = {
            "run": name,
            "images": args.images,
            "gt_boxes": args.boxes,
            "detections": len(detections),
            "median_s": median,
            "min_s": min(seconds),
            "ratio": median / base,
        }
        if name in stats:
            row["stats_identical"] = bool(np.abs(stats[name] - reference).max() <= 1e-12)
        rows.append(row)
    rows.append(
        {
            "run": "import lightning_modules.eval_cli (-X importtime)",
            "median_s": import_s,
            "imports_torch": imports_torch,
        }
    )
    return rows
