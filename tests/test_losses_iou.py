"""IoU-family losses: hand values, torchvision values and gradients, gradcheck, AMP, edge cases."""

from __future__ import annotations

import math

import pytest
import references as paper
import torch
import torchvision.ops as tv

from detlosses import LOSSES
from detlosses.losses.iou import IOU_LOSS_MODES, IoULoss, iou_loss

TV_LOSSES = {
    "giou": tv.generalized_box_iou_loss,
    "diou": tv.distance_box_iou_loss,
    "ciou": tv.complete_box_iou_loss,
}
CLASSES = {
    "giou": "GIoULoss",
    "diou": "DIoULoss",
    "ciou": "CIoULoss",
    "eiou": "EIoULoss",
    "siou": "SIoULoss",
}


def box_pairs(n: int, seed: int, dtype=torch.float32, scale: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A mix of overlapping, disjoint and enclosing pairs with no tied coordinates."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * scale / 3 + 1
    target = torch.cat((xy, xy + wh), dim=1)
    pxy = xy + torch.randn(n, 2, generator=g, dtype=dtype) * scale / 20
    pwh = wh * torch.exp(torch.randn(n, 2, generator=g, dtype=dtype) * 0.3)
    pred = torch.cat((pxy, pxy + pwh), dim=1)  # overlapping (valid boxes: x2 > x1)
    k = n // 3
    pred[k : 2 * k] += scale  # disjoint
    grow = torch.rand(k, 4, generator=g, dtype=dtype) * 5 + 0.5
    pred[2 * k : 3 * k] = target[2 * k : 3 * k] + grow * torch.tensor([-1, -1, 1, 1], dtype=dtype)  # pred encloses
    return pred, target


# ---------------------------------------------------------------- hand-worked values
# pred (0, 0, 2, 2), target (1, 1, 3, 3): IoU = 1/7 (I = 1, U = 7); |C| = 9: GIoU = 1/7 - 2/9;
#   rho^2 = 2, c^2 = 18: DIoU = 1/7 - 1/9; squares: v = 0, CIoU = DIoU; equal sizes: EIoU = DIoU.
# pred (0, 0, 4, 2) encloses target (0, 0, 2, 2): IoU = 4/8; C = pred: GIoU = 1/2;
#   rho^2 = 1 (centres (2, 1), (1, 1)), c^2 = 4^2 + 2^2 = 20: DIoU = 0.45;
#   v = 4/pi^2 (atan(2/2) - atan(4/2))^2, alpha = v / (0.5 + v): CIoU loss = 0.55 + alpha v;
#   EIoU loss = 1 - 0.5 + 1/20 + (4 - 2)^2/4^2 + (2 - 2)^2/2^2 = 0.8.
# pred (0, 0, 1, 1), target (2, 0, 3, 1) disjoint: IoU = 0, |C| = 3, U = 2: GIoU = -1/3;
#   rho^2 = 4, c^2 = 10: DIoU = -0.4 = CIoU = EIoU (same sizes).
#   SIoU: offset (2, 0): angle 2*2*0/4 = 0, gamma = 2; cw = 3: rho_x = 4/9, rho_y = 0:
#   distance cost = 1 - exp(-8/9); shape cost 0: loss = 1 - 0 + (1 - exp(-8/9))/2.
# identical (1, 2, 4, 6): every loss is 0.
_V = 4 / math.pi**2 * (math.pi / 4 - math.atan(2.0)) ** 2
HAND = [
    (
        (0, 0, 2, 2),
        (1, 1, 3, 3),
        {
            "iou": 6 / 7,
            "giou": 6 / 7 + 2 / 9,
            "diou": 6 / 7 + 1 / 9,
            "ciou": 6 / 7 + 1 / 9,
            "eiou": 6 / 7 + 1 / 9,
        },
    ),
    (
        (0, 0, 4, 2),
        (0, 0, 2, 2),
        {"iou": 0.5, "giou": 0.5, "diou": 0.55, "ciou": 0.55 + _V**2 / (0.5 + _V), "eiou": 0.8},
    ),
    (
        (0, 0, 1, 1),
        (2, 0, 3, 1),
        {
            "iou": 1.0,
            "giou": 4 / 3,
            "diou": 1.4,
            "ciou": 1.4,
            "eiou": 1.4,
            "siou": 1 + (1 - math.exp(-8 / 9)) / 2,
        },
    ),
    ((1, 2, 4, 6), (1, 2, 4, 6), dict.fromkeys(IOU_LOSS_MODES, 0.0)),
]


@pytest.mark.parametrize("pred, target, expected", HAND)
def test_hand_worked_values(pred, target, expected):
    p, t = torch.tensor([pred], dtype=torch.float64), torch.tensor([target], dtype=torch.float64)
    for mode, value in expected.items():
        assert iou_loss(p, t, mode=mode).item() == pytest.approx(value, abs=1e-6), mode
        assert iou_loss(p.float(), t.float(), mode=mode).item() == pytest.approx(value, abs=1e-5), mode


# ---------------------------------------------------------------- torchvision: values and gradients
@pytest.mark.parametrize("mode", sorted(TV_LOSSES))
def test_values_and_gradients_match_torchvision(mode):
    pred, target = box_pairs(300, 0)
    p1, t1 = pred.clone().requires_grad_(), target.clone().requires_grad_()
    p2, t2 = pred.clone().requires_grad_(), target.clone().requires_grad_()
    ours, ref = iou_loss(p1, t1, mode=mode), TV_LOSSES[mode](p2, t2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    w = torch.rand(300, generator=torch.Generator().manual_seed(1))  # a non-uniform upstream gradient
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- gradcheck (float64)
@pytest.mark.parametrize("mode", ["iou", "giou", "diou", "eiou", "siou"])
def test_gradcheck(mode):
    pred, target = box_pairs(12, 2, dtype=torch.float64, scale=10.0)
    p, t = pred.requires_grad_(), target.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: iou_loss(a, b, mode=mode), (p, t))


def test_gradcheck_ciou_with_constant_alpha():
    # CIoU's backward treats alpha as a constant, so its gradient is that of
    # h(x) = ciou(x) - alpha(x) v(x) + alpha(x0) v(x): the same function value moves, but the
    # analytic gradient of h is d diou + alpha(x0) dv, which is what gradcheck checks numerically.
    pred, target = box_pairs(12, 3, dtype=torch.float64, scale=10.0)
    _, alpha0 = paper.ciou_aspect_term(pred, target)

    def h(a, b):
        v, alpha = paper.ciou_aspect_term(a, b)
        return iou_loss(a, b, mode="ciou", eps=0.0) - alpha.detach() * v + alpha0 * v

    assert torch.autograd.gradcheck(h, (pred.requires_grad_(), target.requires_grad_()))


@pytest.mark.parametrize("mode", IOU_LOSS_MODES)
def test_matches_paper_formulas_float64(mode):
    # values and both gradients of the fused kernel against plain autograd on the papers' formulas
    # (tests/references.py), eps = 0 so both are the formulas exactly
    pred, target = box_pairs(200, 4, dtype=torch.float64)
    w = torch.rand(200, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = []
    for fn in (lambda a, b: iou_loss(a, b, mode=mode, eps=0.0), paper.BOX_LOSSES[mode]):
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        loss = fn(p, t)
        grads.append((loss.detach(), *torch.autograd.grad((loss * w).sum(), (p, t))))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("mode", IOU_LOSS_MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 9000.0])  # 9000: coordinates ~1e4, areas past fp16's 65504
def test_autocast_finite_and_close_to_fp32(mode, dtype, offset):
    pred, target = box_pairs(60, 5, scale=800.0)
    pred, target = (pred + offset).to(dtype), (target + offset).to(dtype)
    p_low = pred.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        low = iou_loss(p_low, target, mode=mode)
    low.sum().backward()
    assert low.dtype == torch.float32 and torch.isfinite(low).all() and torch.isfinite(p_low.grad).all()
    ref = iou_loss(pred.float(), target.float(), mode=mode)  # the same rounded inputs in fp32
    torch.testing.assert_close(low, ref, rtol=0, atol=1e-3)


# ---------------------------------------------------------------- edge cases
DEGENERATE = [
    ((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),  # two identical points
    ((5.0, 5.0, 5.0, 9.0), (1.0, 1.0, 8.0, 8.0)),  # zero-width pred
    ((1.0, 1.0, 8.0, 8.0), (5.0, 5.0, 5.0, 5.0)),  # point target
    ((4.0, 4.0, 1.0, 1.0), (0.0, 0.0, 5.0, 5.0)),  # inverted pred
    ((4.0, 4.0, 1.0, 1.0), (6.0, 6.0, 2.0, 2.0)),  # both inverted
    ((1.0, 1.0, 3.0, 3.0), (1.0, 1.0, 3.0, 3.0)),  # identical
    ((0.0, 0.0, 1.0, 1.0), (10.0, 10.0, 11.0, 11.0)),  # disjoint
    ((0.0, 0.0, 10.0, 10.0), (2.0, 3.0, 4.0, 5.0)),  # pred encloses
    ((2.0, 3.0, 4.0, 5.0), (0.0, 0.0, 10.0, 10.0)),  # target encloses
    ((0.0, 0.0, 1e4, 1e4), (0.0, 0.0, 1e-3, 1e4)),  # extreme aspect ratio
]


@pytest.mark.parametrize("mode", IOU_LOSS_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_degenerate_boxes_finite(mode, dtype):
    pred = torch.tensor([d[0] for d in DEGENERATE], dtype=dtype, requires_grad=True)
    target = torch.tensor([d[1] for d in DEGENERATE], dtype=dtype, requires_grad=True)
    loss = iou_loss(pred, target, mode=mode)
    loss.sum().backward()
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(pred.grad).all()
    # the aspect-ratio angle of a point box is ill-conditioned: its float32 gradient is finite but
    # can exceed fp16's range, so the fp16 check covers pred (a network output) only
    assert dtype == torch.float16 or torch.isfinite(target.grad).all()
    assert loss[5].item() == pytest.approx(0.0, abs=1e-6)  # identical boxes: no loss


@pytest.mark.parametrize("mode", IOU_LOSS_MODES)
def test_zero_width_pred_still_gets_a_gradient(mode):
    # a zero-width pred (3, 2, 3, 5) inside the target: widening it (x2 up) grows the intersection
    # by ih = 3 per unit, so the clamp at 0 must pass the gradient and d loss / d x2 < 0
    pred = torch.tensor([[3.0, 2.0, 3.0, 5.0]], requires_grad=True)
    iou_loss(pred, torch.tensor([[1.0, 1.0, 6.0, 6.0]]), mode=mode).sum().backward()
    assert pred.grad[0, 2] < 0


@pytest.mark.parametrize("name", ["IoULoss", *CLASSES.values()])
def test_empty_input_gives_zero_with_gradient(name):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = LOSSES.build(name)(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad.shape == (0, 4)
    assert iou_loss(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4)).shape == (2, 0)


def test_leading_dims():
    pred, target = box_pairs(24, 6)
    full = iou_loss(pred, target, mode="ciou")
    torch.testing.assert_close(
        iou_loss(pred.view(2, 3, 4, 4), target.view(2, 3, 4, 4), mode="ciou"), full.view(2, 3, 4)
    )


# ---------------------------------------------------------------- modules and registry
@pytest.mark.parametrize("mode, name", sorted(CLASSES.items()))
def test_registry_builds_each_loss(mode, name):
    pred, target = box_pairs(30, 7)
    weight = torch.rand(30, generator=torch.Generator().manual_seed(8))
    module = LOSSES.build({"type": name, "loss_weight": 2.0})
    per_box = iou_loss(pred, target, mode=mode)
    torch.testing.assert_close(module(pred, target), 2.0 * per_box.mean())
    torch.testing.assert_close(
        module(pred, target, weight=weight, avg_factor=7.5), 2.0 * (per_box * weight).sum() / 7.5
    )
    assert LOSSES.build({"type": name, "reduction": "none"})(pred, target).shape == (30,)
    generic = LOSSES.build({"type": "IoULoss", "mode": mode, "reduction": "sum"})
    torch.testing.assert_close(generic(pred, target), per_box.sum())


def test_iou_loss_module_defaults_to_plain_iou():
    pred, target = box_pairs(10, 9)
    torch.testing.assert_close(IoULoss()(pred, target), iou_loss(pred, target, mode="iou").mean())
    assert LOSSES.build("GIoULoss").eps == 1e-7


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: iou_loss(torch.zeros(3, 4), torch.zeros(3, 4), mode="wiou"),
            "iou.*giou.*diou.*ciou.*eiou.*siou",
        ),
        (lambda: IoULoss(mode="wiou"), "mode"),
        (lambda: iou_loss(torch.zeros(3, 4), torch.zeros(2, 4)), "pred and target"),
        (lambda: iou_loss(torch.zeros(3, 3), torch.zeros(3, 3)), "pred"),
        (lambda: iou_loss(torch.zeros(3, 4), torch.zeros(3, 5)), "target"),
        (lambda: iou_loss(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4)), "pred"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
