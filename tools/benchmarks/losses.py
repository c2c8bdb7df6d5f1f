"""Forward+backward time of every loss on CPU, beside the reference implementations.

Rows come from tools/benchmarks/cls_losses.py (16384 x 80 logits) and
tools/benchmarks/box_losses.py (16384 box pairs).
"""

from __future__ import annotations

import argparse

from . import box_losses, cls_losses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=16384, help="rows of logits / box pairs")
    parser.add_argument("--classes", type=int, default=80, help="classes (logits per row)")
    parser.add_argument("--reg-max", dest="reg_max", type=int, default=16, help="DFL bins - 1")
    parser.add_argument("--repeat", type=int, default=20, help="timed rounds (median reported)")
    parser.add_argument("--pairwise", type=str, default="8400x1000", help="N x M for pairwise box_iou")


def run(args: argparse.Namespace) -> list[dict]:
    return cls_losses.run(args) + box_losses.run(args)
