"""detlosses.boxes: hand arithmetic and torchvision.ops values, chunking and its memory, encodings, checks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.ops as tv

from detlosses import boxes as B
from detlosses.boxes import bbox2distance, box_convert, box_iou, distance2bbox

MODES = ("iou", "giou", "diou", "ciou")
TV_PAIRWISE = {
    "iou": tv.box_iou,
    "giou": tv.generalized_box_iou,
    "diou": tv.distance_box_iou,
    "ciou": tv.complete_box_iou,
}


def random_boxes(n: int, seed: int, dtype=torch.float32, scale: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * scale / 2 + 1
    return torch.cat((xy, xy + wh), dim=1)


# ---------------------------------------------------------------- hand-worked values
# a = (0, 0, 2, 2), b = (1, 1, 3, 3): I = 1, U = 4 + 4 - 1 = 7, IoU = 1/7;
#   enclosure (0, 0, 3, 3), |C| = 9: GIoU = 1/7 - (9 - 7)/9 = 1/7 - 2/9;
#   centres (1, 1), (2, 2): rho^2 = 2, c^2 = 3^2 + 3^2 = 18: DIoU = 1/7 - 2/18;
#   both square, so v = 0 and CIoU = DIoU.
# a = (0, 0, 4, 2) encloses b = (0, 0, 2, 2): I = 4, U = 8, IoU = 1/2; C = a: GIoU = 1/2;
#   centres (2, 1), (1, 1): rho^2 = 1, c^2 = 16 + 4 = 20: DIoU = 1/2 - 1/20 = 0.45;
#   v = 4/pi^2 (atan(2/2) - atan(4/2))^2, alpha = v / (1 - 1/2 + v): CIoU = 0.45 - alpha v.
# a = (0, 0, 1, 1), b = (2, 0, 3, 1) disjoint: I = 0, U = 2, IoU = 0; C = (0, 0, 3, 1), |C| = 3:
#   GIoU = -(3 - 2)/3 = -1/3; centres (0.5, 0.5), (2.5, 0.5): rho^2 = 4, c^2 = 9 + 1 = 10:
#   DIoU = -0.4 = CIoU (both square).
# identical (1, 2, 4, 6): every variant is 1.
_V = 4 / math.pi**2 * (math.pi / 4 - math.atan(2.0)) ** 2
HAND = [
    (
        (0, 0, 2, 2),
        (1, 1, 3, 3),
        {"iou": 1 / 7, "giou": 1 / 7 - 2 / 9, "diou": 1 / 7 - 1 / 9, "ciou": 1 / 7 - 1 / 9},
    ),
    (
        (0, 0, 4, 2),
        (0, 0, 2, 2),
        {"iou": 0.5, "giou": 0.5, "diou": 0.45, "ciou": 0.45 - _V / (0.5 + _V) * _V},
    ),
    ((0, 0, 1, 1), (2, 0, 3, 1), {"iou": 0.0, "giou": -1 / 3, "diou": -0.4, "ciou": -0.4}),
    ((1, 2, 4, 6), (1, 2, 4, 6), {"iou": 1.0, "giou": 1.0, "diou": 1.0, "ciou": 1.0}),
]


@pytest.mark.parametrize("a, b, expected", HAND)
@pytest.mark.parametrize("mode", MODES)
def test_hand_worked_values(a, b, expected, mode):
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    assert box_iou(ta, tb, mode=mode).item() == pytest.approx(expected[mode], abs=1e-6)
    assert box_iou(ta, tb, mode=mode, aligned=True).item() == pytest.approx(expected[mode], abs=1e-6)


# ---------------------------------------------------------------- against torchvision
@pytest.mark.parametrize("mode", MODES)
def test_pairwise_matches_torchvision(mode):
    a, b = random_boxes(97, 0), random_boxes(53, 1)
    a[:20] = b[:20] + 0.5  # some heavily overlapping pairs
    torch.testing.assert_close(box_iou(a, b, mode=mode), TV_PAIRWISE[mode](a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("budget", [7 * 13, 5])  # 7-row chunks (50 = 7 * 7 + 1, ragged); less than a row
def test_pairwise_chunk_boundaries_match_torchvision(mode, budget, monkeypatch):
    a, b = random_boxes(50, 2), random_boxes(13, 3)
    monkeypatch.setattr(B, "PAIRWISE_CHUNK_ELEMS", budget)
    torch.testing.assert_close(box_iou(a, b, mode=mode), TV_PAIRWISE[mode](a, b), rtol=1e-5, atol=1e-6)


def test_pairwise_batched_and_empty():
    a, b = random_boxes(24, 4).view(2, 12, 4), random_boxes(10, 5).view(2, 5, 4)
    out = box_iou(a, b, mode="giou")
    assert out.shape == (2, 12, 5)
    for i in range(2):
        torch.testing.assert_close(out[i], tv.generalized_box_iou(a[i], b[i]), rtol=1e-5, atol=1e-6)
    assert box_iou(torch.zeros(0, 4), b[0]).shape == (0, 5)
    assert box_iou(a[0], torch.zeros(0, 4)).shape == (12, 0)


@pytest.mark.parametrize("mode", MODES)
def test_aligned_is_diagonal_of_pairwise(mode):
    a, b = random_boxes(40, 6), random_boxes(40, 7)
    a[:10] = b[:10] * 1.01
    torch.testing.assert_close(box_iou(a, b, mode=mode, aligned=True), box_iou(a, b, mode=mode).diagonal())
    # leading dims and broadcasting: (2, 20, 4) vs (2, 20, 4) and (20, 4) vs (1, 4)
    torch.testing.assert_close(
        box_iou(a.view(2, 20, 4), b.view(2, 20, 4), mode=mode, aligned=True),
        box_iou(a, b, mode=mode).diagonal().view(2, 20),
    )
    torch.testing.assert_close(box_iou(a[:20], b[:1], mode=mode, aligned=True), box_iou(a[:20], b[:1], mode=mode)[:, 0])


# ---------------------------------------------------------------- memory: chunked pairwise
# Run in a fresh interpreter: the allocator keeps freed memory, so a peak measured inside pytest
# depends on the tests before it. Prints the peak resident growth while box_iou runs, in MiB.
_PEAK_SCRIPT = """
import re, sys
from pathlib import Path
import torch
import torchvision.ops as tv
import detlosses.boxes as B
status = Path("/proc/self/status")
kib = lambda key: int(re.search(key + r":\\s+(\\d+) kB", status.read_text()).group(1))
g = torch.Generator().manual_seed(8)
xy = torch.rand(N + M, 2, generator=g) * 1000
boxes = torch.cat((xy, xy + torch.rand(N + M, 2, generator=g) * 500 + 1), dim=1)
a, b = boxes[:N], boxes[N:]
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
before = kib("VmRSS")
with torch.no_grad():
    out = B.box_iou(a, b, mode="ciou")
