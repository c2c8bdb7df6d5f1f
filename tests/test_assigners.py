"""TaskAlignedAssigner and ATSSAssigner: hand-built cases, slow-loop references, properties."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from references import dense_task_aligned

import detlosses.assigners
from detlosses import ASSIGNERS
from detlosses.assigners import AssignResult, ATSSAssigner, TaskAlignedAssigner
from detlosses.assigners import task_aligned as task_aligned_module
from detlosses.boxes import box_iou

ROOT = Path(__file__).resolve().parents[1]


def grid(size: int, stride: int) -> torch.Tensor:
    """(n*n, 2) cell centres of a size x size image, row-major."""
    c = torch.arange(size // stride) * stride + stride / 2
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs, ys], -1).view(-1, 2).float()


def assert_same(res: AssignResult, ref: AssignResult) -> None:
    for name in AssignResult._fields:
        a, b = getattr(res, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs:\n{a}\n{b}"


# ---------------------------------------------------------------- slow references


def _inside(points, box, eps):
    return (
        ((points[:, 0] - box[0]) > eps)
        & ((points[:, 1] - box[1]) > eps)
        & ((box[2] - points[:, 0]) > eps)
        & ((box[3] - points[:, 1]) > eps)
    )


def _fill(b, a, c, holdings, gt_labels, gt_bboxes):
    """AssignResult from {(img, anchor): (gt, quality tensor)} written element by element."""
    labels = torch.full((b, a), c, dtype=torch.long)
    bboxes, scores = torch.zeros(b, a, 4), torch.zeros(b, a, c)
    fg, gt_index = torch.zeros(b, a, dtype=torch.bool), torch.zeros(b, a, dtype=torch.long)
    for (i, j), (g, quality) in holdings.items():
        labels[i, j] = gt_labels[i, g]
        bboxes[i, j] = gt_bboxes[i, g]
        scores[i, j, gt_labels[i, g]] = quality
        fg[i, j] = True
        gt_index[i, j] = g
    return AssignResult(labels, bboxes, scores, fg, gt_index)


def reference_tal(ps, pb, points, gl, gb, gm, topk=13, alpha=1.0, beta=6.0, eps=1e-9, iou_type="iou"):
    """The five steps of DESIGN.md as a loop over images, GTs and anchors."""
    b, a, c = ps.shape
    holdings = {}
    for i in range(b):
        claims = {}  # anchor -> [(overlap, gt, t)]
        for g in range(gl.shape[1]):
            if not gm[i, g]:
                continue
            cand = _inside(points, gb[i, g], eps).nonzero().flatten()  # step 1
            if cand.numel() == 0:
                continue
            ov = box_iou(pb[i, cand], gb[i, g].expand(len(cand), 4), mode=iou_type, aligned=True)
            ov = ov.clamp(min=0)  # no-op for IoU
            t = (ps[i, cand, gl[i, g]].double() ** alpha * ov.double() ** beta).float()  # step 2
            ranked = sorted(
                zip(cand.tolist(), t.tolist(), ov.tolist(), strict=True),
                key=lambda x: (-x[1], x[0]),
            )
            for j, tj, oj in [x for x in ranked if x[1] > 0][:topk]:  # step 3
                claims.setdefault(j, []).append((oj, g, tj))
        held = {}  # gt -> [(anchor, overlap, t)]
        for j, lst in claims.items():  # step 4: highest overlap, then lowest GT
            oj, g, tj = min(lst, key=lambda x: (-x[0], x[1]))
            held.setdefault(g, []).append((j, oj, tj))
        for g, lst in held.items():  # step 5
            max_t = torch.tensor(max(x[2] for x in lst))
            max_o = torch.tensor(max(x[1] for x in lst))
            for j, _, tj in lst:
                holdings[(i, j)] = (g, torch.tensor(tj) * max_o / (max_t + eps))
    return _fill(b, a, c, holdings, gl, gb.float())


def reference_atss(ps, pb, points, gl, gb, gm, strides, topk=9, octave_base_scale=8.0, eps=1e-9, resolve="claimants"):
    b, a, c = ps.shape
    half = (octave_base_scale * strides / 2)[:, None]
    anchor_boxes = torch.cat([points - half, points + half], 1)
    holdings = {}
    for i in range(b):
        claims = {}
        for g in range(gl.shape[1]):
            if not gm[i, g]:
                continue
            box = gb[i, g]
            cx, cy = ((box[0] + box[2]) / 2).item(), ((box[1] + box[3]) / 2).item()
            cand = []
            for s in sorted(set(strides.tolist())):
                ids = [j for j in range(a) if strides[j] == s]
                d = {j: (points[j, 0].item() - cx) ** 2 + (points[j, 1].item() - cy) ** 2 for j in ids}
                cand += sorted(ids, key=lambda j, d=d: (d[j], j))[:topk]
            cand = torch.tensor(cand)
            ious = box_iou(anchor_boxes[cand], box.expand(len(cand), 4), aligned=True)
            vals = [float(v) for v in ious]
            thr = statistics.mean(vals) + (statistics.stdev(vals) if len(vals) > 1 else 0.0)
            inside = _inside(points[cand], box, eps)
            for j, v, ok in zip(cand.tolist(), vals, inside.tolist(), strict=True):
                if ok and v >= thr:
                    claims.setdefault(j, []).append((v, g))
        for j, lst in claims.items():
            if resolve == "all" and len(lst) > 1:  # every valid GT of the image competes
                all_ious = box_iou(anchor_boxes[j][None], gb[i].float())[0].tolist()
                lst = [(v, g) for g, v in enumerate(all_ious) if gm[i, g]]
            _, g = min(lst, key=lambda x: (-x[0], x[1]))
            q = box_iou(pb[i, j][None], gb[i, g][None], aligned=True).clamp(min=0)[0]
            holdings[(i, j)] = (g, q)
    return _fill(b, a, c, holdings, gl, gb.float())


# ---------------------------------------------------------------- hand-built cases

POINTS_8 = grid(32, 8)  # 4 x 4 anchors at 4, 12, 20, 28; anchor j = (4 + 8 (j % 4), 4 + 8 (j // 4))


def one_gt(box, label=0, c=2):
    return (
        torch.tensor([[label]]),
        torch.tensor([[box]], dtype=torch.float32),
        torch.tensor([[True]]),
    )


def test_gt_holds_exactly_topk_anchors():
    # GT (0, 0, 32, 32) contains all 16 anchors; every pred box equals the GT (IoU 1), so
    # t = s and the GT keeps the k anchors with the highest score for its class.
    pb = torch.tensor([0.0, 0, 32, 32]).expand(1, 16, 4).clone()
    ps = torch.zeros(1, 16, 2)
    ps[0, :, 1] = torch.arange(16) / 16.0  # class-1 score of anchor j: j / 16
    res = TaskAlignedAssigner(topk=5)(ps, pb, POINTS_8, *one_gt([0, 0, 32, 32], label=1))
    assert res.fg_mask[0].nonzero().flatten().tolist() == [11, 12, 13, 14, 15]
    assert (res.labels[0, 11:] == 1).all() and (res.labels[0, :11] == 2).all()
    # scores: t * max IoU / max t = (j/16) * 1 / (15/16) = j / 15
    expected = torch.arange(11, 16) / 15.0
    torch.testing.assert_close(res.scores[0, 11:, 1], expected)
    assert (res.scores[0, :, 0] == 0).all() and (res.scores[0, :11] == 0).all()
    assert (res.bboxes[0, 11:] == torch.tensor([0.0, 0, 32, 32])).all()


def test_only_positive_metric_is_kept_and_ties_go_to_lower_anchor():
    pb = torch.tensor([0.0, 0, 32, 32]).expand(1, 16, 4).clone()
    ps = torch.zeros(1, 16, 1)
    ps[0, [3, 7, 9]] = 0.5  # three equal metrics, all others t = 0
    res = TaskAlignedAssigner(topk=2)(ps, pb, POINTS_8, *one_gt([0, 0, 32, 32]))
    assert res.fg_mask[0].nonzero().flatten().tolist() == [3, 7]  # tie: lower index first
    res = TaskAlignedAssigner(topk=13)(ps, pb, POINTS_8, *one_gt([0, 0, 32, 32]))
    assert res.fg_mask[0].nonzero().flatten().tolist() == [3, 7, 9]  # t = 0 never claimed


def test_candidates_strictly_inside():
    # GT (4, 4, 20, 20): anchors on its edges (x or y = 4 or 20) are not inside; only (12, 12)
    pb = torch.tensor([4.0, 4, 20, 20]).expand(1, 16, 4).clone()
    res = TaskAlignedAssigner()(torch.ones(1, 16, 1), pb, POINTS_8, *one_gt([4, 4, 20, 20]))
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5]


def test_score_normalisation_by_hand():
    # GT (0, 0, 16, 8) holds anchors 0 (4, 4) and 1 (12, 4).
    # anchor 0: pred = GT, IoU 1, s = 0.5 -> t = 0.5 * 1**6 = 0.5
    # anchor 1: pred (0, 0, 8, 8), IoU 64 / 128 = 0.5, s = 1 -> t = 0.5**6 = 1/64
    # max IoU = 1, max t = 0.5 -> scores 0.5 * 1 / 0.5 = 1 and (1/64) * 1 / 0.5 = 1/32
    pb = torch.zeros(1, 16, 4)
    pb[0, 0] = torch.tensor([0.0, 0, 16, 8])
    pb[0, 1] = torch.tensor([0.0, 0, 8, 8])
    ps = torch.zeros(1, 16, 1)
    ps[0, 0, 0], ps[0, 1, 0] = 0.5, 1.0
    res = TaskAlignedAssigner()(ps, pb, POINTS_8, *one_gt([0, 0, 16, 8]))
    torch.testing.assert_close(res.scores[0, :2, 0], torch.tensor([1.0, 1 / 32]))
    assert res.fg_mask[0].sum() == 2


def test_overlapping_gts_highest_overlap_wins_ties_lowest_index():
    # GT0 (0, 0, 20, 20) and GT1 (10, 0, 30, 20) both contain anchor 5 (12, 12) and 6 (20, 12)
    # anchor 5 predicts (5, 0, 25, 20): IoU 300 / 500 = 0.6 with both -> tie -> GT0
    # anchor 6 predicts (8, 0, 28, 20): IoU with GT0 = 240 / 560 = 0.43, GT1 = 360 / 440 = 0.82
    pb = torch.zeros(1, 16, 4)
    pb[0, 5] = torch.tensor([5.0, 0, 25, 20])
    pb[0, 6] = torch.tensor([8.0, 0, 28, 20])
    ps = torch.ones(1, 16, 2)
    gl = torch.tensor([[0, 1]])
    gb = torch.tensor([[[0.0, 0, 20, 20], [10.0, 0, 30, 20]]])
    res = TaskAlignedAssigner()(ps, pb, POINTS_8, gl, gb, torch.tensor([[True, True]]))
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5, 6]
    assert res.gt_index[0, 5] == 0 and res.labels[0, 5] == 0
    assert res.gt_index[0, 6] == 1 and res.labels[0, 6] == 1
    # swapping the GT rows moves the tie to the new GT0 (the old GT1)
    res = TaskAlignedAssigner()(ps, pb, POINTS_8, gl.flip(1), gb.flip(1), torch.tensor([[True, True]]))
    assert res.gt_index[0, 5] == 0 and res.labels[0, 5] == 1
    assert res.gt_index[0, 6] == 0 and res.labels[0, 6] == 1


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(), ATSSAssigner(octave_base_scale=1.0)])
def test_padding_rows_never_win(assigner):
    pb = torch.tensor([0.0, 0, 32, 32]).expand(1, 16, 4).clone()
    ps = torch.ones(1, 16, 3)
    gl = torch.tensor([[2, -7, 99]])  # padding labels are not checked
    gb = torch.tensor([[[8.0, 0, 16, 8], [0.0, 0, 32, 32], [0.0, 0, 32, 32]]])
    gm = torch.tensor([[True, False, False]])
    strides = torch.full((16,), 8.0)
    res = assigner(ps, pb, POINTS_8, gl, gb, gm, strides=strides)
    assert res.fg_mask.any() and (res.gt_index[res.fg_mask] == 0).all()
    assert (res.labels[res.fg_mask] == 2).all()
    res = assigner(ps, pb, POINTS_8, gl, gb, torch.zeros(1, 3, dtype=torch.bool), strides=strides)
    assert not res.fg_mask.any()


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(), ATSSAssigner()])
@pytest.mark.parametrize("g", [0, 3])
def test_no_gt_is_all_background(assigner, g):
    ps, pb = torch.rand(2, 16, 4), torch.rand(2, 16, 4) * 32
    gl, gb = torch.zeros(2, g, dtype=torch.long), torch.rand(2, g, 4) * 32
    res = assigner(
        ps,
        pb,
        POINTS_8,
        gl,
        gb,
        torch.zeros(2, g, dtype=torch.bool),
        strides=torch.full((16,), 8.0),
    )
    assert (res.labels == 4).all() and not res.fg_mask.any()
    assert (res.scores == 0).all() and (res.bboxes == 0).all() and (res.gt_index == 0).all()
    assert res.scores.shape == (2, 16, 4) and res.bboxes.shape == (2, 16, 4)


def test_yolov8_ciou_variant():
    points = torch.tensor([[5.0, 5.0]])
    gl, gb, gm = one_gt([0, 0, 10, 10])
    ps = torch.full((1, 1, 1), 0.64)
    # pred (2, 0, 12, 10): IoU = 80 / 120; centres (7, 5), (5, 5): rho^2 = 4; enclosing box
    # 12 x 10: c^2 = 244; equal aspect ratios: v = 0 -> CIoU = 2/3 - 4/244.
    # One anchor: score = t * CIoU / (t + eps) = CIoU (up to eps / t ~ 1e-8).
    pb = torch.tensor([[[2.0, 0, 12, 10]]])
    res = TaskAlignedAssigner(topk=10, alpha=0.5, beta=6.0, iou_type="ciou")(ps, pb, points, gl, gb, gm)
    torch.testing.assert_close(res.scores[0, 0, 0], torch.tensor(2 / 3 - 4 / 244))
    res = TaskAlignedAssigner(iou_type="iou")(ps, pb, points, gl, gb, gm)
    torch.testing.assert_close(res.scores[0, 0, 0], torch.tensor(2 / 3))
    # pred (9, 9, 30, 30): IoU = 1 / 540 > 0 but rho^2 / c^2 = 420.5 / 1800 -> CIoU < 0 -> clamped
    # to 0 -> t = 0 -> background under "ciou", foreground under "iou".
    pb = torch.tensor([[[9.0, 9, 30, 30]]])
    assert not TaskAlignedAssigner(iou_type="ciou")(ps, pb, points, gl, gb, gm).fg_mask.any()
    assert TaskAlignedAssigner(iou_type="iou")(ps, pb, points, gl, gb, gm).fg_mask.all()


def test_atss_hand_case():
    # GT (8, 0, 24, 8), centre (16, 4); anchors of side 8 (stride 8, octave_base_scale 1).
    # distance^2 to the centre: anchors 1, 2 -> 16; 5, 6 -> 80; 0, 3 -> 144 (then 208 ...)
    # topk 6 -> candidates {0, 1, 2, 3, 5, 6}; anchor-box IoUs: 1, 2 -> 64 / 128 = 0.5, others 0
    # mean = 1/6, unbiased var = (2 (1/3)^2 + 4 (1/6)^2) / 5 = 1/15 -> thr = 1/6 + 0.258 = 0.425
    # -> anchors 1 and 2 (centres (12, 4), (20, 4) strictly inside) are positive.
    pb = torch.zeros(1, 16, 4)
    pb[0, 1] = torch.tensor([8.0, 0, 24, 8])  # IoU 1 with the GT
    pb[0, 2] = torch.tensor([8.0, 0, 16, 8])  # IoU 0.5
    gl, gb, gm = one_gt([8, 0, 24, 8], label=1)
    strides = torch.full((16,), 8.0)
    res = ATSSAssigner(topk=6, octave_base_scale=1.0)(torch.rand(1, 16, 2), pb, POINTS_8, gl, gb, gm, strides)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [1, 2]
    torch.testing.assert_close(res.scores[0, [1, 2], 1], torch.tensor([1.0, 0.5]))
    assert (res.scores[0, :, 0] == 0).all() and (res.labels[0, [1, 2]] == 1).all()
    # topk 4 -> candidates {1, 2, 5, 6}: IoUs (0.5, 0.5, 0, 0), thr = 0.25 + 0.289 > 0.5 -> none
    res = ATSSAssigner(topk=4, octave_base_scale=1.0)(torch.rand(1, 16, 2), pb, POINTS_8, gl, gb, gm, strides)
    assert not res.fg_mask.any()


def test_atss_conflict_goes_to_highest_iou():
    # GT0 (0, 0, 24, 8) and GT1 (8, 0, 16, 8) both contain anchor 1 (12, 4) [box (8, 0, 16, 8)]:
    # IoU 64 / 192 = 1/3 with GT0, 1 with GT1 -> GT1.
    gl = torch.tensor([[0, 1]])
    gb = torch.tensor([[[0.0, 0, 24, 8], [8.0, 0, 16, 8]]])
    gm = torch.tensor([[True, True]])
    ps, pb = torch.rand(1, 16, 2), torch.rand(1, 16, 4) * 32
    res = ATSSAssigner(topk=6, octave_base_scale=1.0)(ps, pb, POINTS_8, gl, gb, gm, torch.full((16,), 8.0))
    assert res.fg_mask[0, 1] and res.gt_index[0, 1] == 1
    assert_same(res, reference_atss(ps, pb, POINTS_8, gl, gb, gm, torch.full((16,), 8.0), 6, 1.0))


def test_registry_and_half_precision_inputs():
    tal = ASSIGNERS.build({"type": "TaskAlignedAssigner", "topk": 10, "alpha": 0.5, "iou_type": "ciou"})
    assert isinstance(tal, TaskAlignedAssigner) and tal.topk == 10
    assert isinstance(ASSIGNERS.build("ATSSAssigner"), ATSSAssigner)
    assert set(detlosses.assigners.__all__) == {
        "AssignResult",
        "TaskAlignedAssigner",
        "ATSSAssigner",
    }
    gen = torch.Generator().manual_seed(0)
    ps = torch.rand(2, 16, 3, generator=gen).bfloat16()
    pb = (POINTS_8.repeat(1, 2) + torch.randn(2, 16, 4, generator=gen) * 6).bfloat16()
    gl, gb, gm = (
        torch.tensor([[0, 2], [1, 1]]),
        torch.tensor([[[0, 0, 20, 20], [8, 8, 32, 30]]] * 2),
        torch.ones(2, 2, dtype=torch.bool),
    )
    res = tal(ps, pb, POINTS_8, gl, gb.bfloat16(), gm)
    assert res.scores.dtype == torch.float32 and res.bboxes.dtype == torch.float32
    assert_same(res, tal(ps.float(), pb.float(), POINTS_8, gl, gb.float(), gm))


# ---------------------------------------------------------------- bad input


def _inputs(b=2, a=16, c=3, g=2):
    return {
        "pred_scores": torch.rand(b, a, c),
        "pred_bboxes": torch.rand(b, a, 4),
        "anchor_points": POINTS_8[:a],
        "gt_labels": torch.zeros(b, g, dtype=torch.long),
        "gt_bboxes": torch.rand(b, g, 4),
        "gt_mask": torch.ones(b, g, dtype=torch.bool),
    }


BAD = [
    ("pred_scores", torch.rand(2, 16)),
    ("pred_scores", torch.ones(2, 16, 3, dtype=torch.long)),
    ("pred_bboxes", torch.rand(2, 15, 4)),
    ("pred_bboxes", torch.rand(2, 16, 5)),
    ("anchor_points", torch.rand(16, 3)),
    ("anchor_points", torch.rand(12, 2)),
    ("gt_labels", torch.zeros(3, 2, dtype=torch.long)),
    ("gt_labels", torch.zeros(2, 2)),
    ("gt_labels", torch.tensor([[0, 3], [0, 0]])),  # C = 3 on a valid row
    ("gt_labels", torch.tensor([[0, -1], [0, 0]])),
    ("gt_bboxes", torch.rand(2, 3, 4)),
    ("gt_bboxes", torch.rand(2, 2, 3)),
    ("gt_mask", torch.ones(2, 2, dtype=torch.long)),
    ("gt_mask", torch.ones(2, 3, dtype=torch.bool)),
]


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(), ATSSAssigner()], ids=["tal", "atss"])
@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_inputs_raise(assigner, name, value):
    inputs = {**_inputs(), name: value}
    with pytest.raises(ValueError, match=name):
        assigner(**inputs, strides=torch.full((16,), 8.0))


def test_bad_strides_and_arguments_raise():
    with pytest.raises(ValueError, match="strides"):
        ATSSAssigner()(**_inputs())
    with pytest.raises(ValueError, match=r"strides.*\(16,\)"):
        ATSSAssigner()(**_inputs(), strides=torch.full((8,), 8.0))
    for kwargs in (
        {"topk": 0},
        {"iou_type": "giou"},
        {"chunk_size": 0},
        {"eps": -1.0},
        {"order": "first"},
        {"resolve": "best"},
        {"inside_margin": -1.0},
        {"min_gt_size": float("nan")},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            TaskAlignedAssigner(**kwargs)
    with pytest.raises(ValueError, match="octave_base_scale"):
        ATSSAssigner(octave_base_scale=0)
    with pytest.raises(ValueError, match="beta > 0"):
        TaskAlignedAssigner(order="topk_first", beta=0.0)


# ---------------------------------------------------------------- properties (hypothesis)

POINTS_2LVL = torch.cat([grid(24, 4), grid(24, 8)])  # 36 + 9 anchors
STRIDES_2LVL = torch.cat([torch.full((36,), 4.0), torch.full((9,), 8.0)])


@st.composite
def cases(draw):
    """Small batches on a 24 px image: integer boxes (edges through anchor centres, empty and
    repeated boxes) and quantised scores/predictions, so ties are common."""
    b, g, c = draw(st.integers(1, 2)), draw(st.integers(0, 5)), draw(st.integers(1, 3))
    coord = st.integers(0, 24)
    boxes = []
    for _ in range(b * g):
        x1, x2 = sorted(draw(st.tuples(coord, coord)))
        y1, y2 = sorted(draw(st.tuples(coord, coord)))
        boxes.append([x1, y1, x2, y2])
    gb = torch.tensor(boxes, dtype=torch.float32).view(b, g, 4)
    labels = draw(st.lists(st.integers(0, c - 1), min_size=b * g, max_size=b * g))
    gl = torch.tensor(labels, dtype=torch.long).view(b, g)
    gm = torch.tensor(draw(st.lists(st.booleans(), min_size=b * g, max_size=b * g)), dtype=torch.bool).view(b, g)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    a = POINTS_2LVL.shape[0]
    ps = torch.randint(0, 5, (b, a, c), generator=gen) / 4.0
    half = torch.randint(1, 5, (b, a, 2), generator=gen) * 2.0
    shift = torch.randint(-2, 3, (b, a, 2), generator=gen).float()
    pb = torch.cat([POINTS_2LVL + shift - half, POINTS_2LVL + shift + half], -1)
    return ps, pb, POINTS_2LVL, gl, gb, gm


TAL_PARAMS = st.fixed_dictionaries(
    {
        "topk": st.integers(1, 6),
        "ab": st.sampled_from([(1.0, 6.0), (0.5, 6.0), (1.0, 1.0)]),
        "iou_type": st.sampled_from(["iou", "ciou"]),
    }
)


def _tal(params, **extra):
    alpha, beta = params["ab"]
    return TaskAlignedAssigner(params["topk"], alpha, beta, iou_type=params["iou_type"], **extra)


@settings(max_examples=60, deadline=None)
@given(case=cases(), params=TAL_PARAMS)
def test_tal_properties(case, params):
    ps, _pb, points, gl, gb, gm = case
    res = _tal(params)(*case)
    b, _a, c = ps.shape
    fg = res.fg_mask
    img, anchor = fg.nonzero(as_tuple=True)
    gt = res.gt_index[img, anchor]
    assert gm[img, gt].all()  # padding never wins
    box = gb[img, gt]
    centre = points[anchor]
    assert ((centre > box[:, :2]) & (centre < box[:, 2:])).all()  # centre strictly inside
    assert torch.equal(res.labels[img, anchor], gl[img, gt]) and (res.labels[~fg] == c).all()
    assert torch.equal(res.bboxes[img, anchor], box)
    per_gt = torch.bincount(img * gl.shape[1] + gt, minlength=b * gl.shape[1])
    assert (per_gt <= params["topk"]).all()  # at most topk anchors per GT
    assert (res.scores >= 0).all() and (res.scores <= 1).all()
    assert (res.scores.sum(-1)[~fg] == 0).all()
    nonzero_cls = (res.scores > 0).sum(-1)
    assert (nonzero_cls <= 1).all()  # only the GT's class column is set


@settings(max_examples=60, deadline=None)
@given(case=cases(), params=TAL_PARAMS)
def test_tal_equals_loop_reference_and_dense_baseline(case, params):
    res = _tal(params)(*case)
    alpha, beta = params["ab"]
    kwargs = {"topk": params["topk"], "alpha": alpha, "beta": beta, "iou_type": params["iou_type"]}
    assert_same(res, reference_tal(*case, **kwargs))
    assert_same(res, dense_task_aligned(*case, **kwargs))


VARIANT_PARAMS = st.fixed_dictionaries(
    {
        "order": st.sampled_from(["inside_first", "topk_first"]),
        "resolve": st.sampled_from(["claimants", "inside", "all"]),
        "inside_margin": st.sampled_from([1e-9, 0.01, 1.0]),
        "min_gt_size": st.sampled_from([0.0, 6.0, 16.0]),
        "eps": st.sampled_from([1e-9, 1e-7]),
    }
)


@settings(max_examples=150, deadline=None)
@given(case=cases(), params=TAL_PARAMS, variant=VARIANT_PARAMS)
def test_tal_variants_equal_dense_reference(case, params, variant):
    alpha, beta = params["ab"]
    kwargs = {"topk": params["topk"], "alpha": alpha, "beta": beta, "iou_type": params["iou_type"], **variant}
    res = TaskAlignedAssigner(**kwargs)(*case)  # small: every pair tested
    assert_same(res, dense_task_aligned(*case, **kwargs))
    with mock.patch.object(task_aligned_module, "_PAIR_BUDGET", 7):  # many pair-chunks
        assert_same(TaskAlignedAssigner(**kwargs, chunk_size=2)(*case), res)
        with mock.patch.object(task_aligned_module, "_DENSE_PAIRS", 0):  # the sorted searches
            assert_same(TaskAlignedAssigner(**kwargs, chunk_size=2)(*case), res)


def test_tal_variants_by_hand():
    # anchors 5 (12, 12) and 6 (20, 12); GT 0 = [0, 0, 24, 16] contains both, GT 1 = [14, 4, 30, 20]
    # contains anchor 6 only, GT 2 = [16, 8, 17, 9] contains none (it is smaller than a cell).
    gl = torch.tensor([[0, 0, 0]])
    gb = torch.tensor([[[0.0, 0, 24, 16], [14, 4, 30, 20], [16, 8, 17, 9]]])
    gm = torch.ones(1, 3, dtype=torch.bool)
    ps = torch.full((1, 16, 1), 0.5)
    pb = torch.zeros(1, 16, 4)
    pb[0, 5] = torch.tensor([4.0, 4, 20, 20])
    pb[0, 6] = torch.tensor([15.0, 5, 29, 19])  # IoU 0.77 with GT 1, 0.21 with GT 0, 1/196 with GT 2
    one = {"topk": 1, "beta": 1.0}
    # GT 0 claims 5 (its best) and GT 1 claims 6: no conflict
    res = TaskAlignedAssigner(**one)(ps, pb, POINTS_8, gl, gb, gm)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5, 6] and res.gt_index[0, [5, 6]].tolist() == [0, 1]
    # GT 2 grown to 16 px ([8.5, 0.5, 24.5, 16.5]) contains anchors 1, 2, 5, 6 and claims 6
    # (IoU 1/196 > 1/256 of anchor 5); GT 1 keeps it (the highest overlap either way)
    res = TaskAlignedAssigner(**one, min_gt_size=16.0)(ps, pb, POINTS_8, gl, gb, gm)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5, 6] and res.gt_index[0, [5, 6]].tolist() == [0, 1]
    # top-k first: GT 0's best anchor over all anchors is 5 (IoU 0.43), inside it
    res = TaskAlignedAssigner(**one, order="topk_first")(ps, pb, POINTS_8, gl, gb, gm)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5, 6]
    # a predicted box exactly on GT 0 from an anchor outside it (anchor 15 at (28, 28)) wins
    # GT 0's single top-k-first claim, which the inside test then drops: GT 0 holds nothing
    pb[0, 15] = gb[0, 0]
    res = TaskAlignedAssigner(**one, order="topk_first")(ps, pb, POINTS_8, gl, gb, gm)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [6] and res.gt_index[0, 6] == 1
    res = TaskAlignedAssigner(**one)(ps, pb, POINTS_8, gl, gb, gm)  # inside first still claims 5
    assert res.fg_mask[0].nonzero().flatten().tolist() == [5, 6]


def _crowded_case(seed: int):
    """B = 3 on a 160 px image (strides 8/16/32, 525 anchors), 5 classes: image 0 holds 40 GTs of
    4-100 px, crowded so that anchors have many claimants and rivals; image 1 has no valid GT;
    image 2 holds GTs smaller than a cell (some contain no anchor) and one covering the image.
    Predicted boxes are offset from their anchors (ltrb distances of 0.2-5 strides)."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.cat([grid(160, s) for s in (8, 16, 32)])
    strides = torch.cat([torch.full((grid(160, s).shape[0], 1), float(s)) for s in (8, 16, 32)])
    b, a, g, c = 3, points.shape[0], 40, 5
    ps = torch.rand(b, a, c, generator=gen)
    ltrb = torch.empty(b, a, 4).uniform_(0.2, 5.0, generator=gen) * strides
    pb = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)
    centre = torch.rand(b, g, 2, generator=gen) * torch.tensor([60.0, 60.0]) + 50  # a crowded middle
    size = torch.exp(torch.empty(b, g, 2).uniform_(1.4, 4.6, generator=gen))  # 4..100 px
    gb = torch.cat([centre - size / 2, centre + size / 2], -1)
    gb[2, :10] = torch.tensor([20.0, 20, 23, 23]) + torch.arange(10.0)[:, None] * 9  # < a cell
    gb[2, 10] = torch.tensor([0.0, 0, 160, 160])
    gl = torch.randint(0, c, (b, g), generator=gen)
    gm = torch.ones(b, g, dtype=torch.bool)
    gm[1] = False
    gm[2, 11:] = False
    return ps, pb, points, gl, gb, gm


