"""Classification-family losses: focal, quality focal, varifocal, distribution focal.

Every value is checked against an independent reference: arithmetic worked by hand (in
the comments), torchvision.ops.sigmoid_focal_loss, the plain autograd formulas of the papers
in tests/references.py (values and both gradients in float64), and gradcheck in float64 for
the fused backward passes.
"""

from __future__ import annotations

import math

import pytest
import references as paper
import torch
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from detlosses import LOSSES
from detlosses.losses.distribution_focal import (
    DistributionFocalLoss,
    distribution_focal_loss,
    distribution_integral,
)
from detlosses.losses.focal import FocalLoss, sigmoid_focal_loss
from detlosses.losses.quality_focal import QualityFocalLoss, quality_focal_loss
from detlosses.losses.varifocal import VarifocalLoss, varifocal_loss

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)
CLS_FUNCTIONS = [sigmoid_focal_loss, quality_focal_loss, varifocal_loss]


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _soft_target(shape, gen, dtype=torch.float64):
    """A dense target: ~1/3 zeros (negatives), the rest qualities in (0.05, 0.95)."""
    quality = 0.05 + 0.9 * torch.rand(shape, generator=gen, dtype=dtype)
    return quality * (torch.rand(shape, generator=gen, dtype=dtype) > 0.33)


def _values_and_grads(fn, x, t, weight):
    x = x.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_()
    loss = fn(x, t)
    gx, gt = torch.autograd.grad((loss * weight).sum(), (x, t))
    return loss.detach(), gx, gt


# --------------------------------------------------------------------------------------
# hand-worked values
# --------------------------------------------------------------------------------------
def test_focal_hand_values():
    x = torch.tensor([0.0, 0.0, LN3, LN3], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0)
    expected = torch.tensor([
        # x=0: p=0.5, BCE=ln2, 1-p_t=0.5 -> (0.5)^2=1/4; positive alpha_t=0.25 -> ln2/16
        LN2 / 16,
        # negative: same BCE and factor, alpha_t=0.75 -> 3 ln2/16
        3 * LN2 / 16,
        # x=ln3: p=3/4; positive: BCE=-ln(3/4)=ln(4/3), 1-p_t=1/4 -> 1/16, *0.25 -> ln(4/3)/64
        math.log(4 / 3) / 64,
        # negative: BCE=-ln(1/4)=ln4, 1-p_t=3/4 -> 9/16, *0.75 -> 27 ln4/64
        27 * LN4 / 64,
    ])  # fmt: skip
    torch.testing.assert_close(loss, expected)
    # dFL/dx = a_t [(p-t) m^2 + 2 BCE m (1-2t) p(1-p)] at x=0 (p=1/2, m=1/2, p(1-p)=1/4):
    #   t=1: 0.25 [(-1/2)(1/4) + 2 ln2 (1/2)(-1)(1/4)] = 0.25 (-1/8 - ln2/4)
    #   t=0: 0.75 [( 1/2)(1/4) + 2 ln2 (1/2)(+1)(1/4)] = 0.75 ( 1/8 + ln2/4)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(grad[:2], torch.tensor([0.25 * (-1 / 8 - LN2 / 4), 0.75 * (1 / 8 + LN2 / 4)]))


def test_focal_gamma_zero_and_no_alpha_hand_values():
    # gamma=0, alpha<0: plain BCE. x=ln3, t=1: -ln(3/4); t=0: -ln(1/4); t=0.5: ln4 - ln3/2
    # (BCE(x, t) = -[t ln p + (1-t) ln(1-p)] = -[0.5 ln(3/4) + 0.5 ln(1/4)] = ln4 - 0.5 ln3)
    x = torch.full((3,), LN3)
    loss = sigmoid_focal_loss(x, torch.tensor([1.0, 0.0, 0.5]), alpha=-1.0, gamma=0.0)
    torch.testing.assert_close(loss, torch.tensor([math.log(4 / 3), LN4, LN4 - LN3 / 2]))


