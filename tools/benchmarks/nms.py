"""Multi-class NMS: detlosses.nms.multiclass_nms against the per-image torchvision loop a user
would write and ultralytics' non_max_suppression, in the three regimes users hit, on one
batch of YOLO-sized predictions (B images x A anchors x C classes):

* sparse — a trained detector at score_thr 0.05: background scores sigmoid(N(-9, 1.5)),
  each image holds a few objects whose anchors carry jittered copies of the object box with
  a high score for its class (a third also a lower one for a second class): ~420
  (anchor, class) pairs per image pass the threshold; iou 0.6, max_det 100, pre_nms_topk 1000.
* dense — epoch 1 / an untrained head: scores rand**6, every anchor's best class above
  0.05 (39 % of all pairs); iou 0.6, max_det 100; single-label pre_nms_topk 30000 (every
  anchor), multi-label 1000.
* coco — COCO-evaluation settings on the trained-like batch: score_thr 0.001, iou 0.65,
  max_det 300, pre_nms_topk 30000 (ultralytics' max_nms; mmyolo's nms_pre).

Each regime times ours (hard single- and multi-label, Gaussian soft-NMS and DIoU-NMS,
multi-label), the per-image ``torchvision.ops.batched_nms`` loop (single- and multi-label)
and ultralytics (single- and multi-label, its time limit lifted so that it finishes every
image; same max_nms as our pre_nms_topk), in one process, interleaved call by call,
``--repeats`` times; the table holds the medians. "same dets" compares the kept
(box, score, label) sets with the loop's (single-label: also ultralytics', boxes within
1e-3 px as it converts cxcywh to xyxy itself); equal scores may come out in another order.
The "floor" row (sparse only, :func:`candidates_floor`) times only what an exact NMS must do before any
suppression: what is left for the suppression itself under a target is the target minus it.

ultralytics is never a project dependency: it is imported if installed (run this suite with
the peers' venv) or from --ultralytics-path; otherwise a re-statement of its single-label
algorithm (written from reading ultralytics/utils/nms.py, named as such) is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
from collections.abc import Callable

import torch
import torchvision

from detlosses.nms import multiclass_nms

from ._timing import interleaved_median_ms

REGIMES = ("sparse", "dense", "coco")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--anchors", type=int, default=8400)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--objects", type=int, default=20, help="objects per image (sparse, coco)")
    parser.add_argument("--per-object", type=int, default=15, help="anchors covering each object")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per row (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
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


def make_dense_batch(batch: int, anchors: int, classes: int, seed: int, size: float = 640.0):
    """Epoch-1 predictions: boxes spread over the image, scores rand**6 (every anchor a candidate)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, anchors, 2, generator=g) * size
    wh = torch.rand(batch, anchors, 2, generator=g) * 100 + 8
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1)
    return boxes, torch.rand(batch, anchors, classes, generator=g) ** 6


def candidates_floor(boxes: torch.Tensor, scores: torch.Tensor, score_thr: float) -> tuple[torch.Tensor, ...]:
    """A lower bound for any exact multi-label NMS in eager PyTorch when every candidate is
    within ``pre_nms_topk`` (the sparse regime): the steps it must take before suppressing
    anything, each as cheap as we know how. One read of every score
    (L2 norm per anchor: non-finite iff a score is NaN or +-inf, never below the row's max),
    the finite check, the candidate anchors, their score rows read back, and the candidates'
    (box, score, class). No suppression, no top-k, no output lists."""
    num_classes = scores.shape[-1]
    norms = torch.linalg.vector_norm(scores, dim=-1)  # (B, A)
    if not math.isfinite(float(norms.sum() + boxes.sum())):
        raise ValueError("scores or boxes hold NaN or inf")
    anchor = (norms.view(-1) > score_thr).nonzero().squeeze(1)
    rows = scores.view(-1, num_classes).index_select(0, anchor)  # (anchors, C)
    flat = (rows > score_thr).view(-1).nonzero().squeeze(1)
    row = flat.div(num_classes, rounding_mode="floor")
    cand_boxes = boxes.view(-1, 4).index_select(0, anchor.index_select(0, row))
    return cand_boxes, rows.view(-1).index_select(0, flat), flat - row * num_classes


