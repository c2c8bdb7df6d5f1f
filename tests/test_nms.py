"""multiclass_nms against independent references: per-image, per-class torchvision NMS,
slow Python soft-NMS and DIoU-NMS loops, and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from detlosses.nms import Detections, MultiClassNMS, multiclass_nms
from detlosses.registry import NMS


def random_batch(seed: int, B: int = 3, A: int = 300, C: int = 5, low: float = 0.0):
    """Clustered boxes (so NMS has work to do) and distinct scores spread over (0, 1).

    Distinct, because among equal scores the order (and which box suppresses which) is
    arbitrary; torch.rand repeats float32 values among a few thousand draws.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(B, A, 2, generator=g) * 100 + low
    wh = torch.rand(B, A, 2, generator=g) * 30 + 5
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1)
    scores = (torch.randperm(B * A * C, generator=g) + 1).view(B, A, C) / (B * A * C + 1)
    return boxes, scores


# ---------------------------------------------------------------- references (slow, per image)
def reference_candidates(boxes, scores, score_thr, pre_nms_topk, multi_label):
    """(boxes, scores, labels) of one image's candidates: the definition, written directly."""
    if multi_label:
        anchor, label = (scores > score_thr).nonzero(as_tuple=True)
        score = scores[anchor, label]
    else:
        score, label = scores.max(1)
        anchor = (score > score_thr).nonzero().squeeze(1)
        score, label = score[anchor], label[anchor]
    top = score.argsort(descending=True)[:pre_nms_topk]
    return boxes[anchor[top]], score[top], label[top]


def finish(boxes, scores, labels, max_det):
    order = scores.argsort(descending=True)[:max_det]
    return boxes[order], scores[order], labels[order]


def reference_hard(boxes, scores, score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic):
    out = []
    for b in range(boxes.shape[0]):
        bx, sc, lb = reference_candidates(boxes[b], scores[b], score_thr, pre_nms_topk, multi_label)
        groups = torch.zeros_like(lb) if class_agnostic else lb
        keep = _per_group_nms(bx, sc, groups, iou_thr)
        out.append(finish(bx[keep], sc[keep], lb[keep], max_det))
    return out


def _per_group_nms(bx, sc, groups, iou_thr):
    """torchvision's exact NMS kernel, one call per group."""
    kept = [torch.zeros(0, dtype=torch.long)]
    for g in groups.unique():
        idx = (groups == g).nonzero().squeeze(1)
        kept.append(idx[torchvision.ops.nms(bx[idx], sc[idx], iou_thr)])
    return torch.cat(kept)


def reference_greedy(
    boxes,
    scores,
    score_thr,
    iou_thr,
    max_det,
    pre_nms_topk,
    multi_label,
    class_agnostic,
    overlap_fn,
    step,
):
    """Slow greedy loop per image and group: select the remaining box m with the highest score,
    then ``step(score_j, overlap_fn(box_m, box_j))`` is the new score of each remaining box j,
    or None to drop it."""
    out = []
    for b in range(boxes.shape[0]):
        bx, sc, lb = reference_candidates(boxes[b], scores[b], score_thr, pre_nms_topk, multi_label)
        groups = torch.zeros_like(lb) if class_agnostic else lb
        overlap = overlap_fn(bx, bx).tolist()  # (N, N) pairwise, torchvision
        kept = []  # candidate index, score when selected
        for g in groups.unique().tolist():
            remaining = {i: sc[i].item() for i in range(len(lb)) if groups[i] == g}
            while remaining:
                m = max(remaining, key=remaining.get)  # ties: the lowest index (dict order)
                kept.append((m, remaining.pop(m)))
                new = {j: step(s, overlap[m][j]) for j, s in remaining.items()}
                remaining = {j: s for j, s in new.items() if s is not None}
        index = torch.tensor([i for i, _ in kept], dtype=torch.long)
        final = torch.tensor([s for _, s in kept], dtype=torch.float32)
        keep = final > score_thr
        out.append(finish(bx[index[keep]], final[keep], lb[index[keep]], max_det))
    return out


def soft_step(sigma):
    return lambda s, iou: s * math.exp(-(iou**2) / sigma)


def diou_step(iou_thr):
    return lambda s, diou: None if diou > iou_thr else s


def reference(boxes, scores, method, *args, sigma=0.5):
    """The slow reference of ``method`` with multiclass_nms's positional arguments."""
    if method == "hard":
        return reference_hard(boxes, scores, *args)
    if method == "soft":
        return reference_greedy(boxes, scores, *args, overlap_fn=torchvision.ops.box_iou, step=soft_step(sigma))
    return reference_greedy(boxes, scores, *args, overlap_fn=torchvision.ops.distance_box_iou, step=diou_step(args[1]))


def assert_same(ours: list[Detections], reference, rtol: float = 0.0) -> None:
    assert len(ours) == len(reference)
    for det, (boxes, scores, labels) in zip(ours, reference, strict=True):
        assert det.labels.dtype == torch.long and det.boxes.dtype == det.scores.dtype == torch.float32
        assert torch.equal(det.labels, labels)
        assert torch.equal(det.boxes, boxes.float())
        torch.testing.assert_close(det.scores, scores.float(), rtol=rtol, atol=0.0)


