"""Golden values from mmdetection 3.3's real ``TOODHead`` and ``GFLHead`` (run with the peers venv).

    /root/.cache/detlosses-peers/bin/python tools/peer_golden_mmdet.py
    # -> tests/data/peers/{tood,tood_warmup,gfl}.json

For every case of ``tools/peer_golden_common.CASES`` the heads are built from the configs of
mmdetection's ``tood_r50_fpn_1x_coco`` and ``gfl_r50_fpn_1x_coco`` (with small convolution
widths: only their ``loss_by_feat`` runs), and ``loss_by_feat`` gets the same head outputs
as our criterion: TOOD the class probabilities (its head is "activated") and the decoded
boxes, GFL the class logits and the 17-bin distribution logits. Anchors are mmdetection's
own (centre offset 0, boxes 8 strides). TOOD runs at epoch 10 (task-aligned assignment) and
epoch 0 (its ATSS warm-up, ``initial_epoch`` 4). Stored per case: the input checksum, each
term without its loss weight (cls, box, dfl) and the weighted total, and the assignment
(foreground anchors ``b * A + a``, their GT, and the target score where the peer has one).
"""

from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, "/work/shared/peers")  # mmstub: mmdet without compiled mmcv ops
if os.path.isdir(os.path.join(ROOT, "..", "shared", "peers")):
    sys.path.insert(0, os.path.join(ROOT, "..", "shared", "peers"))

import mmstub  # noqa: E402, F401
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.logging import MessageHub  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from tools.peer_golden_common import CASES, STRIDES, input_checksum, make_inputs  # noqa: E402

register_all_modules()
ANCHORS = dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1, strides=list(STRIDES))


def tood_head(num_classes: int):
    cfg = dict(
        type="TOODHead",
        num_classes=num_classes,
        in_channels=32,
        stacked_convs=1,
        feat_channels=32,
        anchor_type="anchor_free",
        anchor_generator=ANCHORS,
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        initial_loss_cls=dict(
            type="FocalLoss", use_sigmoid=True, activated=True, gamma=2.0, alpha=0.25, loss_weight=1.0
        ),
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, activated=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        train_cfg=ConfigDict(
            initial_epoch=4,
            initial_assigner=dict(type="ATSSAssigner", topk=9),
            assigner=dict(type="TaskAlignedAssigner", topk=13),
            alpha=1,
            beta=6,
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
    )
    return MODELS.build(cfg)


def gfl_head(num_classes: int):
    cfg = dict(
        type="GFLHead",
        num_classes=num_classes,
        in_channels=32,
        stacked_convs=1,
        feat_channels=32,
        anchor_generator=ANCHORS,
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25),
        reg_max=16,
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        train_cfg=ConfigDict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False),
    )
    return MODELS.build(cfg)


def _levels(flat: torch.Tensor, case) -> list[torch.Tensor]:
    """(B, A, K) -> per level (B, K, H, W)."""
    out, start = [], 0
    for s in STRIDES:
        n = case.image_size // s
        out.append(flat[:, start : start + n * n].reshape(flat.shape[0], n, n, -1).permute(0, 3, 1, 2).contiguous())
        start += n * n
    return out


def _record(assigner, store: list) -> None:
    assign = assigner.assign

    def recording(*args, **kwargs):
        result = assign(*args, **kwargs)
        store.append(result.gt_inds.clone())
        return result

    assigner.assign = recording


def _common(case, x) -> tuple[list, list]:
    gts = [InstanceData(bboxes=b, labels=lab) for b, lab in zip(x["boxes"], x["labels"], strict=True)]
    size = case.image_size
    metas = [{"img_shape": (size, size), "pad_shape": (size, size), "batch_input_shape": (size, size)}] * case.batch
    return gts, metas