def per_image_loop(boxes, scores, score_thr, iou_thr, max_det, pre_nms_topk, multi_label):
    """The plain loop: candidates of one image, top-k, torchvision.ops.batched_nms."""
    out = []
    for bx, sc in zip(boxes, scores, strict=True):
        if multi_label:
            anchor, label = (sc > score_thr).nonzero(as_tuple=True)
            score = sc[anchor, label]
        else:
            score, label = sc.max(1)
            anchor = (score > score_thr).nonzero().squeeze(1)
            score, label = score[anchor], label[anchor]
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
    """ultralytics' non_max_suppression if importable (installed, or from ``path``), else None and why."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no network checks
    # its settings file goes to a scratch dir, not ~/.config
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "detlosses_bench_yolo"))
    added = os.path.isdir(path) and path not in sys.path
    if added:
        sys.path.append(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its first-import banner would break --json
            from ultralytics.utils.nms import non_max_suppression
    except Exception as exc:  # not installed, missing optional deps, API moved, ...
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        if added:
            sys.path.remove(path)
    return non_max_suppression, ""


def canonical(boxes, scores, labels) -> torch.Tensor:
    """One image's detections as (K, 6) rows (score, label, box), sorted lexicographically."""
    rows = torch.cat([scores[:, None].float(), labels[:, None].float(), boxes.float()], 1)
    for col in reversed(range(rows.shape[1])):  # stable sorts, last key first
        rows = rows[rows[:, col].argsort(stable=True)]
    return rows


def same_detections(ours, theirs, box_atol: float = 0.0) -> bool:
    """Per image: the same (box, score, label) set (boxes within ``box_atol``)."""
    for det, (b, s, lb) in zip(ours, theirs, strict=True):
        mine, other = canonical(*det), canonical(b, s, lb.long())
        if mine.shape != other.shape or not torch.equal(mine[:, :2], other[:, :2]):
            return False
        if not torch.allclose(mine[:, 2:], other[:, 2:], rtol=0.0, atol=box_atol):
            return False
    return True


REGIME_SETTINGS = {  # score_thr, iou_thr, max_det, pre_nms_topk (single-label, multi-label)
    "sparse": (0.05, 0.6, 100, 1000, 1000),
    "dense": (0.05, 0.6, 100, 30000, 1000),
    "coco": (0.001, 0.65, 300, 30000, 30000),
}


