"""TIDE error breakdown, confusion matrix and F1-optimal thresholds of detlosses.evaluation.

References: the ``tidecv`` package's own figures, stored by tools/tide_golden.py in
tests/data/tide/golden.json (on the real COCO val2014 sample and on a generated set with
planted errors), and small cases worked out by hand below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detlosses.evaluation import (
    ERROR_NAMES,
    best_f1_thresholds,
    coco_evaluate,
    confusion_matrix,
    load_ground_truth,
    tide_errors,
    validate_predictions,
)
from lightning_modules.eval_cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / ".." / "shared" / "data" / "coco_val2014_100"
if not SAMPLE.is_dir():  # a clone without shared/ beside it: the copy in the repo
    SAMPLE = REPO / "tests" / "data" / "coco_val2014_100"
SAMPLE_GT = SAMPLE / "instances_val2014_100.json"
SAMPLE_RESULTS = SAMPLE / "instances_val2014_fakebbox100_results.json"
TIDE = REPO / "tests" / "data" / "tide"
GOLDEN = json.loads((TIDE / "golden.json").read_text())
TOL = 0.01  # dAP points


def _tide(gt, results):
    dataset = load_ground_truth(gt)
    detections, problems = validate_predictions(results, dataset)
    assert problems == []
    return tide_errors(dataset, detections)


def _assert_equals_tidecv(errors, golden: dict) -> None:
    assert abs(errors.ap - golden["ap"]) < TOL
    for name in ERROR_NAMES:
        assert abs(errors.main[name] - golden["main"][name]) < TOL, (name, errors.main[name], golden["main"][name])
    for name in ("fp", "fn"):
        assert abs(errors.special[name] - golden["special"][name]) < TOL, name
    assert errors.counts == golden["counts"]


def test_real_sample_equals_tidecv_through_the_cli(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["--gt", str(SAMPLE_GT), "--pred", str(SAMPLE_RESULTS), "--errors", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "TIDE errors" in printed and "Best-F1 score threshold" in printed
    report = json.loads(out.read_text())
    golden = GOLDEN["coco_val2014_100"]
    assert set(report["errors"]["main"]) == set(ERROR_NAMES) and set(report["errors"]["special"]) == {"fp", "fn"}
    for name in ERROR_NAMES:
        assert abs(report["errors"]["main"][name] - golden["main"][name]) < TOL, name
    for name in ("fp", "fn"):
        assert abs(report["errors"]["special"][name] - golden["special"][name]) < TOL, name
    confusion = report["confusion"]
    assert confusion["classes"][-1] == "background" and len(confusion["matrix"]) == len(confusion["classes"])
    assert (confusion["iou_thr"], confusion["score_thr"]) == (0.5, 0.25)
    assert set(report["best_f1"]["person"]) == {"score_thr", "precision", "recall", "f1"}


def test_planted_errors_equal_tidecv_each_in_its_column():
    golden = GOLDEN["planted"]
    errors = _tide(TIDE / "planted_gt.json", TIDE / "planted_results.json")
    _assert_equals_tidecv(errors, golden)
    # every planted kind is counted in its own column, exactly as planted (tools/tide_golden.py)
    assert errors.counts == golden["planted_counts"]
    assert all(errors.main[name] > 0.05 for name in ERROR_NAMES)


# Hand-made cases: classes cat (1) and dog (2); GT A cat, B dog, C cat, each found by one
# detection (a 0.9, b 0.8, c 0.3), so the base mAP is 100. Each case plants one error.
A, B, C = [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 10.0, 10.0], [40.0, 0.0, 10.0, 10.0]
BASE = [(1, A, 0.9), (2, B, 0.8), (1, C, 0.3)]
# cat with a false positive ranked between its two hits: P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1
# -> 51 recall points at precision 1, 50 at 2/3
CAT_WITH_FP_BETWEEN = (51 + 50 * 2 / 3) / 101 * 100
CASES = {
    "dupe": ([(1, [1.0, 0.0, 10.0, 10.0], 0.5)], 100 - (CAT_WITH_FP_BETWEEN + 100) / 2),
    "bkg": ([(1, [100.0, 100.0, 10.0, 10.0], 0.5)], 100 - (CAT_WITH_FP_BETWEEN + 100) / 2),
    "loc": ([(1, [45.0, 0.0, 10.0, 10.0], 0.5)], 100 - (CAT_WITH_FP_BETWEEN + 100) / 2),  # IoU 1/3 with C
    "cls": ([(2, C, 0.95)], 100 - (100 + 50) / 2),  # dog: a false positive above its hit -> AP 50
    "both": ([(2, [45.0, 0.0, 10.0, 10.0], 0.95)], 100 - (100 + 50) / 2),
}


def _hand_case(extra: list, drop_c: bool = False) -> tuple[dict, list[dict]]:
    dataset = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": cat, "bbox": box, "area": 100.0, "iscrowd": 0}
            for i, (cat, box) in enumerate([(1, A), (2, B), (1, C)])
        ],
    }
    dets = [(c, b, s) for c, b, s in BASE if not (drop_c and b is C)] + extra
    return dataset, [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]


@pytest.mark.parametrize("kind", [*CASES, "miss"])
def test_one_planted_error_lights_only_its_column(kind):
    if kind == "miss":  # C has no detection: cat recall 1/2 at precision 1 -> AP 51/101
        dataset, results = _hand_case([], drop_c=True)
        expected = 100 - (51 / 101 * 100 + 100) / 2
    else:
        dataset, results = _hand_case(CASES[kind][0])
        expected = CASES[kind][1]
    errors = _tide(dataset, results)
    assert errors.counts == {name: int(name == kind) for name in ERROR_NAMES}
    for name in ERROR_NAMES:
        assert errors.main[name] == pytest.approx(expected if name == kind else 0.0, abs=1e-9), name


def test_both_error_also_misses_its_box():
    # a wrong-class, badly placed detection and no detection of dog B: B is a miss, not a loc
    dataset, results = _hand_case([(1, [25.0, 0.0, 10.0, 10.0], 0.95)])  # cat on B: IoU 1/3, other class
    results = [r for r in results if r["category_id"] != 2]  # B (dog) has no detection
    errors = _tide(dataset, results)
    assert errors.counts["both"] == 1 and errors.counts["miss"] == 1


def test_base_ap_and_special_errors_by_hand():
    # the cls case: cat 100, dog AP 50 -> 75; fp: the dog false positive below its hit -> 100;
    # fn: no false negative -> 0
    dataset, results = _hand_case(CASES["cls"][0])
    errors = _tide(dataset, results)
    assert errors.ap == pytest.approx(75.0)
    assert errors.special == pytest.approx({"fp": 25.0, "fn": 0.0})


# ------------------------------------------------------------------------------------------
# Confusion matrix, worked out by hand


def _confusion_case() -> tuple[dict, list[dict]]:
    dataset = {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": A, "area": 100.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": B, "area": 100.0, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": C, "area": 100.0, "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0.0, 50.0, 100.0, 50.0], "area": 5000.0, "iscrowd": 1},
            {"id": 5, "image_id": 2, "category_id": 2, "bbox": [0.0, 0.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
        ],
    }
    dets = [
        (1, A, 0.9),  # cat on cat A                         -> [cat, cat]
        (1, B, 0.8),  # cat on dog B (IoU 1)                 -> [dog, cat]
        (2, [21.0, 0.0, 10.0, 10.0], 0.7),  # dog on B too (IoU 0.82), B already paired -> [bg, dog]
        (2, [60.0, 0.0, 10.0, 10.0], 0.6),  # dog on nothing   -> [bg, dog]
        (1, [10.0, 60.0, 10.0, 10.0], 0.9),  # inside the crowd region: ignored
        (1, C, 0.1),  # below the score threshold: C is missed -> [cat, bg]
    ]  # image 2: dog box without detection -> [dog, bg]
    return dataset, [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]


def test_confusion_matrix_counts_by_hand():
    dataset, results = _confusion_case()
    matrix = confusion_matrix(load_ground_truth(dataset), results, iou_thr=0.5, score_thr=0.25)
    assert matrix.classes == ["cat", "dog", "background"]
    #                 predicted: cat dog bg
    assert matrix.matrix.tolist() == [
        [1, 0, 1],  # ground truth cat
        [1, 0, 1],  # ground truth dog
        [0, 2, 0],
    ]  # background
    lower = confusion_matrix(load_ground_truth(dataset), results, iou_thr=0.5, score_thr=0.05)
    assert lower.matrix.tolist() == [[2, 0, 0], [1, 0, 1], [0, 2, 0]]  # C now found
    # pairs go by IoU, not by score: at IoU 0.9 the dog detection on B (IoU 0.82) pairs nothing
    strict = confusion_matrix(load_ground_truth(dataset), results, iou_thr=0.9, score_thr=0.25)
    assert strict.matrix.tolist() == [[1, 0, 1], [1, 0, 1], [0, 2, 0]]
    assert strict.to_dict() == {
        "classes": ["cat", "dog", "background"],
        "matrix": strict.matrix.tolist(),
        "iou_thr": 0.9,
        "score_thr": 0.25,
    }


def test_confusion_matrix_png(tmp_path, capsys):
    dataset, results = _confusion_case()
    gt, pred = tmp_path / "gt.json", tmp_path / "results.json"
    gt.write_text(json.dumps(dataset))
    pred.write_text(json.dumps(results))
    code = main(["--gt", str(gt), "--pred", str(pred), "--errors", "--plots", str(tmp_path / "plots")])
    assert code == 0 and "Wrote the confusion matrix" in capsys.readouterr().out
    assert (tmp_path / "plots" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_f1_threshold_by_hand():
    # one class, 4 boxes; detections by score: hit, miss, hit, hit, miss
    boxes = [[float(20 * i), 0.0, 10.0, 10.0] for i in range(4)]
    dataset = load_ground_truth(
        {
            "images": [{"id": 1}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)],
        }
    )
    far = [150.0, 150.0, 10.0, 10.0]
    dets = [(boxes[0], 0.9), (far, 0.8), (boxes[1], 0.7), (boxes[2], 0.6), (far, 0.5)]
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s} for b, s in dets]
    # F1 at t = 0.9, 0.8, 0.7, 0.6, 0.5: 0.4, 1/3, 4/7, 0.75, 2/3 -> t = 0.6, P = R = 0.75
    best = best_f1_thresholds(dataset, results, tide_errors(dataset, results))
    assert list(best) == ["cat"]  # dog has no ground truth
    assert best["cat"] == pytest.approx({"score_thr": 0.6, "precision": 0.75, "recall": 0.75, "f1": 0.75})
    report = coco_evaluate(dataset, results, errors=True)
    assert report.best_f1 == best and report.to_dict()["best_f1"] == best


def test_empty_predictions_everything_missed():
    # tidecv divides by zero here (no class left once the misses are fixed); we report 0 dAP
    dataset = load_ground_truth(SAMPLE_GT)
    report = coco_evaluate(dataset, [], errors=True)
    non_crowd = sum(not a["iscrowd"] for a in dataset["annotations"])
    assert report.errors.counts == {**dict.fromkeys(ERROR_NAMES, 0), "miss": non_crowd}
    assert report.errors.ap == 0.0 and report.confusion.matrix[:-1, -1].sum() == non_crowd
    assert all(row["score_thr"] is None for row in report.best_f1.values())
