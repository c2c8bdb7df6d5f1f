"""Golden values from PaddleDetection 2.6's real ``PPYOLOEHead.get_loss`` (paddlepaddle 3.3.1).

    python3.11 -m venv /root/.cache/paddle-venv
    /root/.cache/paddle-venv/bin/pip install paddlepaddle paddledet scikit-learn "numpy<2"
    python tools/peer_golden_common.py /tmp/ppyoloe_inputs.npz --bins 17 --offset 0.5   # any python with torch
    /root/.cache/paddle-venv/bin/python tools/peer_golden_ppyoloe.py /tmp/ppyoloe_inputs.npz
    # -> tests/data/peers/{ppyoloe,ppyoloe_warmup}.json

The paddle venv has no torch: the seeded inputs of ``tools/peer_golden_common.py`` come as
numpy arrays from the .npz. For every case of ``tools/peer_golden_common.CASES``
the head is built as PP-YOLOE's config does (``TaskAlignedAssigner`` topk 13, alpha 1, beta
6; ``ATSSAssigner`` topk 9 for the static-assigner epochs; VFL; loss weights class 1, iou
2.5, dfl 0.5; reg_max 16; anchor cells 5 strides, offset 0.5) and ``get_loss`` gets the
class probabilities and the 17-bin distribution logits, at epoch 200 (task-aligned) and
epoch 0 (static ATSS). Stored per case: the input checksum, the GT boxes, each term without
its loss weight and the weighted total, and the assignment (foreground anchors, their GT and
target score).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import paddle
from ppdet.modeling.assigners.atss_assigner import ATSSAssigner
from ppdet.modeling.assigners.task_aligned_assigner import TaskAlignedAssigner
from ppdet.modeling.assigners.utils import generate_anchors_for_grid_cell
from ppdet.modeling.heads.ppyoloe_head import PPYOLOEHead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRIDES = (8, 16, 32)  # as tools/peer_golden_common.py (which needs torch, absent here)

WEIGHTS = {"class": 1.0, "iou": 2.5, "dfl": 0.5}
STATIC_EPOCHS = 100


def _head(num_classes: int) -> PPYOLOEHead:
    return PPYOLOEHead(
        in_channels=[16, 16, 16],
        num_classes=num_classes,
        fpn_strides=STRIDES,
        grid_cell_scale=5.0,
        grid_cell_offset=0.5,
        reg_max=16,
        static_assigner_epoch=STATIC_EPOCHS,
        use_varifocal_loss=True,
        static_assigner=ATSSAssigner(topk=9, num_classes=num_classes),
        assigner=TaskAlignedAssigner(topk=13, alpha=1.0, beta=6.0),
        nms=None,
        loss_weight=WEIGHTS,
    )


def _inputs(arrays, case) -> dict:
    x = {key: arrays[f"{case['name']}/{key}"] for key in ("points", "strides", "cls_logits", "dist_logits", "checksum")}
    x["boxes"] = [arrays[f"{case['name']}/boxes{i}"] for i in range(case["batch"])]
    x["labels"] = [arrays[f"{case['name']}/labels{i}"] for i in range(case["batch"])]
    return x


def golden(arrays, case, epoch: int) -> dict:
    x = _inputs(arrays, case)
    b, a, c = x["cls_logits"].shape
    head = _head(c)
    head.eval()
    size = case["image_size"]
    feats = [paddle.zeros([b, 16, size // s, size // s]) for s in STRIDES]
    anchors, anchor_points, num_anchors_list, stride_tensor = generate_anchors_for_grid_cell(feats, STRIDES, 5.0, 0.5)
    assert np.allclose(anchor_points.numpy(), x["points"])
    n = max(len(t) for t in x["boxes"])
    gt_class = np.zeros((b, n, 1), dtype="int64")
    gt_bbox = np.zeros((b, n, 4), dtype="float32")
    pad = np.zeros((b, n, 1), dtype="float32")
    for i, (boxes, labels) in enumerate(zip(x["boxes"], x["labels"], strict=True)):
        gt_class[i, : len(labels), 0] = labels
        gt_bbox[i, : len(labels)] = boxes
        pad[i, : len(labels)] = 1.0
    gt_meta = {
        "gt_class": paddle.to_tensor(gt_class),
        "gt_bbox": paddle.to_tensor(gt_bbox),
        "pad_gt_mask": paddle.to_tensor(pad),
        "epoch_id": epoch,
    }
    seen = {}
    assigner = head.static_assigner if epoch < STATIC_EPOCHS else head.assigner
    forward = assigner.forward

    def recording(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen["out"] = out
        return out

    assigner.forward = recording
    head_outs = [
        paddle.nn.functional.sigmoid(paddle.to_tensor(x["cls_logits"])),
        paddle.to_tensor(x["dist_logits"].reshape(b, a, -1)),
        anchors,
        anchor_points,
        num_anchors_list,
        stride_tensor,
    ]
    with paddle.no_grad():
        losses = head.get_loss(head_outs, gt_meta)
    labels, _, scores, mask_positive = (t.numpy() for t in seen["out"])
    img, anchor = np.nonzero(labels != c)
    gt_index = mask_positive.argmax(-2)[img, anchor]
    cls, iou, dfl = (float(np.asarray(losses[k]).reshape(-1)[0]) for k in ("loss_cls", "loss_iou", "loss_dfl"))
    return {
        "case": {k: v for k, v in case.items() if k != "name"},
        "name": case["name"],
        "epoch": epoch,
        "input_checksum": float(x["checksum"]),
        "gt_boxes": [box.tolist() for box in x["boxes"]],
        "terms": {
            "cls": cls,
            "box": iou,
            "dfl": dfl,
            "total": float(np.asarray(losses["loss"]).reshape(-1)[0]),
        },
        "assignment": {
            "slot": (img * a + anchor).tolist(),
            "gt_index": gt_index.tolist(),
            "score": scores[img, anchor].sum(-1).tolist(),
        },
    }


def main() -> None:
    paddle.set_device("cpu")
    arrays = np.load(sys.argv[1])
    cases = json.loads(str(arrays["cases"]))
    for case in cases:
        case["name"] = "s{seed}_b{batch}_c{num_classes}_{image_size}px_g{num_gt}".format(**case)
    outputs = {
        "ppyoloe": ("PaddleDetection 2.6 PPYOLOEHead.get_loss, epoch 200", [golden(arrays, c, 200) for c in cases]),
        "ppyoloe_warmup": (
            "PaddleDetection 2.6 PPYOLOEHead.get_loss, epoch 0 (static ATSS assigner)",
            [golden(arrays, c, 0) for c in cases],
        ),
    }
    for name, (peer, cases) in outputs.items():
        path = os.path.join(ROOT, "tests", "data", "peers", f"{name}.json")
        with open(path, "w") as f:
            json.dump({"peer": peer, "cases": cases}, f)
        for c in cases:
            print(name, c["name"], c["terms"], "fg", len(c["assignment"]["slot"]))


if __name__ == "__main__":
    main()
