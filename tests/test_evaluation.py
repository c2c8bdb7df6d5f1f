"""COCO evaluation (detlosses.evaluation, detlosses-eval) against pycocotools run right here.

The data are real: COCO val2014 annotations of 100 images and a results file of 734 boxes
(tests/data/coco_val2014_100). Every number is compared with pycocotools' own COCOeval.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlosses.evaluation import (
    STAT_NAMES,
    InvalidGroundTruthError,
    InvalidPredictionsError,
    coco_evaluate,
    load_ground_truth,
    plot_pr_curves,
    pr_curves,
    validate_predictions,
)
from lightning_modules.eval_cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "coco_val2014_100"
GT = DATA / "instances_val2014_100.json"
RESULTS = DATA / "instances_val2014_fakebbox100_results.json"
EXPECTED_AP = 0.5045806987249628  # pycocotools on this sample, stated in issue 5
BACKENDS = ("pycocotools", "faster")


def _pycocotools(gt: COCO, results: str | list, cat_ids: list[int] | None = None) -> COCOeval:
    """The reference: pycocotools' COCOeval, run step by step; summary printed to a buffer."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        printed.truncate(0)
        printed.seek(0)
        evaluator.summarize()
    evaluator.printed_summary = printed.getvalue()
    return evaluator


@pytest.fixture(scope="module")
def coco_gt() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(GT))


@pytest.fixture(scope="module")
def reference(coco_gt: COCO) -> COCOeval:
    return _pycocotools(coco_gt, str(RESULTS))


@pytest.fixture(scope="module")
def reports() -> dict:
    return {backend: coco_evaluate(GT, RESULTS, backend=backend) for backend in BACKENDS}


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return json.loads(RESULTS.read_text())


def _stats_of(evaluator: COCOeval) -> dict[str, float]:
    return dict(zip(STAT_NAMES, evaluator.stats.tolist(), strict=True))


def _assert_stats_close(ours: dict, theirs: dict, tol: float = 1e-12) -> None:
    assert list(ours) == list(STAT_NAMES)
    for name in STAT_NAMES:
        assert abs(ours[name] - theirs[name]) < tol, (name, ours[name], theirs[name])