# ---------------------------------------------------------------- hard NMS vs torchvision
HARD_CASES = [
    # score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic
    (0.05, 0.6, 100, 1000, True, False),  # pre_nms_topk binds: ~1400 candidates per image
    (0.05, 0.6, 1000, 1000, True, False),
    (0.3, 0.5, 50, 200, True, False),
    (0.05, 0.6, 100, 1000, False, False),
    (0.5, 0.3, 20, 50, False, False),
    (0.05, 0.6, 100, 1000, True, True),
    (0.2, 0.45, 30, 100, False, True),
    (0.9, 0.7, 300, 10_000, True, False),
    (0.5, 0.0, 1000, 1000, True, False),  # any overlap suppresses
    (0.5, 1.0, 1000, 1000, False, False),  # nothing suppresses
]


@pytest.mark.parametrize("case", HARD_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_hard_equals_per_image_torchvision(case, seed):
    score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic = case
    boxes, scores = random_batch(seed)
    kwargs = dict(
        score_thr=score_thr,
        iou_thr=iou_thr,
        max_det=max_det,
        pre_nms_topk=pre_nms_topk,
        multi_label=multi_label,
        class_agnostic=class_agnostic,
    )
    ours = multiclass_nms(boxes, scores, **kwargs)
    ref = reference_hard(boxes, scores, **kwargs)
    assert_same(ours, ref)
    assert all(len(d.scores) <= max_det for d in ours)
    assert any(len(d.scores) for d in ours)


def negative_nan() -> float:
    nan = torch.tensor(0.0) / torch.tensor(0.0)  # 0/0: the sign bit is set on x86
    nan = -nan.abs()  # sign bit set on every platform
    assert nan.view(torch.int32) < 0
    return nan


@pytest.mark.parametrize("where", ["scores", "boxes"])
@pytest.mark.parametrize("bad", ["nan", "-nan", "inf", "-inf"])
@pytest.mark.parametrize("multi_label", [True, False])
def test_non_finite_input_raises(where, bad, multi_label):
    boxes, scores = random_batch(0)
    value = {"nan": float("nan"), "-nan": negative_nan(), "inf": math.inf, "-inf": -math.inf}[bad]
    target = scores if where == "scores" else boxes
    target[1, 7, 2] = value  # one element; below the threshold is no excuse
    with pytest.raises(ValueError, match=f"{where} must be finite"):
        multiclass_nms(boxes, scores, multi_label=multi_label)


def test_hard_negative_coordinates_keep_groups_apart():
    # torchvision's coordinate trick shifts group k by k * (max + 1), which lets groups overlap
    # when coordinates go below -1 (here they span about [-67, 67], so adjacent groups would
    # overlap by ~66 px); ours shifts by the coordinate range + 1.
    boxes, scores = random_batch(3, low=-50.0)
    ours = multiclass_nms(boxes, scores, score_thr=0.1, iou_thr=0.5, max_det=500)
    ref = reference_hard(boxes, scores, 0.1, 0.5, 500, 1000, True, False)
    assert_same(ours, ref)


def test_hard_iou_exactly_at_threshold_is_kept_in_any_group():
    # [0, 0, 10, 10.2] and [0, 0, 10, 5.1]: IoU = 51 / 102 = 0.5 (float32(10.2) is exactly
    # 2 * float32(5.1)), not > 0.5, so both are kept. They sit in the last (image, class)
    # group of an 8 x 80 batch whose coordinates span ~1000 px: the group shift is ~6.4e5,
    # where float32 steps are 0.0625 px, which would round 5.1 and 10.2 differently.
    boxes = torch.zeros(8, 3, 4)
    boxes[:, 2] = torch.tensor([0.0, 0.0, 1000.3, 1000.7])
    boxes[7, :2] = torch.tensor([[0.0, 0, 10, 10.2], [0, 0, 10, 5.1]])
    scores = torch.zeros(8, 3, 80)
    scores[:, 2, 0] = 0.5
    scores[7, :2, 79] = torch.tensor([0.9, 0.8])
    det = multiclass_nms(boxes, scores, iou_thr=0.5)[7]
    assert torch.equal(det.boxes, boxes[7]) and torch.equal(det.labels, torch.tensor([79, 79, 0]))


@pytest.mark.parametrize("multi_label", [True, False])
def test_threshold_is_strict_at_zero_and_exact_values(multi_label):
    boxes, scores = random_batch(9)
    at_zero = scores - 0.5  # half negative (not probabilities, but the filter must still hold)
    at_zero[0, :20, 0], at_zero[1, :20, 1] = 0.0, -0.0
    at_thr = scores.clone()
    at_thr[0, :20] = 0.25  # a score exactly at the threshold is not a candidate
    for s, thr in ((at_zero, 0.0), (at_thr, 0.25)):
        args = (thr, 0.5, 1000, 1000, multi_label, False)
        assert_same(multiclass_nms(boxes, s, *args), reference_hard(boxes, s, *args))


def test_single_label_takes_each_anchors_best_class():
    boxes, scores = random_batch(4)
    for det in multiclass_nms(boxes, scores, multi_label=False, iou_thr=1.0, max_det=10_000):
        # iou_thr = 1 suppresses nothing, so every anchor appears exactly once with its best class
        assert len(det.scores) == scores.shape[1]
    det = multiclass_nms(boxes, scores, multi_label=False, iou_thr=1.0, max_det=10_000)[0]
    best, label = scores[0].max(1)
    order = best.argsort(descending=True)
    assert torch.equal(det.scores, best[order]) and torch.equal(det.labels, label[order])
    assert torch.equal(det.boxes, boxes[0][order])


# ---------------------------------------------------------------- hand-worked cases
# b0 and b1 overlap: intersection 9 * 10 = 90, union 100 + 100 - 90 = 110, IoU = 9/11 = 0.81818.
# DIoU(b0, b1): centres (5, 5) and (6, 5) -> rho^2 = 1; enclosing box [0, 0, 11, 10] ->
# c^2 = 11^2 + 10^2 = 221; DIoU = 9/11 - 1/221 = 0.81366. b2 overlaps neither.
HAND_BOXES = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]]])
HAND_SCORES = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]]])  # all class 0