def test_quality_focal_hand_values():
    x = torch.tensor([0.0, 0.0, LN3], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.5])
    loss = quality_focal_loss(x, t, beta=2.0)
    expected = torch.tensor([
        LN2 * 0.25,  # x=0: BCE=ln2, |1 - 1/2|^2 = 1/4
        LN2 * 0.25,  # negative: BCE=ln2, |0 - 1/2|^2 = 1/4
        (LN4 - LN3 / 2) / 16,  # p=3/4, t=1/2: BCE = ln4 - ln3/2, |1/2 - 3/4|^2 = 1/16
    ])  # fmt: skip
    torch.testing.assert_close(loss, expected)
    # dQFL/dx = (p-t)|p-t|^2 + BCE * 2(p-t) p(1-p); x=0, t=0: 1/8 + ln2 * 1 * 1/4
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(grad[1], torch.tensor(1 / 8 + LN2 / 4))
    # alpha form: * (alpha t + (1-alpha)(1-t)); t=1 -> 0.25, t=0 -> 0.75, t=1/2 -> 1/2
    loss_a = quality_focal_loss(x, t, beta=2.0, alpha=0.25)
    torch.testing.assert_close(loss_a, expected * torch.tensor([0.25, 0.75, 0.5]))


def test_varifocal_hand_values():
    x = torch.tensor([LN3, LN3, 0.0], requires_grad=True)
    t = torch.tensor([0.5, 0.0, 1.0])
    loss = varifocal_loss(x, t, alpha=0.75, gamma=2.0)
    expected = torch.tensor([
        0.5 * (LN4 - LN3 / 2),  # positive: weight t=1/2, BCE(ln3, 1/2) = ln4 - ln3/2
        0.75 * 0.75**2 * LN4,  # negative: weight 0.75 p^2 = 0.75 (3/4)^2, BCE = -ln(1/4)
        1.0 * LN2,  # positive t=1 at x=0: BCE = ln2
    ])  # fmt: skip
    torch.testing.assert_close(loss, expected)
    # negative gradient through the weight: w [(p - t) + g BCE (1-p)]
    #   = 0.75 (9/16) [3/4 + 2 ln4 (1/4)] ;  positive: t (p - t) = 1/2 (3/4 - 1/2) = 1/8
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(grad[:2], torch.tensor([1 / 8, 0.75 * 9 / 16 * (0.75 + LN4 / 2)]))


def test_distribution_focal_hand_values():
    # logits ln[1, 2, 3, 4] -> softmax = [0.1, 0.2, 0.3, 0.4]
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3)).requires_grad_()
    target = torch.tensor([1.3, 3.0, 0.0])
    loss = distribution_focal_loss(logits, target)
    expected = torch.tensor([
        # 1.3: bins 1 and 2, w_l = 2 - 1.3 = 0.7, w_r = 0.3 -> 0.7 (-ln 0.2) + 0.3 (-ln 0.3)
        0.7 * math.log(5) + 0.3 * math.log(10 / 3),
        # 3.0 is clamped to 2.99: bins 2 and 3, w_l = 0.01, w_r = 0.99
        0.01 * math.log(10 / 3) + 0.99 * math.log(10 / 4),
        # 0.0: bin 0 with weight 1 -> -ln 0.1
        math.log(10),
    ])  # fmt: skip
    torch.testing.assert_close(loss, expected)
    # dDFL/dz = softmax - w_l onehot(1) - w_r onehot(2) = [0.1, 0.2 - 0.7, 0.3 - 0.3, 0.4]
    (grad,) = torch.autograd.grad(loss[0], logits)
    torch.testing.assert_close(grad[0], torch.tensor([0.1, -0.5, 0.0, 0.4]))