# ------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_sample_stats_equal_pycocotools(reports, reference, backend):
    report = reports[backend]
    _assert_stats_close(report.stats, _stats_of(reference))
    assert abs(report.stats["AP"] - EXPECTED_AP) < 1e-12
    assert all(isinstance(value, float) for value in report.stats.values())
    # the accumulated arrays are pycocotools' too
    np.testing.assert_allclose(report.precision, reference.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(report.recall, reference.eval["recall"], rtol=0, atol=1e-12)
    assert report.num_predictions == 734 and report.num_dropped == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_summary_is_pycocotools_text(reports, reference, backend):
    assert reports[backend].summary + "\n" == reference.printed_summary


def test_per_class_matches_pycocotools_precision_array(reports, reference, coco_gt):
    precision = reference.eval["precision"]  # (T, R, K, A, M)
    recall = reference.eval["recall"]  # (T, K, A, M)
    t50 = list(reference.params.iouThrs).index(0.5)
    names = [coco_gt.cats[cid]["name"] for cid in reference.params.catIds]
    report = reports["pycocotools"]
    assert list(report.per_class) == names
    for k, name in enumerate(names):
        p_all = precision[:, :, k, 0, 2]  # area "all", maxDets 100
        p_50 = precision[t50, :, k, 0, 2]
        r_all = recall[:, k, 0, 2]
        expected = {
            "AP": p_all[p_all > -1].mean() if (p_all > -1).any() else -1.0,
            "AP50": p_50[p_50 > -1].mean() if (p_50 > -1).any() else -1.0,
            "AR100": r_all[r_all > -1].mean() if (r_all > -1).any() else -1.0,
        }
        for key, value in expected.items():
            assert abs(report.per_class[name][key] - value) < 1e-12, (name, key)
            assert abs(reports["faster"].per_class[name][key] - value) < 1e-12, (name, key)


@pytest.mark.parametrize("name", ["person", "airplane", "train", "fire hydrant"])
def test_per_class_equals_pycocotools_restricted_to_that_category(reports, coco_gt, name):
    # Independent route: pycocotools' own summarize() with params.catIds = [that category].
    # "fire hydrant" has no ground truth in the sample: pycocotools reports -1.
    cid = coco_gt.getCatIds(catNms=[name])[0]
    stats = _pycocotools(coco_gt, str(RESULTS), cat_ids=[cid]).stats
    row = reports["pycocotools"].per_class[name]
    assert abs(row["AP"] - stats[0]) < 1e-12
    assert abs(row["AP50"] - stats[1]) < 1e-12
    assert abs(row["AR100"] - stats[8]) < 1e-12
    if name == "fire hydrant":
        assert not coco_gt.getAnnIds(catIds=[cid]) and row == {"AP": -1, "AP50": -1, "AR100": -1}


def test_per_class_table_text(reports):
    table = reports["pycocotools"].format_per_class().splitlines()
    assert table[0].split() == ["category", "AP", "AP50", "AR100"]
    person = next(line for line in table if line.startswith("person "))
    row = reports["pycocotools"].per_class["person"]
    assert person.split()[1:] == [f"{row[key]:.3f}" for key in ("AP", "AP50", "AR100")]
    assert next(line for line in table if line.startswith("fire hydrant")).split()[2:] == ["-"] * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_as_objects_and_not_mutated(reference, coco_gt, results, backend):
    predictions = copy.deepcopy(results)
    report = coco_evaluate(coco_gt, predictions, backend=backend, classwise=False)
    _assert_stats_close(report.stats, _stats_of(reference))
    assert predictions == results  # loadRes writes "area", "id", ... into its input: not ours
    assert report.per_class == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_without_info(reference, backend):
    dataset = json.loads(GT.read_text())
    del dataset["info"]
    report = coco_evaluate(dataset, RESULTS, backend=backend)
    _assert_stats_close(report.stats, _stats_of(reference))
    assert "info" not in dataset  # the caller's dict is left alone


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions_give_zero(coco_gt, backend):
    # pycocotools' loadRes([]) raises IndexError. With no detections every category that has
    # ground truth has recall 0 and precision 0 at every threshold, so each stat is the mean
    # of zeros, 0 -- the sample has ground truth in every area range, so none is -1.
    areas = [ann["area"] for ann in coco_gt.dataset["annotations"]]
    assert min(areas) < 32**2 and any(32**2 <= a < 96**2 for a in areas) and max(areas) >= 96**2
    with pytest.raises(IndexError), contextlib.redirect_stdout(io.StringIO()):
        coco_gt.loadRes([])
    report = coco_evaluate(GT, [], backend=backend)
    assert report.stats == dict.fromkeys(STAT_NAMES, 0.0)
    with_gt = {coco_gt.cats[cid]["name"] for cid in coco_gt.getCatIds() if coco_gt.getAnnIds(catIds=[cid])}
    for name, row in report.per_class.items():
        assert row["AP"] == (0.0 if name in with_gt else -1.0)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        coco_evaluate(GT, RESULTS, backend="lvis")


def test_import_detlosses_does_not_load_eval_packages():
    code = (
        "import sys, detlosses, detlosses.evaluation; "
        "lazy = ('pycocotools', 'faster_coco_eval', 'matplotlib'); "
        "print(sorted(m for m in lazy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------
# Input checks (library and CLI)

# (entry replacing a valid one, fragment of the reason); image 42 / category 18 exist in the
# sample, image 1 and category 12 do not.
VALID = {"image_id": 42, "category_id": 18, "bbox": [1, 2, 3, 4], "score": 0.5}
NOT_FINITE = "score must be a finite number"
NOT_POSITIVE = "width and height must be > 0"
BAD_ENTRIES = {
    "not_object": ([42, 18, [1, 2, 3, 4], 0.5], "not an object"),
    "missing_key": ({k: v for k, v in VALID.items() if k != "score"}, "missing key(s) 'score'"),
    "bbox_length": ({**VALID, "bbox": [1, 2, 3]}, "bbox must be 4 numbers"),
    "bbox_type": ({**VALID, "bbox": [1, "2", 3, 4]}, "bbox must be 4 numbers"),
    "bbox_nan": ({**VALID, "bbox": [1, math.nan, 3, 4]}, "non-finite"),
    "bbox_inf": ({**VALID, "bbox": [1, 2, math.inf, 4]}, "non-finite"),
    "zero_width": ({**VALID, "bbox": [1, 2, 0, 4]}, NOT_POSITIVE),
    "negative_height": ({**VALID, "bbox": [1, 2, 3, -4]}, NOT_POSITIVE),
    "score_nan": ({**VALID, "score": math.nan}, NOT_FINITE),
    "score_inf": ({**VALID, "score": -math.inf}, NOT_FINITE),
    "score_string": ({**VALID, "score": "0.5"}, NOT_FINITE),
    "unknown_image": ({**VALID, "image_id": 1}, "image_id 1 is not in the ground truth"),
    "unknown_category": ({**VALID, "category_id": 12}, "category_id 12 is not in the ground truth"),
}


def _with_bad(results: list[dict], bad: object, positions: tuple[int, ...]) -> list:
    entries = copy.deepcopy(results)
    for position in positions:
        entries[position] = copy.deepcopy(bad)
    return entries


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", list(BAD_ENTRIES))
def test_cli_rejects_each_bad_entry_kind(tmp_path, results, capsys, kind):
    bad, reason = BAD_ENTRIES[kind]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_with_bad(results, bad, (3, 10, 500))))  # NaN/inf as JSON NaN/Infinity
    code, out, err = _run_cli(["--gt", GT, "--pred", path], capsys)
    assert code == 2 and out == ""
    assert "3 of 734 prediction entries are invalid" in err
    for position in (3, 10, 500):
        assert f"entry {position}: " in err
    assert err.count(reason) == 3
    assert "Traceback" not in err and "--drop-invalid" in err


