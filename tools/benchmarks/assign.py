"""Task-aligned assigner: time and peak memory of each variant, ours vs a dense version.

    python tools/bench.py assign                       # B=4, A=8400 (640 px, strides 8/16/32), C=80
    python tools/bench.py assign --num-gt 100 1000 --repeat 5 --threads 2 --variants tood yolov8
    python tools/bench.py assign --detector 160 320 --baseline main   # the training step's size

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

``--detector SIZE ...`` adds rows at the size of the detector's training step (``bench.py
train``): B=16 images of SIZE px (A=525 at 160 px, 2100 at 320 px), ``--detector-boxes`` GTs
per image drawn like ``bench.py train``'s, the same predictions. ``--baseline REV`` adds the
assigner of git revision REV (its ``task_aligned.py`` at that commit, run on today's package)
as a third implementation, with ``time_vs_baseline`` on our rows.

``--vs-default REV`` times instead, in this one process and interleaved call by call (so
machine load hits every column alike), REV's default (``claimants``) assigner and each of
our ``--variants`` on the same inputs; rows hold the medians and ``x_rev_default``, our time
over REV's default's. Separate processes swing by +-30 % from run to run on a loaded
machine, interleaved calls by a few per cent.
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


def make_inputs(batch: int, num_gt: int, num_classes: int, seed: int = 0, image_size: int = IMAGE_SIZE):
    """(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask)."""
    gen = torch.Generator().manual_seed(seed)
    points, strides = [], []
    for s in STRIDES:
        n = image_size // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        points.append(torch.stack([xs, ys], -1).view(-1, 2) * s)
        strides.append(torch.full((n * n,), float(s)))
    points, strides = torch.cat(points), torch.cat(strides)  # (A, 2), (A,)
    a = points.shape[0]
    pred_scores = torch.randn(batch, a, num_classes, generator=gen).sigmoid()
    half = strides[:, None] * torch.empty(batch, a, 2).uniform_(0.5, 4.0, generator=gen)
    pred_bboxes = torch.cat([points - half, points + half], dim=-1)
    centre = torch.rand(batch, num_gt, 2, generator=gen) * image_size
    size = torch.exp(torch.empty(batch, num_gt, 2).uniform_(2.08, 5.55, generator=gen))  # 8..256
    gt_bboxes = torch.cat([centre - size / 2, centre + size / 2], -1).clamp(0, image_size)
    gt_labels = torch.randint(0, num_classes, (batch, num_gt), generator=gen)
    gt_mask = torch.ones(batch, num_gt, dtype=torch.bool)
    return pred_scores, pred_bboxes, points, gt_labels, gt_bboxes, gt_mask


def make_detector_inputs(image_size: int, num_gt: int, num_classes: int, batch: int = 16, seed: int = 0):
    """:func:`make_inputs` at a training step's size, GTs drawn as ``bench.py train`` draws them."""
    inputs = make_inputs(batch, num_gt, num_classes, seed, image_size)
    gen = torch.Generator().manual_seed(seed + 1)
    xy = torch.rand(batch, num_gt, 2, generator=gen) * image_size * 0.8
    wh = (0.05 + 0.3 * torch.rand(batch, num_gt, 2, generator=gen)) * image_size
    gt_bboxes = torch.cat([xy, (xy + wh).clamp(max=image_size)], -1)
    return (*inputs[:4], gt_bboxes, inputs[5])


