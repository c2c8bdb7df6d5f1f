"""``detlosses-eval``: COCO box evaluation from the command line.

    detlosses-eval --gt instances_val.json --pred results.json [--out report.json]
                   [--plots DIR] [--backend pycocotools|faster] [--drop-invalid] [--errors]
    detlosses-eval --ckpt CKPT [--val-ann ANN --val-images DIR] [--config CFG] [--save-dir DIR]
                   [--out report.json] [--plots DIR] [--backend ...] [--num-vis N] [--errors]

Prints pycocotools' 12-line summary and a per-class AP / AP50 / AR100 table; ``--out`` writes
``{"stats": {...}, "per_class": {...}}``; ``--plots`` writes precision-recall curves as PNG.
``--errors`` adds TIDE's error breakdown, a confusion matrix (``confusion_matrix.png`` with
``--plots``) and the per-class F1-optimal score thresholds, to the printout and the report.

Exit codes: 0 done; 2 input that cannot be used (unreadable or malformed json, invalid
entries, missing files, a file that is not a checkpoint, an output path under a file), with
the message and no traceback; 1 anything else — a bug, shown with its traceback. The
evaluation itself is :func:`detlosses.evaluation.coco_evaluate`.

``--ckpt`` rebuilds the detector from the checkpoint alone, runs it on the validation images,
evaluates, and writes ``results.json``, ``report.json`` and ``--num-vis`` images with ground
truth and detections drawn to ``--save-dir`` (default: ``eval/`` beside the checkpoint's
``checkpoints/`` folder). The data default to those the checkpoint was trained with; a
LightningCLI ``--config`` (its ``data:`` section) or ``--val-ann`` / ``--val-images`` /
``--image-size`` override them, in that order.

This module imports neither torch nor Lightning at the top: evaluating a results file needs
only ``detlosses.evaluation`` (NumPy; pycocotools / faster-coco-eval loaded lazily). ``--ckpt``
imports the Lightning side when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

from detlosses.evaluation import (
    BACKENDS,
    COCOInputError,
    COCOReport,
    coco_evaluate,
    format_problems,
    load_ground_truth,
    plot_confusion_matrix,
    plot_pr_curves,
)

PROG = "detlosses-eval"
EXIT_INPUT_ERROR = 2  # same code argparse uses for usage errors


class InputError(COCOInputError):
    """A checkpoint, config, data or output argument that cannot be used (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate COCO box results with pycocotools' protocol and numbers.",
    )
    parser.add_argument("--gt", metavar="ANN", help="COCO ground-truth annotation json (with --pred)")
    source = parser.add_mutually_exclusive_group(required=True)  # what to evaluate
    source.add_argument(
        "--pred",
        metavar="RESULTS",
        help="COCO results json: [{image_id, category_id, bbox, score}]",
    )
    source.add_argument("--ckpt", metavar="CKPT", help="a detlosses-train checkpoint: predict, then evaluate")
    model = parser.add_argument_group("--ckpt options")
    model.add_argument("--config", metavar="CFG", help="LightningCLI config whose data: section names the images")
    model.add_argument("--val-ann", metavar="ANN", help="COCO annotation json of the images to evaluate on")
    model.add_argument("--val-images", metavar="DIR", help="folder of those images")
    model.add_argument("--image-size", type=int, help="network input side (default: the training value)")
    model.add_argument("--batch-size", type=int, default=16)
    model.add_argument("--num-workers", type=int, default=0)
    model.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    model.add_argument("--save-dir", metavar="DIR", type=Path, help="where results, report and drawings go")
    model.add_argument("--num-vis", type=int, default=8, help="images drawn with their boxes (0: none)")
    parser.add_argument("--out", metavar="REPORT", type=Path, help='write {"stats", "per_class"} json here')
    parser.add_argument("--plots", metavar="DIR", type=Path, help="write precision-recall curves (PNG) here")
    parser.add_argument("--backend", choices=BACKENDS, default="pycocotools")
    parser.add_argument(
        "--drop-invalid",
        action="store_true",
        help="drop invalid prediction entries instead of failing",
    )
    errors = parser.add_argument_group("--errors options")
    errors.add_argument(
        "--errors",
        action="store_true",
        help="TIDE error breakdown, confusion matrix and per-class F1-optimal score thresholds",
    )
    errors.add_argument("--confusion-iou", type=float, default=0.5, help="IoU of a confusion-matrix pair")
    errors.add_argument("--confusion-score", type=float, default=0.25, help="score from which detections count")
    return parser


def _check_output(path: Path | None, is_dir: bool) -> None:
    """InputError when ``path`` cannot be written: it or a parent is a file where a folder is needed."""
    if path is None:
        return
    if path.exists() and path.is_dir() != is_dir:
        kind = "a folder" if path.is_dir() else "a file"
        raise InputError(f"{path} is {kind}; expected {'a folder' if is_dir else 'a file path'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot write {path}: {parent} is a file, not a folder")
            break


