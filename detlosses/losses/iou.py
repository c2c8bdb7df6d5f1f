"""IoU-family box regression losses: IoU, GIoU, DIoU, CIoU, EIoU and SIoU.

All six share one kernel (:class:`_IoULossFunction`) with a hand-derived backward: the
boxes are laid out once as a contiguous (2, 4, N) block, the intersection and the
enclosing box come from one ``aminmax`` over it, and the gradient is assembled from the
gradients of a few per-box features (the widths/heights of the predicted, target,
intersection and enclosing boxes, and the centre offset). That is several times fewer
kernels than an autograd graph of the same formula; the values and gradients equal
torchvision.ops' (tests/test_losses_iou.py checks them, and gradcheck in float64).
"""

from __future__ import annotations

import math

import torch

from .._validation import check_boxes, check_number, check_same_shape, upcast
from ..registry import LOSSES
from ._reduction import WeightedLoss, weight_reduce_loss

__all__ = [
    "IOU_LOSS_MODES",
    "CIoULoss",
    "DIoULoss",
    "EIoULoss",
    "GIoULoss",
    "IoULoss",
    "SIoULoss",
    "iou_loss",
]

IOU_LOSS_MODES = ("iou", "giou", "diou", "ciou", "eiou", "siou")
_FOUR_OVER_PI2 = 4.0 / math.pi**2


