"""DetectionCriterion and recipes: hand-combined totals, padding, bad input, DDP normalisation."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as tnf
import torchvision

from detlosses import DetectionCriterion
from detlosses import functional as F
from detlosses.boxes import bbox2distance, distance2bbox
from detlosses.criterion import pad_targets
from detlosses.recipes import RECIPES

REG_MAX = 7


def grid(size=64, stride=8):
    """Anchor points (A, 2) and strides (A,) of one level covering a size x size image."""
    centres = torch.arange(size // stride, dtype=torch.float32) * stride + stride / 2
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], -1)
    return points, torch.full((len(points),), float(stride))


def make_inputs(seed=0, batch=2, num_classes=3):
    gen = torch.Generator().manual_seed(seed)
    points, strides = grid()
    num_anchors = len(points)
    cls_logits = torch.randn(batch, num_anchors, num_classes, generator=gen).requires_grad_()
    dist_logits = torch.randn(batch, num_anchors, 4 * (REG_MAX + 1), generator=gen).requires_grad_()
    distances = dist_logits.view(batch, num_anchors, 4, -1).softmax(-1) @ torch.arange(REG_MAX + 1.0)
    box_preds = distance2bbox(points, distances * strides[:, None])
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [20.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[10.0, 30.0, 40.0, 62.0]]), "labels": torch.tensor([1])},
    ][:batch]
    return cls_logits, box_preds, dist_logits, points, strides, targets


def hand_combined(crit, recipe, cls_logits, box_preds, dist_logits, points, strides, targets):
    """The recipe's total written out with torch / torchvision primitives, not our modules."""
    gt_labels, gt_bboxes, gt_mask = pad_targets(targets, crit.num_classes, cls_logits.device)
    res = crit.assigner(
        cls_logits.detach().sigmoid(), box_preds.detach(), points, gt_labels, gt_bboxes, gt_mask, strides=strides
    )
    fg, t = res.fg_mask, res.scores
    x, p = cls_logits, cls_logits.sigmoid()
    bce = tnf.binary_cross_entropy_with_logits(x, t, reduction="none")
    if recipe == "ppyoloe":  # VFL: BCE * (t if t > 0 else 0.75 * p^2)
        cls_sum = (bce * torch.where(t > 0, t, 0.75 * p**2)).sum()
    elif recipe == "yolov8":  # plain BCE
        cls_sum = bce.sum()
    else:  # QFL beta 2
        cls_sum = (bce * (t - p).abs() ** 2).sum()
    if recipe == "gfl":  # sum over images of max(num_pos_i, 1)
        cls = cls_sum / float(fg.sum(1).clamp(min=1).sum())
        w = p.detach().max(-1).values[fg]
    else:
        cls = cls_sum / max(float(t.sum()), 1.0)
        w = t.sum(-1)[fg]
    w_sum = max(float(w.sum()), 1.0)
    pb, tb = box_preds[fg], res.bboxes[fg]
    if recipe == "yolov8":
        box_l = torchvision.ops.complete_box_iou_loss(pb, tb, reduction="none")
    else:
        box_l = torchvision.ops.generalized_box_iou_loss(pb, tb, reduction="none")
    box = (box_l * w).sum() / w_sum
    dfl = torch.zeros(())
    if crit.dfl_loss is not None:
        s = strides[None].expand_as(fg)[fg][:, None]
        margin = 0.1 if recipe == "gfl" else 0.01
        target = bbox2distance(points[None].expand(*fg.shape, 2)[fg] / s, tb / s).clamp(0, REG_MAX - margin)
        left = target.floor().long()
        logits = dist_logits[fg].reshape(-1, 4, REG_MAX + 1)
        ce_l = tnf.cross_entropy(logits.reshape(-1, REG_MAX + 1), left.flatten(), reduction="none").view(-1, 4)
        ce_r = tnf.cross_entropy(logits.reshape(-1, REG_MAX + 1), (left + 1).flatten(), reduction="none").view(-1, 4)
        per_side = (left + 1 - target) * ce_l + (target - left) * ce_r
        dfl = (per_side.mean(-1) * w).sum() / w_sum
    weights = RECIPES[recipe]["weights"]
    return weights["cls"] * cls + weights["box"] * box + weights["dfl"] * dfl, fg


