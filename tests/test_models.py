"""DenseDetectorModel: shapes, anchors, decoding, initialisation, gradients, input checks, AMP."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.models import DenseDetectorModel, DenseOutput
from lightning_modules.models.head import aligned_logits, sample_sides

HEADS = ("tood", "decoupled")
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _perturb(model: torch.nn.Module, std: float = 0.05) -> None:
    """Move every weight away from its initial value so offsets, attention etc. are non-trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("size", ["n", "s", "m"])
def test_output_shapes(size: str, head: str) -> None:
    model = DenseDetectorModel(NUM_CLASSES, size=size, head=head, reg_max=7)
    out = model(torch.rand(2, 3, 64, 96))
    # A = (64/8)(96/8) + (64/16)(96/16) + (64/32)(96/32) = 8*12 + 4*6 + 2*3 = 96 + 24 + 6 = 126
    assert isinstance(out, DenseOutput)
    assert out.cls_logits.shape == (2, 126, NUM_CLASSES)
    assert out.box_dist_logits.shape == (2, 126, 4 * 8)
    assert out.box_preds.shape == (2, 126, 4)
    assert out.anchor_points.shape == (126, 2)
    assert out.strides.shape == (126,)
    assert all(t.dtype == torch.float32 for t in out)


@pytest.mark.parametrize(
    ("hw", "strides", "expected_a"),
    [
        ((32, 32), (8, 16, 32), 16 + 4 + 1),  # 4*4 + 2*2 + 1*1
        ((128, 64), (8, 16, 32, 64), 128 + 32 + 8 + 2),  # 16*8 + 8*4 + 4*2 + 2*1
        ((64, 64), (16, 32), 16 + 4),  # 4*4 + 2*2
    ],
)
def test_other_sizes_and_strides(hw: tuple[int, int], strides: tuple[int, ...], expected_a: int) -> None:
    model = DenseDetectorModel(NUM_CLASSES, head="decoupled", strides=strides)
    # batch 2: train-mode BatchNorm needs more than one value per channel at 1x1 levels
    out = model(torch.rand(2, 3, *hw))
    assert out.cls_logits.shape == (2, expected_a, NUM_CLASSES)
    assert sorted(set(out.strides.tolist())) == [float(s) for s in strides]


def test_anchor_points_by_hand() -> None:
    model = DenseDetectorModel(NUM_CLASSES)
    out = model(torch.rand(1, 3, 64, 96))
    points, strides = out.anchor_points, out.strides
    # stride 8: 8 rows x 12 cols, anchors 0..95, centre ((j + 0.5) * 8, (i + 0.5) * 8)
    assert points[0].tolist() == [4.0, 4.0]
    assert points[1].tolist() == [12.0, 4.0]
    assert points[12].tolist() == [4.0, 12.0]  # row 1 starts after the 12 anchors of row 0
    assert points[95].tolist() == [92.0, 60.0]  # (11.5 * 8, 7.5 * 8)
    # stride 16: 4 x 6, anchors 96..119
    assert points[96].tolist() == [8.0, 8.0]
    assert points[97].tolist() == [24.0, 8.0]
    assert points[102].tolist() == [8.0, 24.0]
    # stride 32: 2 x 3, anchors 120..125
    assert points[120].tolist() == [16.0, 16.0]
    assert points[121].tolist() == [48.0, 16.0]
    assert points[123].tolist() == [16.0, 48.0]
    assert points[125].tolist() == [80.0, 48.0]  # (2.5 * 32, 1.5 * 32)
    assert strides.tolist() == [8.0] * 96 + [16.0] * 24 + [32.0] * 6
    # cached per input size: the same tensors come back
    again = model.anchors(64, 96, "cpu")
    assert again[0] is points and again[1] is strides


def test_anchors_made_under_inference_mode_train_afterwards() -> None:
    # Lightning's sanity validation runs first, under inference mode, at the training size
    model = DenseDetectorModel(NUM_CLASSES)
    images = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        model(images)
    out = model(images)
    (out.box_preds.sum() + out.cls_logits.sum()).backward()
    assert not out.anchor_points.is_inference() and not out.strides.is_inference()


@pytest.mark.parametrize("head", HEADS)
def test_box_preds_are_integral_of_distributions(head: str) -> None:
    reg_max = 16
    model = DenseDetectorModel(NUM_CLASSES, head=head, reg_max=reg_max)
    _perturb(model)
    out = model(torch.rand(2, 3, 64, 64))
    b, a, _ = out.box_dist_logits.shape
    # independent decoding: expected bin = softmax(logits) @ [0..reg_max], times the stride
    probs = out.box_dist_logits.view(b, a, 4, reg_max + 1).softmax(-1)
    bins = torch.arange(reg_max + 1, dtype=torch.float32)
    dist = (probs @ bins) * out.strides[:, None]  # (B, A, 4) sides l, t, r, b in pixels
    x, y = out.anchor_points[:, 0], out.anchor_points[:, 1]
    expected = torch.stack([x - dist[..., 0], y - dist[..., 1], x + dist[..., 2], y + dist[..., 3]], dim=-1)
    torch.testing.assert_close(out.box_preds, expected, rtol=1e-5, atol=1e-4)
    assert dist.std() > 0.1  # the perturbation made the distributions differ between anchors


