"""Task-aligned assigner: time and peak memory, ours vs a straightforward dense version.

    python tools/bench.py assign                       # B=4, A=8400 (640 px, strides 8/16/32), C=80
    python tools/bench.py assign --num-gt 100 1000 --repeat 5 --threads 2

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
from detlosses.assigners.assign_result import _topk_mask  # ties to the lower anchor, as ours
from detlosses.boxes import box_iou

IMAGE_SIZE = 640
STRIDES = (8, 16, 32)


def dense_task_aligned(
    pred_scores: torch.Tensor,
    pred_bboxes: torch.Tensor,
    anchor_points: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_bboxes: torch.Tensor,
    gt_mask: torch.Tensor,
    topk: int = 13,
    alpha: float = 1.0,
    beta: float = 6.0,
    eps: float = 1e-9,
    iou_type: str = "iou",
) -> AssignResult:
    """The same semantics as TaskAlignedAssigner on dense (B, G, A) tensors (the usual way).

    Inside-box test on (B, G, A, 4) side distances, overlaps and the metric on the masked
    pairs, top-k over A, conflicts by argmax over G, normalisation on (B, G, A) — the
    layout of the YOLOv8 / PP-YOLOE assigners.
    """
    b, a, c = pred_scores.shape
    g = gt_labels.shape[1]
    labels = torch.full((b, a), c, dtype=torch.long)
    if g == 0:
        return AssignResult(
            labels,
            torch.zeros(b, a, 4),
            torch.zeros(b, a, c),
            torch.zeros(b, a, dtype=torch.bool),
            torch.zeros(b, a, dtype=torch.long),
        )
    lt = anchor_points[None, None] - gt_bboxes[:, :, None, :2]  # (B, G, A, 2)
    rb = gt_bboxes[:, :, None, 2:] - anchor_points[None, None]
    mask = (torch.cat([lt, rb], dim=-1).amin(-1) > eps) & gt_mask[..., None]  # (B, G, A)
    del lt, rb
    overlaps = torch.zeros(b, g, a)
    pairs = box_iou(
        pred_bboxes[:, None].expand(b, g, a, 4)[mask],
        gt_bboxes[:, :, None].expand(b, g, a, 4)[mask],
        mode=iou_type,
        aligned=True,
    )
    if iou_type == "ciou":
        pairs = pairs.clamp(min=0)
    overlaps[mask] = pairs
    cls = gt_labels.clamp(0, c - 1)[..., None].expand(b, g, a)
    score = torch.gather(pred_scores.transpose(1, 2), 1, cls)  # (B, G, A)
    metric = torch.zeros(b, g, a)
    metric[mask] = (score[mask].double().pow(alpha) * pairs.double().pow(beta)).float()
    claimed = _topk_mask(metric.view(b * g, a), min(topk, a), largest=True).view(b, g, a)
    claimed &= metric > 0
    winner = torch.where(claimed, overlaps, -1.0).argmax(1)  # (B, A), first max = lowest GT
    fg = claimed.any(1)
    won = torch.zeros_like(claimed).scatter_(1, winner[:, None], fg[:, None])  # (B, G, A)
    metric *= won
    max_metric = metric.amax(-1, keepdim=True)
    max_overlap = (overlaps * won).amax(-1, keepdim=True)
    quality = (metric * max_overlap / (max_metric + eps)).gather(1, winner[:, None])[:, 0]  # (B, A)
    labels = torch.where(fg, gt_labels.gather(1, winner), c)
    bboxes = torch.where(fg[..., None], gt_bboxes.gather(1, winner[..., None].expand(b, a, 4)), 0.0)
    scores = torch.zeros(b, a, c + 1).scatter_(2, labels[..., None], quality[..., None])[..., :c]
    return AssignResult(labels, bboxes, scores, fg, torch.where(fg, winner, 0))


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


def _worker(impl: str, batch: int, num_gt: int, num_classes: int, repeat: int, threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    inputs = make_inputs(batch, num_gt, num_classes)
    fn = TaskAlignedAssigner() if impl == "ours" else dense_task_aligned
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
    for num_gt in args.num_gt:
        results = {}
        for impl in ("ours", "dense"):
            row = {
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
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        impl, *numbers = sys.argv[2:]
        print(json.dumps(_worker(impl, *(int(x) for x in numbers))))
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        from tools.bench import format_table

        parser = argparse.ArgumentParser(description=__doc__)
        add_arguments(parser)
        print(format_table(run(parser.parse_args())))