def test_hand_hard():
    det = multiclass_nms(HAND_BOXES, HAND_SCORES, iou_thr=0.5)[0]
    assert torch.equal(det.boxes, HAND_BOXES[0, [0, 2]])
    assert torch.equal(det.scores, torch.tensor([0.9, 0.7]))
    assert torch.equal(det.labels, torch.tensor([0, 0]))
    # IoU 0.81818 is not > 0.82: nothing suppressed
    assert len(multiclass_nms(HAND_BOXES, HAND_SCORES, iou_thr=0.82)[0].scores) == 3


def test_hand_soft():
    # select b0 (0.9): b1 -> 0.8 * exp(-(9/11)^2 / 0.5) = 0.8 * exp(-1.338843) = 0.209720,
    # b2 unchanged (IoU 0); select b2 (0.7): b1 unchanged (IoU 0); select b1 (0.209720).
    det = multiclass_nms(HAND_BOXES, HAND_SCORES, method="soft", sigma=0.5)[0]
    decayed = 0.8 * math.exp(-((9 / 11) ** 2) / 0.5)
    assert torch.equal(det.boxes, HAND_BOXES[0, [0, 2, 1]])
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.7, decayed]), rtol=1e-6, atol=0)
    # a final score_thr above 0.209720 drops the decayed box
    det = multiclass_nms(HAND_BOXES, HAND_SCORES, method="soft", sigma=0.5, score_thr=0.25)[0]
    assert torch.equal(det.boxes, HAND_BOXES[0, [0, 2]])


def test_hand_diou():
    # iou_thr 0.815: plain IoU 0.81818 > 0.815 suppresses b1, DIoU 0.81366 <= 0.815 keeps it
    det = multiclass_nms(HAND_BOXES, HAND_SCORES, iou_thr=0.815, method="diou")[0]
    assert torch.equal(det.boxes, HAND_BOXES[0, [0, 1, 2]])
    assert torch.equal(det.scores, torch.tensor([0.9, 0.8, 0.7]))
    assert len(multiclass_nms(HAND_BOXES, HAND_SCORES, iou_thr=0.815)[0].scores) == 2
    det = multiclass_nms(HAND_BOXES, HAND_SCORES, iou_thr=0.81, method="diou")[0]
    assert torch.equal(det.boxes, HAND_BOXES[0, [0, 2]])


def test_hand_classes_are_separate_unless_agnostic():
    scores = torch.tensor([[[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]]])  # b1 is class 1
    assert len(multiclass_nms(HAND_BOXES, scores, iou_thr=0.5)[0].scores) == 3
    det = multiclass_nms(HAND_BOXES, scores, iou_thr=0.5, class_agnostic=True)[0]
    assert torch.equal(det.labels, torch.tensor([0, 0]))


# ---------------------------------------------------------------- soft / DIoU vs slow loops
GREEDY_CASES = [
    # score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic
    (0.05, 0.5, 100, 60, True, False),
    (0.3, 0.4, 30, 40, False, False),
    (0.2, 0.6, 50, 50, True, True),
]


@pytest.mark.parametrize("case", GREEDY_CASES)
@pytest.mark.parametrize("sigma", [0.5, 0.1])
def test_soft_equals_reference_loop(case, sigma):
    score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic = case
    boxes, scores = random_batch(5, B=2, A=80, C=3)
    args = (score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic)
    ours = multiclass_nms(boxes, scores, *args, method="soft", sigma=sigma)
    ref = reference(boxes, scores, "soft", *args, sigma=sigma)
    assert_same(ours, ref, rtol=1e-6)
    assert any(len(d.scores) for d in ours)


def test_soft_with_long_overlap_chains_equals_reference_loop():
    # 250 boxes in a 100 x 100 px field, two classes: long chains of decays within a group
    boxes, scores = random_batch(21, B=1, A=250, C=2)
    args = (0.01, 0.5, 500, 500, True, False)
    ours = multiclass_nms(boxes, scores, *args, method="soft", sigma=0.5)
    assert_same(ours, reference(boxes, scores, "soft", *args, sigma=0.5), rtol=1e-5)
    assert len(ours[0].scores) > 300


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_soft_with_max_det_far_below_the_candidates_equals_reference_loop(class_agnostic):
    # ~900 candidates per image, max_det 10: only the top final scores of each image are output
    boxes, scores = random_batch(8, B=2, A=300, C=3)
    args = (0.01, 0.5, 10, 1000, True, class_agnostic)
    ours = multiclass_nms(boxes, scores, *args, method="soft", sigma=0.5)
    assert_same(ours, reference(boxes, scores, "soft", *args, sigma=0.5), rtol=1e-6)
    assert all(len(d.scores) == 10 for d in ours)


def test_soft_output_from_far_below_the_top_scores_equals_reference_loop():
    # image 0: the 100 highest scores sit on near-copies of one box (IoU ~1), so after its first
    # selection they decay by ~exp(-2) each; the rest of image 0's top 5 final scores come
    # from boxes ranked below 100 = 20 * max_det by score. Image 1: plain random boxes.
    boxes, scores = random_batch(9, B=2, A=300, C=1)
    g = torch.Generator().manual_seed(9)
    cluster = scores[0, :, 0].argsort(descending=True)[:100]
    boxes[0, cluster] = torch.tensor([40.0, 40.0, 70.0, 70.0]) + torch.rand(100, 4, generator=g) * 0.5
    args = (0.01, 0.5, 5, 1000, True, False)
    ours = multiclass_nms(boxes, scores, *args, method="soft", sigma=0.5)
    assert_same(ours, reference(boxes, scores, "soft", *args, sigma=0.5), rtol=1e-6)
    in_cluster = (ours[0].boxes[:, None] == boxes[0, cluster]).all(-1).any(1)
    assert 1 <= int(in_cluster.sum()) < 5  # the cluster's first box and boxes ranked > 100
    assert len(ours[1].scores) == 5