@pytest.mark.parametrize(
    ("dense_pairs", "key_table"), [(0, 1 << 21), (0, 1), (1 << 18, 1 << 21)], ids=["search", "wide-bands", "small"]
)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("order", ["inside_first", "topk_first"])
@pytest.mark.parametrize("resolve", ["claimants", "inside", "all"])
def test_tal_variants_on_a_crowded_batch_equal_dense_reference(seed, order, resolve, dense_pairs, key_table):
    # many GTs per anchor, predicted boxes off their anchors, an empty image and GTs without
    # anchors: the searches (bands, reach groups, rival windows; "wide-bands": bands widened by
    # the key table's bound) and the small-input path (every pair tested) against the dense semantics
    case = _crowded_case(seed)
    for kwargs in ({}, {"iou_type": "ciou", "min_gt_size": 16.0, "inside_margin": 0.01, "eps": 1e-7}):
        kwargs = {"order": order, "resolve": resolve, **kwargs}
        with (
            mock.patch.object(task_aligned_module, "_DENSE_PAIRS", dense_pairs),
            mock.patch.object(task_aligned_module, "_KEY_TABLE", key_table),
        ):
            res = TaskAlignedAssigner(**kwargs)(*case)
        assert res.fg_mask[0].sum() > 0 and not res.fg_mask[1].any()
        assert_same(res, dense_task_aligned(*case, **kwargs))