def _assignment(gt_inds: list, scores: torch.Tensor | None, num_anchors: int) -> dict:
    slot, gt_index, score = [], [], []
    for i, inds in enumerate(gt_inds):
        fg = (inds > 0).nonzero().flatten()
        slot += (i * num_anchors + fg).tolist()
        gt_index += (inds[fg] - 1).tolist()
        if scores is not None:
            score += scores[i, fg].tolist()
    return {"slot": slot, "gt_index": gt_index, **({"score": score} if scores is not None else {})}


def golden_tood(case, epoch: int) -> dict:
    x = make_inputs(case, n_bins=17, offset=0.0)
    _, a, c = x["cls_logits"].shape
    bins = torch.arange(17, dtype=torch.float32)
    dist = x["dist_logits"].softmax(-1) @ bins  # (B, A, 4) in strides
    centre = x["points"] / x["strides"][:, None]
    boxes_s = torch.cat([centre - dist[..., :2], centre + dist[..., 2:]], -1)  # decoded, in strides
    head = tood_head(c)
    MessageHub.get_current_instance().update_info("epoch", epoch)
    gt_inds: list = []
    _record(head.initial_assigner if epoch < 4 else head.alignment_assigner, gt_inds)
    metrics: list = []
    single = head._get_targets_single

    def recording_single(*args, **kwargs):
        out = single(*args, **kwargs)
        metrics.append(out[4].clone())
        return out

    head._get_targets_single = recording_single
    gts, metas = _common(case, x)
    with torch.no_grad():
        losses = head.loss_by_feat(_levels(x["cls_logits"].sigmoid(), case), _levels(boxes_s, case), gts, metas)
    cls, box = float(sum(losses["loss_cls"])), float(sum(losses["loss_bbox"]))
    scores = torch.stack(metrics) if epoch >= 4 else None
    return {
        "case": case.__dict__,
        "name": case.name,
        "epoch": epoch,
        "input_checksum": input_checksum(x),
        "gt_boxes": [box.tolist() for box in x["boxes"]],
        "terms": {"cls": cls, "box": box / 2.0, "dfl": 0.0, "total": cls + box},
        "assignment": _assignment(gt_inds, scores, a),
    }


def golden_gfl(case) -> dict:
    x = make_inputs(case, n_bins=17, offset=0.0)
    b, a, c = x["cls_logits"].shape
    head = gfl_head(c)
    gt_inds: list = []
    _record(head.assigner, gt_inds)
    gts, metas = _common(case, x)
    with torch.no_grad():
        losses = head.loss_by_feat(
            _levels(x["cls_logits"], case), _levels(x["dist_logits"].reshape(b, a, -1), case), gts, metas
        )
    cls, box, dfl = (float(sum(losses[k])) for k in ("loss_cls", "loss_bbox", "loss_dfl"))
    return {
        "case": case.__dict__,
        "name": case.name,
        "input_checksum": input_checksum(x),
        "gt_boxes": [box.tolist() for box in x["boxes"]],
        "terms": {"cls": cls, "box": box / 2.0, "dfl": dfl / 0.25, "total": cls + box + dfl},
        "assignment": _assignment(gt_inds, None, a),
    }


def main() -> None:
    outputs = {
        "tood": ("mmdetection 3.3 TOODHead.loss_by_feat, epoch 10", [golden_tood(c, 10) for c in CASES]),
        "tood_warmup": (
            "mmdetection 3.3 TOODHead.loss_by_feat, epoch 0 (ATSS warm-up)",
            [golden_tood(c, 0) for c in CASES],
        ),
        "gfl": ("mmdetection 3.3 GFLHead.loss_by_feat", [golden_gfl(c) for c in CASES]),
    }
    for name, (peer, cases) in outputs.items():
        path = os.path.join(ROOT, "tests", "data", "peers", f"{name}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"peer": peer, "cases": cases}, f)
        for c in cases:
            print(name, c["name"], c["terms"], "fg", len(c["assignment"]["slot"]))


if __name__ == "__main__":
    main()