@pytest.mark.parametrize("case", GREEDY_CASES)
def test_diou_equals_reference_loop(case):
    score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic = case
    boxes, scores = random_batch(6, B=2, A=80, C=3)
    args = (score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic)
    ours = multiclass_nms(boxes, scores, *args, method="diou")
    ref = reference(boxes, scores, "diou", *args)
    assert_same(ours, ref)
    assert any(len(d.scores) for d in ours)


# ---------------------------------------------------------------- empty, fp16, bad input
@pytest.mark.parametrize("method", ["hard", "soft", "diou"])
@pytest.mark.parametrize("shape, fill", [((2, 0, 3), 0.9), ((2, 5, 0), 0.9), ((2, 5, 3), 0.01), ((0, 5, 3), 0.9)])
def test_empty(method, shape, fill):
    B, A, _ = shape
    dets = multiclass_nms(torch.rand(B, A, 4), torch.full(shape, fill), method=method)
    assert len(dets) == B
    for det in dets:
        assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.labels.shape == (0,)
        assert det.boxes.dtype == det.scores.dtype == torch.float32 and det.labels.dtype == torch.long
        assert det.boxes.device == det.scores.device == det.labels.device == torch.device("cpu")


@pytest.mark.parametrize("method", ["hard", "soft", "diou"])
def test_fp16_is_computed_in_float32(method):
    # coordinates ~1e4: box areas (~1e4 * ~1e3) overflow fp16 (max 65504)
    boxes, _ = random_batch(7, B=2, A=60, C=3)
    # distinct scores (ties would make the order among equal scores arbitrary): k / 2048 for
    # k in [1000, 1360) is exact in fp16 (spacing 1/4096 below 0.5, 1/2048 above)
    g = torch.Generator().manual_seed(7)
    scores16 = ((torch.randperm(2 * 60 * 3, generator=g) + 1000) / 2048).view(2, 60, 3).half()
    boxes16 = (boxes * 100 + 5000).half()
    areas16 = (boxes16[..., 2] - boxes16[..., 0]) * (boxes16[..., 3] - boxes16[..., 1])
    assert torch.isinf(areas16).any()
    args = (0.55, 0.5, 100, 1000, True, False)
    ours = multiclass_nms(boxes16, scores16, *args, method=method)
    assert_same(ours, reference(boxes16.float(), scores16.float(), method, *args), rtol=1e-6)
    assert any(len(d.scores) for d in ours)


@pytest.mark.parametrize(
    "boxes, scores, kwargs, name",
    [
        (torch.rand(2, 5, 5), torch.rand(2, 5, 3), {}, "boxes"),
        (torch.rand(5, 4), torch.rand(2, 5, 3), {}, "boxes"),
        (torch.randint(0, 9, (2, 5, 4)), torch.rand(2, 5, 3), {}, "boxes"),
        (torch.rand(2, 5, 4), torch.rand(2, 6, 3), {}, "scores"),
        (torch.rand(2, 5, 4), torch.rand(2, 5), {}, "scores"),
        (torch.rand(2, 5, 4), torch.rand(2, 5, 3), {"method": "matrix"}, "method"),
        (torch.rand(2, 5, 4), torch.rand(2, 5, 3), {"iou_thr": 1.5}, "iou_thr"),
        (torch.rand(2, 5, 4), torch.rand(2, 5, 3), {"iou_thr": -0.1}, "iou_thr"),
        (torch.rand(2, 5, 4), torch.rand(2, 5, 3), {"score_thr": 2.0}, "score_thr"),
        (torch.rand(2, 5, 4), torch.rand(2, 5, 3), {"max_det": 0}, "max_det"),
        (torch.rand(2, 5, 4), torch.rand(2, 5, 3), {"pre_nms_topk": 1.5}, "pre_nms_topk"),
        (torch.rand(2, 5, 4), torch.rand(2, 5, 3), {"method": "soft", "sigma": 0.0}, "sigma"),
    ],
)
def test_bad_input_raises(boxes, scores, kwargs, name):
    with pytest.raises(ValueError, match=name):
        multiclass_nms(boxes, scores, **kwargs)


# ---------------------------------------------------------------- vs batched_nms: dense, ties, duplicates
def batched_nms_loop(boxes, scores, score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic):
    """What a user writes: per image, the candidates by definition, then
    torchvision.ops.batched_nms (one call per class past 1000 boxes, else class offsets)."""
    out = []
    for b in range(boxes.shape[0]):
        bx, sc, lb = reference_candidates(boxes[b], scores[b], score_thr, pre_nms_topk, multi_label)
        idxs = torch.zeros_like(lb) if class_agnostic else lb
        keep = torchvision.ops.batched_nms(bx, sc, idxs, iou_thr)[:max_det]
        out.append((bx[keep], sc[keep], lb[keep]))
    return out


