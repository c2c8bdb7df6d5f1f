"""Reading and checking COCO ground truth and results before any evaluation.

Everything here is NumPy and the standard library: no torch, no pycocotools. The checks run
column-wise: each field is gathered once from the entries, its element types are checked in one
pass, and the numeric tests are array reductions. Only the entries found invalid are examined
one by one, to name the reason.

Ground-truth rules (each broken one raises :class:`InvalidGroundTruthError` naming the file):

* "images", "annotations" and "categories" are lists; images and categories have unique ids.
* every annotation has "id", "image_id", "category_id" and "bbox" (4 finite numbers, w, h >= 0);
  annotation ids are unique (pycocotools keeps the last of a repeated id, so perfect
  predictions would score less than 1); image and category ids are those of the dataset
  (pycocotools would silently ignore the annotation).
* a missing "area" is filled with the box area w * h and a missing "iscrowd" with 0 (the
  values COCO's own converters write), so files written by tools that leave them out work.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
from collections import Counter
from typing import Any

import numpy as np

__all__ = [
    "MAX_SHOWN_PROBLEMS",
    "REQUIRED_KEYS",
    "COCOInputError",
    "InvalidGroundTruthError",
    "InvalidPredictionsError",
    "format_problems",
    "load_ground_truth",
    "load_predictions",
    "validate_predictions",
]

REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")
GT_REQUIRED_KEYS = ("id", "image_id", "category_id", "bbox")
MAX_SHOWN_PROBLEMS = 5
_NUMBER_TYPES = {int, float}


class COCOInputError(ValueError):
    """Input that cannot be evaluated: the command line reports it and exits with code 2.

    Any other exception is a bug and keeps its traceback.
    """


class InvalidGroundTruthError(COCOInputError):
    """The ground truth is unreadable, not JSON, or not a valid COCO detection dataset."""


class InvalidPredictionsError(COCOInputError):
    """The predictions are not a list of valid COCO result entries."""


def _read_json(path: str | os.PathLike, what: str, error: type[COCOInputError]) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise error(f"cannot read {what} file {os.fspath(path)!r}: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} file {os.fspath(path)!r} is not valid JSON: {e}") from e


def format_problems(problems: list[tuple[int, str]], limit: int = MAX_SHOWN_PROBLEMS) -> str:
    """The first ``limit`` (entry index, reason) pairs, one indented line each."""
    lines = [f"  entry {index}: {reason}" for index, reason in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def _is_real(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _only_numbers(values: list) -> bool:
    """True when every element is a plain int or float (one C-level pass over the list)."""
    return set(map(type, values)) <= _NUMBER_TYPES


def _boxes_array(boxes: list) -> np.ndarray | None:
    """(N, 4) float64 array of ``boxes`` when each is a list of 4 plain numbers, else None."""
    if not all(type(box) is list and len(box) == 4 for box in boxes):
        return None
    if not _only_numbers(list(itertools.chain.from_iterable(boxes))):
        return None
    return np.array(boxes, dtype=np.float64).reshape(len(boxes), 4)


def _category_names(categories: list[dict]) -> list[str]:
    """Display names of categories: their "name", with the id added where a name repeats."""
    names = [str(category.get("name", category["id"])) for category in categories]
    return [
        f"{name} (id {category['id']})" if names.count(name) > 1 else name
        for name, category in zip(names, categories, strict=True)
    ]


def _duplicates(ids: list) -> list:
    return [value for value, count in Counter(ids).items() if count > 1]


def _shown(values: list, limit: int = MAX_SHOWN_PROBLEMS) -> str:
    text = ", ".join(repr(v) for v in values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _check_annotations(dataset: dict, source: str) -> None:
    """Raise InvalidGroundTruthError for the first broken annotation rule; fill area/iscrowd."""
    annotations = dataset["annotations"]
    if not all(type(ann) is dict for ann in annotations):
        index = next(i for i, ann in enumerate(annotations) if not isinstance(ann, dict))
        raise InvalidGroundTruthError(f"ground truth {source}: annotation {index} is not an object")
    for key in GT_REQUIRED_KEYS:
        missing = [i for i, ann in enumerate(annotations) if key not in ann] if annotations else []
        if missing:
            raise InvalidGroundTruthError(
                f"ground truth {source}: {len(missing)} annotation(s) have no {key!r} "
                f"(first at index {missing[0]}, id {annotations[missing[0]].get('id')!r})"
            )
    ann_ids = [ann["id"] for ann in annotations]
    repeated = _duplicates(ann_ids)
    if repeated:
        raise InvalidGroundTruthError(
            f"ground truth {source}: duplicate annotation ids {_shown(repeated)} (pycocotools would keep "
            "only the last annotation of each id)"
        )
    for key, known_key in (("image_id", "images"), ("category_id", "categories")):
        known = {item["id"] for item in dataset[known_key]}
        unknown = sorted({ann[key] for ann in annotations} - known, key=repr)
        if unknown:
            raise InvalidGroundTruthError(
                f"ground truth {source}: annotations refer to {key} {_shown(unknown)} not in {known_key!r}"
            )
    boxes = [ann["bbox"] for ann in annotations]
    array = _boxes_array(boxes)
    if array is None:  # find the first malformed box for the message
        array = np.zeros((len(boxes), 4))
        for i, box in enumerate(boxes):
            if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(map(_is_real, box))):
                raise InvalidGroundTruthError(
                    f"ground truth {source}: annotation id {ann_ids[i]!r} has bbox {box!r}, "
                    "expected 4 numbers [x, y, w, h]"
                )
            array[i] = box
    bad = ~np.isfinite(array).all(axis=1) | (array[:, 2] < 0) | (array[:, 3] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidGroundTruthError(
            f"ground truth {source}: {int(bad.sum())} annotation(s) have a non-finite or negative-size bbox, "
            f"first id {ann_ids[i]!r}: {boxes[i]!r}"
        )
    for ann, (w, h) in zip(annotations, array[:, 2:].tolist(), strict=True):
        if "area" not in ann:
            ann["area"] = w * h
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0


def load_ground_truth(gt: str | os.PathLike | dict | Any) -> dict:
    """The checked COCO ground-truth dataset of a path, a dict, or a COCO object (``.dataset``).

    Torch-free; shared by the evaluation and anything else that reads a COCO json. A dict or
    COCO object given by the caller is copied (top level and annotation dicts, which COCOeval
    and the fill-ups below write into). An empty "info" is added when absent: pycocotools
    2.0.9 and 2.0.10 raise KeyError without it. A missing annotation "area" becomes w * h, a
    missing "iscrowd" 0.

    Raises:
        InvalidGroundTruthError: naming the file, when it is unreadable, not JSON, lacks the
            "images" / "annotations" / "categories" lists, repeats an image, category or
            annotation id, or has an annotation without id / image_id / category_id / bbox,
            with an unknown image or category id, or with a malformed bbox.
    """
    owned = isinstance(gt, (str, os.PathLike))  # loaded here: no one else holds it
    if owned:
        source = repr(os.fspath(gt))
        dataset = _read_json(gt, "ground-truth", InvalidGroundTruthError)
    elif isinstance(gt, dict):
        source, dataset = "(dict)", gt
    elif isinstance(getattr(gt, "dataset", None), dict):
        source, dataset = f"({type(gt).__name__} object)", gt.dataset
    else:
        raise InvalidGroundTruthError(
            f"gt must be a path, a COCO dataset dict or a COCO object, got {type(gt).__name__}"
        )
    if not isinstance(dataset, dict):
        raise InvalidGroundTruthError(f"ground truth {source} must be a JSON object, got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise InvalidGroundTruthError(f"ground truth {source} has no {key!r} list")
    for key in ("images", "categories"):
        if not all(isinstance(item, dict) and "id" in item for item in dataset[key]):
            raise InvalidGroundTruthError(f"ground truth {source}: every entry of {key!r} needs an 'id'")
        repeated = _duplicates([item["id"] for item in dataset[key]])
        if repeated:
            raise InvalidGroundTruthError(f"ground truth {source}: duplicate ids in {key!r}: {_shown(repeated)}")
    if not owned:
        dataset = dict(dataset)
        dataset["annotations"] = [dict(ann) if isinstance(ann, dict) else ann for ann in dataset["annotations"]]
    _check_annotations(dataset, source)
    dataset.setdefault("info", {})
    return dataset


# ---------------------------------------------------------------------------------------------
# Predictions


def _contains(ids: set, value: Any) -> bool:
    try:
        return value in ids
    except TypeError:  # unhashable
        return False


def _entry_problem(entry: Any, image_ids: set, category_ids: set) -> str | None:
    """Why one result entry is invalid, or None (the reference rules, one entry at a time)."""
    if not isinstance(entry, dict):
        return f"not an object ({type(entry).__name__})"
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        return "missing key(s) " + ", ".join(repr(key) for key in missing)
    bbox, score = entry["bbox"], entry["score"]
    if not isinstance(bbox, (list, tuple, np.ndarray)) or len(bbox) != 4 or not all(map(_is_real, bbox)):
        return f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    if not all(map(math.isfinite, bbox)):
        return f"bbox has non-finite values {list(bbox)!r}"
    if not (bbox[2] > 0 and bbox[3] > 0):
        return f"bbox width and height must be > 0, got w={bbox[2]!r}, h={bbox[3]!r}"
    if not _is_real(score) or not math.isfinite(score):
        return f"score must be a finite number, got {score!r}"
    if not _contains(image_ids, entry["image_id"]):
        return f"image_id {entry['image_id']!r} is not in the ground truth"
    if not _contains(category_ids, entry["category_id"]):
        return f"category_id {entry['category_id']!r} is not in the ground truth"
    return None


def load_predictions(predictions: str | os.PathLike | list) -> list:
    """The list of result entries of a path or a list (entries not yet checked)."""
    if isinstance(predictions, (str, os.PathLike)):
        where = f"results file {os.fspath(predictions)!r}"
        predictions = _read_json(predictions, "results", InvalidPredictionsError)
    else:
        where = "predictions"
    if not isinstance(predictions, list):
        raise InvalidPredictionsError(
            f"{where} must be a list of result entries {{image_id, category_id, bbox, score}}, "
            f"got {type(predictions).__name__}"
        )
    return predictions


def _as_id(value: Any) -> Any:
    """Numeric ids as Python ints (numpy ints, 42.0); anything else unchanged."""
    if type(value) is int:
        return value
    return int(value) if _is_real(value) and float(value).is_integer() else value


def _fast_columns(entries: list) -> tuple[list, list, np.ndarray, np.ndarray] | None:
    """(image ids, category ids, (N, 4) boxes, (N,) scores) when every entry is a dict with the
    four keys, int ids, a list of 4 plain numbers as bbox and a plain number as score; else None."""
    if not all(type(entry) is dict for entry in entries):
        return None
    try:
        image_ids = [entry["image_id"] for entry in entries]
        category_ids = [entry["category_id"] for entry in entries]
        boxes = [entry["bbox"] for entry in entries]
        scores = [entry["score"] for entry in entries]
    except KeyError:
        return None
    if not (set(map(type, image_ids)) <= {int} and set(map(type, category_ids)) <= {int}):
        return None
    if not _only_numbers(scores):
        return None
    box_array = _boxes_array(boxes)
    if box_array is None:
        return None
    return image_ids, category_ids, box_array, np.array(scores, dtype=np.float64)


def _check_entries(entries: list, dataset: dict) -> tuple[list[dict], list[tuple[int, str]]]:
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    int_ids = set(map(type, image_ids)) | set(map(type, category_ids)) <= {int}
    columns = _fast_columns(entries) if int_ids else None
    if columns is None:  # unusual types somewhere: the per-entry rules decide
        bad_index = range(len(entries))
    else:
        img, cat, boxes, scores = columns
        ok = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & np.isfinite(scores)
        ok &= np.isin(np.array(img, dtype=np.int64), np.fromiter(image_ids, np.int64, len(image_ids)))
        ok &= np.isin(np.array(cat, dtype=np.int64), np.fromiter(category_ids, np.int64, len(category_ids)))
        if ok.all():
            valid = [
                {"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(img, cat, boxes.tolist(), scores.tolist(), strict=True)
            ]
            return valid, []
        bad_index = np.flatnonzero(~ok).tolist()
    problems = []
    for index in bad_index:
        reason = _entry_problem(entries[index], image_ids, category_ids)
        if reason is not None:
            problems.append((index, reason))
    bad = {index for index, _ in problems}
    valid = [
        {
            "image_id": _as_id(entry["image_id"]),
            "category_id": _as_id(entry["category_id"]),
            "bbox": [float(v) for v in entry["bbox"]],
            "score": float(entry["score"]),
        }
        for index, entry in enumerate(entries)
        if index not in bad
    ]
    return valid, problems


def validate_predictions(
    predictions: str | os.PathLike | list, gt: str | os.PathLike | dict | Any
) -> tuple[list[dict], list[tuple[int, str]]]:
    """Check COCO result entries against the ground truth, before any evaluation.

    An entry is valid when it is a dict with "image_id", "category_id", "bbox", "score"; bbox
    is 4 finite numbers [x, y, w, h] with w > 0 and h > 0; score is a finite number; and both
    ids exist in the ground truth.

    Returns:
        (valid, problems): fresh dicts holding the four keys of every valid entry (inputs are
        never modified; numbers as Python floats/ints), and (entry index, reason) for every
        invalid one.

    Raises:
        InvalidPredictionsError: predictions (or the file's content) are not a list.
        InvalidGroundTruthError: see :func:`load_ground_truth`.
    """
    return _check_entries(load_predictions(predictions), load_ground_truth(gt))
