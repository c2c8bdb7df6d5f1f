"""Golden values from ultralytics 8.4.190's real ``v8DetectionLoss`` (run with the peers venv).

    /root/.cache/detlosses-peers/bin/python tools/peer_golden_yolov8.py   # -> tests/data/peers/yolov8.json

For every case of ``tools/peer_golden_common.CASES``: the head outputs (class logits,
16-bin distribution logits) and targets go through ultralytics' own loss: its target
``preprocess`` (normalised xywh -> pixel xyxy), ``bbox_decode``, ``TaskAlignedAssigner``
(topk 10, alpha 0.5, beta 6, stride_val 16) and ``BboxLoss``. Stored per case: the input
checksum, the GT boxes as the assigner saw them, each term without its gain (box, cls, dfl
and their gained sum, all before ultralytics' multiplication by the batch size) and the
assignment (foreground anchors, their GT and target score).
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.peer_golden_common import CASES, input_checksum, make_inputs  # noqa: E402

GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # ultralytics' default hyper-parameters
N_BINS = 16


def _loss_module(num_classes: int):
    from ultralytics.utils.loss import BboxLoss, v8DetectionLoss
    from ultralytics.utils.tal import TaskAlignedAssigner

    loss = v8DetectionLoss.__new__(v8DetectionLoss)  # without a model: the attributes __init__ sets
    loss.bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    loss.hyp = SimpleNamespace(**GAINS)
    loss.stride = torch.tensor([8.0, 16.0, 32.0])
    loss.nc, loss.reg_max, loss.no = num_classes, N_BINS, num_classes + 4 * N_BINS
    loss.device, loss.use_dfl, loss.class_weights = torch.device("cpu"), True, None
    loss.loss_names = ("box_loss", "cls_loss", "dfl_loss")
    loss.assigner = TaskAlignedAssigner(topk=10, num_classes=num_classes, alpha=0.5, beta=6.0, stride=[8, 16, 32])
    loss.bbox_loss = BboxLoss(N_BINS)
    loss.proj = torch.arange(N_BINS, dtype=torch.float)
    return loss


def golden(case) -> dict:
    x = make_inputs(case, N_BINS, offset=0.5)
    b, a, c = x["cls_logits"].shape
    size = case.image_size
    loss = _loss_module(c)
    feats = [torch.zeros(b, 1, size // s, size // s) for s in (8, 16, 32)]
    preds = {
        "boxes": x["dist_logits"].reshape(b, a, 4 * N_BINS).permute(0, 2, 1),
        "scores": x["cls_logits"].permute(0, 2, 1),
        "feats": feats,
    }
    xyxy = torch.cat(x["boxes"])
    xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / size
    batch = {
        "batch_idx": torch.cat([torch.full((len(t),), float(i)) for i, t in enumerate(x["boxes"])]),
        "cls": torch.cat(x["labels"]).float(),
        "bboxes": xywh,
    }
    seen = {}
    assign = loss.assigner.forward

    def recording(*args, **kwargs):
        out = assign(*args, **kwargs)
        seen["gt_bboxes"], seen["mask_gt"], seen["out"] = args[4], args[5], out
        return out

    loss.assigner.forward = recording
    with torch.no_grad():
        _, terms, _ = loss.get_assigned_targets_and_loss(preds, batch)
    _, _, target_scores, fg_mask, target_gt_idx = seen["out"]
    gt_boxes = [seen["gt_bboxes"][i][seen["mask_gt"][i, :, 0].bool()].tolist() for i in range(b)]
    img, anchor = fg_mask.nonzero(as_tuple=True)
    box, cls, dfl = (float(v) for v in terms)
    return {
        "case": case.__dict__,
        "name": case.name,
        "input_checksum": input_checksum(x),
        "gt_boxes": gt_boxes,
        "terms": {
            "box": box / GAINS["box"],
            "cls": cls / GAINS["cls"],
            "dfl": dfl / GAINS["dfl"],
            "total": box + cls + dfl,
        },
        "assignment": {
            "slot": (img * a + anchor).tolist(),
            "gt_index": target_gt_idx[img, anchor].tolist(),
            "score": target_scores[img, anchor].sum(-1).tolist(),
        },
    }


def main() -> None:
    out = {"peer": "ultralytics 8.4.190 v8DetectionLoss", "cases": [golden(case) for case in CASES]}
    path = os.path.join(ROOT, "tests", "data", "peers", "yolov8.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
    for c in out["cases"]:
        print(c["name"], c["terms"], "fg", len(c["assignment"]["slot"]))


if __name__ == "__main__":
    main()
