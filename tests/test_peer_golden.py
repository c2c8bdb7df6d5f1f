"""Recipes against golden values made by the peers' real code (no peer installed here).

``tools/peer_golden_mmdet.py`` (mmdetection 3.3 TOODHead / GFLHead),
``tools/peer_golden_yolov8.py`` (ultralytics 8.4.190 v8DetectionLoss) and
``tools/peer_golden_ppyoloe.py`` (PaddleDetection 2.6 PPYOLOEHead) ran each peer on the
seeded cases of ``tools/peer_golden_common.py``: B 2-4, 5-80 classes, 320 and 640 px,
strides 8/16/32, an image without GT, a crowded cluster and boxes under 16 px. Here the
same inputs are rebuilt from their seeds and go through ``DetectionCriterion.from_recipe``:
every term (cls, box, dfl, total) must equal the peer's within 1e-4 relative and the
assignment (foreground anchors, their GT, their target score) must equal the peer's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from detlosses import DetectionCriterion
from detlosses.criterion import pad_targets
from tools.peer_golden_common import Case, decode, input_checksum, make_inputs

DATA = Path(__file__).parent / "data" / "peers"

# fixture -> (recipe, reg_max, bins, anchor offset in cells, warm-up epochs, epoch)
FIXTURES = {
    "yolov8": ("yolov8", 15, 16, 0.5, 0, 0),
    "tood": ("tood", 16, 17, 0.0, 0, 0),
    "tood_warmup": ("tood", 16, 17, 0.0, 4, 0),
    "gfl": ("gfl", 16, 17, 0.0, 0, 0),
    "ppyoloe": ("ppyoloe", 16, 17, 0.5, 0, 0),
    "ppyoloe_warmup": ("ppyoloe", 16, 17, 0.5, 100, 0),
}
AVAILABLE = [name for name in FIXTURES if (DATA / f"{name}.json").exists()]


@functools.cache
def _run_cached(fixture: str, index: int):
    return _run(fixture, _cases(fixture)[index])


def _run(fixture: str, case_data: dict, **overrides):
    recipe, reg_max, n_bins, offset, warmup_epochs, epoch = FIXTURES[fixture]
    case = Case(**case_data["case"])
    x = make_inputs(case, n_bins, offset)
    assert input_checksum(x) == pytest.approx(case_data["input_checksum"], rel=1e-9)  # same generator
    b, a, c = x["cls_logits"].shape
    targets = [
        {"boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4), "labels": labels}
        for boxes, labels in zip(case_data["gt_boxes"], x["labels"], strict=True)
    ]
    box_preds = decode(x["points"], x["strides"], x["dist_logits"])
    crit = DetectionCriterion.from_recipe(recipe, c, reg_max=reg_max, warmup_epochs=warmup_epochs, **overrides)
    crit.set_epoch(epoch)
    dist_logits = x["dist_logits"].reshape(b, a, -1)
    out = crit(x["cls_logits"], box_preds, dist_logits, x["points"], x["strides"], targets)
    gt_labels, gt_bboxes, gt_mask = pad_targets(targets, c, torch.device("cpu"))
    res = crit.active_assigner(
        x["cls_logits"].sigmoid(), box_preds, x["points"], gt_labels, gt_bboxes, gt_mask, strides=x["strides"]
    )
    return out, res


@functools.cache
def _cases(name: str) -> list[dict]:
    return json.loads((DATA / f"{name}.json").read_text())["cases"]


def test_fixtures_are_small_and_present():
    assert set(AVAILABLE) == set(FIXTURES), f"missing fixtures: {set(FIXTURES) - set(AVAILABLE)}"
    assert sum(p.stat().st_size for p in DATA.glob("*.json")) < 1_000_000


@pytest.mark.parametrize("fixture", AVAILABLE)
def test_recipe_terms_equal_the_peer(fixture):
    for index, case_data in enumerate(_cases(fixture)):
        out, _ = _run_cached(fixture, index)
        peer = case_data["terms"]
        got = {"cls": out["loss_cls"], "box": out["loss_box"], "dfl": out["loss_dfl"], "total": out["loss"]}
        for term, want in peer.items():
            assert float(got[term]) == pytest.approx(want, rel=1e-4, abs=1e-9), (case_data["name"], term)


@pytest.mark.parametrize("fixture", AVAILABLE)
def test_assignment_equals_the_peer(fixture):
    for index, case_data in enumerate(_cases(fixture)):
        _, res = _run_cached(fixture, index)
        peer = case_data["assignment"]
        slot = res.fg_mask.flatten().nonzero().flatten()
        assert slot.tolist() == sorted(peer["slot"]), case_data["name"]  # the peer lists them in order
        order = torch.tensor(peer["slot"]).argsort()
        gt_index = torch.tensor(peer["gt_index"])[order]
        assert torch.equal(res.gt_index.flatten()[slot], gt_index), case_data["name"]
        if "score" in peer:  # scores go through overlap**6: two IoU codes differ by ~1e-7 relative
            score = torch.tensor(peer["score"], dtype=torch.float32)[order]
            torch.testing.assert_close(res.scores.sum(-1).flatten()[slot], score, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize(
    ("fixture", "overrides"),
    [
        ("yolov8", {"assigner": {"type": "TaskAlignedAssigner", "topk": 10, "alpha": 0.5, "iou_type": "ciou"}}),
        ("tood", {"assigner": {"type": "TaskAlignedAssigner", "eps": 1e-7, "inside_margin": 0.01}}),
        ("ppyoloe", {"assigner": {"type": "TaskAlignedAssigner"}}),
        ("gfl", {"cls_normalizer": "num_pos", "dfl_target_margin": 0.01}),
    ],
    ids=["yolov8-claimants-no-growth", "tood-inside-first", "ppyoloe-claimants", "gfl-old-normaliser"],
)
def test_the_cases_tell_the_variants_apart(fixture, overrides):
    # the previous (non-peer) settings miss at least one case: the fixtures exercise the variant
    for case_data in _cases(fixture):
        out, _ = _run(fixture, case_data, **overrides)
        if any(
            float(out[key]) != pytest.approx(case_data["terms"][term], rel=1e-4)
            for key, term in (("loss_cls", "cls"), ("loss_box", "box"), ("loss_dfl", "dfl"))
        ):
            return
    pytest.fail(f"{overrides} reproduces {fixture} as well: the cases do not exercise the variant")
