"""Bad input to the losses and box helpers: a clear ValueError naming the argument, or the right value.

One test per row of the README's reliability table (losses and boxes): the input, then the
exception and a phrase of its message, or the corrected value worked by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detlosses import LOSSES
from detlosses import functional as F
from detlosses.boxes import bbox2distance

IOU_NAMES = ["IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SIoULoss"]
CLS_NAMES = ["FocalLoss", "QualityFocalLoss", "VarifocalLoss"]
CLS_FUNCTIONS = [F.sigmoid_focal_loss, F.quality_focal_loss, F.varifocal_loss]

# Two hand-worked pairs (tests/test_losses_iou.py works them out):
# pred (0, 0, 2, 2) vs target (1, 1, 3, 3): I = 1, U = 7, |C| = 9, rho^2 = 2, c^2 = 18, squares
# pred (0, 0, 1, 1) vs target (2, 0, 3, 1): disjoint, |C| = 3, U = 2, rho^2 = 4, c^2 = 10, squares
PRED = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
TARGET = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]], dtype=torch.float64)
HAND = {
    "IoULoss": (6 / 7, 1.0),
    "GIoULoss": (6 / 7 + 2 / 9, 4 / 3),
    "DIoULoss": (6 / 7 + 1 / 9, 1.4),
    "CIoULoss": (6 / 7 + 1 / 9, 1.4),  # v = 0 for squares
    "EIoULoss": (6 / 7 + 1 / 9, 1.4),  # equal sizes
}


# ---------------------------------------------------------------- weight shapes
@pytest.mark.parametrize("name", sorted(HAND))
def test_iou_loss_box_weight_shapes_equal_hand_values(name):
    # sum(loss_i * w_i) / avg_factor with w = (0.5, 2): (N,), (N, 1) and (N, 4) (mean over coordinates)
    first, second = HAND[name]
    expected = (0.5 * first + 2.0 * second) / 1.0
    module = LOSSES.build(name)
    for weight in (
        torch.tensor([0.5, 2.0]),
        torch.tensor([[0.5], [2.0]]),
        torch.tensor([[0.0, 1.0, 0.0, 1.0], [2.0, 1.0, 3.0, 2.0]]),  # means 0.5 and 2.0
    ):
        loss = module(PRED, TARGET, weight=weight.double(), avg_factor=1)
        assert loss.item() == pytest.approx(expected, abs=1e-6), (name, tuple(weight.shape))


@pytest.mark.parametrize("name", IOU_NAMES)
def test_iou_loss_column_weight_does_not_broadcast_to_n_by_n(name):
    # the case: weight rand(8, 1), avg_factor 1 gave 7.31 (an (8, 8) product) instead of 0.94
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(8, 2, generator=g) * 50
    pred = torch.cat((xy, xy + 10 + torch.rand(8, 2, generator=g) * 20), dim=1)
    target = pred + torch.randn(8, 4, generator=g) * 3
    weight = torch.rand(8, 1, generator=g)
    module = LOSSES.build(name)
    per_box = LOSSES.build({"type": name, "reduction": "none"})(pred, target)  # (8,)
    torch.testing.assert_close(module(pred, target, weight=weight, avg_factor=1), (per_box * weight[:, 0]).sum())


@pytest.mark.parametrize("name", IOU_NAMES)
@pytest.mark.parametrize("shape", [(8, 2), (8, 8), (1, 8), (9,), (4,), (8, 4, 1)])
def test_iou_loss_other_weight_shapes_raise(name, shape):
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(8, 1)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\) \(one per box\), \(8, 1\) or \(8, 4\)"):
        LOSSES.build(name)(boxes, boxes, weight=torch.ones(shape))


def test_weight_must_be_a_tensor():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(ValueError, match=r"weight must be a torch\.Tensor"):
        LOSSES.build("GIoULoss")(boxes, boxes, weight=[1.0])


@pytest.mark.parametrize("name", CLS_NAMES)
def test_classification_weight_shapes(name):
    # (N, C) loss: weight (N, C), (N,) or (N, 1); a per-class (C,) weight, (1, C) or (N, C + 1) is an error
    x, t = torch.zeros(6, 5), torch.zeros(6, 5)
    module = LOSSES.build({"type": name, "reduction": "sum"})
    elem = LOSSES.build({"type": name, "reduction": "none"})(x, t)
    w = torch.arange(6.0)
    expected = (elem * w[:, None]).sum()
    torch.testing.assert_close(module(x, t, weight=w), expected)
    torch.testing.assert_close(module(x, t, weight=w[:, None]), expected)
    for shape in [(5,), (1, 5), (6, 6), (5, 6)]:
        with pytest.raises(ValueError, match=r"weight must have shape \(6, 5\) or \(6,\) or \(6, 1\)"):
            module(x, t, weight=torch.ones(shape))


def test_distribution_focal_weight_shapes():
    logits, target = torch.zeros(3, 4, 5), torch.full((3, 4), 1.5)
    module = LOSSES.build({"type": "DistributionFocalLoss", "reduction": "sum"})
    elem = F.distribution_focal_loss(logits, target)  # (3, 4) = ln 5 each (uniform logits)
    w = torch.tensor([1.0, 2.0, 3.0])
    assert module(logits, target, weight=w).item() == pytest.approx(4 * 6 * math.log(5), rel=1e-6)
    torch.testing.assert_close(module(logits, target, weight=w[:, None]), (elem * w[:, None]).sum())
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 4\) or \(3,\) or \(3, 1\)"):
        module(logits, target, weight=torch.ones(4))


# ---------------------------------------------------------------- avg_factor
BAD_AVG_FACTORS = [
    (0, "avg_factor must be > 0"),
    (-3, "avg_factor must be > 0"),
    (float("nan"), "avg_factor must be finite"),
    (float("inf"), "avg_factor must be finite"),
    (torch.tensor(0.0), "avg_factor must be > 0"),
    (torch.tensor(-1.0), "avg_factor must be > 0"),
    (torch.tensor(float("nan")), "avg_factor must be finite"),
    (torch.ones(2), r"avg_factor must be a positive number or a one-element tensor, got shape \(2,\)"),
    ("4", "avg_factor must be a real number"),
    (True, "avg_factor must be a real number"),
]


@pytest.mark.parametrize(("avg_factor", "match"), BAD_AVG_FACTORS)
@pytest.mark.parametrize("name", ["GIoULoss", "FocalLoss", "DistributionFocalLoss"])
def test_bad_avg_factor_raises(name, avg_factor, match):
    if name == "GIoULoss":
        pred = target = PRED.float()
    elif name == "FocalLoss":
        pred, target = torch.zeros(2, 3), torch.zeros(2, 3)
    else:
        pred, target = torch.zeros(2, 4, 5), torch.ones(2, 4)
    with pytest.raises(ValueError, match=match):
        LOSSES.build(name)(pred, target, weight=torch.zeros(2), avg_factor=avg_factor)


@pytest.mark.parametrize("avg_factor", [2.5, np.float32(2.5), torch.tensor(2.5), torch.tensor([2.5])])
def test_good_avg_factor_forms_divide_the_sum(avg_factor):
    loss = LOSSES.build("GIoULoss")(PRED, TARGET, avg_factor=avg_factor)
    assert loss.shape == () and loss.item() == pytest.approx((6 / 7 + 2 / 9 + 4 / 3) / 2.5, abs=1e-6)
    assert LOSSES.build("GIoULoss")(PRED, TARGET, avg_factor=np.int64(2)).item() == pytest.approx(
        (6 / 7 + 2 / 9 + 4 / 3) / 2, abs=1e-6
    )


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_avg_factor_needs_mean_reduction(reduction):
    with pytest.raises(ValueError, match="avg_factor needs reduction='mean'"):
        LOSSES.build({"type": "GIoULoss", "reduction": reduction})(PRED, TARGET, avg_factor=2.0)


# ---------------------------------------------------------------- targets out of their domain
@pytest.mark.parametrize("fn", CLS_FUNCTIONS)
@pytest.mark.parametrize(
    ("value", "found"), [(2.0, r"values in \[0, 2\]"), (-0.5, r"values in \[-0.5, 0\]"), (math.nan, "NaN")]
)
def test_soft_target_outside_unit_interval_raises(fn, value, found):
    # target 2.0 gave a negative focal loss (-24.2 at logit 25) instead of an error
    t = torch.zeros(2, 3)
    t[1, 1] = value
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\].*got " + found):
        fn(torch.full((2, 3), 25.0), t)


@pytest.mark.parametrize("name", CLS_NAMES)
def test_soft_target_check_in_modules_and_edges_pass(name):
    module = LOSSES.build(name)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        module(torch.zeros(4, 2), torch.full((4, 2), 1.5))
    edges = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # the ends of [0, 1] are targets, not errors
    loss = module(torch.full((2, 2), 30.0), edges)
    assert torch.isfinite(loss) and loss.item() >= 0


@pytest.mark.parametrize(("value", "found"), [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_distribution_focal_non_finite_target_raises(value, found):
    # a NaN target gave "RuntimeError: index -9223372036854775808 is out of bounds"
    target = torch.full((2, 4), 3.0)
    target[1, 2] = value
    with pytest.raises(ValueError, match=r"target must lie in \[0, 16\].*got .*" + found):
        F.distribution_focal_loss(torch.zeros(2, 4, 17), target)
    with pytest.raises(ValueError, match="target must lie in"):
        LOSSES.build("DistributionFocalLoss")(torch.zeros(2, 4, 17), target)


# ---------------------------------------------------------------- NaN predictions propagate
def test_non_finite_predictions_propagate_to_the_loss():
    # predictions are not checked (no reduction, no host read on the hot path): NaN in, NaN out,
    # as in torch.nn.functional and torchvision.ops; the criterion checks its inputs
    x = torch.tensor([[0.0, math.nan]])
    for fn in CLS_FUNCTIONS:
        out = fn(x, torch.zeros(1, 2))
        assert out[0, 0].isfinite() and out[0, 1].isnan()
    pred = torch.tensor([[0.0, 0.0, 2.0, math.nan], [0.0, 0.0, 2.0, 2.0]])
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 2)
    out = F.iou_loss(pred, target, mode="giou")
    assert out[0].isnan() and out[1].item() == 0.0


# ---------------------------------------------------------------- hyperparameters
def test_integer_like_and_tensor_hyperparameters_are_accepted():
    x, t = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # focal at x = 0, t = 1: BCE = ln 2, (1 - p_t)^2 = 1/4, alpha_t = 0.25 -> ln2 / 16; loss_weight 2
    focal = LOSSES.build({"type": "FocalLoss", "alpha": np.float32(0.25), "gamma": np.int64(2), "loss_weight": 2})
    assert focal(x, t).item() == pytest.approx(2 * math.log(2) / 16, rel=1e-6)
    assert F.sigmoid_focal_loss(x, t, alpha=torch.tensor(0.25), gamma=torch.tensor(2)).item() == pytest.approx(
        math.log(2) / 16, rel=1e-6
    )
    # QFL at x = 0, t = 1: ln 2 * |1 - 1/2|^2 = ln2 / 4
    assert LOSSES.build({"type": "QualityFocalLoss", "beta": np.int32(2)})(x, t).item() == pytest.approx(
        math.log(2) / 4, rel=1e-6
    )
    assert F.varifocal_loss(x, t, alpha=np.float64(0.75), gamma=np.int64(2)).item() == pytest.approx(math.log(2))
    # bbox2distance: point (5, 5), box (0, 2, 30, 4) -> (5, 3, 25, -1), clamped to [0, 16 - 0.01]
    for max_dis in (np.int64(16), torch.tensor(16)):
        d = bbox2distance(torch.tensor([[5.0, 5.0]]), torch.tensor([[0.0, 2.0, 30.0, 4.0]]), max_dis=max_dis)
        torch.testing.assert_close(d, torch.tensor([[5.0, 3.0, 15.99, 0.0]]))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: LOSSES.build({"type": "FocalLoss", "gamma": math.nan}), "gamma must be finite"),
        (lambda: LOSSES.build({"type": "FocalLoss", "alpha": math.nan}), "alpha must be finite"),
        (lambda: LOSSES.build({"type": "FocalLoss", "gamma": "2"}), "gamma must be a real number"),
        (lambda: LOSSES.build({"type": "VarifocalLoss", "gamma": math.inf}), "gamma must be finite"),
        (lambda: LOSSES.build({"type": "QualityFocalLoss", "beta": torch.ones(2)}), "beta must be a real number"),
        (lambda: LOSSES.build({"type": "GIoULoss", "loss_weight": math.inf}), "loss_weight must be finite"),
        (lambda: LOSSES.build({"type": "GIoULoss", "eps": -1e-7}), "eps must be >= 0"),
        (lambda: F.iou_loss(PRED, TARGET, eps=math.nan), "eps must be finite"),
        (lambda: bbox2distance(torch.zeros(1, 2), torch.zeros(1, 4), max_dis=math.nan), "max_dis must be finite"),
    ],
)
def test_bad_hyperparameters_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