def _print_dropped(report: COCOReport) -> None:
    total = report.num_predictions + report.num_dropped
    print(f"Dropped {report.num_dropped} of {total} invalid prediction entries:")
    print(format_problems(report.dropped), end="\n\n")


def _report(args: argparse.Namespace, gt: str | dict, predictions: str | list, out: Path | None) -> COCOReport:
    """Evaluate, print the summary and the per-class table, write ``out`` and ``--plots``."""
    report = coco_evaluate(
        gt,
        predictions,
        backend=args.backend,
        drop_invalid=args.drop_invalid,
        errors=args.errors,
        confusion_iou_thr=args.confusion_iou,
        confusion_score_thr=args.confusion_score,
    )
    if report.num_dropped:
        _print_dropped(report)
    print(report.summary)
    print()
    print(report.format_per_class())
    if report.errors is not None:
        print()
        print(report.errors.format())
        print()
        print(f"Best-F1 score threshold per class (IoU {report.errors.pos_thr:g}):")
        print(report.format_best_f1())
    for path in dict.fromkeys(p for p in (out, args.out) if p is not None):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"\nWrote {path}")
    if args.plots is not None:
        paths = plot_pr_curves(report, args.plots)
        print(f"Wrote {len(paths)} precision-recall plots to {args.plots}")
        if report.confusion is not None:
            path = plot_confusion_matrix(report.confusion, args.plots / "confusion_matrix.png")
            print(f"Wrote the confusion matrix to {path}")
    return report


def _config_data_args(config: str) -> dict:
    """The ``data:`` section of a LightningCLI YAML config (``init_args`` unwrapped)."""
    import yaml

    try:
        with open(config, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise InputError(f"cannot read config {config!r}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise InputError(f"config {config!r} is not valid YAML: {e}") from e
    data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
    return dict(data.get("init_args", data)) if isinstance(data, dict) else {}


def _checkpoint_data_args(ckpt: Path) -> dict:
    """The checkpoint's data arguments; InputError when it is missing or not a checkpoint."""
    from lightning_modules.inference import checkpoint_data_args

    if not ckpt.is_file():
        raise InputError(f"checkpoint not found: {ckpt}")
    try:
        data = checkpoint_data_args(ckpt)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:  # torch.load's refusals
        raise InputError(f"{ckpt} is not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    return data


def _evaluate_checkpoint(args: argparse.Namespace) -> int:
    from lightning_modules.inference import draw_detections, load_detector, predict_coco_results

    ckpt = Path(args.ckpt)
    data = _checkpoint_data_args(ckpt)
    if args.config is not None:
        data.update(_config_data_args(args.config))
    given = {"val_ann": args.val_ann, "val_images": args.val_images, "image_size": args.image_size}
    data.update({key: value for key, value in given.items() if value is not None})
    missing = [f"--{key.replace('_', '-')}" for key in ("val_ann", "val_images", "image_size") if key not in data]
    if missing:
        raise InputError(f"{ckpt} does not name its validation data: pass {', '.join(missing)} (or --config)")

    coco = load_ground_truth(data["val_ann"])  # checked before any prediction; also used for drawing
    if not os.path.isdir(data["val_images"]):
        raise InputError(f"image folder not found: {data['val_images']}")
    model = load_detector(ckpt, args.device)
    print(f"Predicting {data['val_images']} ({data['val_ann']}) at {data['image_size']} px with {ckpt}")
    results = predict_coco_results(
        model, data["val_ann"], data["val_images"], int(data["image_size"]), args.batch_size, args.num_workers
    )
    save_dir = args.save_dir or ckpt.resolve().parent.parent / "eval"
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "results.json").write_text(json.dumps(results) + "\n", encoding="utf-8")
    print(f"Wrote {len(results)} detections to {save_dir / 'results.json'}\n")
    _report(args, coco, results, save_dir / "report.json")
    if args.num_vis > 0:
        drawn = draw_detections(coco, data["val_images"], results, save_dir / "vis", args.num_vis)
        print(f"Drew ground truth (green) and detections (red) on {len(drawn)} images in {save_dir / 'vis'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or usage; a bug raises)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pred is not None and args.gt is None:
        parser.error("--pred needs --gt ANN")
    if args.ckpt is not None and args.gt is not None:
        parser.error("--gt goes with --pred; with --ckpt name the images with --val-ann / --val-images")
    try:
        _check_output(args.out, is_dir=False)
        _check_output(args.plots, is_dir=True)
        _check_output(args.save_dir, is_dir=True)
        if args.pred is not None:
            _report(args, args.gt, args.pred, None)
            return 0
        return _evaluate_checkpoint(args)
    except (COCOInputError, FileNotFoundError) as e:  # bad input (a missing image, say); anything else is a bug
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