def dense_batch(seed: int, B: int = 2, A: int = 2500, C: int = 3, size: float = 300.0):
    """Every anchor a candidate (as in epoch 1), ~A / C boxes per class, distinct scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(B, A, 2, generator=g) * size
    wh = torch.rand(B, A, 2, generator=g) * 60 + 4
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1)
    scores = (torch.randperm(B * A * C, generator=g) + B * A * C).view(B, A, C) / (2 * B * A * C + 1)
    return boxes, scores


DENSE_CASES = [
    # score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic
    (0.05, 0.6, 100, 30_000, False, False),  # ~830 boxes per class: batched_nms calls per class
    (0.05, 0.6, 300, 3000, True, False),
    (0.001, 0.65, 300, 30_000, True, False),  # COCO-evaluation settings: 7500 per image
    (0.05, 0.5, 100, 2000, False, True),
]


@pytest.mark.parametrize("case", DENSE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_equals_batched_nms_loop(case, dtype):
    boxes, scores = dense_batch(1)
    if dtype == torch.float16:  # boxes exact in fp16 (their float32 value is what NMS sees)
        boxes = boxes.half()
    ours = multiclass_nms(boxes, scores, *case)
    assert_same(ours, batched_nms_loop(boxes.float(), scores, *case))
    assert all(len(d.scores) == case[2] for d in ours)  # max_det cuts


def reference_tied(boxes, scores, score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic):
    """Equal scores ordered by position in (anchor, class) layout: stable sorts, and
    torchvision's NMS kernel fed that order (its own sort is not stable)."""
    out = []
    for b in range(boxes.shape[0]):
        sc_all = scores[b]
        if multi_label:
            anchor, label = (sc_all > score_thr).nonzero(as_tuple=True)  # by position
            score = sc_all[anchor, label]
        else:
            score, label = sc_all.max(1)
            anchor = (score > score_thr).nonzero().squeeze(1)
            score, label = score[anchor], label[anchor]
        top = score.argsort(descending=True, stable=True)[:pre_nms_topk]
        bx, sc, lb = boxes[b][anchor[top]], score[top], label[top]  # by score, then position
        groups = torch.zeros_like(lb) if class_agnostic else lb
        kept = []
        for g in groups.unique():
            idx = (groups == g).nonzero().squeeze(1)  # still by score, then position
            rank = torch.arange(len(idx), 0, -1, dtype=torch.float32)  # distinct: the kernel keeps this order
            kept.append(idx[torchvision.ops.nms(bx[idx], rank, iou_thr)])
        keep = torch.cat(kept).sort().values[:max_det]  # back to (score, position) order
        out.append((bx[keep], sc[keep], lb[keep]))
    return out


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("class_agnostic", [False, True])
def test_ties_are_broken_by_position(multi_label, class_agnostic):
    # 4 score levels over 3 x 400 x 4 pairs: ties everywhere, at the pre_nms_topk and max_det
    # cuts and between overlapping boxes of a group
    boxes, _ = random_batch(11, A=400, C=4)
    g = torch.Generator().manual_seed(11)
    scores = torch.randint(1, 5, (3, 400, 4), generator=g) / 4.0
    args = (0.3, 0.5, 60, 250, multi_label, class_agnostic)
    ours = multiclass_nms(boxes, scores, *args)
    assert_same(ours, reference_tied(boxes, scores, *args))
    assert all(len(d.scores) == 60 for d in ours)  # max_det cuts (4 score levels: among equal scores)


@pytest.mark.parametrize("multi_label", [True, False])
def test_exact_duplicates_keep_one(multi_label):
    boxes, scores = random_batch(12, A=200)
    boxes, scores = torch.cat([boxes, boxes], 1), torch.cat([scores, scores], 1)  # every box twice
    args = (0.1, 0.5, 1000, 1000, multi_label, False)
    ours = multiclass_nms(boxes, scores, *args)
    assert_same(ours, batched_nms_loop(boxes, scores, *args))
    for det in ours:  # no box kept twice
        assert len(det.scores.unique()) == len(det.scores)


def test_single_class():
    boxes, scores = dense_batch(2, C=1)
    for case in [(0.05, 0.6, 100, 30_000, True, False), (0.05, 0.6, 5000, 1000, False, False)]:
        assert_same(multiclass_nms(boxes, scores, *case), batched_nms_loop(boxes, scores, *case))


def test_dense_cluster_equals_torchvision(monkeypatch):
    # 1500 boxes of one class stacked over the same x range (an untrained head's boxes sit
    # on a grid column): every box overlaps hundreds of others in x, only some in IoU; such
    # a group goes to torchvision's kernel (counted), the spread boxes of other tests do not
    g = torch.Generator().manual_seed(13)
    x1 = 100 + torch.rand(2, 1500, generator=g) * 3
    y1 = torch.rand(2, 1500, generator=g) * 2000
    boxes = torch.stack([x1, y1, x1 + 40, y1 + 20 + 40 * torch.rand(2, 1500, generator=g)], -1)
    scores = (torch.randperm(2 * 1500, generator=g) + 1).view(2, 1500, 1) / 3001
    calls = []
    kernel = torchvision.ops.nms
    monkeypatch.setattr(torchvision.ops, "nms", lambda *a: calls.append(len(a[0])) or kernel(*a))
    for iou_thr in (0.3, 0.7):
        args = (0.05, iou_thr, 2000, 2000, True, False)
        ours = multiclass_nms(boxes, scores, *args)
        assert len(calls) == 2 and min(calls) > 1000  # one call per (image, class) group
        calls.clear()
        assert_same(ours, batched_nms_loop(boxes, scores, *args))
        calls.clear()
        assert 20 < len(ours[0].scores) < 1500
    spread, spread_scores = dense_batch(1, size=3000.0)  # ~4 x-window partners per box
    multiclass_nms(spread, spread_scores, pre_nms_topk=30_000, multi_label=False)
    assert calls == []