@pytest.mark.parametrize("recipe", ["tood", "gfl", "ppyoloe", "yolov8"])
def test_total_equals_hand_combined_losses(recipe):
    inputs = make_inputs()
    crit = DetectionCriterion.from_recipe(recipe, num_classes=3, reg_max=REG_MAX)
    out = crit(*inputs)
    expected, fg = hand_combined(crit, recipe, *inputs)
    assert int(out["num_pos"]) == int(fg.sum()) > 0
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out["loss"], [inputs[0], inputs[2]], allow_unused=True, retain_graph=True)
    expected_grads = torch.autograd.grad(expected, [inputs[0], inputs[2]], allow_unused=True)
    for got, want in zip(grads, expected_grads, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_tood_warmup_phase_by_epoch():
    inputs = make_inputs()
    crit = DetectionCriterion.from_recipe("tood", 3, reg_max=REG_MAX, warmup_epochs=2)
    # the warm-up written out as a steady-state criterion: mmdetection's ATSS epochs
    atss = DetectionCriterion.from_recipe(
        "tood",
        3,
        reg_max=REG_MAX,
        assigner={"type": "ATSSAssigner", "topk": 9, "inside_margin": 0.01},
        cls_loss={"type": "FocalLoss", "alpha": 0.25, "gamma": 2.0},
        cls_target="onehot",
        cls_normalizer="num_pos",
        box_weighting="centerness",
    )
    tal = DetectionCriterion.from_recipe("tood", 3, reg_max=REG_MAX)
    assert not torch.allclose(atss(*inputs)["loss"], tal(*inputs)["loss"])  # the two differ here
    for epoch, reference in ((0, atss), (1, atss), (2, tal), (7, tal)):
        crit.set_epoch(epoch)
        got, want = crit(*inputs), reference(*inputs)
        for key in ("loss", "loss_cls", "loss_box", "num_pos"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    assert type(tal.active_assigner).__name__ == "TaskAlignedAssigner"


def test_warmup_by_hand_focal_onehot_and_centerness():
    cls_logits, box_preds, dist_logits, points, strides, targets = make_inputs()
    crit = DetectionCriterion.from_recipe("tood", 3, reg_max=REG_MAX, warmup_epochs=1)
    out = crit(cls_logits, box_preds, dist_logits, points, strides, targets)  # epoch 0: warm-up
    gt_labels, gt_bboxes, gt_mask = pad_targets(targets, 3, cls_logits.device)
    res = crit.active_assigner(
        cls_logits.detach().sigmoid(), box_preds.detach(), points, gt_labels, gt_bboxes, gt_mask, strides=strides
    )
    fg = res.fg_mask
    onehot = tnf.one_hot(res.labels, 4)[..., :3].float()
    focal = torchvision.ops.sigmoid_focal_loss(cls_logits, onehot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(out["loss_cls"], focal / fg.sum(), rtol=1e-5, atol=1e-7)
    p, box = points[None].expand(*fg.shape, 2)[fg], res.bboxes[fg]
    lr = torch.stack([p[:, 0] - box[:, 0], box[:, 2] - p[:, 0]], -1)
    tb = torch.stack([p[:, 1] - box[:, 1], box[:, 3] - p[:, 1]], -1)
    centerness = (lr.amin(-1) / lr.amax(-1) * tb.amin(-1) / tb.amax(-1)).sqrt()
    giou = torchvision.ops.generalized_box_iou_loss(box_preds[fg], box, reduction="none")
    torch.testing.assert_close(out["loss_box"], (giou * centerness).sum() / centerness.sum(), rtol=1e-5, atol=1e-7)


def test_warmup_is_opt_in_and_checked():
    inputs = make_inputs()
    plain = DetectionCriterion.from_recipe("tood", 3, reg_max=REG_MAX)  # never calls set_epoch: steady state
    assert not plain.in_warmup and type(plain.active_assigner).__name__ == "TaskAlignedAssigner"
    plain(*inputs)
    with pytest.raises(ValueError, match="'gfl' has no warm-up phase"):
        DetectionCriterion.from_recipe("gfl", 3, warmup_epochs=3)
    with pytest.raises(ValueError, match="warmup_epochs"):
        DetectionCriterion.from_recipe("tood", 3, warmup_epochs=-1)
    with pytest.raises(ValueError, match="needs a warmup dict"):
        DetectionCriterion(3, "TaskAlignedAssigner", "FocalLoss", "GIoULoss", warmup_epochs=2)
    with pytest.raises(KeyError, match="warmup takes the keys"):
        DetectionCriterion.from_recipe("tood", 3, warmup_epochs=2, warmup={"box_loss": "IoULoss"})
    with pytest.raises(ValueError, match="box_weighting"):
        DetectionCriterion.from_recipe("tood", 3, warmup_epochs=2, warmup={"box_weighting": "centre"})


def test_one_weight_knob_and_unweighted_logged_terms():
    inputs = make_inputs()
    crit = DetectionCriterion.from_recipe("yolov8", 3, reg_max=REG_MAX)
    out = crit(*inputs)
    w = crit.weights
    expected = w["cls"] * out["loss_cls"] + w["box"] * out["loss_box"] + w["dfl"] * out["loss_dfl"]
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-6, atol=0)
    for key, term in (("box", "box_loss"), ("cls", "cls_loss"), ("dfl", "dfl_loss")):
        with pytest.raises(ValueError, match=rf"{term} has loss_weight=2.0 and weights\['{key}'\]"):
            DetectionCriterion.from_recipe("yolov8", 3, **{term: {**RECIPES["yolov8"][term], "loss_weight": 2.0}})


def test_gfl_normaliser_and_dfl_clamp_by_hand():
    cls_logits, box_preds, dist_logits, points, strides, targets = make_inputs()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}  # no positive there
    crit = DetectionCriterion.from_recipe("gfl", 3, reg_max=REG_MAX)
    out = crit(cls_logits, box_preds, dist_logits, points, strides, targets)
    gt_labels, gt_bboxes, gt_mask = pad_targets(targets, 3, cls_logits.device)
    res = crit.assigner(
        cls_logits.detach().sigmoid(), box_preds.detach(), points, gt_labels, gt_bboxes, gt_mask, strides=strides
    )
    fg, t, p = res.fg_mask, res.scores, cls_logits.sigmoid()
    qfl = (tnf.binary_cross_entropy_with_logits(cls_logits, t, reduction="none") * (t - p).abs() ** 2).sum()
    per_image = fg.sum(1).clamp(min=1).sum()  # image 1 counts 1
    assert int(fg[0].sum()) > 0 and int(fg[1].sum()) == 0
    torch.testing.assert_close(out["loss_cls"], qfl / per_image, rtol=1e-5, atol=1e-7)
    s = strides[None].expand_as(fg)[fg][:, None]
    far = bbox2distance(points[None].expand(*fg.shape, 2)[fg] / s, res.bboxes[fg] / s)
    clamped = far.clamp(0, REG_MAX - 0.1)
    left = clamped.floor().long()
    logits = dist_logits[fg].reshape(-1, REG_MAX + 1)
    ce_l = tnf.cross_entropy(logits, left.flatten(), reduction="none").view(-1, 4)
    ce_r = tnf.cross_entropy(logits, (left + 1).flatten(), reduction="none").view(-1, 4)
    w = p.detach().max(-1).values[fg]
    dfl = (((left + 1 - clamped) * ce_l + (clamped - left) * ce_r).mean(-1) * w).sum() / w.sum()
    torch.testing.assert_close(out["loss_dfl"], dfl, rtol=1e-5, atol=1e-7)


def test_no_ground_truth_gives_finite_loss_with_gradient():
    cls_logits, box_preds, dist_logits, points, strides, _ = make_inputs()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    for recipe in RECIPES:
        out = DetectionCriterion.from_recipe(recipe, num_classes=3, reg_max=REG_MAX)(
            cls_logits, box_preds, dist_logits, points, strides, empty
        )
        assert int(out["num_pos"]) == 0 and torch.isfinite(out["loss"]), recipe
        (grad,) = torch.autograd.grad(out["loss"], cls_logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0  # negatives still learn


def test_pad_targets():
    labels, boxes, mask = pad_targets(
        [
            {"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 0])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        ],
        num_classes=2,
        device=torch.device("cpu"),
    )
    assert labels.tolist() == [[1, 0], [0, 0]] and mask.tolist() == [[True, True], [False, False]]
    assert boxes.shape == (2, 2, 4) and boxes[1].abs().sum() == 0


def test_bad_input_raises_naming_the_argument():
    cls_logits, box_preds, dist_logits, points, strides, targets = make_inputs()
    crit = DetectionCriterion.from_recipe("ppyoloe", num_classes=3, reg_max=REG_MAX)
    with pytest.raises(ValueError, match="cls_logits"):
        crit(cls_logits[..., :2], box_preds, dist_logits, points, strides, targets)
    with pytest.raises(ValueError, match="box_preds"):
        crit(cls_logits, box_preds[:, :-1], dist_logits, points, strides, targets)
    with pytest.raises(ValueError, match="box_dist_logits"):
        crit(cls_logits, box_preds, None, points, strides, targets)
    with pytest.raises(ValueError, match="anchor_points"):
        crit(cls_logits, box_preds, dist_logits, points[:-1], strides, targets)
    with pytest.raises(ValueError, match="targets"):
        crit(cls_logits, box_preds, dist_logits, points, strides, targets[:1])
    bad = [targets[0], {"boxes": torch.ones(1, 4), "labels": torch.tensor([3])}]
    with pytest.raises(ValueError, match=r"labels.*\[0, 3\)"):
        crit(cls_logits, box_preds, dist_logits, points, strides, bad)
    with pytest.raises(KeyError, match="unknown recipe"):
        DetectionCriterion.from_recipe("yolox", num_classes=3)
    with pytest.raises(ValueError, match="cls_normalizer"):
        DetectionCriterion(3, "TaskAlignedAssigner", "FocalLoss", "GIoULoss", cls_normalizer="count")


def _ddp_worker(rank, world_size, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cls_logits, box_preds, dist_logits, points, strides, targets = make_inputs(seed=rank, batch=1 + rank)
        crit = DetectionCriterion.from_recipe("ppyoloe", num_classes=3, reg_max=REG_MAX)
        out = crit(cls_logits, box_preds, dist_logits, points, strides, targets)
        # The local (unnormalised) score sum, recomputed from the assigner.
        labels, boxes, mask = pad_targets(targets, 3, cls_logits.device)
        res = crit.assigner(cls_logits.detach().sigmoid(), box_preds.detach(), points, labels, boxes, mask)
        vfl = F.varifocal_loss(cls_logits, res.scores).sum()
        results[rank] = (float(out["loss_cls"]), float(vfl), float(res.scores.sum()))
    finally:
        dist.destroy_process_group()


def test_ddp_normaliser_is_averaged_over_ranks(tmp_path):
    """Two gloo processes with different positives divide by the mean score sum of both."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    (cls0, vfl0, s0), (cls1, vfl1, s1) = results[0], results[1]
    assert not math.isclose(s0, s1)  # the ranks really differ
    mean_sum = max((s0 + s1) / 2, 1.0)
    assert cls0 == pytest.approx(vfl0 / mean_sum, rel=1e-5)
    assert cls1 == pytest.approx(vfl1 / mean_sum, rel=1e-5)


def _bad_targets(kind):
    targets = make_inputs()[5]
    if kind == "nan_box":
        targets[1] = {**targets[1], "boxes": torch.tensor([[10.0, float("nan"), 40.0, 62.0]])}
    elif kind == "inf_box":
        targets[0] = {**targets[0], "boxes": targets[0]["boxes"].clone().index_fill_(1, torch.tensor([2]), math.inf)}
    elif kind == "float_labels":
        targets[0] = {**targets[0], "labels": torch.tensor([0.0, 1.7])}
    return targets


@pytest.mark.parametrize("recipe", ["tood", "yolov8"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan_box", r"targets\[1\]\['boxes'\] must be finite"),
        ("inf_box", r"targets\[0\]\['boxes'\] must be finite"),
        ("float_labels", r"targets\[0\]\['labels'\] must be an integer"),
    ],
)
def test_bad_targets_raise(recipe, kind, message):
    cls_logits, box_preds, dist_logits, points, strides, _ = make_inputs()
    crit = DetectionCriterion.from_recipe(recipe, num_classes=3, reg_max=REG_MAX)
    with pytest.raises(ValueError, match=message):
        crit(cls_logits, box_preds, dist_logits, points, strides, _bad_targets(kind))


@pytest.mark.parametrize("name", ["cls_logits", "box_preds"])
def test_nan_predictions_raise(name):
    inputs = list(make_inputs())
    index = {"cls_logits": 0, "box_preds": 1}[name]
    inputs[index] = inputs[index].detach().clone()
    inputs[index][0, 3, 1] = float("nan")
    crit = DetectionCriterion.from_recipe("ppyoloe", num_classes=3, reg_max=REG_MAX)
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        crit(*inputs)