def test_library_error_lists_first_five(results):
    positions = (0, 1, 2, 3, 4, 5, 6)
    entries = _with_bad(results, BAD_ENTRIES["score_nan"][0], positions)
    with pytest.raises(InvalidPredictionsError, match=r"7 of 734 prediction entries are invalid") as info:
        coco_evaluate(GT, entries)
    message = str(info.value)
    assert "entry 4: score" in message and "entry 5:" not in message and "... and 2 more" in message
    assert isinstance(info.value, ValueError)
    valid, problems = validate_predictions(entries, GT)
    assert [index for index, _ in problems] == list(positions) and len(valid) == 734 - 7
    report = coco_evaluate(GT, entries, backend="faster", drop_invalid=True)
    assert [index for index, _ in report.dropped] == list(positions)
    assert report.num_dropped == 7 and report.num_predictions == 734 - 7


@pytest.mark.parametrize(
    ("content", "fragment"),
    [('{"image_id": 42}', "must be a list of result entries"), ("[{", "is not valid JSON")],
)
def test_cli_results_file_not_a_list_or_broken(tmp_path, capsys, content, fragment):
    path = tmp_path / "results.json"
    path.write_text(content)
    code, _, err = _run_cli(["--gt", GT, "--pred", path], capsys)
    assert code == 2 and fragment in err and "Traceback" not in err
    if fragment == "is not valid JSON":
        assert str(path) in err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"images": [], "annotations": [', "is not valid JSON"),
        ('{"annotations": [], "categories": []}', "has no 'images' list"),
        (None, "cannot read ground-truth file"),
    ],
)
def test_cli_broken_ground_truth_named(tmp_path, capsys, content, fragment):
    path = tmp_path / "broken_gt.json"
    if content is not None:
        path.write_text(content)
    code, _, err = _run_cli(["--gt", path, "--pred", RESULTS], capsys)
    assert code == 2 and fragment in err and str(path) in err and "Traceback" not in err
    with pytest.raises(InvalidGroundTruthError, match=r"broken_gt\.json"):
        coco_evaluate(path, RESULTS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_drop_invalid_drops_and_reports(tmp_path, results, reference, capsys, backend):
    entries = [*results, BAD_ENTRIES["unknown_image"][0], BAD_ENTRIES["zero_width"][0]]
    path, out_json = tmp_path / "results.json", tmp_path / "report.json"
    path.write_text(json.dumps(entries))
    argv = ["--gt", GT, "--pred", path, "--drop-invalid", "--backend", backend, "--out", out_json]
    code, out, _ = _run_cli(argv, capsys)
    assert code == 0
    assert "Dropped 2 of 736 invalid prediction entries" in out
    assert "entry 734: image_id 1" in out and "entry 735: bbox width" in out
    # what is left is the original results file: pycocotools' numbers on it
    _assert_stats_close(json.loads(out_json.read_text())["stats"], _stats_of(reference))


def test_cli_output_and_report_json(tmp_path, reference, coco_gt, capsys):
    out_json = tmp_path / "sub" / "report.json"
    code, out, err = _run_cli(["--gt", GT, "--pred", RESULTS, "--out", out_json], capsys)
    assert code == 0 and err == ""
    assert reference.printed_summary in out  # pycocotools' 12 lines, verbatim
    assert "category" in out and "AR100" in out and "\nperson " in out
    written = json.loads(out_json.read_text())
    assert set(written) == {"stats", "per_class"}
    _assert_stats_close(written["stats"], _stats_of(reference))
    assert list(written["per_class"]) == [coco_gt.cats[cid]["name"] for cid in sorted(coco_gt.cats)]
    assert set(written["per_class"]["person"]) == {"AP", "AP50", "AR100"}


def test_wrapper_script_runs_in_a_subprocess(tmp_path, results):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_with_bad(results, BAD_ENTRIES["score_inf"][0], (7,))))
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "coco_eval.py"),
            "--gt",
            str(GT),
            "--pred",
            str(path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repo: the wrapper must find the package itself
    )
    assert run.returncode == 2, run.stderr
    assert "1 of 734 prediction entries are invalid" in run.stderr and "entry 7: score" in run.stderr
    assert "Traceback" not in run.stderr