@pytest.mark.parametrize(
    ("alpha", "beta", "order"),
    [(1.0, 0.0, "inside_first"), (-0.5, 2.0, "topk_first"), (-0.5, 2.0, "inside_first")],
)
@pytest.mark.parametrize("resolve", ["claimants", "inside", "all"])
def test_tal_exponents_without_overlap_bound_equal_dense_reference(alpha, beta, order, resolve):
    # beta = 0: claims of zero overlap, so a contested anchor's rivals are not bounded by its
    # claimants' overlap; alpha < 0: s**alpha > 1, so t does not bound the overlap
    ps, pb, points, gl, gb, gm = _crowded_case(2)
    ps = ps.clamp(min=0.05)
    kwargs = {"alpha": alpha, "beta": beta, "order": order, "resolve": resolve}
    ref = dense_task_aligned(ps, pb, points, gl, gb, gm, **kwargs)
    assert_same(TaskAlignedAssigner(**kwargs)(ps, pb, points, gl, gb, gm), ref)
    with mock.patch.object(task_aligned_module, "_DENSE_PAIRS", 0):
        assert_same(TaskAlignedAssigner(**kwargs)(ps, pb, points, gl, gb, gm), ref)


def test_aligned_iou_is_box_iou_bit_for_bit():
    # the assigner's IoU from precomputed columns must equal box_iou exactly (the dense reference
    # uses box_iou), also for degenerate (zero-size), inverted (x2 < x1) and disjoint boxes
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 20000, 2, generator=gen) * 100
    wh = torch.empty(2, 20000, 2).uniform_(-5.0, 40.0, generator=gen)
    wh[:, ::7] = 0.0
    boxes = torch.cat([xy, xy + wh], -1)
    columns = [task_aligned_module._box_columns(b) for b in boxes]
    assert torch.equal(task_aligned_module._aligned_iou(*columns), box_iou(*boxes, aligned=True))