def test_distribution_integral_hand_value():
    # softmax = [0.1, 0.2, 0.3, 0.4] -> 0*0.1 + 1*0.2 + 2*0.3 + 3*0.4 = 2.0; uniform -> 1.5
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(distribution_integral(logits), torch.tensor([2.0, 1.5]))
    # box layout (..., 4 * n_bins) viewed as (..., 4, n_bins)
    boxes = logits[0].repeat(2, 4)  # (2, 16)
    torch.testing.assert_close(distribution_integral(boxes.unflatten(-1, (4, 4))), torch.full((2, 4), 2.0))


# --------------------------------------------------------------------------------------
# gradcheck of the fused backward passes (float64), logits and target gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.7, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0, 0.9])
def test_focal_gradcheck(alpha, gamma):
    gen = _seed(1)
    x = (torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    t = torch.rand(4, 5, generator=gen, dtype=torch.float64).requires_grad_()  # soft targets
    assert torch.autograd.gradcheck(lambda x, t: sigmoid_focal_loss(x, t, alpha, gamma), (x, t))


@pytest.mark.parametrize("beta", [0.0, 0.6, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_quality_focal_gradcheck(beta, alpha):
    gen = _seed(2)
    x = (torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    t = torch.rand(4, 5, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t: quality_focal_loss(x, t, beta, alpha), (x, t))


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.5, 0.0), (1.0, 1.5), (0.25, 3.0)])
def test_varifocal_gradcheck(alpha, gamma):
    gen = _seed(3)
    x = (torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    mixed = _soft_target((4, 5), gen)  # zeros and positives: logits gradient only
    assert torch.autograd.gradcheck(lambda x: varifocal_loss(x, mixed, alpha, gamma), (x,))
    # the weight switches branch at t = 0, so the target gradient is checked on t > 0
    t = (0.05 + 0.9 * torch.rand(4, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t: varifocal_loss(x, t, alpha, gamma), (x, t))


def test_distribution_focal_gradcheck():
    gen = _seed(4)
    logits = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).requires_grad_()
    # non-integer targets (the loss has kinks at integers), one clamped (5.0 -> 4.99)
    target = torch.tensor([[0.3, 1.5, 4.2, 5.0]] * 3, dtype=torch.float64)
    target = (target + 0.1 * torch.rand(3, 4, generator=gen, dtype=torch.float64)).clamp(max=5.0)
    assert torch.autograd.gradcheck(distribution_focal_loss, (logits, target.requires_grad_()))
    assert torch.autograd.gradcheck(distribution_integral, (logits,))


def test_double_backward_is_refused_not_wrong():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, 4, dtype=torch.float64)
    for fn in CLS_FUNCTIONS:
        (g,) = torch.autograd.grad(fn(x, t).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match=r"once_differentiable|double backward|does not require grad"):
            torch.autograd.grad(g.sum(), x)


# --------------------------------------------------------------------------------------
# equal to torchvision (focal) and to the papers' formulas in tests/references.py (float64)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.25, 0.6, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("soft", [False, True])
def test_focal_matches_torchvision(alpha, gamma, soft):
    gen = _seed(5)
    x = torch.randn(64, 20, generator=gen) * 4
    t = torch.rand(64, 20, generator=gen) if soft else (torch.rand(64, 20, generator=gen) > 0.8).float()
    w = torch.rand(64, 20, generator=gen)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ours = sigmoid_focal_loss(x1, t, alpha, gamma)
    ref = tv_sigmoid_focal_loss(x2, t, alpha, gamma)
    # atol: torchvision's BCE, (1-t)x - logsigmoid(x), cancels for confident negatives
    # (|error| ~ ulp(|x|) ~ 5e-7); ours has no cancellation, checked in float64 below
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    # float64, logits and target gradients, tight tolerance
    got = _values_and_grads(lambda a, b: sigmoid_focal_loss(a, b, alpha, gamma), x.double(), t.double(), w)
    exp = _values_and_grads(lambda a, b: tv_sigmoid_focal_loss(a, b, alpha, gamma), x.double(), t.double(), w)
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
def test_focal_matches_paper_formula_float64(alpha, gamma):
    gen = _seed(12)
    x = torch.randn(50, 8, generator=gen, dtype=torch.float64) * 4
    t = _soft_target((50, 8), gen)
    w = torch.rand(50, 8, generator=gen, dtype=torch.float64)
    got = _values_and_grads(lambda a, b: sigmoid_focal_loss(a, b, alpha, gamma), x, t, w)
    exp = _values_and_grads(lambda a, b: paper.focal_loss(a, b, alpha, gamma), x, t, w)
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bce_keeps_relative_precision_for_confident_elements():
    # confidently correct elements: BCE ~ exp(-|x|); float32 ours vs the float64 value
    x = torch.tensor([-12.0, -6.0, 6.0, 12.0])
    t = torch.tensor([0.0, 0.0, 1.0, 1.0])
    ours = sigmoid_focal_loss(x, t, alpha=-1.0, gamma=0.0)
    exact = torch.nn.functional.softplus(-x.double().abs())  # log(1 + e^-|x|)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize(("beta", "alpha"), [(2.0, None), (2.0, 0.25), (1.5, None), (0.5, 0.7), (3.0, 0.5)])
def test_quality_focal_matches_restatement(beta, alpha):
    gen = _seed(6)
    x = torch.randn(50, 8, generator=gen, dtype=torch.float64) * 4
    t = _soft_target((50, 8), gen)
    w = torch.rand(50, 8, generator=gen, dtype=torch.float64)
    got = _values_and_grads(lambda a, b: quality_focal_loss(a, b, beta, alpha), x, t, w)
    exp = _values_and_grads(lambda a, b: paper.quality_focal_loss(a, b, beta, alpha), x, t, w)
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.5, 1.5), (1.0, 0.0)])
def test_varifocal_matches_restatement(alpha, gamma):
    gen = _seed(7)
    x = torch.randn(50, 8, generator=gen, dtype=torch.float64) * 4
    t = _soft_target((50, 8), gen)
    w = torch.rand(50, 8, generator=gen, dtype=torch.float64)
    got = _values_and_grads(lambda a, b: varifocal_loss(a, b, alpha, gamma), x, t, w)
    exp = _values_and_grads(lambda a, b: paper.varifocal_loss(a, b, alpha, gamma), x, t, w)
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_distribution_focal_matches_restatement():
    gen = _seed(8)
    logits = torch.randn(40, 4, 17, generator=gen, dtype=torch.float64) * 3
    target = torch.rand(40, 4, generator=gen, dtype=torch.float64) * 16
    target[0] = torch.tensor([0.0, 16.0, 15.995, 7.0])  # ends, the clamp band, an integer
    w = torch.rand(40, 4, generator=gen, dtype=torch.float64)
    got = _values_and_grads(distribution_focal_loss, logits, target, w)
    exp = _values_and_grads(paper.distribution_focal_loss, logits, target, w)
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    ref_integral = (torch.softmax(logits, -1) * torch.arange(17, dtype=torch.float64)).sum(-1)
    torch.testing.assert_close(distribution_integral(logits), ref_integral)


