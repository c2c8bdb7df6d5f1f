"""Multi-class NMS: detlosses.nms.multiclass_nms against a per-image torchvision loop and
ultralytics' non_max_suppression, on one batch of YOLO-sized dense predictions.

The batch (B images x A anchors x C classes) mimics a trained detector: background scores
are sigmoid(N(-9, 1.5)) (almost all far below the threshold), and each image holds a few
objects whose anchors carry jittered copies of the object box with a high score for its
class (and, for a third of them, a lower score for a second class), so a few hundred
(anchor, class) pairs per image pass score_thr.

ultralytics is never a project dependency. If it is importable from --ultralytics-path
(install it there with ``pip install --no-deps --target /tmp/ultra ultralytics``) its real
``non_max_suppression`` is timed; otherwise a re-statement of its algorithm (written from
reading ultralytics/utils/nms.py, named as such in the table) is timed instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable

import torch
import torchvision

from detlosses.nms import multiclass_nms

from ._timing import interleaved_median_ms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--anchors", type=int, default=8400)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--objects", type=int, default=20, help="objects per image")
    parser.add_argument("--per-object", type=int, default=15, help="anchors covering each object")
    parser.add_argument("--score-thr", type=float, default=0.05)
    parser.add_argument("--iou-thr", type=float, default=0.6)
    parser.add_argument("--max-det", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--ultralytics-path", default="/tmp/ultra", help="a pip --target dir holding ultralytics")


def make_batch(
    batch: int,
    anchors: int,
    classes: int,
    objects: int,
    per_object: int,
    seed: int,
    size: float = 640.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B, A, 4) xyxy in a size x size image and scores (B, A, C) probabilities."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, anchors, 2, generator=g) * size
    wh = torch.rand(batch, anchors, 2, generator=g) * 100 + 8
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1)
    scores = torch.sigmoid(torch.randn(batch, anchors, classes, generator=g) * 1.5 - 9.0)
    for b in range(batch):
        obj_wh = torch.rand(objects, 2, generator=g) * 200 + 16
        obj_centre = torch.rand(objects, 2, generator=g) * size
        obj = torch.cat([obj_centre - obj_wh / 2, obj_centre + obj_wh / 2], -1)  # (O, 4)
        idx = torch.randperm(anchors, generator=g)[: objects * per_object].view(objects, per_object)
        jitter = (torch.rand(objects, per_object, 4, generator=g) - 0.5) * 0.2 * obj_wh.repeat(1, 2)[:, None]
        boxes[b, idx] = obj[:, None] + jitter
        label = torch.randint(0, classes, (objects, 1), generator=g).expand_as(idx)
        scores[b, idx, label] = torch.rand(objects, per_object, generator=g) * 0.65 + 0.3
        second = torch.rand(objects, per_object, generator=g) < 1 / 3
        other = (label + torch.randint(1, classes, (objects, 1), generator=g)) % classes
        scores[b, idx[second], other[second]] = torch.rand(int(second.sum()), generator=g) * 0.25 + 0.05
    return boxes, scores


def per_image_loop(boxes, scores, score_thr, iou_thr, max_det, pre_nms_topk=1000):
    """Reference 1: the plain loop, torchvision.ops.batched_nms once per image (multi-label)."""
    out = []
    for bx, sc in zip(boxes, scores, strict=True):
        anchor, label = (sc > score_thr).nonzero(as_tuple=True)
        score = sc[anchor, label]
        if len(score) > pre_nms_topk:
            score, top = score.topk(pre_nms_topk)
            anchor, label = anchor[top], label[top]
        keep = torchvision.ops.batched_nms(bx[anchor], score, label, iou_thr)[:max_det]
        out.append((bx[anchor[keep]], score[keep], label[keep]))
    return out


def ultralytics_restated(prediction, conf_thres, iou_thres, max_det, max_nms=30000, max_wh=7680):
    """ultralytics' non_max_suppression (single-label, class-aware, no time limit), re-stated
    from reading ultralytics/utils/nms.py: prediction (B, 4 + C, A) with cxcywh boxes."""
    candidates = prediction[:, 4:].amax(1) > conf_thres
    prediction = prediction.transpose(-1, -2)
    out = []
    for x, keep_anchor in zip(prediction, candidates, strict=True):
        x = x[keep_anchor]
        box = torchvision.ops.box_convert(x[:, :4], "cxcywh", "xyxy")
        conf, label = x[:, 4:].max(1, keepdim=True)
        x = torch.cat((box, conf, label.float()), 1)[conf.view(-1) > conf_thres]
        if len(x) > max_nms:
            x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        keep = torchvision.ops.nms(x[:, :4] + x[:, 5:6] * max_wh, x[:, 4], iou_thres)[:max_det]
        out.append(x[keep])
    return out


def load_ultralytics(path: str) -> tuple[Callable | None, str]:
    """ultralytics' non_max_suppression from ``path`` if importable, else None and why."""
    if not os.path.isdir(path):
        return None, f"{path} does not exist"
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no network checks
    # its settings file goes to a scratch dir, not ~/.config
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "detlosses_bench_yolo"))
    sys.path.insert(0, path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its first-import banner would break --json
            from ultralytics.utils.nms import non_max_suppression
    except Exception as exc:  # missing optional deps, API moved, ...
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        sys.path.remove(path)
    return non_max_suppression, ""


def same_detections(ours, theirs, atol: float = 0.0) -> bool:
    """Per image: the same boxes, scores and labels in the same order."""
    for det, (boxes, scores, labels) in zip(ours, theirs, strict=True):
        if len(det.scores) != len(scores) or not torch.equal(det.labels, labels.long()):
            return False
        if not (torch.allclose(det.boxes, boxes, atol=atol, rtol=0) and torch.allclose(det.scores, scores)):
            return False
    return True


def run(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    boxes, scores = make_batch(args.batch, args.anchors, args.classes, args.objects, args.per_object, args.seed)
    nms_args = {"score_thr": args.score_thr, "iou_thr": args.iou_thr, "max_det": args.max_det}
    ultra_nms, why = load_ultralytics(args.ultralytics_path)
    # ultralytics' input layout: (B, 4 + C, A), cxcywh boxes; built outside the timer
    prediction = torch.cat([torchvision.ops.box_convert(boxes, "xyxy", "cxcywh"), scores], -1).transpose(1, 2)
    prediction = prediction.contiguous()

    def ultra(multi_label: bool):
        if ultra_nms is None:
            return ultralytics_restated(prediction, args.score_thr, args.iou_thr, args.max_det)
        return ultra_nms(prediction, args.score_thr, args.iou_thr, multi_label=multi_label, max_det=args.max_det)

    ultra_name = "ultralytics non_max_suppression" if ultra_nms else "ultralytics NMS (re-statement)"
    cases = [
        ("ours hard, multi-label", lambda: multiclass_nms(boxes, scores, **nms_args)),
        (
            "ours hard, single-label",
            lambda: multiclass_nms(boxes, scores, multi_label=False, **nms_args),
        ),
        (
            "ours soft (Gaussian, sigma 0.5), multi-label",
            lambda: multiclass_nms(boxes, scores, method="soft", **nms_args),
        ),
        (
            "ours DIoU-NMS, multi-label",
            lambda: multiclass_nms(boxes, scores, method="diou", **nms_args),
        ),
        (
            "ref 1: per-image torchvision batched_nms loop, multi-label",
            lambda: per_image_loop(boxes, scores, **nms_args),
        ),
        (f"ref 2: {ultra_name}, single-label", lambda: ultra(False)),
    ]
    if ultra_nms is not None:
        cases.append((f"ref 2: {ultra_name}, multi-label", lambda: ultra(True)))

    results = {name: fn() for name, fn in cases}
    times = dict(zip(results, interleaved_median_ms([fn for _, fn in cases], args.repeats), strict=True))
    loop_ms = times[cases[4][0]]
    ultra_ms = times[cases[5][0]]

    def as_triples(dets):  # ultralytics rows (K, 6): xyxy, conf, cls
        return [(d[:, :4], d[:, 4], d[:, 5]) for d in dets]

    agrees = {
        cases[0][0]: same_detections(results[cases[0][0]], results[cases[4][0]]),
        cases[1][0]: same_detections(results[cases[1][0]], as_triples(results[cases[5][0]]), atol=1e-3),
    }
    rows = []
    for name, _ in cases:
        dets = results[name]
        n = sum(len(d[1]) if isinstance(d, tuple) else len(d) for d in dets)
        rows.append(
            {
                "method": name,
                "ms/batch": times[name],
                "x per-image loop": times[name] / loop_ms,
                "x ultralytics single": times[name] / ultra_ms,
                "dets/img": n / args.batch,
                "same dets as ref": {True: "yes", False: "NO"}.get(agrees.get(name)),
            }
        )
    candidates = int((scores > args.score_thr).sum()) / args.batch
    setup = f"B={args.batch}, A={args.anchors}, C={args.classes}, {candidates:.0f} candidates/img"
    setup += f", {torch.get_num_threads()} threads" + (f"; ultralytics: {why}" if why else "")
    rows.append({"method": f"({setup})"})
    return rows
