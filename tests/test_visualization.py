"""detlosses.visualization, ``detlosses-viz assign`` and the AssignmentVisualizer callback.

References: assignments built by hand (the table's counts, maxima and the differences are
known), matplotlib's own data-to-pixel transform for where each dot must be drawn, the
task-aligned assigner's own target scores for the alignment metric, the annotation file
for the GT counts, and the detector's criterion for the number of positives.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.loggers import CSVLogger, Logger

from detlosses.assigners import AssignResult, TaskAlignedAssigner
from detlosses.visualization import (
    DIFF_COLOUR,
    GT_COLOURS,
    alignment_of_positives,
    assignment_differences,
    assignment_summary,
    assignment_table,
    draw_assignment,
    draw_assignment_comparison,
    format_assignment_table,
    render,
)
from lightning_modules import COCODataModule, OneStageDetector
from lightning_modules.callbacks import AssignmentVisualizer
from lightning_modules.data import COCODetectionDataset, collate_fn
from lightning_modules.shapes import make_shapes
from lightning_modules.viz_cli import main

SIZE = 64
GREY = (128, 128, 128)
# GT 0 and 1 win anchors; GT 2 is too small to contain any anchor centre
GT_BOXES = torch.tensor([[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0], [49.0, 1.0, 51.0, 3.0]])
GT_LABELS = torch.tensor([0, 1, 0])


def grid(strides=(8, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres ((j + 0.5) s, (i + 0.5) s) level by level, row-major, on a SIZE x SIZE image."""
    points, levels = [], []
    for s in strides:
        centres = (torch.arange(SIZE // s) + 0.5) * s
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        points.append(torch.stack([xs, ys], -1).reshape(-1, 2))
        levels.append(torch.full((xs.numel(),), float(s)))
    return torch.cat(points), torch.cat(levels)


POINTS, STRIDES = grid()


def anchor(x: float, y: float, stride: int) -> int:
    """Index of the anchor centred at (x, y) on the level of ``stride``."""
    offset = 0 if stride == 8 else (SIZE // 8) ** 2
    return offset + int(y // stride) * (SIZE // stride) + int(x // stride)


def hand_result(claims: dict[int, tuple[int, float]], num_classes: int = 2) -> AssignResult:
    """A one-image AssignResult from {anchor: (gt row, target score)}."""
    a = len(POINTS)
    labels = torch.full((1, a), num_classes)
    bboxes = torch.zeros(1, a, 4)
    scores = torch.zeros(1, a, num_classes)
    fg = torch.zeros(1, a, dtype=torch.bool)
    gt_index = torch.zeros(1, a, dtype=torch.long)
    for i, (g, score) in claims.items():
        labels[0, i] = GT_LABELS[g]
        bboxes[0, i] = GT_BOXES[g]
        scores[0, i, GT_LABELS[g]] = score
        fg[0, i] = True
        gt_index[0, i] = g
    return AssignResult(labels, bboxes, scores, fg, gt_index)


# GT 0: two anchors on stride 8 (scores 1.0, 0.1), one on stride 16; GT 1: one on each level
CLAIMS = {
    anchor(4, 4, 8): (0, 1.0),
    anchor(12, 12, 8): (0, 0.1),
    anchor(8, 8, 16): (0, 0.5),
    anchor(36, 36, 8): (1, 0.3),
    anchor(40, 40, 16): (1, 0.7),
}
METRIC = {
    anchor(4, 4, 8): 0.2,
    anchor(12, 12, 8): 0.05,
    anchor(8, 8, 16): 0.4,
    anchor(36, 36, 8): 0.1,
    anchor(40, 40, 16): 0.3,
}
OVERLAP = {
    anchor(4, 4, 8): 0.9,
    anchor(12, 12, 8): 0.3,
    anchor(8, 8, 16): 0.6,
    anchor(36, 36, 8): 0.8,
    anchor(40, 40, 16): 0.5,
}


def per_anchor(values: dict[int, float]) -> torch.Tensor:
    out = torch.zeros(len(POINTS))
    for i, v in values.items():
        out[i] = v
    return out


def test_table_counts_on_a_hand_built_assignment():
    rows = assignment_table(
        GT_BOXES,
        GT_LABELS,
        STRIDES,
        hand_result(CLAIMS),
        per_anchor(METRIC),
        per_anchor(OVERLAP),
        class_names=["cat", "dog"],
    )
    assert [r.per_level for r in rows] == [{8: 2, 16: 1}, {8: 1, 16: 1}, {8: 0, 16: 0}]
    assert [r.num_pos for r in rows] == [3, 2, 0]
    assert [r.unassigned for r in rows] == [False, False, True]
    assert [r.name for r in rows] == ["cat", "dog", "cat"]
    assert [r.max_score for r in rows] == pytest.approx([1.0, 0.7, 0.0])
    assert [r.max_metric for r in rows] == pytest.approx([0.4, 0.3, 0.0])
    assert [r.max_overlap for r in rows] == pytest.approx([0.9, 0.8, 0.0])
    text = format_assignment_table(rows).splitlines()
    assert text[0].split() == ["gt", "class", "box", "(xyxy)", "s8", "s16", "pos", "score", "max", "t", "max", "IoU"]
    assert text[3].split()[:6] == ["2", "cat", "49,1,51,3", "0", "0", "0"] and text[3].endswith("NO ANCHOR")
    assert "NO ANCHOR" not in text[1] + text[2]
    assert text[-1] == "3 GTs, 5 positives, 1 GTs without an anchor"
    assert rows[2].as_dict()["unassigned"] is True and rows[0].as_dict()["per_level"] == {"s8": 2, "s16": 1}
    # without metric / overlap those columns are absent, not zero
    bare = assignment_table(GT_BOXES, GT_LABELS, STRIDES, hand_result(CLAIMS))
    assert bare[0].max_metric is None and bare[0].max_overlap is None


def test_table_of_a_real_assignment_known_by_hand():
    # uniform scores, anchor-centred boxes: every anchor inside GT 0 is a candidate with t > 0, and
    # topk 30 >= its 16 + 4 inside anchors keeps them all; GT 2 contains no anchor centre.
    half = (2 * STRIDES)[:, None]
    boxes = torch.cat([POINTS - half, POINTS + half], 1)[None]
    scores = torch.full((1, len(POINTS), 2), 0.5)
    gts = GT_BOXES[[0, 2]]
    res = TaskAlignedAssigner(topk=30)(
        scores, boxes, POINTS, GT_LABELS[[0, 2]][None], gts[None], torch.ones(1, 2, dtype=torch.bool)
    )
    rows = assignment_table(gts, GT_LABELS[[0, 2]], STRIDES, res)
    assert [r.per_level for r in rows] == [{8: 16, 16: 4}, {8: 0, 16: 0}]
    assert rows[1].unassigned and "NO ANCHOR" in format_assignment_table(rows).splitlines()[2]


def test_alignment_of_positives():
    # by hand: predicted box (0, 0, 10, 10) against the GT (0, 0, 10, 20): IoU 0.5; score 0.8
    result = AssignResult(
        labels=torch.tensor([[1, 2]]),
        bboxes=torch.tensor([[[0.0, 0, 10, 20], [0, 0, 0, 0]]]),
        scores=torch.zeros(1, 2, 2),
        fg_mask=torch.tensor([[True, False]]),
        gt_index=torch.zeros(1, 2, dtype=torch.long),
    )
    pred_scores = torch.tensor([[[0.1, 0.8], [0.9, 0.9]]])
    pred_boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 20]]])
    metric, overlap = alignment_of_positives(result, pred_scores, pred_boxes, alpha=1.0, beta=2.0)
    torch.testing.assert_close(overlap, torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(metric, torch.tensor([[0.8 * 0.25, 0.0]]))

    # the task-aligned assigner's own targets: t * max_overlap / (max_t + eps) per GT
    gen = torch.Generator().manual_seed(0)
    a = len(POINTS)
    xy = POINTS + torch.randn(a, 2, generator=gen)
    wh = torch.rand(a, 2, generator=gen) * 24 + 4
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)[None]
    scores = torch.rand(1, a, 2, generator=gen)
    assigner = TaskAlignedAssigner(topk=5, alpha=0.5, beta=6.0, eps=1e-9)
    res = assigner(scores, boxes, POINTS, GT_LABELS[None], GT_BOXES[None], torch.ones(1, 3, dtype=torch.bool))
    metric, overlap = alignment_of_positives(res, scores, boxes, alpha=0.5, beta=6.0)
    fg, gt = res.fg_mask[0], res.gt_index[0]
    expected = torch.zeros(a)
    for g in gt[fg].unique():
        mine = fg & (gt == g)
        expected[mine] = metric[0, mine] * overlap[0, mine].max() / (metric[0, mine].max() + 1e-9)
    torch.testing.assert_close(res.scores[0].amax(-1), expected)
    assert fg.sum() > 5  # several GTs hold anchors


