"""``detlosses-eval``: COCO box evaluation from the command line.

    detlosses-eval --gt instances_val.json --pred results.json [--out report.json]
                   [--plots DIR] [--backend pycocotools|faster] [--drop-invalid]

Prints pycocotools' 12-line summary and a per-class AP / AP50 / AR100 table; ``--out`` writes
``{"stats": {...}, "per_class": {...}}``; ``--plots`` writes precision-recall curves as PNG.
Invalid predictions or an unreadable ground truth end with exit code 2 and a message (no
traceback). The evaluation itself is :func:`detlosses.evaluation.coco_evaluate`.

This module imports no Lightning code at the top: evaluating a results file needs only
detlosses (and pycocotools / faster-coco-eval, loaded lazily).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detlosses.evaluation import (
    BACKENDS,
    COCOInputError,
    COCOReport,
    coco_evaluate,
    format_problems,
    plot_pr_curves,
)

PROG = "detlosses-eval"
EXIT_INPUT_ERROR = 2  # same code argparse uses for usage errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate COCO box results with pycocotools' protocol and numbers.",
    )
    parser.add_argument("--gt", metavar="ANN", help="COCO ground-truth annotation json")
    # What to evaluate: exactly one source. A checkpoint source (--ckpt CKPT with
    # --val-ann ANN --val-images DIR: rebuild the model, predict, then evaluate) joins this
    # group later; it will dispatch in main() next to _evaluate_results().
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pred",
        metavar="RESULTS",
        help="COCO results json: [{image_id, category_id, bbox, score}]",
    )
    parser.add_argument(
        "--out", metavar="REPORT", type=Path, help='write {"stats", "per_class"} json here'
    )
    parser.add_argument(
        "--plots", metavar="DIR", type=Path, help="write precision-recall curves (PNG) here"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="pycocotools")
    parser.add_argument(
        "--drop-invalid",
        action="store_true",
        help="drop invalid prediction entries instead of failing",
    )
    return parser


def _print_dropped(report: COCOReport) -> None:
    total = report.num_predictions + report.num_dropped
    print(f"Dropped {report.num_dropped} of {total} invalid prediction entries:")
    print(format_problems(report.dropped), end="\n\n")


def _evaluate_results(args: argparse.Namespace) -> int:
    report = coco_evaluate(args.gt, args.pred, backend=args.backend, drop_invalid=args.drop_invalid)
    if report.num_dropped:
        _print_dropped(report)
    print(report.summary)
    print()
    print(report.format_per_class())
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"\nWrote {args.out}")
    if args.plots is not None:
        paths = plot_pr_curves(report, args.plots)
        print(f"Wrote {len(paths)} precision-recall plots to {args.plots}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gt is None:
        parser.error("--pred needs --gt ANN")
    try:
        return _evaluate_results(args)
    except COCOInputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