# --------------------------------------------------------------------------------------
# AMP: fp16 / bf16 inputs and autocast give the fp32 result on the same rounded inputs
# --------------------------------------------------------------------------------------
def _amp_cases(gen):
    x = torch.randn(32, 10, generator=gen) * 4
    x[0] = torch.tensor([30.0, -30.0, 29.5, -29.5, 12.0, -12.0, 0.0, 30.0, -30.0, 5.0])
    t = torch.rand(32, 10, generator=gen) * (torch.rand(32, 10, generator=gen) > 0.5)
    t[0] = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.3, 0.7, 1.0])
    dist = torch.randn(32, 4, 17, generator=gen) * 4
    dist[0, 0] = 30.0
    dist_t = torch.rand(32, 4, generator=gen) * 16
    return [
        (sigmoid_focal_loss, x, t),
        (quality_focal_loss, x, t),
        (lambda a, b: quality_focal_loss(a, b, alpha=0.25), x, t),
        (varifocal_loss, x, t),
        (distribution_focal_loss, dist, dist_t),
        (lambda a, b: distribution_integral(a) + 0 * b, dist, dist_t),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_matches_fp32_on_rounded_inputs(dtype):
    for fn, x, t in _amp_cases(_seed(9)):
        x_low, t_low = x.to(dtype), t.to(dtype)
        x_ref = x_low.float().requires_grad_()
        ref = fn(x_ref, t_low.float())
        (grad_ref,) = torch.autograd.grad(ref.sum(), x_ref)
        for inputs in ((x_low, t_low), (x_low.float(), t_low.float())):  # low-precision or fp32 in
            leaf = inputs[0].clone().requires_grad_()
            with torch.autocast("cpu", dtype=dtype):
                out = fn(leaf, inputs[1])
                (grad,) = torch.autograd.grad(out.sum(), leaf)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all() and torch.isfinite(grad).all()
            assert grad.dtype == leaf.dtype
            torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
            # a low-precision leaf receives its gradient rounded to its own dtype
            grad_exp = grad_ref.to(leaf.dtype).float()
            torch.testing.assert_close(grad.float(), grad_exp, rtol=1e-3, atol=1e-3)


def test_large_logits_finite_and_exact():
    x = torch.tensor([-100.0, -30.0, 30.0, 100.0]).repeat_interleave(3)
    t = torch.tensor([0.0, 1.0, 0.4]).repeat(4)
    for fn, ref in [
        (sigmoid_focal_loss, tv_sigmoid_focal_loss),
        (quality_focal_loss, paper.quality_focal_loss),
        (varifocal_loss, paper.varifocal_loss),
    ]:
        leaf = x.clone().requires_grad_()
        out = fn(leaf, t)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        x64 = x.double().requires_grad_()
        exp = ref(x64, t.double())
        (grad64,) = torch.autograd.grad(exp.sum(), x64)
        torch.testing.assert_close(out.double(), exp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.double(), grad64, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# modules: registry, reduction, weight, avg_factor, empty input
# --------------------------------------------------------------------------------------
MODULES = [
    ("FocalLoss", FocalLoss, sigmoid_focal_loss),
    ("QualityFocalLoss", QualityFocalLoss, quality_focal_loss),
    ("VarifocalLoss", VarifocalLoss, varifocal_loss),
]


@pytest.mark.parametrize(("name", "cls", "fn"), MODULES)
def test_registry_builds_and_reduces(name, cls, fn):
    assert isinstance(LOSSES.build(name), cls)
    module = LOSSES.build({"type": name, "loss_weight": 2.0})
    gen = _seed(10)
    x = torch.randn(6, 5, generator=gen)
    t = _soft_target((6, 5), gen, dtype=torch.float32)
    w = torch.rand(6, 5, generator=gen)
    elem = fn(x, t)
    torch.testing.assert_close(module(x, t), 2.0 * elem.mean())
    torch.testing.assert_close(module(x, t, weight=w, avg_factor=3.5), 2.0 * (elem * w).sum() / 3.5)
    per_anchor = torch.rand(6, generator=gen)  # (N,) weight against an (N, C) loss
    torch.testing.assert_close(module(x, t, weight=per_anchor), 2.0 * (elem * per_anchor[:, None]).mean())
    torch.testing.assert_close(cls(reduction="sum")(x, t), elem.sum())
    torch.testing.assert_close(cls(reduction="none")(x, t, weight=w), elem * w)


def test_distribution_focal_module():
    assert isinstance(LOSSES.build("DistributionFocalLoss"), DistributionFocalLoss)
    module = LOSSES.build({"type": "DistributionFocalLoss", "loss_weight": 0.25})
    gen = _seed(11)
    logits = torch.randn(5, 4, 17, generator=gen)
    target = torch.rand(5, 4, generator=gen) * 16
    per_box = torch.rand(5, generator=gen)  # (N,) weight against the (N, 4) loss
    elem = distribution_focal_loss(logits, target)
    assert elem.shape == (5, 4)
    torch.testing.assert_close(
        module(logits, target, weight=per_box, avg_factor=4.0),
        0.25 * (elem * per_box[:, None]).sum() / 4.0,
    )


@pytest.mark.parametrize("name", ["FocalLoss", "QualityFocalLoss", "VarifocalLoss", "DistributionFocalLoss"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_gives_zero_with_gradient(name, reduction):
    module = LOSSES.build({"type": name, "reduction": reduction})
    if name == "DistributionFocalLoss":
        x, t = torch.randn(0, 4, 17, requires_grad=True), torch.zeros(0, 4)
    else:
        x, t = torch.randn(0, 80, requires_grad=True), torch.zeros(0, 80)
    loss = module(x, t)
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and x.grad.shape == x.shape
    loss_avg = module(x, t, avg_factor=1.0) if reduction == "mean" else loss
    assert loss_avg.item() == 0.0


def test_zero_positives_is_finite():
    x = torch.randn(100, 80) - 4.0
    t = torch.zeros(100, 80)
    for name in ("FocalLoss", "QualityFocalLoss", "VarifocalLoss"):
        leaf = x.clone().requires_grad_()
        loss = LOSSES.build(name)(leaf, t, avg_factor=1.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()


def test_target_gradient_is_optional_and_logits_only_by_default():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.rand(4, 3)
    for fn in CLS_FUNCTIONS:
        fn(x, t).sum().backward()
    assert x.grad is not None and t.grad is None
    with torch.no_grad():  # forward only
        for fn in CLS_FUNCTIONS:
            assert not fn(x, t).requires_grad


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", CLS_FUNCTIONS)
def test_classification_bad_input(fn):
    with pytest.raises(ValueError, match="logits"):
        fn(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="target"):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="target"):
        fn(torch.zeros(2, 3), [[0.0] * 3] * 2)


def test_hyperparameter_checks():
    x, t = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x, t, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-0.5)
    with pytest.raises(ValueError, match="beta"):
        quality_focal_loss(x, t, beta=-2.0)
    with pytest.raises(ValueError, match="alpha"):
        QualityFocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        varifocal_loss(x, t, alpha=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        VarifocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="avg")


def test_distribution_focal_bad_input():
    logits = torch.zeros(5, 4, 17)
    with pytest.raises(ValueError, match="logits"):
        distribution_focal_loss(logits.long(), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"target.*\(5, 4\)"):
        distribution_focal_loss(logits, torch.zeros(5, 4, 17))
    with pytest.raises(ValueError, match=r"target.*\[0, 16\]"):
        distribution_focal_loss(logits, torch.full((5, 4), -0.5))
    with pytest.raises(ValueError, match=r"target.*\[0, 16\]"):
        distribution_focal_loss(logits, torch.full((5, 4), 16.5))
    with pytest.raises(ValueError, match="n_bins"):
        distribution_focal_loss(torch.zeros(5, 4, 1), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="n_bins"):
        distribution_integral(torch.zeros(5, 1))
    with pytest.raises(ValueError, match="logits"):
        distribution_integral(torch.zeros(5, 17, dtype=torch.int32))
    # rounding noise just outside the range is clamped, not an error
    edge = torch.tensor([[-1e-4, 16.0 + 1e-4, 0.0, 16.0]] * 5)
    assert torch.isfinite(distribution_focal_loss(logits, edge)).all()