def test_large_coordinates_and_mixed_sizes():
    boxes, scores = random_batch(14, A=500)
    boxes = boxes * torch.linspace(1, 200, 500)[None, :, None] + 1e4  # 1e4 .. 3e4 px, tiny to huge
    args = (0.05, 0.5, 1000, 3000, True, False)
    assert_same(multiclass_nms(boxes, scores, *args), batched_nms_loop(boxes, scores, *args))


# ---------------------------------------------------------------- integer-like and huge counts
@pytest.mark.parametrize("max_det", [np.int64(7), np.int32(7), torch.tensor(7), torch.tensor(7, dtype=torch.int32)])
def test_integer_like_counts_are_accepted(max_det):
    boxes, scores = random_batch(15)
    ours = multiclass_nms(boxes, scores, max_det=max_det, pre_nms_topk=np.int64(1000))
    assert_same(ours, reference_hard(boxes, scores, 0.05, 0.6, 7, 1000, True, False))
    assert all(type(d) is Detections for d in ours)


@pytest.mark.parametrize("name", ["max_det", "pre_nms_topk"])
def test_huge_counts_mean_no_limit(name):
    boxes, scores = random_batch(16)
    ours = multiclass_nms(boxes, scores, **{name: 2**64})
    limits = {"max_det": 10**9, "pre_nms_topk": 10**9}
    limits.pop("max_det" if name == "pre_nms_topk" else "pre_nms_topk")
    kwargs = {"max_det": 100, "pre_nms_topk": 1000, **limits}
    assert_same(ours, reference_hard(boxes, scores, 0.05, 0.6, kwargs["max_det"], kwargs["pre_nms_topk"], True, False))


@pytest.mark.parametrize("value", [np.float64(100.0), 100.0, True, "100", torch.tensor(100.0), torch.tensor([1, 2])])
@pytest.mark.parametrize("name", ["max_det", "pre_nms_topk"])
def test_non_integer_counts_raise(name, value):
    boxes, scores = random_batch(0)
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        multiclass_nms(boxes, scores, **{name: value})


def test_numpy_and_torch_thresholds_are_accepted():
    boxes, scores = random_batch(17)
    ours = multiclass_nms(boxes, scores, score_thr=np.float32(0.25), iou_thr=torch.tensor(0.5))
    assert_same(ours, reference_hard(boxes, scores, float(np.float32(0.25)), 0.5, 100, 1000, True, False))
    for bad in ("0.5", None, float("nan")):
        with pytest.raises(ValueError, match="iou_thr"):
            multiclass_nms(boxes, scores, iou_thr=bad)


# ---------------------------------------------------------------- registry
def test_registry_build():
    assert "MultiClassNMS" in NMS.names()
    nms = NMS.build({"type": "MultiClassNMS", "iou_thr": 0.5, "multi_label": False, "max_det": 7})
    assert isinstance(nms, MultiClassNMS) and "iou_thr=0.5" in repr(nms)
    boxes, scores = random_batch(8)
    assert_same(nms(boxes, scores), reference_hard(boxes, scores, 0.05, 0.5, 7, 1000, False, False))
    with pytest.raises(ValueError, match="method"):
        NMS.build({"type": "MultiClassNMS", "method": "fast"})
    with pytest.raises(TypeError, match="iou_threshold"):
        NMS.build({"type": "MultiClassNMS", "iou_threshold": 0.5})
    settings = {
        "score_thr": 0.2,
        "iou_thr": 0.45,
        "max_det": np.int64(30),
        "pre_nms_topk": 100,
        "multi_label": False,
        "class_agnostic": True,
        "method": "hard",
    }
    nms = NMS.build({"type": "MultiClassNMS", **settings})
    assert_same(nms(boxes, scores), reference_hard(boxes, scores, 0.2, 0.45, 30, 100, False, True))