def test_summary_statistics():
    # image 0: the hand-built claims (GT counts 3, 2, 0); image 1: one anchor for its only GT
    first = hand_result(CLAIMS)
    second = hand_result({anchor(56, 8, 8): (0, 0.9)})
    batch = AssignResult(*(torch.cat([x, y]) for x, y in zip(first, second, strict=True)))
    gt_mask = torch.tensor([[True, True, True], [True, False, False]])
    stats = assignment_summary(batch, STRIDES, gt_mask)
    assert stats["num_gt"] == 4
    assert stats["pos_per_gt_mean"] == pytest.approx((3 + 2 + 0 + 1) / 4)
    assert stats["pos_per_gt_min"] == 0 and stats["gt_without_pos"] == pytest.approx(1 / 4)
    assert stats["s8/pos_per_gt_mean"] == pytest.approx((2 + 1 + 0 + 1) / 4)
    assert stats["s16/pos_per_gt_mean"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert stats["s16/gt_without_pos"] == pytest.approx(2 / 4)
    assert assignment_summary(batch, STRIDES, torch.zeros(2, 3, dtype=torch.bool)) == {}


def pixel(canvas, ax, x: float, y: float, dx: float = 0.0) -> tuple[int, ...]:
    """Colour of the rendered pixel at data point (x, y), ``dx`` display pixels to the right."""
    px, py = ax.transData.transform((x, y))
    return tuple(int(v) for v in canvas[int(canvas.shape[0] - py), int(px + dx)])


def test_drawing_puts_each_dot_in_its_gts_colour():
    image = torch.full((3, SIZE, SIZE), 128, dtype=torch.uint8)
    fig = draw_assignment(image, GT_BOXES, GT_LABELS, POINTS, STRIDES, hand_result(CLAIMS), dpi=100, show_anchors=False)
    canvas = render(fig)
    assert canvas.shape == (int(fig.get_figheight() * 100), int(fig.get_figwidth() * 100), 3)  # Agg truncates
    panels = {8: fig.axes[0], 16: fig.axes[1]}
    for i, (g, _) in CLAIMS.items():
        stride = int(STRIDES[i])
        assert pixel(canvas, panels[stride], *POINTS[i].tolist()) == GT_COLOURS[g], (i, g)
    # background anchors show the image; so does the other level's panel at a foreground anchor
    for x, y, stride in ((20, 20, 8), (52, 12, 8), (24, 40, 16), (40, 40, 8)):
        assert pixel(canvas, panels[stride], x, y) == GREY, (x, y, stride)
    # dot size follows the target score: 0.3 + 0.6 * score anchor spacings across
    ax = panels[8]
    spacing = ax.transData.transform((8, 0))[0] - ax.transData.transform((0, 0))[0]  # pixels
    offset = 0.38 * spacing  # inside a score-1 dot (radius 0.45 spacing), outside a 0.1 one (0.18)
    assert pixel(canvas, ax, 4, 4, offset) == GT_COLOURS[0]
    assert pixel(canvas, ax, 12, 12, offset) == GREY


def test_comparison_marks_exactly_the_disagreements():
    other = dict(CLAIMS)
    del other[anchor(12, 12, 8)]  # foreground -> background
    other[anchor(20, 20, 8)] = (0, 0.6)  # background -> foreground
    other[anchor(36, 36, 8)] = (0, 0.3)  # another GT
    other[anchor(4, 4, 8)] = (0, 0.2)  # same GT, another score: not a disagreement
    result_a, result_b = hand_result(CLAIMS), hand_result(other)
    differ = assignment_differences(result_a, result_b)
    expected = torch.zeros(len(POINTS), dtype=torch.bool)
    expected[[anchor(12, 12, 8), anchor(20, 20, 8), anchor(36, 36, 8)]] = True
    assert torch.equal(differ, expected)

    image = torch.full((3, SIZE, SIZE), 128, dtype=torch.uint8)
    fig = draw_assignment_comparison(
        image, GT_BOXES, GT_LABELS, POINTS, STRIDES, result_a, result_b, names=("TAL", "ATSS"), show_anchors=False
    )
    canvas = render(fig)
    for row, claims in enumerate((CLAIMS, other)):
        panels = {8: fig.axes[2 * row], 16: fig.axes[2 * row + 1]}
        for i in range(len(POINTS)):
            stride = int(STRIDES[i])
            colour = pixel(canvas, panels[stride], *POINTS[i].tolist())
            if expected[i]:
                assert colour == DIFF_COLOUR, (row, i)
            elif i in claims:
                assert colour == GT_COLOURS[claims[i][0]], (row, i)
            else:
                assert colour == GREY, (row, i)
    assert fig.axes[0].get_title() == "TAL · s8: 3 positives"


def test_bad_input_is_named():
    res = hand_result(CLAIMS)
    with pytest.raises(ValueError, match="strides must have shape"):
        assignment_table(GT_BOXES, GT_LABELS, STRIDES[:-1], res)
    with pytest.raises(ValueError, match="gt_labels must have shape"):
        assignment_table(GT_BOXES, GT_LABELS[:2], STRIDES, res)
    with pytest.raises(ValueError, match="GT row 1"):
        assignment_table(GT_BOXES[:1], GT_LABELS[:1], STRIDES, res)
    with pytest.raises(ValueError, match="index must be"):
        assignment_table(GT_BOXES, GT_LABELS, STRIDES, res, index=1)
    with pytest.raises(ValueError, match="metric must have shape"):
        assignment_table(GT_BOXES, GT_LABELS, STRIDES, res, metric=torch.zeros(3))
    with pytest.raises(ValueError, match="must index class_names"):
        assignment_table(GT_BOXES, GT_LABELS, STRIDES, res, class_names=["cat"])
    with pytest.raises(ValueError, match="image must be"):
        draw_assignment(torch.zeros(4, 4, 4), GT_BOXES, GT_LABELS, POINTS, STRIDES, res)


def test_import_does_not_load_matplotlib():
    code = "import sys, detlosses.visualization; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------
# Command line and callback on the shapes data
# ----------------------------------------------------------------------------------------
class ImageLogger(Logger):
    """A logger that takes images (``log_image``, as WandbLogger's) and records them."""

    name, version = "images", 0

    def __init__(self):
        super().__init__()
        self.images: list[tuple[str, tuple[int, ...], int]] = []

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_image(self, key, images, step=None):
        self.images += [(key, image.shape, step) for image in images]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 2-epoch fit with the callback on tiny shapes data, and its checkpoint."""
    root = tmp_path_factory.mktemp("viz")
    shapes = make_shapes(str(root / "shapes"), num_train=4, num_val=4, image_size=SIZE, seed=0)
    dm = COCODataModule(
        shapes["train_ann"],
        shapes["train_images"],
        shapes["val_ann"],
        shapes["val_images"],
        image_size=SIZE,
        batch_size=4,
        num_workers=0,
    )
    pl.seed_everything(0)
    model = OneStageDetector(dm.num_classes, warmup_epochs=0.0)
    callback = AssignmentVisualizer(every_n_epochs=1, num_images=2)
    images = ImageLogger()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        default_root_dir=str(root / "run"),
        # EMA first: the callback must still see the averaged weights that validation uses
        callbacks=[EMAWeightAveraging(decay=0.5, update_starting_at_step=0), callback],
        logger=[CSVLogger(str(root / "run")), images],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=dm)
    ckpt = root / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    log_dir = root / "run" / "lightning_logs" / "version_0"
    return {"shapes": shapes, "ckpt": ckpt, "log_dir": log_dir, "images": images.images}


def test_callback_writes_drawings_and_logs_statistics(fitted):
    val = json.loads(Path(fitted["shapes"]["val_ann"]).read_text())
    first_two = sorted(im["id"] for im in val["images"])[:2]
    for epoch in (0, 1):
        out = fitted["log_dir"] / "assign" / f"epoch{epoch:03d}"
        assert sorted(p.name for p in out.glob("*.png")) == [f"{i}_assign.png" for i in first_two]
        tables = json.loads((out / "assignment.json").read_text())
        assert tables["epoch"] == epoch and sorted(tables["images"]) == [str(i) for i in first_two]
        for image_id in first_two:  # one row per GT of the image
            num_gt = sum(a["image_id"] == image_id for a in val["annotations"])
            assert len(tables["images"][str(image_id)]) == num_gt
    # the logger that takes images got each drawing, at the step of its epoch's end
    keys = [(key, step) for key, _, step in fitted["images"]]
    assert sorted(keys) == sorted((f"assign/{i}", step) for i in first_two for step in (1, 2))
    assert all(len(shape) == 3 and shape[2] == 3 for _, shape, _ in fitted["images"])
    with open(fitted["log_dir"] / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("assign/num_gt")]
    assert len(logged) == 2  # once per epoch
    for row in logged:  # every validation image's GTs are counted
        assert float(row["assign/num_gt"]) == len(val["annotations"])
        share = float(row["assign/gt_without_pos"])
        assert 0 <= share <= 1 and float(row["assign/pos_per_gt_min"]) >= 0
        assert float(row["assign/pos_per_gt_mean"]) * len(val["annotations"]) == pytest.approx(
            round(float(row["assign/pos_per_gt_mean"]) * len(val["annotations"])), abs=1e-3
        )
        assert {"assign/s8/pos_per_gt_mean", "assign/s16/gt_without_pos", "assign/s32/pos_per_gt_min"} <= set(row)


def test_cli_prior_and_compare(fitted, tmp_path, capsys):
    shapes = fitted["shapes"]
    args = [
        "assign",
        "--ann",
        shapes["val_ann"],
        "--images",
        shapes["val_images"],
        "--ids",
        "1,3",
        "--image-size",
        str(SIZE),
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--recipe", "tood", "--compare", '{"type": "ATSSAssigner", "topk": 9}']) == 0
    out = capsys.readouterr().out
    assert "untrained prior" in out and "image 1" in out and "image 3, compared: ATSSAssigner" in out
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "1_assign.png",
        "1_compare.png",
        "3_assign.png",
        "3_compare.png",
    ]
    report = json.loads((tmp_path / "assignment.json").read_text())
    val = json.loads(Path(shapes["val_ann"]).read_text())
    for image_id in (1, 3):
        entry = report["images"][str(image_id)]
        num_gt = sum(a["image_id"] == image_id for a in val["annotations"])
        assert len(entry["rows"]) == len(entry["compare_rows"]) == num_gt
        for row in entry["rows"]:
            line = next(
                line
                for line in out.splitlines()
                if line.split()[1:3] == [row["name"], ",".join(f"{v:.0f}" for v in row["box"])]
            )
            assert line.endswith("NO ANCHOR") == row["unassigned"]


def test_cli_checkpoint_gives_the_training_assignment(fitted, tmp_path, capsys):
    shapes = fitted["shapes"]
    ids = [1, 2, 3, 4]
    assert main(["assign", "--ckpt", str(fitted["ckpt"]), "--ids", "1,2,3,4", "--out", str(tmp_path)]) == 0
    assert "predictions of" in capsys.readouterr().out
    report = json.loads((tmp_path / "assignment.json").read_text())
    positives = sum(row["num_pos"] for i in ids for row in report["images"][str(i)]["rows"])
    # the criterion's own count on the same letterboxed images and weights (its assigner, no CLI code)
    model = OneStageDetector.load_from_checkpoint(fitted["ckpt"], map_location="cpu").eval()
    dataset = COCODetectionDataset(shapes["val_ann"], shapes["val_images"], image_size=SIZE)
    images, targets = collate_fn([dataset[dataset.image_ids.index(i)] for i in ids])
    with torch.no_grad():
        out = model(images)
        losses = model.criterion(
            out.cls_logits, out.box_preds, out.box_dist_logits, out.anchor_points, out.strides, targets
        )
    assert positives == int(losses["num_pos"]) > 0
    # the callback's drawings of the last epoch saw the same (EMA) weights as this checkpoint
    drawn = json.loads((fitted["log_dir"] / "assign" / "epoch001" / "assignment.json").read_text())["images"]
    for image_id, rows in drawn.items():
        cli_rows = report["images"][image_id]["rows"]
        assert [r["per_level"] for r in rows] == [r["per_level"] for r in cli_rows]
        assert [r["max_score"] for r in rows] == pytest.approx([r["max_score"] for r in cli_rows], abs=1e-6)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{i}_assign.png" for i in ids]


def test_cli_bad_input_exits_2(fitted, tmp_path, capsys):
    shapes = fitted["shapes"]
    base = [
        "assign",
        "--ann",
        shapes["val_ann"],
        "--images",
        shapes["val_images"],
        "--image-size",
        str(SIZE),
        "--out",
        str(tmp_path),
    ]
    cases = [
        ([*base, "--ids", "99"], "image id(s) [99] not in"),
        ([*base, "--ids", "1,x"], "--ids must be comma-separated integers"),
        ([*base, "--ids", "1", "--assigner", "{topk: 3"], "nor valid JSON"),
        ([*base, "--ids", "1", "--assigner", '{"type": "NoSuchAssigner"}'], "not registered"),
        ([*base, "--ids", "1", "--compare", '{"type": "TaskAlignedAssigner", "topkk": 3}'], "unexpected argument"),
        (
            ["assign", "--ann", str(tmp_path / "none.json"), "--images", ".", "--ids", "1", "--out", str(tmp_path)],
            "annotation file not found",
        ),
        (
            ["assign", "--ckpt", str(tmp_path / "none.ckpt"), "--ids", "1", "--out", str(tmp_path)],
            "checkpoint not found",
        ),
        (["assign", "--ids", "1", "--out", str(tmp_path)], "pass --ann and --images"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_one_cli_argument_turns_the_callback_on(fitted):
    from lightning_modules.train_cli import build_cli

    shapes = fitted["shapes"]
    config = str(Path(__file__).resolve().parents[1] / "configs" / "shapes_tood.yaml")
    data = [f"--data.{key}={shapes[key]}" for key in ("train_ann", "train_images", "val_ann", "val_images")]
    cli = build_cli(["--config", config, *data, "--trainer.logger=false"], run=False)
    assert not any(isinstance(cb, AssignmentVisualizer) for cb in cli.trainer.callbacks)  # off by default
    on = "--trainer.callbacks+=lightning_modules.callbacks.AssignmentVisualizer"
    cli = build_cli(["--config", config, *data, "--trainer.logger=false", on], run=False)
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, AssignmentVisualizer)]
    assert callback.every_n_epochs == 1 and callback.num_images == 4