growth = (kib("VmHWM") - before) / 1024
rows = torch.tensor([0, 523, 524, N // 2, N - 1])  # rows across chunk boundaries
torch.testing.assert_close(out[rows], tv.complete_box_iou(a[rows], b), rtol=1e-5, atol=1e-6)
print(growth, out.numel() * 4 / 2**20, B.PAIRWISE_CHUNK_ELEMS * 4 / 2**20)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_large_pairwise_runs_in_bounded_memory():
    # 8000 x 2000 CIoU, 61 MiB output: unchunked, the formula's pair temporaries peak ~740 MiB above it
    # (measured); chunked, each holds <= PAIRWISE_CHUNK_ELEMS elements (4 MiB), ~70 MiB in all
    script = "N, M = 8000, 2000\n" + _PEAK_SCRIPT
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    growth, out_mib, chunk_mib = map(float, run.stdout.split())
    assert growth < out_mib + 40 * chunk_mib, (growth, out_mib)


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_computed_in_float32(mode, dtype):
    # coordinates around 1e4: areas ~1e7 overflow fp16 (max 65504) unless cast to float32
    a = (random_boxes(64, 10, scale=2000) + 9000).to(dtype)
    b = (a.float() + torch.randn(64, 4, generator=torch.Generator().manual_seed(1)) * 50).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        out = box_iou(a, b, mode=mode, aligned=True)
        pair = box_iou(a, b, mode=mode)
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(pair).all()
    ref = box_iou(a.float(), b.float(), mode=mode, aligned=True)  # same rounded inputs, fp32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-3)


def test_float64_stays_float64():
    a = random_boxes(5, 11, dtype=torch.float64)
    assert box_iou(a, a).dtype == torch.float64


DEGENERATE = [
    ((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),  # two points at the same place
    ((5.0, 5.0, 5.0, 9.0), (1.0, 1.0, 8.0, 8.0)),  # zero width
    ((4.0, 4.0, 1.0, 1.0), (0.0, 0.0, 5.0, 5.0)),  # inverted
    ((4.0, 4.0, 1.0, 1.0), (6.0, 6.0, 2.0, 2.0)),  # both inverted
    ((1.0, 1.0, 3.0, 3.0), (1.0, 1.0, 3.0, 3.0)),  # identical
    ((0.0, 0.0, 1.0, 1.0), (10.0, 10.0, 11.0, 11.0)),  # disjoint
    ((0.0, 0.0, 10.0, 10.0), (2.0, 3.0, 4.0, 5.0)),  # enclosing
]


@pytest.mark.parametrize("mode", MODES)
def test_degenerate_boxes_finite_values_and_gradients(mode):
    a = torch.tensor([d[0] for d in DEGENERATE], requires_grad=True)
    b = torch.tensor([d[1] for d in DEGENERATE], requires_grad=True)
    out = box_iou(a, b, mode=mode, aligned=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert torch.isfinite(box_iou(a.detach(), b.detach(), mode=mode)).all()
    # inverted boxes count as empty: IoU 0 with anything
    assert out[2].item() <= 1e-6 and box_iou(a[2:3], b[2:3]).item() == 0


# ---------------------------------------------------------------- point / distance encoding
def test_distance2bbox_hand_values_and_clamp():
    points = torch.tensor([[10.0, 20.0], [2.0, 3.0]])
    dist = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 100.0, 100.0]])
    # (x - l, y - t, x + r, y + b)
    expected = torch.tensor([[9.0, 18.0, 13.0, 24.0], [-3.0, -2.0, 102.0, 103.0]])
    torch.testing.assert_close(distance2bbox(points, dist), expected)
    # max_shape (h, w) = (50, 60): x in [0, 60], y in [0, 50]
    clamped = torch.tensor([[9.0, 18.0, 13.0, 24.0], [0.0, 0.0, 60.0, 50.0]])
    torch.testing.assert_close(distance2bbox(points, dist, max_shape=(50, 60)), clamped)


def test_bbox2distance_round_trip_and_dfl_clamp():
    g = torch.Generator().manual_seed(12)
    points = torch.rand(100, 2, generator=g) * 50
    dist = torch.rand(100, 4, generator=g) * 15
    torch.testing.assert_close(bbox2distance(points, distance2bbox(points, dist)), dist, rtol=0, atol=1e-5)
    # point (5, 5), box (0, 2, 30, 4): l = 5, t = 3, r = 25, b = -1 -> clamp to [0, 16 - 0.01]
    d = bbox2distance(torch.tensor([[5.0, 5.0]]), torch.tensor([[0.0, 2.0, 30.0, 4.0]]), max_dis=16)
    torch.testing.assert_close(d, torch.tensor([[5.0, 3.0, 15.99, 0.0]]))
    unclamped = bbox2distance(torch.tensor([[5.0, 5.0]]), torch.tensor([[0.0, 2.0, 30.0, 4.0]]))
    torch.testing.assert_close(unclamped, torch.tensor([[5.0, 3.0, 25.0, -1.0]]))
    # broadcasting: anchor points (A, 2) against boxes (B, A, 4), fp16 upcast
    boxes = distance2bbox(points, dist).expand(3, 100, 4).half()
    assert bbox2distance(points, boxes).shape == (3, 100, 4) and bbox2distance(points, boxes).dtype == torch.float32


# ---------------------------------------------------------------- box_convert
# xyxy (1, 2, 5, 8): width 5 - 1 = 4, height 8 - 2 = 6, centre ((1 + 5) / 2, (2 + 8) / 2) = (3, 5)
BOX_FORMS = {"xyxy": (1.0, 2.0, 5.0, 8.0), "xywh": (1.0, 2.0, 4.0, 6.0), "cxcywh": (3.0, 5.0, 4.0, 6.0)}


@pytest.mark.parametrize("in_fmt", B.BOX_FORMATS)
@pytest.mark.parametrize("out_fmt", B.BOX_FORMATS)
def test_box_convert_hand_values(in_fmt, out_fmt):
    boxes = torch.tensor([BOX_FORMS[in_fmt]] * 2).view(2, 1, 4)  # leading dims are kept
    expected = torch.tensor([BOX_FORMS[out_fmt]] * 2).view(2, 1, 4)
    torch.testing.assert_close(box_convert(boxes, in_fmt, out_fmt), expected, rtol=0, atol=0)


def test_box_convert_low_precision_computes_in_float32():
    # fp16 xyxy (32768, 32000, 33024, 33504), exact in fp16: x1 + x2 = 65792 overflows fp16 (max 65504),
    # so an fp16 computation gives cx = inf; in float32: cx = 32896, cy = 65504 / 2 = 32752, w = 256, h = 1504
    box = torch.tensor([[32768.0, 32000.0, 33024.0, 33504.0]], dtype=torch.float16)
    out = box_convert(box, "xyxy", "cxcywh")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[32896.0, 32752.0, 256.0, 1504.0]]), rtol=0, atol=0)
    # fp16 cxcywh (40000, 40000, 30000, 30000) -> xyxy (25000, 25000, 55000, 55000): exact in float32,
    # while fp16 arithmetic rounds 25000 and 55000 to multiples of 16 and 32 (24992, 55008)
    big = torch.tensor([[40000.0, 40000.0, 30000.0, 30000.0]], dtype=torch.float16)
    torch.testing.assert_close(
        box_convert(big, "cxcywh", "xyxy"), torch.tensor([[25000.0, 25000.0, 55000.0, 55000.0]]), rtol=0, atol=0
    )
    assert box_convert(big.bfloat16(), "cxcywh", "xywh").dtype == torch.float32
    assert box_convert(box.double(), "xyxy", "xywh").dtype == torch.float64


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: box_iou(torch.zeros(3, 3), torch.zeros(2, 4)), "boxes1"),
        (lambda: box_iou(torch.zeros(3, 4), torch.zeros(2, 5)), "boxes2"),
        (lambda: box_iou(torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, 4)), "boxes1"),
        (lambda: box_iou(torch.zeros(3, 4), torch.zeros(2, 4), mode="eiou"), "mode"),
        (lambda: box_iou(torch.zeros(3, 4), torch.zeros(2, 4), aligned=True), "boxes1 and boxes2"),
        (lambda: box_iou(torch.zeros(4), torch.zeros(2, 4)), "boxes1"),
        (lambda: box_convert(torch.zeros(2, 4), "xyxy", "yxyx"), "out_fmt"),
        (lambda: box_convert(torch.zeros(2, 4), "xywhr", "xyxy"), "in_fmt"),
        (lambda: box_convert(torch.zeros(2, 5), "xyxy", "xywh"), "boxes"),
        (lambda: distance2bbox(torch.zeros(2, 3), torch.zeros(2, 4)), "points"),
        (lambda: distance2bbox(torch.zeros(2, 2), torch.zeros(2, 2)), "distance"),
        (lambda: distance2bbox(torch.zeros(3, 2), torch.zeros(2, 4)), "points"),
        (
            lambda: distance2bbox(torch.zeros(2, 2), torch.zeros(2, 4), max_shape=(1, 2, 3)),
            "max_shape",
        ),
        (lambda: bbox2distance(torch.zeros(2, 2), torch.zeros(2, 3)), "bbox"),
        (lambda: bbox2distance(torch.zeros(2, 2), torch.zeros(2, 4), max_dis=0.001), "max_dis"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
