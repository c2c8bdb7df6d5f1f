"""``detlosses-viz``: see what an assigner does on real images.

    detlosses-viz assign --ann ANN --images DIR --ids 1,2,3 --out DIR
                  [--ckpt CKPT] [--recipe NAME | --assigner JSON] [--compare SPEC]
                  [--image-size S] [--strides 8,16,32] [--prior-box K] [--device DEV]

For each image id: the image is letterboxed exactly as in validation
(:class:`~lightning_modules.data.COCODetectionDataset`), predictions are made, the assigner
runs on them as in a training step (sigmoid scores and decoded boxes, detached), and

* ``OUT/<id>_assign.png``: one panel per pyramid level with the GT boxes and every foreground
  anchor as a dot in its GT's colour, sized by its target score, and the per-GT table
  (:func:`detlosses.visualization.draw_assignment`);
* ``OUT/<id>_compare.png`` with ``--compare``: the two assigners one above the other, the
  anchors they disagree on crossed out;
* ``OUT/assignment.json``: the per-GT rows of every image (and of the comparison);
* the per-GT table on stdout, GTs without any anchor marked ``NO ANCHOR``.

Predictions. With ``--ckpt`` they are the detector's (the real training-time assignment, on
the validation letterbox, model in eval mode); ``--ann`` / ``--images`` / ``--image-size``
then default to the checkpoint's validation data and the assigner to its criterion's
(steady-state) assigner. Without ``--ckpt`` an untrained-prediction prior is used: every
class scores ``PRIOR_SCORE`` (0.5) at every anchor and each anchor predicts the square box of
side ``--prior-box`` strides (default 4) centred on it, so the assignment shows what the
geometry alone decides (anchors on ``--strides``, default 8,16,32 as the reference detector).

Assigners: ``--recipe NAME`` takes a recipe's assigner (``tood``, ``gfl``, ``ppyoloe``,
``yolov8``; default ``tood`` without a checkpoint); ``--assigner`` an ASSIGNERS config as JSON
text or a JSON file (``'{"type": "TaskAlignedAssigner", "topk": 9}'``); ``--compare`` a second
assigner, as a recipe name, JSON text or a JSON file. Bad input (missing file, unknown image
id, bad JSON or assigner config) exits with code 2 and a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from detlosses.assigners import AssignResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from detlosses.visualization import GTAssignment

PROG = "detlosses-viz"
EXIT_INPUT_ERROR = 2  # as argparse's usage errors
PRIOR_SCORE = 0.5  # every class's probability at every anchor in the untrained-prediction prior
DEFAULT_STRIDES = (8, 16, 32)


class InputError(ValueError):
    """An argument that cannot be used (exit code 2, no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Draw and tabulate label assignments.")
    commands = parser.add_subparsers(dest="command", required=True)
    assign = commands.add_parser(
        "assign",
        help="which anchors each ground truth wins, per pyramid level",
        description="Which anchors each ground truth wins, per pyramid level, and with which metric and IoU.",
    )
    assign.add_argument("--ann", metavar="ANN", help="COCO annotation json (default with --ckpt: its val_ann)")
    assign.add_argument("--images", metavar="DIR", help="image folder (default with --ckpt: its val_images)")
    assign.add_argument("--ids", required=True, metavar="1,2,3", help="COCO image ids, comma-separated")
    assign.add_argument("--out", required=True, type=Path, metavar="DIR", help="where drawings and json go")
    assign.add_argument("--ckpt", metavar="CKPT", help="detlosses-train checkpoint whose predictions feed the assigner")
    which = assign.add_mutually_exclusive_group()
    which.add_argument("--recipe", help="use this recipe's assigner (tood, gfl, ppyoloe, yolov8)")
    which.add_argument("--assigner", metavar="JSON", help="ASSIGNERS config: JSON text or a .json file")
    assign.add_argument("--compare", metavar="SPEC", help="second assigner: a recipe name, JSON text or a .json file")
    assign.add_argument("--image-size", type=int, help="network input side (default: the checkpoint's, else 320)")
    assign.add_argument("--strides", default=None, metavar="8,16,32", help="anchor strides without --ckpt")
    assign.add_argument("--prior-box", type=float, default=4.0, metavar="K", help="prior box side in strides")
    assign.add_argument("--dpi", type=float, default=100, help="drawing resolution (dots per inch)")
    assign.add_argument("--panel-size", type=float, default=3.0, help="longer side of a level panel (inches)")
    assign.add_argument("--device", help="torch device for --ckpt (default: cuda if available, else cpu)")
    return parser


# ----------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------
def _int_list(name: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(f"{name} names no value, got {text!r}")
    return values


def assigner_config(spec: str) -> dict[str, Any]:
    """An ASSIGNERS config from a recipe name, a JSON file or JSON text (InputError otherwise)."""
    from detlosses.recipes import RECIPES, get_recipe

    if spec in RECIPES:
        return get_recipe(spec)["assigner"]
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"assigner file {spec!r} is not valid JSON: {e}") from e
    else:
        try:
            cfg = json.loads(spec)
        except json.JSONDecodeError as e:
            raise InputError(
                f"assigner {spec!r} is neither a recipe name ({', '.join(sorted(RECIPES))}), "
                f"nor a JSON file, nor valid JSON: {e}"
            ) from e
    if isinstance(cfg, str):
        cfg = {"type": cfg}
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise InputError(f'an assigner config is a JSON object with a "type" key, got {spec!r}')
    return cfg


def _build_assigner(cfg: Any) -> torch.nn.Module:
    from detlosses import ASSIGNERS

    try:
        return ASSIGNERS.build(cfg)
    except (KeyError, TypeError, ValueError) as e:  # unknown name, unknown or bad argument
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise InputError(f"bad assigner config {cfg!r}: {message}") from e


# ----------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------
class Predictions(NamedTuple):
    """What the assigner sees: scores (B, A, C) probabilities, boxes (B, A, 4) xyxy, anchor
    points (A, 2) and strides (A,), all float32 on the CPU."""

    scores: torch.Tensor
    boxes: torch.Tensor
    anchor_points: torch.Tensor
    strides: torch.Tensor


class Assignment(NamedTuple):
    """An assigner's result on a batch, with the metric t (None for assigners without one) and
    the overlap of each positive (:func:`detlosses.visualization.alignment_of_positives`)."""

    result: AssignResult
    metric: torch.Tensor | None
    overlap: torch.Tensor


def prior_predictions(
    anchor_points: torch.Tensor, strides: torch.Tensor, batch: int, num_classes: int, box_strides: float
) -> Predictions:
    """The untrained-prediction prior: every score ``PRIOR_SCORE`` and every box the square of
    side ``box_strides * stride`` centred on its anchor."""
    half = (box_strides * strides / 2)[:, None]  # (A, 1)
    boxes = torch.cat([anchor_points - half, anchor_points + half], dim=1)  # (A, 4)
    scores = anchor_points.new_full((batch, anchor_points.shape[0], num_classes), PRIOR_SCORE)
    return Predictions(scores, boxes.expand(batch, -1, -1), anchor_points, strides)


def detector_predictions(model: Any, images: torch.Tensor) -> Predictions:
    """The detector's sigmoid scores and decoded boxes for ``images`` (B, 3, S, S) in [0, 1], as its
    criterion receives them (detached), in the model's current mode."""
    with torch.inference_mode():
        out = model(images.to(model.device))
    return Predictions(
        out.cls_logits.float().sigmoid().cpu(),
        out.box_preds.float().cpu(),
        out.anchor_points.float().cpu(),
        out.strides.float().cpu(),
    )


def assign(
    assigner: torch.nn.Module, preds: Predictions, targets: list[dict[str, Any]], num_classes: int
) -> tuple[Assignment, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run ``assigner`` on the predictions and the batch's targets as ``DetectionCriterion`` does;
    returns the :class:`Assignment` and the padded ``(gt_labels, gt_bboxes, gt_mask)``."""
    from detlosses.criterion import pad_targets
    from detlosses.visualization import alignment_of_positives

    gts = pad_targets(targets, num_classes, torch.device("cpu"))
    with torch.no_grad():
        result = assigner(preds.scores, preds.boxes, preds.anchor_points, *gts, strides=preds.strides)
    alpha, beta = getattr(assigner, "alpha", None), getattr(assigner, "beta", None)
    iou_type = getattr(assigner, "iou_type", "iou")
    metric, overlap = alignment_of_positives(result, preds.scores, preds.boxes, alpha or 1.0, beta or 6.0, iou_type)
    has_metric = alpha is not None and beta is not None
    return Assignment(result, metric if has_metric else None, overlap), gts


def draw_image(
    images: torch.Tensor,
    targets: list[dict[str, Any]],
    preds: Predictions,
    assignment: Assignment,
    index: int,
    class_names: list[str] | None,
    title: str | None = None,
    dpi: float = 100,
    panel_size: float = 3.0,
) -> tuple[list[GTAssignment], Figure]:
    """The per-GT rows and the level panels of image ``index`` of a batch."""
    from detlosses.visualization import assignment_table, draw_assignment

    gt_bboxes, gt_labels = targets[index]["boxes"].float(), targets[index]["labels"]
    rows = assignment_table(
        gt_bboxes,
        gt_labels,
        preds.strides,
        assignment.result,
        assignment.metric,
        assignment.overlap,
        index,
        class_names,
    )
    fig = draw_assignment(
        images[index],
        gt_bboxes,
        gt_labels,
        preds.anchor_points,
        preds.strides,
        assignment.result,
        assignment.metric,
        assignment.overlap,
        index,
        class_names,
        title=title,
        panel_size=panel_size,
        dpi=dpi,
    )
    return rows, fig


def _prior_anchors(num_classes: int, strides: tuple[int, ...], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points and strides of the reference detector's grid (its own ``anchors``)."""
    from .models import DenseDetectorModel

    try:
        model = DenseDetectorModel(num_classes, strides=strides)
    except ValueError as e:
        raise InputError(f"--strides: {e}") from e
    if image_size % strides[-1]:
        raise InputError(f"--image-size must be a multiple of the largest stride {strides[-1]}, got {image_size}")
    return model.anchors(image_size, image_size)


# ----------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------
def _resolve_data(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(model or None, {"ann", "images", "image_size"}) from the arguments and the checkpoint."""
    model, data = None, {}
    if args.ckpt is not None:
        from .inference import checkpoint_data_args, load_detector

        saved = checkpoint_data_args(args.ckpt)
        data = {"ann": saved.get("val_ann"), "images": saved.get("val_images"), "image_size": saved.get("image_size")}
        model = load_detector(args.ckpt, args.device)
    given = {"ann": args.ann, "images": args.images, "image_size": args.image_size}
    data.update({key: value for key, value in given.items() if value is not None})
    data.setdefault("image_size", None)
    if data["image_size"] is None:
        data["image_size"] = 320
    missing = [f"--{key}" for key in ("ann", "images") if not data.get(key)]
    if missing:
        raise InputError(f"pass {' and '.join(missing)} (a checkpoint names them only when trained with its data)")
    if int(data["image_size"]) < 1:
        raise InputError(f"--image-size must be positive, got {data['image_size']}")
    return model, data


def _select(dataset: Any, ids: list[int], ann: str) -> list[int]:
    """Dataset positions of the image ids; InputError naming the unknown ones."""
    position = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    unknown = [i for i in ids if i not in position]
    if unknown:
        known = sorted(position)
        shown = ", ".join(map(str, known[:10])) + (" ..." if len(known) > 10 else "")
        raise InputError(f"image id(s) {unknown} not in {ann} (its ids: {shown})")
    return [position[i] for i in ids]


def assign_command(args: argparse.Namespace) -> int:
    from detlosses.visualization import assignment_table, draw_assignment_comparison

    from .data import COCODetectionDataset, collate_fn

    ids = _int_list("--ids", args.ids)
    strides = tuple(_int_list("--strides", args.strides)) if args.strides else DEFAULT_STRIDES
    if args.ckpt is not None and args.strides:
        raise InputError("--strides goes with the prior (no --ckpt): the checkpoint's model has its own")
    for name, value in (("--prior-box", args.prior_box), ("--dpi", args.dpi), ("--panel-size", args.panel_size)):
        if not value > 0:
            raise InputError(f"{name} must be > 0, got {value}")
    main_spec = args.assigner or args.recipe
    main_cfg = assigner_config(main_spec) if main_spec else None
    compare_cfg = assigner_config(args.compare) if args.compare else None
    model, data = _resolve_data(args)
    if main_cfg is not None:
        assigner = _build_assigner(main_cfg)
    elif model is not None:
        assigner = model.criterion.assigner
    else:
        assigner = _build_assigner(assigner_config("tood"))
    other = None if compare_cfg is None else _build_assigner(compare_cfg)

    category_ids = None if model is None else model.hparams.category_ids
    if model is not None and int(data["image_size"]) % model.model.strides[-1]:
        raise InputError(
            f"--image-size must be a multiple of the model's largest stride {model.model.strides[-1]}, "
            f"got {data['image_size']}"
        )
    try:
        dataset = COCODetectionDataset(
            data["ann"], data["images"], image_size=int(data["image_size"]), train=False, category_ids=category_ids
        )
    except ValueError as e:  # unreadable annotation json, category mismatch (missing files: FileNotFoundError)
        raise InputError(str(e)) from e
    images, targets = collate_fn([dataset[i] for i in _select(dataset, ids, data["ann"])])
    names = dataset.class_names
    if model is not None:
        preds = detector_predictions(model, images)
        source = f"predictions of {args.ckpt}"
    else:
        points, anchor_strides = _prior_anchors(dataset.num_classes, strides, images.shape[-1])
        preds = prior_predictions(points, anchor_strides, len(images), dataset.num_classes, args.prior_box)
        source = f"untrained prior (scores {PRIOR_SCORE}, boxes {args.prior_box:g} strides)"
    assignment, _ = assign(assigner, preds, targets, dataset.num_classes)
    compared = None if other is None else assign(other, preds, targets, dataset.num_classes)[0]
    main_label = "checkpoint" if model is not None and not main_spec else _short(main_spec or "tood", assigner)
    labels = (f"A {main_label}", f"B {_short(args.compare, other)}")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"source": source, "image_size": int(images.shape[-1]), "assigner": repr(assigner)}
    if other is not None:
        report["compare_assigner"] = repr(other)
    report["images"] = {}
    print(f"{PROG} assign: {assigner!r} on the {source}, {images.shape[-1]} px input")
    for b, image_id in enumerate(ids):
        rows, fig = draw_image(
            images,
            targets,
            preds,
            assignment,
            b,
            names,
            title=f"image {image_id}: {assigner!r}",
            dpi=args.dpi,
            panel_size=args.panel_size,
        )
        fig.savefig(args.out / f"{image_id}_assign.png")
        entry = {"rows": [r.as_dict() for r in rows]}
        _print_table(f"image {image_id}", rows)
        if compared is not None:
            gt_bboxes, gt_labels = targets[b]["boxes"].float(), targets[b]["labels"]
            other_rows = assignment_table(
                gt_bboxes, gt_labels, preds.strides, compared.result, compared.metric, compared.overlap, b, names
            )
            fig = draw_assignment_comparison(
                images[b],
                gt_bboxes,
                gt_labels,
                preds.anchor_points,
                preds.strides,
                assignment.result,
                compared.result,
                names=labels,
                index=b,
                class_names=names,
                quality={labels[0]: assignment[1:], labels[1]: compared[1:]},
                dpi=args.dpi,
                panel_size=args.panel_size,
            )
            fig.savefig(args.out / f"{image_id}_compare.png")
            entry["compare_rows"] = [r.as_dict() for r in other_rows]
            _print_table(f"image {image_id}, compared: {other!r}", other_rows)
        report["images"][str(image_id)] = entry
    (args.out / "assignment.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"Wrote {len(ids) * (1 + (other is not None))} drawings and assignment.json to {args.out}")
    return 0


def _short(spec: str | None, assigner: torch.nn.Module | None) -> str:
    """A short label: the recipe name, else the assigner's class name."""
    from detlosses.recipes import RECIPES

    return spec if spec in RECIPES else type(assigner).__name__


def _print_table(title: str, rows: list) -> None:
    from detlosses.visualization import format_assignment_table

    print(f"\n{title}\n{format_assignment_table(rows)}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or usage)."""
    args = build_parser().parse_args(argv)
    try:
        return assign_command(args)
    except (InputError, FileNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