class _IoULossFunction(torch.autograd.Function):
    """``1 - IoU-variant`` of aligned ``pred`` (N, 4) and ``target`` (N, 4) -> (N,), fused backward.

    Forward features (all from the corner block ``corners`` (4 boxes, 4 coords, N), x2 and y2
    stored negated so that one max gives the intersection and one min the enclosing box):
    ``neg_size`` (4, 2, N) = -(w, h) of [pred, target, intersection, enclosure], raw;
    ``size`` = its negation clamped at 0; ``area`` (4, N); U = a_p + a_t - I + eps;
    IoU = I / U; ``dc`` (2, N) = twice the centre offset, target - pred.

    Saved for backward: ``pred_wins`` (1 where pred's corner coordinate >= target's), ``neg_size``,
    ``size``, U, IoU and the mode's terms: giou E = a_e + eps; diou/ciou/eiou dc, rho^2 = |dc|^2 / 4
    and c^2 = |r_e|^2 + eps of the raw enclosure extent r_e = -neg_size[3]; ciou h + eps,
    w^2 + (h + eps)^2 and 2 (4/pi^2) alpha delta (delta = atan_target - atan_pred); eiou
    c_t^2 = r_e^2 + eps and w - w_gt per side; siou the features of :func:`_siou_cost`.

    Backward, the chain rule in three layers (``once_differentiable``):

    1. loss -> areas, offsets, raw extents. For 1 - I / U: dl/da_p = dl/da_t = IoU / U,
       dl/dI = -(1 + IoU) / U. giou adds (E - U) / E: -1/E to a_p, a_t, +1/E to I and
       U / E^2 to a_e. diou/ciou/eiou add rho^2 / c^2: dl/d dc = dc / (2 c^2) and
       dl/d r_e = -2 rho^2 r_e / c^4. ciou adds alpha v with alpha constant (as the paper and
       torchvision): dv/dw = -/+ 2 (4/pi^2) delta (h + eps) / (w^2 + (h + eps)^2) and
       dv/dh = +/- 2 (4/pi^2) delta w / (w^2 + (h + eps)^2) (pred / target). eiou adds
       sum_t (w_t - w_gt)^2 / c_t^2: +/- 2 (w_t - w_gt) / c_t^2 to the sizes and
       -2 (w_t - w_gt)^2 r_e / c_t^4 to the extent. siou: :func:`_siou_backward`.
    2. areas -> sizes: d area / d w = h, d area / d h = w; the clamp at 0 passes the gradient
       where the raw size is >= 0; the raw extent terms are added after the clamp.
    3. sizes and offsets -> corners: w = (-x2) + x1 negated, per box; the intersection corner
       is the max of pred's and target's (its gradient goes to pred where ``pred_wins``), the
       enclosure corner the min (to the other box); dc = (x1 + x2)_target - (x1 + x2)_pred.

    ``tests/references.py`` restates each mode with plain autograd; the tests compare values
    and both gradients in float64 (and gradcheck the Function).
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, mode: str, eps: float) -> torch.Tensor:
        n = pred.shape[0]
        corners = pred.new_empty(4, 4, n)  # [pred, target, intersection, enclosure] x (x1, y1, -x2, -y2)
        torch.stack((pred.t(), target.t()), out=corners[:2])
        corners[:2, 2:].neg_()
        torch.maximum(corners[0], corners[1], out=corners[2])  # intersection (x1, y1, -x2, -y2)
        torch.minimum(corners[0], corners[1], out=corners[3])  # enclosure
        neg_size = corners[:, 2:] + corners[:, :2]  # (4, 2, N) = -(w, h) because x1 + (-x2) = -w
        size = neg_size.neg().clamp_(min=0)
        area = size[:, 0] * size[:, 1]  # (4, N): pred, target, intersection, enclosure
        union = area[0] + area[1] - area[2] + eps
        iou = area[2] / union
        loss = 1 - iou
        saved: dict[str, torch.Tensor] = {}
        if mode == "giou":
            enclosure = area[3] + eps
            loss += (enclosure - union) / enclosure
            saved["enclosure"] = enclosure
        elif mode != "iou":
            d = corners[1] - corners[0]  # (4, N)
            dc = d[:2] - d[2:]  # (2, N): (x1 + x2) of target - that of pred (same for y)
            saved["dc"] = dc
            if mode == "siou":
                loss += _siou_cost(size, dc, eps, saved)
            else:
                # the enclosure's diagonal from its raw extents (>= 0 for valid boxes; for two
                # inverted boxes the raw extent keeps c^2 of the order of rho^2, not 0)
                diag2 = neg_size[3].square().sum(0) + eps
                rho2 = dc.square().sum(0) * 0.25  # centre distance^2
                loss += rho2 / diag2
                saved.update(diag2=diag2, rho2=rho2)
                if mode == "ciou":
                    # the aspect-ratio term v and its derivative factors, from atan(w / (h + eps))
                    h_eps = size[:2, 1] + eps  # (2, N)
                    denom = h_eps.square() + size[:2, 0].square()
                    atans = torch.atan(size[:2, 0] / h_eps)
                    delta = atans[1] - atans[0]
                    v = _FOUR_OVER_PI2 * delta.square()
                    alpha = v / (1 - iou + v + eps)  # a constant in backward, as in the CIoU paper
                    loss += alpha * v
                    saved.update(h_eps=h_eps, denom=denom, coef=alpha * delta * (2 * _FOUR_OVER_PI2))
                elif mode == "eiou":
                    side2 = neg_size[3].square() + eps  # (2, N) enclosure w^2, h^2 (raw, as diag2)
                    dwh = size[0] - size[1]  # (2, N)
                    loss += (dwh.square() / side2).sum(0)
                    saved.update(side2=side2, dwh=dwh)
        ctx.mode, ctx.eps, ctx.keys = mode, eps, list(saved)
        pred_wins = torch.ge(corners[0], corners[1], out=torch.empty_like(corners[0]))  # float 0/1: faster than bool
        ctx.save_for_backward(pred_wins, neg_size, size, union, iou, *saved.values())
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        pred_wins, neg_size, size, union, iou, *rest = ctx.saved_tensors
        s = dict(zip(ctx.keys, rest, strict=True))
        mode, eps = ctx.mode, ctx.eps
        # d loss / d area: loss = 1 - inter / union, union = a_pred + a_target - inter + eps
        g_union = grad / union
        g_area = torch.empty_like(size[:, 0])  # (4, N)
        torch.mul(g_union, iou, out=g_area[0])
        g_area[1] = g_area[0]
        torch.add(g_union, g_area[0], out=g_area[2]).neg_()
        g_area[3] = 0
        g_dc = None
        if mode == "giou":  # + (E - U) / E, E = a_enclosure + eps
            g_enc = grad / s["enclosure"]
            g_area[:3] -= g_enc
            g_area[2] += 2 * g_enc
            g_area[3] = g_enc * union / s["enclosure"]
        g_size = torch.empty_like(size)  # (4, 2, N): d area / d w = h, d area / d h = w
        torch.mul(g_area, size[:, 1], out=g_size[:, 0])
        torch.mul(g_area, size[:, 0], out=g_size[:, 1])
        if mode in ("diou", "ciou", "eiou"):  # + rho2 / diag2
            g_rho2 = grad / s["diag2"]
            g_dc = g_rho2 * s["dc"] * 0.5
            # d loss / d raw enclosure size r = -neg_size[3] (unclamped): -g rho2 / diag2^2 * 2 r
            g_enc_raw = (2 * g_rho2 * s["rho2"] / s["diag2"]) * neg_size[3]
        if mode == "ciou":  # + alpha * v, alpha constant
            coef = grad * s["coef"] / s["denom"]  # (2, N), d v / d w = -/+ coef * (h + eps), d v / d h = +/- coef * w
            g_size[0, 0] -= coef[0] * s["h_eps"][0]
            g_size[0, 1] += coef[0] * size[0, 0]
            g_size[1, 0] += coef[1] * s["h_eps"][1]
            g_size[1, 1] -= coef[1] * size[1, 0]
        elif mode == "eiou":  # + sum_t (w_t - wg_t)^2 / (cw_t^2 + eps)
            ratio = s["dwh"] / s["side2"]
            g_dwh = 2 * grad * ratio
            g_size[0] += g_dwh
            g_size[1] -= g_dwh
            g_enc_raw += g_dwh * ratio * neg_size[3]
        elif mode == "siou":
            g_dc = _siou_backward(grad, size, s, eps, g_size)
        g_size *= torch.le(neg_size, 0, out=torch.empty_like(neg_size))  # clamp(min=0) passes raw sizes >= 0
        if mode in ("diou", "ciou", "eiou"):  # terms of the raw enclosure extent (size = -neg_size)
            g_size[3] += g_enc_raw
        # Back to the corners, laid out (half, xy, N) with halves (x1, y1) and (-x2, -y2): each
        # size is -(half 0 + half 1) of its box; the intersection corner is the max, the enclosure
        # corner the min of pred's and target's; dc = (t - p)[half 0] - (t - p)[half 1].
        pred_wins = pred_wins.view(2, 2, -1)
        routed = pred_wins * (g_size[2] - g_size[3]) + g_size[3]  # (2, 2, N) reaching pred through max/min
        grad_pred = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_pred = routed + g_size[0]  # minus the gradient in corner coordinates
            grad_pred = _to_box_grad(grad_pred, g_dc)
        if ctx.needs_input_grad[1]:
            grad_target = (g_size[1] + g_size[2] + g_size[3]) - routed
            grad_target = _to_box_grad(grad_target, None if g_dc is None else -g_dc)
        return grad_pred, grad_target, None, None


def _to_box_grad(neg_corner_grad: torch.Tensor, g_dc: torch.Tensor | None) -> torch.Tensor:
    """(2, 2, N) minus the size-path gradient in corner coordinates -> (N, 4) gradient in xyxy.

    ``g_dc`` (2, N) is d loss / d dc for this box with dc's sign for pred (target passes -g_dc).
    """
    if g_dc is not None:
        neg_corner_grad[0] += g_dc
        neg_corner_grad[1] -= g_dc
    neg_corner_grad[0].neg_()  # x1, y1: corner grad; x2, y2: corner grad of -x2, times -1
    return neg_corner_grad.view(4, -1).t()


def _siou_cost(size: torch.Tensor, dc: torch.Tensor, eps: float, saved: dict[str, torch.Tensor]) -> torch.Tensor:
    """SIoU's (distance cost + shape cost) / 2 (Gevorgyan 2022), features saved for backward.

    With (sx, sy) the centre offset, (cw, ch) the enclosing box and theta = 4:
    angle cost L = sin(2 alpha) = 2 |sx| |sy| / (sx^2 + sy^2 + eps) (the closed form of the
    paper's cos(2 arcsin(sin alpha) - pi / 2)), gamma = 2 - L,
    distance cost D = sum_{t = x, y} 1 - exp(-gamma rho_t), rho_t = s_t^2 / (c_t^2 + eps),
    shape cost S = sum_{t = w, h} (1 - exp(-omega_t))^4,
    omega_t = |t - t_gt| / (max(t, t_gt) + eps).
    """
    off = dc * 0.5  # (2, N) centre offset
    abs_off = off.abs()
    q = off.square().sum(0) + eps
    angle = 2 * abs_off[0] * abs_off[1] / q
    gamma = 2 - angle
    side2 = size[3].square() + eps  # (2, N)
    rho = off.square() / side2
    e_rho = torch.exp(-gamma * rho)  # (2, N)
    dwh = size[0] - size[1]
    big = torch.maximum(size[0], size[1]) + eps
    omega = dwh.abs() / big
    e_omega = torch.exp(-omega)
    one_minus = 1 - e_omega
    saved.update(
        off=off,
        abs_off=abs_off,
        q=q,
        angle=angle,
        gamma=gamma,
        side2=side2,
        rho=rho,
        e_rho=e_rho,
        dwh=dwh,
        big=big,
        omega=omega,
        e_omega=e_omega,
        one_minus=one_minus,
    )
    return ((2 - e_rho.sum(0)) + one_minus.square().square().sum(0)) * 0.5


def _siou_backward(
    grad: torch.Tensor,
    size: torch.Tensor,
    s: dict[str, torch.Tensor],
    eps: float,
    g_size: torch.Tensor,
) -> torch.Tensor:
    """Add SIoU's cost gradient to ``g_size`` in place and return d loss / d dc.

    Saved by :func:`_siou_cost`: the offset s = dc / 2, |s|, q = |s|^2 + eps, the angle cost L,
    gamma = 2 - L, c_t^2 + eps, rho_t, exp(-gamma rho_t), w - w_gt, m = max(w, w_gt) + eps,
    omega and exp(-omega). With loss += (D + S) / 2, D = sum_t 1 - exp(-gamma rho_t):

    * dD/d rho_t = gamma exp(-gamma rho_t), dD/d gamma = sum_t rho_t exp(-gamma rho_t), dgamma/dL = -1;
    * rho_t = s_t^2 / (c_t^2 + eps): d/d s_t = 2 s_t / (c_t^2 + eps), d/d c_t = -2 rho_t c_t / (c_t^2 + eps);
    * L = 2 |s_x| |s_y| / q: dL/d s_x = 2 (sign(s_x) |s_y| - L s_x) / q (and x, y swapped);
    * S = sum_t (1 - exp(-omega_t))^4: dS/d omega = 4 (1 - e)^3 e, omega = |w - w_gt| / m, so
      d omega / dw = (sign(w - w_gt) - [w >= w_gt] omega) / m and
      d omega / dw_gt = -(sign(w - w_gt) + [w < w_gt] omega) / m;
    * s = dc / 2 halves the offset gradient on the way back to dc.
    """
    half = grad * 0.5
    off, abs_off, q = s["off"], s["abs_off"], s["q"]
    ge = half * s["gamma"] * s["e_rho"]  # (2, N) d loss / d rho
    g_gamma = half * (s["rho"] * s["e_rho"]).sum(0)  # d loss / d gamma; d gamma / d angle = -1
    # d angle / d s_x = 2 (sign(s_x) |s_y| - angle s_x) / q, same with x and y swapped
    g_angle = off.sign() * abs_off.flip(0) - s["angle"] * off
    g_off = ge * 2 * off / s["side2"] - (2 * g_gamma / q) * g_angle
    g_size[3] -= ge * 2 * s["rho"] * size[3] / s["side2"]
    # shape: d S / d omega = 4 (1 - e)^3 e; omega = |d| / m, d = w - w_gt, m = max(w, w_gt) + eps
    g_omega = half * 4 * s["one_minus"].pow(3) * s["e_omega"] / s["big"]
    sgn = s["dwh"].sign()
    pred_bigger = s["dwh"] >= 0
    omega = s["omega"]
    g_size[0] += g_omega * (sgn - torch.where(pred_bigger, omega, 0))
    g_size[1] -= g_omega * (sgn + torch.where(pred_bigger, 0, omega))
    return g_off * 0.5


def iou_loss(pred: torch.Tensor, target: torch.Tensor, mode: str = "giou", eps: float = 1e-7) -> torch.Tensor:
    """``1 - IoU-variant`` of aligned ``xyxy`` boxes, unreduced.

    Args:
        pred: (..., 4) predicted boxes.
        target: (..., 4) target boxes, same shape.
        mode: ``"iou"`` | ``"giou"`` | ``"diou"`` | ``"ciou"`` | ``"eiou"`` | ``"siou"``.
        eps: added to every denominator (kept float32 whatever the input dtype).

    Returns:
        (...) loss, float32 (float64 for float64 input).

    With I, U the intersection and union, E the enclosing box, rho the centre distance,
    c the diagonal of E, (w, h) / (wg, hg) the predicted / target sizes:

    * iou:  1 - IoU,  IoU = I / (U + eps)
    * giou: 1 - IoU + (|E| - U) / (|E| + eps)                        (Rezatofighi et al. 2019)
    * diou: 1 - IoU + rho^2 / (c^2 + eps)                            (Zheng et al. 2020)
    * ciou: diou + alpha v, v = 4 / pi^2 (atan(wg / (hg + eps)) - atan(w / (h + eps)))^2,
      alpha = v / (1 - IoU + v + eps), a constant in backward       (Zheng et al. 2020)
    * eiou: diou + (w - wg)^2 / (cw^2 + eps) + (h - hg)^2 / (ch^2 + eps)  (Zhang et al. 2021)
    * siou: 1 - IoU + (distance cost + shape cost) / 2               (Gevorgyan 2022), with
      the centre offset (sx, sy), angle cost L = 2 |sx sy| / (sx^2 + sy^2 + eps) (= the
      paper's cos(2 arcsin(sin alpha) - pi/2) in closed form), gamma = 2 - L, distance cost
      sum_{x,y} 1 - exp(-gamma s_t^2 / (c_t^2 + eps)), shape cost
      sum_{w,h} (1 - exp(-|t - t_gt| / (max(t, t_gt) + eps)))^4.

    An inverted box (x2 < x1) counts as zero-width; every denominator is positive, so the
    loss and its gradient are finite for finite input (zero-area, identical, disjoint boxes).
    Non-finite coordinates are not checked here (that would cost a reduction and a host read
    per call; the criterion checks its inputs): NaN/inf propagate to the loss, as in
    torchvision.ops.
    """
    check_boxes("pred", pred)
    check_boxes("target", target)
    check_same_shape("pred", pred, "target", target)
    if mode not in IOU_LOSS_MODES:
        raise ValueError(f"mode must be one of {IOU_LOSS_MODES}, got {mode!r}")
    pred, target = upcast(pred), upcast(target)
    if pred.dtype != target.dtype:
        pred, target = pred.double(), target.double()
    shape = pred.shape[:-1]
    eps = check_number("eps", eps, minimum=0.0)
    loss = _IoULossFunction.apply(pred.reshape(-1, 4), target.reshape(-1, 4), mode, eps)
    return loss.reshape(shape)


class _IoUModeLoss(WeightedLoss):
    """Shared body of the registered IoU-family losses: ``loss_weight * reduce(iou_loss(...))``."""

    mode = "iou"

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", eps: float = 1e-7) -> None:
        super().__init__(loss_weight=loss_weight, reduction=reduction)
        self.eps = check_number("eps", eps, minimum=0.0)

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return iou_loss(pred, target, mode=self.mode, eps=self.eps)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``loss_weight * reduce(weight * iou_loss(pred, target))`` for boxes ``(..., 4)``.

        ``weight`` is one value per box, ``(...)`` or ``(..., 1)``, or one per coordinate,
        ``(..., 4)``, which is averaged over the coordinates (as mmdetection's IoU losses do).
        """
        loss = self.elementwise(pred, target)  # (...), after the box checks
        if isinstance(weight, torch.Tensor):
            boxes = tuple(loss.shape)
            if weight.shape == (*boxes, 4):
                weight = weight.mean(-1)
            elif weight.shape == (*boxes, 1):
                weight = weight.squeeze(-1)
            elif weight.shape != boxes:
                raise ValueError(
                    f"weight must have shape {boxes} (one per box), {(*boxes, 1)} or {(*boxes, 4)} "
                    f"(per coordinate, averaged), got {tuple(weight.shape)}"
                )
        return self.loss_weight * weight_reduce_loss(loss, weight, self.reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, {super().extra_repr()}, eps={self.eps}"


@LOSSES.register()
class IoULoss(_IoUModeLoss):
    """``1 - IoU`` (or any ``mode`` of :func:`iou_loss`), weighted and reduced.

    Args:
        mode: one of ``IOU_LOSS_MODES``, default ``"iou"``.
        loss_weight, reduction, eps: as in :class:`WeightedLoss` and :func:`iou_loss`.
    """

    def __init__(
        self,
        mode: str = "iou",
        loss_weight: float = 1.0,
        reduction: str = "mean",
        eps: float = 1e-7,
    ) -> None:
        if mode not in IOU_LOSS_MODES:
            raise ValueError(f"mode must be one of {IOU_LOSS_MODES}, got {mode!r}")
        super().__init__(loss_weight=loss_weight, reduction=reduction, eps=eps)
        self.mode = mode


@LOSSES.register()
class GIoULoss(_IoUModeLoss):
    """Generalized IoU loss, ``iou_loss(mode="giou")`` (Rezatofighi et al., CVPR 2019)."""

    mode = "giou"


@LOSSES.register()
class DIoULoss(_IoUModeLoss):
    """Distance IoU loss, ``iou_loss(mode="diou")`` (Zheng et al., AAAI 2020)."""

    mode = "diou"


@LOSSES.register()
class CIoULoss(_IoUModeLoss):
    """Complete IoU loss, ``iou_loss(mode="ciou")`` (Zheng et al., AAAI 2020)."""

    mode = "ciou"


@LOSSES.register()
class EIoULoss(_IoUModeLoss):
    """Efficient IoU loss, ``iou_loss(mode="eiou")`` (Zhang et al., 2021, arXiv:2101.08158)."""

    mode = "eiou"


@LOSSES.register()
class SIoULoss(_IoUModeLoss):
    """SCYLLA IoU loss, ``iou_loss(mode="siou")`` (Gevorgyan, 2022, arXiv:2205.12740)."""

    mode = "siou"