# ------------------------------------------------------------------------------------------
# Plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_are_valid_pngs(tmp_path, results, capsys):
    # 3 categories keep it fast; one of them ("fire hydrant", id 11) has no ground truth
    keep = {1: "person", 3: "car", 11: "fire hydrant"}
    dataset = json.loads(GT.read_text())
    dataset["categories"] = [c for c in dataset["categories"] if c["id"] in keep]
    dataset["annotations"] = [a for a in dataset["annotations"] if a["category_id"] in keep]
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(dataset))
    pred_path.write_text(json.dumps([r for r in results if r["category_id"] in keep]))
    code, out, _ = _run_cli(["--gt", gt_path, "--pred", pred_path, "--plots", tmp_path / "plots"], capsys)
    assert code == 0 and "Wrote 3 precision-recall plots" in out
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["pr_1_person.png", "pr_3_car.png", "pr_all.png"]
    for name in names:
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (500, 400)


def test_plot_returns_written_paths(tmp_path, reports):
    paths = plot_pr_curves(reports["pycocotools"], tmp_path, per_class=False)
    assert paths == [tmp_path / "pr_all.png"] and paths[0].read_bytes()[:8] == PNG_SIGNATURE


def test_plotted_curves_average_to_the_report_aps(reports):
    # each overall curve is precision vs recall threshold; its mean over the 101 thresholds
    # must be the matching pycocotools stat (AP50, AP75, AP)
    report = reports["pycocotools"]
    curves = pr_curves(report.precision[:, :, :, 0, 2], report.iou_thrs)
    for label, stat in (("IoU=0.50", "AP50"), ("IoU=0.75", "AP75"), ("IoU=0.50:0.95", "AP")):
        assert curves[label].shape == (101,)
        assert abs(curves[label].mean() - report.stats[stat]) < 1e-12


# ------------------------------------------------------------------------------------------
# Ground-truth checks (pycocotools would mis-evaluate or crash on these)


def _sample_dataset() -> dict:
    return json.loads(GT.read_text())


def _perfect_results(dataset: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in dataset["annotations"]
        if not a["iscrowd"]
    ]


def test_duplicate_annotation_ids_rejected(tmp_path, capsys):
    dataset = _sample_dataset()
    for ann in dataset["annotations"][:10]:
        ann["id"] = dataset["annotations"][10]["id"]
    # what pycocotools makes of it: it keeps one annotation per id, so perfect results lose AP
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    assert len(coco.anns) < len(dataset["annotations"])
    with pytest.raises(InvalidGroundTruthError, match="duplicate annotation ids"):
        coco_evaluate(dataset, _perfect_results(dataset))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset))
    code, _, err = _run_cli(["--gt", path, "--pred", RESULTS], capsys)
    assert code == 2 and "duplicate annotation ids" in err and "Traceback" not in err


@pytest.mark.parametrize(("key", "value"), [("image_id", 123456789), ("category_id", 999)])
def test_annotation_with_unknown_image_or_category_rejected(key, value):
    dataset = _sample_dataset()
    dataset["annotations"][5][key] = value
    with pytest.raises(InvalidGroundTruthError, match=rf"annotations refer to {key} {value}"):
        load_ground_truth(dataset)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [("bbox", "have no 'bbox'"), ("id", "have no 'id'"), ("image_id", "have no 'image_id'")],
)
def test_annotation_without_required_key_rejected(key, fragment):
    dataset = _sample_dataset()
    del dataset["annotations"][3][key]
    with pytest.raises(InvalidGroundTruthError, match=fragment):
        coco_evaluate(dataset, RESULTS)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, "3", 4], [1, 2, math.nan, 4], [1, 2, -3, 4]])
