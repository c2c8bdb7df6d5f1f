"""Inputs shared by the peer golden-value scripts (``tools/peer_golden_*.py``) and their tests.

The same head outputs and targets go to a peer's real loss code and to ours: classification
logits (B, A, C), distribution logits (B, A, 4, n_bins) and per-image GT boxes and labels,
on the anchor points of strides 8/16/32. They are made from a seed with ``torch.rand`` on a
seeded ``torch.Generator`` only (the Mersenne Twister stream of the CPU generator), so a test
rebuilds them without storing them; ``input_checksum`` guards against a changed generator.

Images of a case, by position in the batch: 0 ordinary boxes, 1 no GT, 2 a crowded cluster
of overlapping boxes (anchors claimed by several GTs), 3 small boxes (sides under 16 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Case:
    """One random case: a seed, a batch size (2-4), classes, image side, GT boxes per image."""

    seed: int
    batch: int
    num_classes: int
    image_size: int
    num_gt: int  # boxes of images 0, 2 and 3 (image 1 has none)

    @property
    def name(self) -> str:
        return f"s{self.seed}_b{self.batch}_c{self.num_classes}_{self.image_size}px_g{self.num_gt}"


CASES = (
    Case(0, 2, 5, 320, 6),
    Case(1, 3, 20, 320, 30),
    Case(2, 4, 80, 640, 30),
    Case(3, 4, 12, 320, 12),
    Case(4, 3, 80, 640, 18),
)


def anchor_grid(image_size: int, offset: float) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Anchor points (A, 2) in pixels (cell corner + ``offset`` cells), strides (A,), points per level."""
    points, strides, counts = [], [], []
    for s in STRIDES:
        n = image_size // s
        c = (torch.arange(n, dtype=torch.float32) + offset) * s
        ys, xs = torch.meshgrid(c, c, indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()], -1))
        strides.append(torch.full((n * n,), float(s)))
        counts.append(n * n)
    return torch.cat(points), torch.cat(strides), counts


def _boxes(gen: torch.Generator, n: int, size: int, kind: str) -> torch.Tensor:
    u = torch.rand(n, 4, generator=gen)
    if kind == "crowded":  # a cluster: centres within 40 px of one point, sides 24-120 px
        centre = size * 0.3 + u[:, :2] * 80
        side = 24 + u[:, 2:] * 96
    elif kind == "small":  # sides 3-15 px
        centre = 8 + u[:, :2] * (size - 16)
        side = 3 + u[:, 2:] * 12
    else:  # log-uniform sides 6 px - size / 2
        centre = u[:, :2] * size
        side = 6 * (size / 12) ** u[:, 2:]
    boxes = torch.cat([centre - side / 2, centre + side / 2], -1).clamp(0, size)
    return boxes


def make_inputs(case: Case, n_bins: int, offset: float = 0.5) -> dict:
    """Head outputs and targets of a case.

    Returns a dict: ``points`` (A, 2), ``strides`` (A,), ``level_sizes`` (points per level),
    ``cls_logits`` (B, A, C), ``dist_logits`` (B, A, 4, n_bins) peaked around 0.3-5 bins (log-probabilities above -40),
    ``boxes`` / ``labels``: lists of B tensors (n_i, 4) xyxy pixels and (n_i,) long.
    """
    gen = torch.Generator().manual_seed(case.seed)
    points, strides, level_sizes = anchor_grid(case.image_size, offset)
    a, b, c = points.shape[0], case.batch, case.num_classes
    cls_logits = (torch.rand(b, a, c, generator=gen) - 0.7) * 8
    centre = 0.3 + torch.rand(b, a, 4, 1, generator=gen) * 4.7  # bins
    bins = torch.arange(n_bins, dtype=torch.float32)
    dist_logits = -((bins - centre) ** 2) / 8 + torch.rand(b, a, 4, n_bins, generator=gen) - 0.5
    boxes, labels = [], []
    for i in range(b):
        kind = ("plain", "none", "crowded", "small")[i]
        n = 0 if kind == "none" else case.num_gt
        boxes.append(_boxes(gen, n, case.image_size, kind))
        labels.append((torch.rand(n, generator=gen) * c).long().clamp(max=c - 1))
    return {
        "points": points,
        "strides": strides,
        "level_sizes": level_sizes,
        "cls_logits": cls_logits,
        "dist_logits": dist_logits,
        "boxes": boxes,
        "labels": labels,
    }


def input_checksum(inputs: dict) -> float:
    """A float64 sum over every generated value (a changed generator changes it)."""
    total = inputs["cls_logits"].double().sum() + inputs["dist_logits"].double().sum()
    total += sum(b.double().sum() for b in inputs["boxes"]) + sum(x.double().sum() for x in inputs["labels"])
    return float(total)


def decode(points: torch.Tensor, strides: torch.Tensor, dist_logits: torch.Tensor) -> torch.Tensor:
    """(B, A, 4) xyxy pixel boxes: softmax expectation of the bins (in strides) about each point."""
    bins = torch.arange(dist_logits.shape[-1], dtype=torch.float32)
    dist = dist_logits.softmax(-1) @ bins * strides[:, None]  # (B, A, 4)
    return torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)


def export(path: str, n_bins: int, offset: float) -> None:
    """Write every case's inputs as numpy arrays to ``path`` (.npz), for a peer without torch."""
    import json

    import numpy as np

    arrays = {"cases": np.array(json.dumps([case.__dict__ for case in CASES]))}
    for case in CASES:
        x = make_inputs(case, n_bins, offset)
        arrays[f"{case.name}/checksum"] = np.array(input_checksum(x))
        for key in ("points", "strides", "cls_logits", "dist_logits"):
            arrays[f"{case.name}/{key}"] = x[key].numpy()
        for i, (boxes, labels) in enumerate(zip(x["boxes"], x["labels"], strict=True)):
            arrays[f"{case.name}/boxes{i}"] = boxes.numpy()
            arrays[f"{case.name}/labels{i}"] = labels.numpy()
    np.savez(path, **arrays)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="export the seeded cases' inputs as .npz")
    parser.add_argument("path")
    parser.add_argument("--bins", type=int, required=True)
    parser.add_argument("--offset", type=float, required=True)
    args = parser.parse_args()
    export(args.path, args.bins, args.offset)