# ---------------------------------------------------------------- sparse (trained-like) batches, long prefixes
def sparse_batch(seed: int, B: int = 3, A: int = 4000, C: int = 30, objects: int = 12, per_object: int = 15):
    """A trained detector's output: background scores below 0.04, each object covered by
    ``per_object`` anchors holding jittered copies of its box with distinct scores in
    (0.3, 0.95) for its class (a third also one in (0.05, 0.3) for a second class)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(B, A, 2, generator=g) * 640
    wh = torch.rand(B, A, 2, generator=g) * 100 + 8
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1)
    scores = torch.rand(B, A, C, generator=g) * 0.04
    distinct = (torch.randperm(B * objects * per_object * 2, generator=g) + 1) / (B * objects * per_object * 2 + 1)
    distinct = distinct.view(B, objects, per_object, 2)
    for b in range(B):
        obj_wh = torch.rand(objects, 2, generator=g) * 200 + 16
        obj_centre = torch.rand(objects, 2, generator=g) * 640
        obj = torch.cat([obj_centre - obj_wh / 2, obj_centre + obj_wh / 2], -1)
        idx = torch.randperm(A, generator=g)[: objects * per_object].view(objects, per_object)
        jitter = (torch.rand(objects, per_object, 4, generator=g) - 0.5) * 0.2 * obj_wh.repeat(1, 2)[:, None]
        boxes[b, idx] = obj[:, None] + jitter
        label = torch.randint(0, C, (objects, 1), generator=g).expand_as(idx)
        scores[b, idx, label] = distinct[b, ..., 0] * 0.65 + 0.3
        second = torch.rand(objects, per_object, generator=g) < 1 / 3
        other = (label + torch.randint(1, C, (objects, 1), generator=g)) % C
        scores[b, idx[second], other[second]] = distinct[b, ..., 1][second] * 0.25 + 0.05
    return boxes, scores


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("class_agnostic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sparse_equals_batched_nms_loop(multi_label, class_agnostic, dtype):
    # ~240 candidates per image in small groups (every pair of a group is tested)
    boxes, scores = sparse_batch(20)
    if dtype == torch.float16:
        boxes = boxes.half()  # NMS sees the float32 value of each fp16 box
    for args in [(0.05, 0.6, 100, 1000), (0.05, 0.45, 20, 1000), (0.2, 0.7, 100, 50)]:
        args = (*args, multi_label, class_agnostic)
        ours = multiclass_nms(boxes, scores, *args)
        assert_same(ours, batched_nms_loop(boxes.float(), scores, *args))
        assert all(len(d.scores) for d in ours)


@pytest.mark.parametrize("multi_label", [True, False])
def test_sparse_ties_and_duplicates(multi_label):
    boxes, scores = sparse_batch(21)
    tied = torch.where(scores > 0.05, (scores * 4).ceil() / 4, scores)  # 3 score levels above 0.05
    args = (0.05, 0.5, 30, 1000, multi_label, False)
    assert_same(multiclass_nms(boxes, tied, *args), reference_tied(boxes, tied, *args))
    # every anchor twice (exact duplicates, equal scores): one of each pair at most is kept
    boxes2, scores2 = torch.cat([boxes, boxes], 1), torch.cat([scores, scores], 1)
    args = (0.05, 0.6, 100, 1000, multi_label, False)
    ours = multiclass_nms(boxes2, scores2, *args)
    assert_same(ours, batched_nms_loop(boxes2, scores2, *args))
    assert_same(ours, multiclass_nms(boxes, scores, *args))


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("method", ["hard", "diou"])
def test_survivors_past_the_first_prefix(multi_label, method):
    # the 1100 best-scoring boxes of each image are jittered copies of 3 boxes (a few survive),
    # 300 spread boxes score lower: max_det = 40 survivors need candidates far past the
    # 1024 highest, which a run on a prefix of the candidates alone would not reach
    g = torch.Generator().manual_seed(22)
    B, A = 2, 1400
    centres = torch.rand(B, A, 2, generator=g) * 2000
    wh = torch.rand(B, A, 2, generator=g) * 40 + 10
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1)
    base = torch.tensor([[100.0, 100, 180, 160], [400, 50, 460, 150], [900, 900, 1000, 980]])
    boxes[:, :1100] = base[torch.arange(1100) % 3] + torch.rand(B, 1100, 4, generator=g) * 2
    scores = (torch.randperm(B * A * 2, generator=g) + 1).view(B, A, 2) / (B * A * 2 + 1) * 0.5
    scores[:, :1100] += 0.5  # (0.5, 1): above every spread box
    args = (0.05, 0.5, 40, 30_000, multi_label, False)
    ours = multiclass_nms(boxes, scores, *args, method=method)
    if method == "hard":
        assert_same(ours, batched_nms_loop(boxes, scores, *args))
    else:
        assert_same(ours, reference(boxes, scores, "diou", *args))
    for det in ours:
        assert len(det.scores) == 40 and int((det.scores > 0.5).sum()) < 40  # spread boxes needed


@pytest.mark.parametrize("bad", ["nan", "-nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["scores", "boxes"])
def test_non_finite_hidden_among_many_anchors_raises(bad, where):
    boxes, scores = sparse_batch(23, B=2, A=8400, C=80)
    value = {"nan": float("nan"), "-nan": negative_nan(), "inf": math.inf, "-inf": -math.inf}[bad]
    target = scores if where == "scores" else boxes
    target.view(-1)[int(torch.randint(0, target.numel(), (1,), generator=torch.Generator().manual_seed(24)))] = value
    for multi_label in (True, False):
        with pytest.raises(ValueError, match=f"{where} must be finite"):
            multiclass_nms(boxes, scores, multi_label=multi_label)


@pytest.mark.parametrize("multi_label", [True, False])
def test_equal_scores_on_a_grid(multi_label):
    # an untrained head: every score at the prior (equal), boxes of one size on the anchor grid
    # (neighbours overlap by IoU ~0.7: suppression chains run along the grid), and first a row
    # of boxes each overlapping the next two at IoU 0.74 and 0.54 (at iou_thr 0.6 a chain
    # through all 150)
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    centres = torch.stack([xs, ys], -1).view(-1, 2) * 8 + 4
    grid = torch.cat([centres - 19.5, centres + 19.5], -1)  # (400, 4)
    row = torch.tensor([[0.0, 500, 10, 510]]) + torch.arange(150.0)[:, None] * torch.tensor([1.5, 0, 1.5, 0])
    boxes = torch.cat([row, grid])[None].repeat(2, 1, 1)
    boxes[1] += torch.rand(550, 4, generator=torch.Generator().manual_seed(25)) * 0.5
    scores = torch.full((2, 550, 3), 0.01)
    scores[:, :150, 1:] = 0.0  # the row: class 0 only
    for bx, sc, args in [
        (boxes, scores, (0.001, 0.6, 100, 1000)),
        (boxes, scores, (0.001, 0.5, 1000, 2000)),
        (boxes[:, 150:], scores[:, 150:], (0.001, 0.6, 100, 1000)),  # the grid alone
    ]:
        args = (*args, multi_label, False)
        assert_same(multiclass_nms(bx, sc, *args), reference_tied(bx, sc, *args))


# ---------------------------------------------------------------- the candidate search and the top-box step
@pytest.mark.parametrize("multi_label", [True, False])
def test_candidates_found_through_anchor_norms(multi_label):
    # only anchors whose L2 norm passes score_thr are searched: a lone score one float32 step
    # above it (norm = the score), rows of large negative scores (norm above it, no
    # candidate) and finite scores whose squares overflow (norm inf: no error)
    boxes, scores = sparse_batch(26, B=2, A=400, C=7)
    thr = 0.3
    above = float(np.nextafter(np.float32(thr), np.float32(1)))
    scores[0, :60] = 0.0
    scores[0, :60, 3] = above
    scores[0, 30:60, 5] = float(np.float32(thr))  # at the threshold: not a candidate
    scores[1, :60] = -0.9
    scores[1, :20, 2] = above
    scores[1, 60:70, 1] = 3e38
    args = (thr, 0.5, 1000, 1000, multi_label, False)
    ours = multiclass_nms(boxes, scores, *args)
    assert_same(ours, reference_tied(boxes, scores, *args))
    assert int((ours[0].scores == above).sum()) > 10 and int((ours[1].scores == 3e38).sum()) > 0


@pytest.mark.parametrize("multi_label", [True, False])
def test_candidates_with_a_threshold_whose_squares_underflow(multi_label):
    # scores ~1e-25: their squares underflow in float32 (the norms are 0), so for a threshold
    # this small every anchor is searched
    boxes, scores = sparse_batch(27, B=2, A=300, C=4)
    tiny = scores * 1e-24
    assert not torch.linalg.vector_norm(tiny, dim=-1).any()
    args = (1e-30, 0.5, 300, 500, multi_label, False)
    ours = multiclass_nms(boxes, tiny, *args)
    assert_same(ours, batched_nms_loop(boxes, tiny, *args))
    assert all(len(d.scores) > 50 for d in ours)


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 64, 203, 4096, 4100])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.05, 0.3, 1.0])  # 0.05: a third of the words hold one
def test_nonzero_of_sparse_masks(length, density):
    from detlosses.nms import _nonzero

    g = torch.Generator().manual_seed(length)
    mask = torch.rand(length, generator=g) < density
    assert torch.equal(_nonzero(mask), mask.nonzero().squeeze(1))
    assert torch.equal(_nonzero(mask.view(-1, 1)), mask.nonzero().squeeze(1))


@pytest.mark.parametrize("multi_label", [True, False])
def test_degenerate_boxes_and_duplicates_with_the_group_top(multi_label):
    # each group's top box first drops the boxes it suppresses: zero-area boxes (IoU 0, or
    # 0 / 0 with another one) are never suppressed, also when the top is one; every anchor
    # twice, so tops have exact duplicates
    boxes, scores = sparse_batch(28, B=2, A=500, C=5)
    boxes[:, ::3, 2] = boxes[:, ::3, 0]  # zero width
    boxes[:, ::7, 3] = boxes[:, ::7, 1]  # zero height
    boxes, scores = torch.cat([boxes, boxes], 1), torch.cat([scores, scores], 1)
    for args in [(0.05, 0.6, 1000, 2000, multi_label, False), (0.05, 0.0, 1000, 2000, multi_label, True)]:
        ours = multiclass_nms(boxes, scores, *args)
        assert_same(ours, reference_tied(boxes, scores, *args))
        zero_area = (ours[0].boxes[:, 2] == ours[0].boxes[:, 0]) | (ours[0].boxes[:, 3] == ours[0].boxes[:, 1])
        assert int(zero_area.sum()) > 20


@pytest.mark.parametrize("multi_label", [True, False])
def test_group_top_is_the_first_of_equal_top_scores(multi_label):
    # every group's top score is held by four boxes in a chain a, b, c, d (each overlaps the
    # next by IoU 0.43, a and c by 0.11, a and d not at all): greedy NMS keeps a and c, a
    # top of d would keep a and d, one of b only b and d. Also tops at the largest float32
    # (the top key's high bits) and groups whose chains are not the top (Cluster-NMS).
    chain = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10], [12, 0, 22, 10]])
    C, B = 3, 2
    boxes = (chain[None] + torch.arange(6.0)[:, None, None] * 40).reshape(1, 24, 4).repeat(B, 1, 1)
    scores = torch.zeros(B, 24, C)
    for k in range(6):  # chain k: class k % C, four equal scores
        scores[:, 4 * k : 4 * k + 4, k % C] = 0.5 + 0.05 * k
    scores[1, 0:4, 0] = 3.4028234663852886e38  # the largest finite float32
    boxes, scores = torch.cat([boxes, boxes + 300], 1), torch.cat([scores, scores * 0.5], 1)
    args = (0.0, 0.2, 100, 1000, multi_label, False)
    ours = multiclass_nms(boxes, scores, *args)
    assert_same(ours, reference_tied(boxes, scores, *args))
    assert all(len(d.scores) == 2 * 2 * 6 for d in ours)  # a and c of every chain


def test_score_key_orders_by_prefix_then_score_descending():
    from detlosses.nms import _score_key

    tiny, huge = float(np.float32(1e-45)), 3.4028234663852886e38
    values = torch.tensor([tiny, 1.0, huge, 0.5, tiny, huge, 2.0**-126, 1.0])
    prefix = torch.tensor([0, 0, 0, 1, 1, 1, 3, 3])
    order = torch.randperm(len(values), generator=torch.Generator().manual_seed(29))
    key = _score_key(prefix[order], values[order])
    # prefix ascending, then score descending, then position (stable)
    expected = sorted(range(len(order)), key=lambda i: (int(prefix[order][i]), -float(values[order][i]), i))
    assert key.argsort(stable=True).tolist() == expected