def test_annotation_with_malformed_bbox_rejected(bbox):
    dataset = _sample_dataset()
    dataset["annotations"][7]["bbox"] = bbox
    with pytest.raises(InvalidGroundTruthError, match="bbox"):
        load_ground_truth(dataset)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_area_and_iscrowd_filled(backend):
    # without "area" pycocotools raises KeyError; we fill area = w * h and iscrowd = 0, which is
    # what pycocotools computes with on a dataset that states those values itself
    dataset = _sample_dataset()
    stated = copy.deepcopy(dataset)
    for ann, same in zip(dataset["annotations"], stated["annotations"], strict=True):
        del ann["area"], ann["iscrowd"]
        same["area"], same["iscrowd"] = same["bbox"][2] * same["bbox"][3], 0
    with pytest.raises(KeyError), contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
        _pycocotools(coco, str(RESULTS))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = stated
        coco.createIndex()
    report = coco_evaluate(dataset, RESULTS, backend=backend)
    _assert_stats_close(report.stats, _stats_of(_pycocotools(coco, str(RESULTS))))
    assert "area" not in dataset["annotations"][0]  # the caller's dicts are left alone


def test_load_ground_truth_returns_checked_copy():
    dataset = _sample_dataset()
    loaded = load_ground_truth(dataset)
    assert loaded is not dataset and loaded["annotations"] == dataset["annotations"]
    assert loaded["annotations"][0] is not dataset["annotations"][0]
    assert load_ground_truth(GT)["images"] == dataset["images"]


# ------------------------------------------------------------------------------------------
# Exit codes: input problems exit 2 with a message, bugs keep their traceback


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"", b'{"state_dict": {}}'])
def test_cli_ckpt_that_is_not_a_checkpoint(tmp_path, capsys, content):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    code, _, err = _run_cli(["--ckpt", path], capsys)
    assert code == 2 and "is not a PyTorch checkpoint" in err and str(path) in err and "Traceback" not in err


def test_cli_missing_checkpoint(tmp_path, capsys):
    code, _, err = _run_cli(["--ckpt", tmp_path / "nothing.ckpt"], capsys)
    assert code == 2 and "checkpoint not found" in err


@pytest.mark.parametrize("option", ["--out", "--plots"])
def test_cli_output_under_a_file(tmp_path, capsys, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / ("report.json" if option == "--out" else "plots")
    code, out, err = _run_cli(["--gt", GT, "--pred", RESULTS, option, target], capsys)
    assert code == 2 and f"{blocker} is a file" in err and out == ""


def test_cli_plots_is_a_file_and_out_is_a_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = _run_cli(["--gt", GT, "--pred", RESULTS, "--plots", blocker], capsys)
    assert code == 2 and "is a file; expected a folder" in err
    code, _, err = _run_cli(["--gt", GT, "--pred", RESULTS, "--out", tmp_path], capsys)
    assert code == 2 and "is a folder; expected a file path" in err


def test_cli_missing_results_file(tmp_path, capsys):
    code, _, err = _run_cli(["--gt", GT, "--pred", tmp_path / "none.json"], capsys)
    assert code == 2 and "cannot read results file" in err


def test_cli_internal_error_keeps_its_traceback(tmp_path):
    # a ValueError raised by a bug (not an input check) must not pass for bad input
    code = (
        "import sys\n"
        "import detlosses.evaluation.metric as metric\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('an internal bug')\n"
        "metric._BACKENDS['pycocotools'] = broken\n"
        "from lightning_modules.eval_cli import main\n"
        f"sys.exit(main(['--gt', {str(GT)!r}, '--pred', {str(RESULTS)!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "ValueError: an internal bug" in run.stderr
    assert "in broken" in run.stderr


def test_column_checks_agree_with_the_per_entry_rules(results):
    # plain lists of numbers take the column-wise path; tuples, numpy numbers and float ids the
    # per-entry one: both give the same entries and the same problems
    bad = {3: BAD_ENTRIES["zero_width"][0], 9: BAD_ENTRIES["unknown_image"][0], 20: BAD_ENTRIES["score_nan"][0]}
    plain = [bad.get(i, entry) for i, entry in enumerate(results)]
    unusual = [
        {**entry, "bbox": tuple(np.float32(v) for v in entry["bbox"]), "image_id": float(entry["image_id"])}
        if i not in bad
        else entry
        for i, entry in enumerate(plain)
    ]
    fast, fast_problems = validate_predictions(plain, GT)
    slow, slow_problems = validate_predictions(unusual, GT)
    assert [i for i, _ in fast_problems] == [i for i, _ in slow_problems] == [3, 9, 20]
    assert [reason for _, reason in fast_problems] == [reason for _, reason in slow_problems]
    assert [d["image_id"] for d in fast] == [d["image_id"] for d in slow]
    np.testing.assert_allclose([d["bbox"] for d in fast], [d["bbox"] for d in slow], rtol=1e-6)