def load_baseline(rev: str) -> type:
    """The ``TaskAlignedAssigner`` of git revision ``rev`` (its module run on today's package)."""
    import importlib.util

    source = subprocess.run(
        ["git", "-C", ROOT, "show", f"{rev}:detlosses/assigners/task_aligned.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = "detlosses.assigners._baseline_task_aligned"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = "detlosses.assigners"
    sys.modules[name] = module
    # not registered: the registry already holds today's class under that name
    exec(compile(source.replace("@ASSIGNERS.register()\n", ""), f"{rev}:task_aligned.py", "exec"), module.__dict__)
    return module.TaskAlignedAssigner


def _checksum(res: AssignResult) -> str:
    return (
        f"{int(res.fg_mask.sum())}/{int(res.labels.sum())}/{int(res.gt_index.sum())}/"
        f"{float(res.scores.double().sum()):.9e}"
    )


def _worker(
    impl: str,
    variant: str,
    batch: int,
    num_gt: int,
    num_classes: int,
    repeat: int,
    threads: int,
    detector_size: int = 0,
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    if detector_size:
        inputs = make_detector_inputs(detector_size, num_gt, num_classes, batch)
    else:
        inputs = make_inputs(batch, num_gt, num_classes)
    kwargs = VARIANTS[variant]
    if impl == "ours":
        fn = TaskAlignedAssigner(**kwargs)
    elif impl.startswith("baseline:"):
        fn = load_baseline(impl.removeprefix("baseline:"))(**kwargs)
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
        "--detector",
        type=int,
        nargs="*",
        default=[],
        metavar="SIZE",
        help="also rows at a training step's size: B=16 images of SIZE px (e.g. 160 320)",
    )
    parser.add_argument("--detector-boxes", type=int, default=8, help="GTs per image of the --detector rows")
    parser.add_argument("--baseline", default=None, metavar="REV", help="also time the assigner of git revision REV")
    parser.add_argument(
        "--vs-default",
        default=None,
        metavar="REV",
        help="interleave each variant with REV's default assigner in one process (time only)",
    )
    parser.add_argument(
        "--dense-max-gt",
        type=int,
        default=1000,
        help="skip the dense baseline above this G (it needs ~1 GB per 1000 GT)",
    )


def run(args: argparse.Namespace) -> list[dict]:
    if args.vs_default:
        return _interleaved(args)
    rows = []
    for variant in args.variants:
        for num_gt in args.num_gt:
            rows += _compare(args, variant, args.batch, num_gt)
        for size in args.detector:
            rows += _compare(args, variant, 16, args.detector_boxes, size)
    return rows


def _compare(args: argparse.Namespace, variant: str, batch: int, num_gt: int, detector_size: int = 0) -> list[dict]:
    """Rows of ours, the dense version (and the baseline) for one variant and input size."""
    image_size = detector_size or IMAGE_SIZE
    impls = ("ours", "dense", *([f"baseline:{args.baseline}"] if args.baseline else []))
    rows, results = {}, {}
    for impl in impls:
        row = {
            "variant": variant,
            "impl": impl,
            "B": batch,
            "A": sum((image_size // s) ** 2 for s in STRIDES),
            "G": num_gt,
            "C": args.num_classes,
        }
        if impl == "dense" and num_gt > args.dense_max_gt:
            rows[impl] = {**row, "time_s": None, "peak_mb": None, "match": "skipped (memory)"}
            continue
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            impl,
            variant,
            *(str(n) for n in (batch, num_gt, args.num_classes, args.repeat, args.threads, detector_size)),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[impl] = json.loads(out.strip().splitlines()[-1])
        rows[impl] = {**row, "time_s": results[impl]["time_s"], "peak_mb": results[impl]["peak_mb"]}
    ours = results["ours"]
    for impl, other in results.items():
        if impl != "ours":
            rows[impl]["match"] = "yes" if other["checksum"] == ours["checksum"] else "NO"
    if "dense" in results:
        rows["ours"]["time_vs_dense"] = ours["time_s"] / results["dense"]["time_s"]
        rows["ours"]["mem_vs_dense"] = ours["peak_mb"] / max(results["dense"]["peak_mb"], 1e-9)
    if args.baseline:
        rows["ours"]["time_vs_baseline"] = ours["time_s"] / results[impls[-1]]["time_s"]
    return list(rows.values())


def _interleaved(args: argparse.Namespace) -> list[dict]:
    """Medians of ``--repeat`` rounds, each calling REV's default and then every variant of ours."""
    if args.threads:
        torch.set_num_threads(args.threads)
    fns = {"rev default": load_baseline(args.vs_default)(**VARIANTS["claimants"])}
    fns.update({variant: TaskAlignedAssigner(**VARIANTS[variant]) for variant in args.variants})
    cases = [(args.batch, g, make_inputs(args.batch, g, args.num_classes)) for g in args.num_gt]
    cases += [
        (16, args.detector_boxes, make_detector_inputs(s, args.detector_boxes, args.num_classes)) for s in args.detector
    ]
    rows = []
    for batch, num_gt, inputs in cases:
        times: dict[str, list[float]] = {name: [] for name in fns}
        with torch.no_grad():
            for fn in fns.values():  # a first call outside the timer
                fn(*inputs)
            for _ in range(args.repeat):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(*inputs)
                    times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, median in medians.items():
            impl = f"{args.vs_default}:claimants" if name == "rev default" else f"ours:{name}"
            row = {"impl": impl, "B": batch, "A": inputs[2].shape[0], "G": num_gt, "C": args.num_classes}
            rows.append({**row, "time_s": median, "x_rev_default": median / medians["rev default"]})
    return rows


if __name__ == "__main__":
    if len(sys.argv) in (9, 10) and sys.argv[1] == "--worker":
        impl, variant, *numbers = sys.argv[2:]
        print(json.dumps(_worker(impl, variant, *(int(x) for x in numbers))))
    else:
        from tools.bench import format_table

        parser = argparse.ArgumentParser(description=__doc__)
        add_arguments(parser)
        print(format_table(run(parser.parse_args())))