def test_pair_search_int32_indices_equal_int64_and_the_dense_test():
    # the sorted pair search runs its per-candidate indices in int32 where they fit
    # (_index_dtype; A + budget is their bound); forced to int64 it yields the same pairs, and
    # with a test (eps) those are the dense test's. A small budget makes many chunks
    assert task_aligned_module._index_dtype(2**31 - 1) == torch.int32
    assert task_aligned_module._index_dtype(2**31) == torch.int64
    _, _, points, _, gt, gt_mask = _crowded_case(0)
    boxes = gt[gt_mask]
    for eps in (1e-9, None):
        found = {}
        for dtype in (torch.int32, torch.int64):
            with (
                mock.patch.object(task_aligned_module, "_DENSE_PAIRS", 0),
                mock.patch.object(task_aligned_module, "_index_dtype", lambda bound, dtype=dtype: dtype),
            ):
                pairs = list(task_aligned_module._inside_pairs(points, boxes, eps, None, 64))
            assert len(pairs) > 5 and all(p.dtype == dtype for pair in pairs for p in pair)
            found[dtype] = torch.cat([box.long() * points.shape[0] + point for box, point in pairs])
        assert torch.equal(found[torch.int32], found[torch.int64])
        if eps is not None:
            box, point = task_aligned_module._inside_mask(points, boxes[:, None], eps).nonzero(as_tuple=True)
            assert torch.equal(found[torch.int32].sort().values, box * points.shape[0] + point)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_first_search_finds_every_pair_its_iou_bound_allows(seed):
    # the candidate search of order="topk_first" (reach groups, moved images, the overlap and
    # area bounds) must return every (GT, anchor) pair of one image with intersection >=
    # cover * union, each once: a too tight bound drops pairs here even where no top-k changes
    gen = torch.Generator().manual_seed(seed)
    points = torch.cat([grid(160, s) for s in (8, 16, 32)])
    strides = torch.cat([torch.full((grid(160, s).shape[0], 1), float(s)) for s in (8, 16, 32)])
    b, a, g = 3, points.shape[0], 40
    ltrb = torch.empty(b, a, 4).uniform_(0.0, 6.0, generator=gen) * strides  # off-centre boxes
    pred = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1).view(-1, 4)
    centre = torch.rand(b, g, 2, generator=gen) * 160
    size = torch.exp(torch.empty(b, g, 2).uniform_(1.4, 4.8, generator=gen))  # 4..120 px
    gt = torch.cat([centre - size / 2, centre + size / 2], -1).view(-1, 4)
    valid = torch.arange(b * g)[torch.rand(b * g, generator=gen) < 0.8]
    x = task_aligned_module._Batch.of(
        b, a, g, torch.rand(b * a, 1), pred, torch.zeros(b * g, dtype=torch.long), gt, points, valid
    )
    cover = torch.empty(valid.numel()).uniform_(0.02, 0.8, generator=gen)
    with (
        mock.patch.object(task_aligned_module, "_DENSE_PAIRS", 0),
        mock.patch.object(task_aligned_module, "_PAIR_BUDGET", 1 << 14),
    ):
        found = [torch.stack(p, 1) for p in TaskAlignedAssigner(order="topk_first")._near_pairs(x, valid, cover)]
    found = torch.cat(found)  # (P, 2) (position in valid, slot)
    assert torch.unique(found, dim=0).shape[0] == found.shape[0]  # each pair once
    assert torch.equal(found[:, 1] // a, valid[found[:, 0]] // g)  # anchors of the GT's image
    boxes, image = gt[valid], valid // g
    pred_img = pred.view(b, a, 4)[image]  # (V, A, 4)
    wh = torch.minimum(pred_img[..., 2:], boxes[:, None, 2:]) - torch.maximum(pred_img[..., :2], boxes[:, None, :2])
    inter = wh.clamp(min=0).prod(-1)
    union = (pred_img[..., 2:] - pred_img[..., :2]).prod(-1) + (boxes[:, 2:] - boxes[:, :2]).prod(-1)[:, None] - inter
    need = (inter >= cover[:, None] * union).nonzero()  # (N, 2) (position in valid, anchor)
    need[:, 1] += image[need[:, 0]] * a
    assert need.shape[0] > 500
    key = found[:, 0] * b * a + found[:, 1]
    assert torch.isin(need[:, 0] * b * a + need[:, 1], key).all()
    assert key.numel() < 0.5 * valid.numel() * a  # a search, not every pair


@settings(max_examples=40, deadline=None)
@given(case=cases(), params=TAL_PARAMS, chunk=st.integers(1, 3), budget=st.integers(1, 40))
def test_tal_chunked_equals_unchunked(case, params, chunk, budget):
    whole = _tal(params)(*case)
    assert_same(_tal(params, chunk_size=chunk)(*case), whole)
    with mock.patch.object(task_aligned_module, "_PAIR_BUDGET", budget):  # many pair-chunks
        assert_same(_tal(params)(*case), whole)


@settings(max_examples=60, deadline=None)
@given(
    case=cases(),
    topk=st.integers(1, 5),
    scale=st.sampled_from([1.0, 2.0, 3.0]),
    chunk=st.integers(1, 3),
    margin=st.sampled_from([1e-9, 0.01, 1.0]),
    resolve=st.sampled_from(["claimants", "all"]),
)
def test_atss_equals_loop_reference(case, topk, scale, chunk, margin, resolve):
    res = ATSSAssigner(topk, scale, margin, resolve)(*case, strides=STRIDES_2LVL)
    assert_same(res, reference_atss(*case, STRIDES_2LVL, topk, scale, margin, resolve))
    assert_same(ATSSAssigner(topk, scale, margin, resolve, chunk_size=chunk)(*case, strides=STRIDES_2LVL), res)
    fg = res.fg_mask
    assert (res.scores >= 0).all() and (res.scores <= 1).all() and (res.scores.sum(-1)[~fg] == 0).all()


@pytest.mark.parametrize("variant", ["claimants", "tood", "ppyoloe", "yolov8"])
def test_crowded_batch_memory_bound(variant):
    # 4 images x 5000 GT x 8400 anchors: the extra resident memory of one call (ru_maxrss
    # growth after building the inputs, in a fresh process) stays below 2 GiB, every variant.
    cmd = [
        sys.executable,
        str(ROOT / "tools/benchmarks/assign.py"),
        "--worker",
        "ours",
        variant,
        "4",
        "5000",
        "80",
        "0",
        "0",
    ]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    # 0 when the call stays below the peak of building the inputs (chunks of 2^19 pairs can)
    assert 0 <= out["peak_mb"] < 2048


# ---------------------------------------------------------------- bad values (one reduction each)

NAN = float("nan")


def _with(name, index, value):
    inputs = _inputs()
    inputs[name] = inputs[name].clone()
    inputs[name][index] = value
    return inputs


BAD_VALUES = [
    ("pred_scores", (0, 3, 1), NAN, "pred_scores must be finite"),
    ("pred_scores", (1, 0, 0), float("inf"), "pred_scores must be finite"),
    ("pred_scores", (1, 2, 0), 2.5, r"probabilities in \[0, 1\] \(apply sigmoid"),  # logits passed
    ("pred_scores", (1, 2, 0), -0.5, r"probabilities in \[0, 1\] \(apply sigmoid"),
    ("pred_bboxes", (0, 5, 2), NAN, "pred_bboxes must be finite"),
    ("pred_bboxes", (0, 5, 2), -float("inf"), "pred_bboxes must be finite"),
    ("gt_bboxes", (1, 0, 3), NAN, "gt_bboxes must be finite on every valid row"),
]


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(), ATSSAssigner()], ids=["tal", "atss"])
@pytest.mark.parametrize(("name", "index", "value", "message"), BAD_VALUES)
def test_bad_values_raise_naming_the_argument(assigner, name, index, value, message):
    with pytest.raises(ValueError, match=message):
        assigner(**_with(name, index, value), strides=torch.full((16,), 8.0))


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(), ATSSAssigner()], ids=["tal", "atss"])
def test_nan_on_a_padding_row_is_ignored(assigner):
    inputs = _with("gt_bboxes", (1, 1), NAN)
    inputs["gt_mask"] = torch.tensor([[True, True], [True, False]])
    clean = {**inputs, "gt_bboxes": inputs["gt_bboxes"].nan_to_num(0.0)}
    assert_same(assigner(**inputs, strides=torch.full((16,), 8.0)), assigner(**clean, strides=torch.full((16,), 8.0)))


@pytest.mark.parametrize("assigner", [TaskAlignedAssigner(), ATSSAssigner()], ids=["tal", "atss"])
def test_zero_anchors_give_an_empty_result(assigner):
    inputs = {**_inputs(a=0), "anchor_points": torch.zeros(0, 2)}
    res = assigner(**inputs, strides=torch.zeros(0))
    assert res.fg_mask.shape == (2, 0) and res.scores.shape == (2, 0, 3) and res.bboxes.shape == (2, 0, 4)
