"""Task-aligned assigner: time and peak memory of each variant, ours vs a dense version.

    python tools/bench.py assign                       # B=4, A=8400 (640 px, strides 8/16/32), C=80
    python tools/bench.py assign --num-gt 100 1000 --repeat 5 --threads 2 --variants tood yolov8

Variants (``VARIANTS``): ``claimants`` (inside first, resolve among claimants: the
DESIGN.md default), and the variants of the ``tood`` (top-k first, margin 0.01, eps 1e-7),
``ppyoloe`` (resolve among all GTs of the image) and ``yolov8`` (CIoU, resolve among the
GTs containing the anchor, GT sides grown to 16 px) recipes. The dense version is
``tests/references.py``'s ``dense_task_aligned`` (the semantics on (B, G, A) tensors).

Every (implementation, G) runs in a fresh subprocess: inputs are built, ``ru_maxrss`` is
read, the assigner runs once, and ``peak_mb`` is the growth of ``ru_maxrss`` (the extra
resident memory of the call, outputs included). ``time_s`` is the median of ``--repeat``
further calls. ``checksum`` summarises the result so the rows of the two implementations at
the same G can be compared (``match``).

GT boxes: uniform centres, log-uniform sides in [8, 256] px clipped to the image, all rows
valid; predicted boxes are anchor-centred with random sides of 1-8 strides.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from detlosses.assigners import AssignResult, TaskAlignedAssigner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tests.references import dense_task_aligned  # noqa: E402

IMAGE_SIZE = 640
STRIDES = (8, 16, 32)
VARIANTS = {
    "claimants": {},
    "tood": {"order": "topk_first", "inside_margin": 0.01, "eps": 1e-7},
    "ppyoloe": {"resolve": "all"},
    "yolov8": {"topk": 10, "alpha": 0.5, "iou_type": "ciou", "resolve": "inside", "min_gt_size": 16.0},
}


def make_inputs(batch: int, num_gt: int, num_classes: int, seed: int = 0):
    """(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask)."""
    gen = torch.Generator().manual_seed(seed)
    points, strides = [], []
    for s in STRIDES:
        n = IMAGE_SIZE // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        points.append(torch.stack([xs, ys], -1).view(-1, 2) * s)
        strides.append(torch.full((n * n,), float(s)))
    points, strides = torch.cat(points), torch.cat(strides)  # (A, 2), (A,)
    a = points.shape[0]
    pred_scores = torch.randn(batch, a, num_classes, generator=gen).sigmoid()
    half = strides[:, None] * torch.empty(batch, a, 2).uniform_(0.5, 4.0, generator=gen)
    pred_bboxes = torch.cat([points - half, points + half], dim=-1)
    centre = torch.rand(batch, num_gt, 2, generator=gen) * IMAGE_SIZE
    size = torch.exp(torch.empty(batch, num_gt, 2).uniform_(2.08, 5.55, generator=gen))  # 8..256
    gt_bboxes = torch.cat([centre - size / 2, centre + size / 2], -1).clamp(0, IMAGE_SIZE)
    gt_labels = torch.randint(0, num_classes, (batch, num_gt), generator=gen)
    gt_mask = torch.ones(batch, num_gt, dtype=torch.bool)
    return pred_scores, pred_bboxes, points, gt_labels, gt_bboxes, gt_mask


def _checksum(res: AssignResult) -> str:
    return (
        f"{int(res.fg_mask.sum())}/{int(res.labels.sum())}/{int(res.gt_index.sum())}/"
        f"{float(res.scores.double().sum()):.9e}"
    )


def _worker(impl: str, variant: str, batch: int, num_gt: int, num_classes: int, repeat: int, threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    inputs = make_inputs(batch, num_gt, num_classes)
    kwargs = VARIANTS[variant]
    if impl == "ours":
        fn = TaskAlignedAssigner(**kwargs)
    else:

        def fn(*args):
            return dense_task_aligned(*args, **kwargs)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.no_grad():
        res = fn(*inputs)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    checksum = _checksum(res)
    del res
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.no_grad():
            fn(*inputs)
        times.append(time.perf_counter() - start)
    time_s = statistics.median(times) if times else None
    return {"time_s": time_s, "peak_mb": peak_mb, "checksum": checksum}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-gt", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--dense-max-gt",
        type=int,
        default=1000,
        help="skip the dense baseline above this G (it needs ~1 GB per 1000 GT)",
    )


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for variant in args.variants:
        for num_gt in args.num_gt:
            rows += _compare(args, variant, num_gt)
    return rows


def _compare(args: argparse.Namespace, variant: str, num_gt: int) -> list[dict]:
    """Rows of ours and the dense version for one variant and G."""
    rows = []
    results = {}
    for impl in ("ours", "dense"):
        row = {
            "variant": variant,
            "impl": impl,
            "B": args.batch,
            "A": sum((IMAGE_SIZE // s) ** 2 for s in STRIDES),
            "G": num_gt,
            "C": args.num_classes,
        }
        if impl == "dense" and num_gt > args.dense_max_gt:
            rows.append({**row, "time_s": None, "peak_mb": None, "match": "skipped (memory)"})
            continue
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            impl,
            variant,
            str(args.batch),
            str(num_gt),
            str(args.num_classes),
            str(args.repeat),
            str(args.threads),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[impl] = json.loads(out.strip().splitlines()[-1])
        rows.append({**row, "time_s": results[impl]["time_s"], "peak_mb": results[impl]["peak_mb"]})
    if len(results) == 2:
        same = results["ours"]["checksum"] == results["dense"]["checksum"]
        rows[-1]["match"] = rows[-2]["match"] = "yes" if same else "NO"
        rows[-2]["time_vs_dense"] = results["ours"]["time_s"] / results["dense"]["time_s"]
        rows[-2]["mem_vs_dense"] = results["ours"]["peak_mb"] / max(results["dense"]["peak_mb"], 1e-9)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "--worker":
        impl, variant, *numbers = sys.argv[2:]
        print(json.dumps(_worker(impl, variant, *(int(x) for x in numbers))))
    else:
        from tools.bench import format_table

        parser = argparse.ArgumentParser(description=__doc__)
        add_arguments(parser)
        print(format_table(run(parser.parse_args())))