def run_regime(regime: str, args: argparse.Namespace, ultra_nms: Callable | None) -> list[dict]:
    if regime == "dense":
        boxes, scores = make_dense_batch(args.batch, args.anchors, args.classes, args.seed)
    else:
        boxes, scores = make_batch(args.batch, args.anchors, args.classes, args.objects, args.per_object, args.seed)
    score_thr, iou_thr, max_det, topk_single, topk_multi = REGIME_SETTINGS[regime]
    common = {"score_thr": score_thr, "iou_thr": iou_thr, "max_det": max_det}
    single = {**common, "pre_nms_topk": topk_single, "multi_label": False}
    multi = {**common, "pre_nms_topk": topk_multi, "multi_label": True}
    # ultralytics' input layout: (B, 4 + C, A), cxcywh boxes; built outside the timer
    prediction = torch.cat([torchvision.ops.box_convert(boxes, "xyxy", "cxcywh"), scores], -1).transpose(1, 2)
    prediction = prediction.contiguous()

    def ultra(multi_label: bool):
        max_nms = topk_multi if multi_label else topk_single
        if ultra_nms is None:
            return ultralytics_restated(prediction, score_thr, iou_thr, max_det, max_nms=max_nms)
        return ultra_nms(
            prediction, score_thr, iou_thr, multi_label=multi_label, max_det=max_det, max_nms=max_nms, max_time_img=1e9
        )

    ultra_name = "ultralytics 8.4 non_max_suppression" if ultra_nms else "ultralytics NMS (re-statement)"
    cases = {  # name: (thunk, reference name for the ratio)
        "ours hard, single-label": (lambda: multiclass_nms(boxes, scores, **single), "single"),
        "ours hard, multi-label": (lambda: multiclass_nms(boxes, scores, **multi), "multi"),
        "ours Gaussian soft-NMS, multi-label": (lambda: multiclass_nms(boxes, scores, method="soft", **multi), "multi"),
        "ours DIoU-NMS, multi-label": (lambda: multiclass_nms(boxes, scores, method="diou", **multi), "multi"),
        "batched_nms loop, single-label": (lambda: per_image_loop(boxes, scores, **single), "single"),
        "batched_nms loop, multi-label": (lambda: per_image_loop(boxes, scores, **multi), "multi"),
        f"{ultra_name}, single-label": (lambda: ultra(False), "single"),
    }
    if ultra_nms is not None:
        cases[f"{ultra_name}, multi-label"] = (lambda: ultra(True), "multi")
    floor = "floor: the candidates alone, no NMS (multi-label)"
    if regime == "sparse":  # every candidate is within pre_nms_topk there, so each must be read
        cases[floor] = (lambda: candidates_floor(boxes, scores, score_thr), "multi")
    names = list(cases)
    results = {name: cases[name][0]() for name in names}
    times = dict(zip(names, interleaved_median_ms([cases[n][0] for n in names], args.repeats), strict=True))
    loop_ms = {"single": times[names[4]], "multi": times[names[5]]}
    ultra_ms = {"single": times[names[6]], "multi": times[names[7]] if len(names) > 7 else None}

    def as_triples(dets):  # ultralytics rows (K, 6): xyxy, conf, cls
        return [(d[:, :4], d[:, 4], d[:, 5]) for d in dets]

    agrees = {
        names[0]: same_detections(results[names[0]], results[names[4]])
        and same_detections(results[names[0]], as_triples(results[names[6]]), box_atol=1e-3),
        names[1]: same_detections(results[names[1]], results[names[5]]),
    }
    rows = []
    for name in names:
        kind = cases[name][1]
        dets = [] if name == floor else results[name]
        n = sum(len(d[1]) if isinstance(d, tuple) else len(d) for d in dets)
        rows.append(
            {
                "regime": regime,
                "method": name,
                "ms/batch": round(times[name], 2),
                "x loop": round(times[name] / loop_ms[kind], 3),
                "x ultralytics": round(times[name] / ultra_ms[kind], 3) if ultra_ms[kind] else None,
                "dets/img": None if name == floor else n / args.batch,
                "same dets as loop": {True: "yes", False: "NO"}.get(agrees.get(name)),
            }
        )
    cand_single = int((scores.amax(-1) > score_thr).sum()) / args.batch
    cand_multi = int((scores > score_thr).sum()) / args.batch
    setup = f"{regime}: B={args.batch}, A={args.anchors}, C={args.classes}"
    setup += f", candidates/img {cand_single:.0f} single-label"
    setup += f", {cand_multi:.0f} multi-label; score {score_thr}, iou {iou_thr}, max_det {max_det}"
    setup += f", pre_nms_topk {topk_single} / {topk_multi}"
    rows.append({"regime": regime, "method": f"({setup})"})
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    ultra_nms, why = load_ultralytics(args.ultralytics_path)
    rows = []
    for regime in args.regimes:
        rows += run_regime(regime, args, ultra_nms)
    note = f"{torch.get_num_threads()} torch threads" + (f"; ultralytics: {why}" if why else "")
    rows.append({"method": f"({note}; median of {args.repeats} interleaved calls)"})
    return rows