@pytest.mark.parametrize("head", HEADS)
def test_initialisation_prior_and_box_scale(head: str) -> None:
    model = DenseDetectorModel(NUM_CLASSES, head=head)
    out = model(torch.rand(2, 3, 64, 96))
    probs = out.cls_logits.sigmoid()
    # bias = -log((1 - 0.01) / 0.01) = -4.595; weights N(0, 0.01) add only small spread
    assert abs(probs.mean().item() - 0.01) < 0.002
    assert probs.min() > 0.004 and probs.max() < 0.025
    # dist bias k * log(r), r = 2.5 / 3.5: a geometric distribution truncated at 16 bins,
    # mean = sum_k k r^k / sum_k r^k = 2.444 (k = 0..16) per side -> box width ~ 4.89 strides
    r = 2.5 / 3.5
    mean_bins = sum(k * r**k for k in range(17)) / sum(r**k for k in range(17))
    widths = (out.box_preds[..., 2:] - out.box_preds[..., :2]) / out.strides[:, None]
    assert abs(widths.mean().item() - 2 * mean_bins) < 0.5
    assert widths.min() > 3.0 and widths.max() < 8.0


@pytest.mark.parametrize("head", HEADS)
def test_backward_gives_finite_gradients_everywhere(head: str) -> None:
    model = DenseDetectorModel(NUM_CLASSES, head=head)
    _perturb(model, std=0.01)
    out = model(torch.rand(2, 3, 64, 64))
    loss = out.cls_logits.sigmoid().sum() + out.box_preds.sum() / 100 + out.box_dist_logits.logsumexp(-1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_inputs_raise() -> None:
    model = DenseDetectorModel(NUM_CLASSES)
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(1, 3, 64, 80))  # 80 is not a multiple of 32
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="size"):
        DenseDetectorModel(NUM_CLASSES, size="xl")
    with pytest.raises(ValueError, match="head"):
        DenseDetectorModel(NUM_CLASSES, head="yolo")
    with pytest.raises(ValueError, match="strides"):
        DenseDetectorModel(NUM_CLASSES, strides=(8, 24, 32))
    with pytest.raises(ValueError, match="num_classes"):
        DenseDetectorModel(0)
    with pytest.raises(ValueError, match="reg_max"):
        DenseDetectorModel(NUM_CLASSES, reg_max=0)


@pytest.mark.parametrize("head", HEADS)
def test_bf16_autocast_matches_fp32(head: str) -> None:
    model = DenseDetectorModel(NUM_CLASSES, head=head).eval()
    _perturb(model, std=0.01)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(images)
    for r, a in zip(ref, amp, strict=True):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert r.shape == a.shape
    # bf16 keeps 8 mantissa bits: probabilities and pixel boxes agree loosely
    torch.testing.assert_close(amp.cls_logits.sigmoid(), ref.cls_logits.sigmoid(), atol=0.02, rtol=0.0)
    torch.testing.assert_close(amp.box_preds, ref.box_preds, atol=4.0, rtol=0.0)


def test_parameter_counts_grow_with_size() -> None:
    for head in HEADS:
        counts = [DenseDetectorModel(80, size=s, head=head).num_parameters for s in "nsm"]
        assert counts[0] < counts[1] < counts[2], (head, counts)
    assert DenseDetectorModel(80).num_parameters < 2_000_000  # n stays small for the CPU demo


def test_aligned_logits_are_logit_of_geometric_mean() -> None:
    x = torch.tensor([-30.0, -4.0, 0.0, 2.0, 30.0, 30.0]).view(1, 6, 1, 1)
    z = torch.tensor([0.0, 1.0, -3.0, 2.0, 0.0, 30.0]).view(1, 6, 1, 1)
    out = aligned_logits(x, z)
    # reference: p = sqrt(sigmoid(x) * sigmoid(z)), in float64
    p = (x.double().sigmoid() * z.double().sigmoid()).sqrt()
    torch.testing.assert_close(out.sigmoid().double(), p, atol=1e-6, rtol=1e-5)
    # x = z = 0: p = 0.5 -> logit 0; x = z = 30: p -> 1 is clamped to a finite logit
    assert abs(aligned_logits(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)).item()) < 1e-6
    assert torch.isfinite(out).all() and out[0, 5].item() > 15.0


def test_sample_sides_offsets_by_hand() -> None:
    n_bins = 2
    # H = 2, W = 3
    logits = torch.arange(4 * n_bins * 2 * 3, dtype=torch.float32).view(1, 4 * n_bins, 2, 3)
    offsets = torch.zeros(1, 8, 2, 3)
    torch.testing.assert_close(sample_sides(logits, offsets), logits)  # zero offsets: identity
    offsets[0, 0] = 1.0  # side l: dx = +1 cell -> value of the right neighbour, border-clamped
    # side t: dy = +0.5 -> mean of the cell and the one below (border-clamped on row 1)
    offsets[0, 3] = 0.5
    out = sample_sides(logits, offsets)
    left = logits[0, :n_bins]  # (2 bins, H, W)
    torch.testing.assert_close(out[0, :n_bins, :, :2], left[:, :, 1:])
    torch.testing.assert_close(out[0, :n_bins, :, 2], left[:, :, 2])
    top = logits[0, n_bins : 2 * n_bins]
    torch.testing.assert_close(out[0, n_bins : 2 * n_bins, 0], (top[:, 0] + top[:, 1]) / 2)
    torch.testing.assert_close(out[0, n_bins : 2 * n_bins, 1], top[:, 1])
    torch.testing.assert_close(out[0, 2 * n_bins :], logits[0, 2 * n_bins :])  # r, b untouched
