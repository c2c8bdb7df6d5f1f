"""OneStageDetector in-process: schedule, coordinate mapping, short fits, NaN stop, COCO validation."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from detlosses.nms import Detections
from lightning_modules import COCODataModule, OneStageDetector
from lightning_modules.detector import build_criterion, coco_results, to_original
from lightning_modules.models import DenseOutput
from lightning_modules.shapes import make_shapes

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 8 training images (2 batches of 4), 5 validation images.
    return make_shapes(str(tmp_path_factory.mktemp("shapes")), num_train=8, num_val=5, image_size=IMAGE_SIZE, seed=0)


def _datamodule(shapes, image_size: int = IMAGE_SIZE) -> COCODataModule:
    return COCODataModule(
        shapes["train_ann"],
        shapes["train_images"],
        shapes["val_ann"],
        shapes["val_images"],
        image_size=image_size,
        batch_size=4,
        num_workers=0,
    )


def _trainer(**kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**options, **kwargs})


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


# --------------------------------------------------------------------------- pure helpers
def test_build_criterion_forms():
    recipe = build_criterion("gfl", 3, 16)
    assert type(recipe.assigner).__name__ == "ATSSAssigner" and recipe.dfl_loss is not None
    override = build_criterion({"recipe": "tood", "assigner": {"type": "ATSSAssigner", "topk": 9}}, 3, 8)
    assert type(override.assigner).__name__ == "ATSSAssigner" and override.reg_max == 8
    full = build_criterion(
        {"assigner": "TaskAlignedAssigner", "cls_loss": "VarifocalLoss", "box_loss": "CIoULoss", "dfl_loss": None},
        3,
        16,
    )
    assert type(full.cls_loss).__name__ == "VarifocalLoss" and full.dfl_loss is None
    with pytest.raises(ValueError, match="num_classes"):
        build_criterion({"recipe": "tood", "num_classes": 4}, 3, 16)
    with pytest.raises(KeyError, match="unknown recipe"):
        build_criterion("retina", 3, 16)


def test_init_checks():
    with pytest.raises(ValueError, match="optimizer"):
        OneStageDetector(3, optimizer="lamb")
    with pytest.raises(ValueError, match="class_names"):
        OneStageDetector(3, class_names=["a", "b"])


def test_to_original_and_coco_results_by_hand():
    # 100 x 200 (h x w) image letterboxed to 64: scale 64 / 200 = 0.32, pad_y = (64 - 32) / 2 = 16.
    target = {"orig_size": (100, 200), "scale": 0.32, "pad": (0.0, 16.0)}
    det = Detections(
        boxes=torch.tensor([[3.2, 19.2, 35.2, 35.2], [-5.0, 10.0, 70.0, 60.0]]),
        scores=torch.tensor([0.9, 0.4]),
        labels=torch.tensor([1, 0]),
    )
    mapped, dropped = to_original(det, target)
    # (3.2 - 0) / 0.32 = 10, (19.2 - 16) / 0.32 = 10, 35.2 / 0.32 = 110, (35.2 - 16) / 0.32 = 60;
    # second box: (-5 / 0.32 -> clip 0, (10 - 16) / 0.32 -> clip 0, 70 / 0.32 = 218.75 -> clip 200,
    # (60 - 16) / 0.32 = 137.5 -> clip 100).
    torch.testing.assert_close(mapped.boxes, torch.tensor([[10.0, 10.0, 110.0, 60.0], [0.0, 0.0, 200.0, 100.0]]))
    assert dropped == 0
    results = coco_results(mapped, 7, category_ids=[5, 9])
    assert [r["category_id"] for r in results] == [9, 5]
    assert results[0]["image_id"] == 7 and results[0]["score"] == pytest.approx(0.9)
    assert results[0]["bbox"] == pytest.approx([10.0, 10.0, 100.0, 50.0])  # x, y, w = 110 - 10, h = 60 - 10


class FixedOutputModel(torch.nn.Module):
    """Stands in for the network: the same two-class dense output for every image."""

    def __init__(self, boxes: torch.Tensor, logits: torch.Tensor) -> None:
        super().__init__()
        self.boxes, self.logits = boxes, logits

    def forward(self, images):
        batch, num = len(images), len(self.boxes)
        return DenseOutput(
            cls_logits=self.logits.expand(batch, num, 2),
            box_dist_logits=torch.zeros(batch, num, 4 * 17),
            box_preds=self.boxes.expand(batch, num, 4),
            anchor_points=torch.zeros(num, 2),
            strides=torch.full((num,), 8.0),
        )


# Letterbox of a 200 x 100 landscape (w x h) and a 100 x 200 portrait image onto 64 px:
# scale 0.32; landscape pad (0, 16), region y 16..48; portrait pad (16, 0), region x 16..48.
LANDSCAPE = {"orig_size": (100, 200), "scale": 0.32, "pad": (0.0, 16.0), "image_id": 1}
PORTRAIT = {"orig_size": (200, 100), "scale": 0.32, "pad": (16.0, 0.0), "image_id": 2}
# Network-pixel boxes: inside both regions, across a border, wholly in the top-left padding
# corner (outside both regions), and on the landscape image's top border line (zero height there).
PLACED = torch.tensor(
    [
        [20.0, 20.0, 36.0, 40.0],  # inside
        [-8.0, 30.0, 24.0, 70.0],  # crosses the left and bottom borders
        [0.0, 0.0, 10.0, 10.0],  # corner padding: empty in both regions
        [30.0, 4.0, 40.0, 16.0],  # landscape: ends on y = 16, the region's top edge -> empty
    ]
)
LOGITS = torch.tensor([[4.0, -9.0], [-9.0, 3.0], [5.0, -9.0], [-9.0, 2.0]])


def test_predictions_clip_to_the_image_and_map_back_on_non_square_images():
    model = OneStageDetector(2, nms={"score_thr": 0.05, "iou_thr": 0.99})
    model.model = FixedOutputModel(PLACED, LOGITS)
    landscape, portrait = model.predict_step((torch.zeros(2, 3, 64, 64), [LANDSCAPE, PORTRAIT]), 0)
    # Landscape (clip to x 0..64, y 16..48, then (xy - (0, 16)) / 0.32):
    #   inside -> (62.5, 12.5, 112.5, 75); border box -> clip (0, 30, 24, 48) -> (0, 43.75, 75, 100);
    #   corner and top-edge boxes are empty and dropped.
    torch.testing.assert_close(landscape.boxes, torch.tensor([[62.5, 12.5, 112.5, 75.0], [0.0, 43.75, 75.0, 100.0]]))
    torch.testing.assert_close(landscape.labels, torch.tensor([0, 1]))
    # Portrait (clip to x 16..48, y 0..64, then (xy - (16, 0)) / 0.32):
    #   inside -> (12.5, 62.5, 62.5, 125); border box -> clip (16, 30, 24, 64) -> (0, 93.75, 25, 200);
    #   top-edge box -> (30, 4, 40, 16) is inside x 16..48 -> (43.75, 12.5, 75, 50); corner dropped.
    torch.testing.assert_close(
        portrait.boxes,
        torch.tensor([[12.5, 62.5, 62.5, 125.0], [0.0, 93.75, 25.0, 200.0], [43.75, 12.5, 75.0, 50.0]]),
    )
    torch.testing.assert_close(portrait.labels, torch.tensor([0, 1, 1]))
    for det, (h, w) in ((landscape, (100, 200)), (portrait, (200, 100))):
        results = coco_results(det, 0)
        assert all(r["bbox"][2] > 0 and r["bbox"][3] > 0 for r in results)
        assert all(r["bbox"][0] + r["bbox"][2] <= w and r["bbox"][1] + r["bbox"][3] <= h for r in results)


def test_empty_boxes_are_counted():
    model = OneStageDetector(2, nms={"score_thr": 0.05, "iou_thr": 0.99})
    model.model = FixedOutputModel(PLACED, LOGITS)
    out = model.model(torch.zeros(2, 3, 64, 64))
    _, dropped = model.detect(out, [LANDSCAPE, PORTRAIT])
    assert dropped == 3  # corner box twice, top-edge box on the landscape image


def test_a_degenerate_box_left_by_the_mapping_is_dropped():
    # A box 1e-6 px wide in network pixels whose mapped width rounds to 0 in float32 at x = 2e4.
    target = {"orig_size": (10, 30000), "scale": 1.0, "pad": (0.0, 0.0)}
    det = Detections(torch.tensor([[20000.0, 0.0, 20000.0 + 1e-6, 5.0]]), torch.tensor([0.5]), torch.tensor([0]))
    mapped, dropped = to_original(det, target)
    assert len(mapped.boxes) == 0 and dropped == 1


# --------------------------------------------------------------------------- short fits
def _fit_steps(shapes, precision: str = "32-true", criterion: str = "tood") -> tuple[list[float], float]:
    pl.seed_everything(0)
    dm = _datamodule(shapes)
    model = OneStageDetector(dm.num_classes, criterion=criterion, lr=1e-3, warmup_epochs=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    recorder = LossRecorder()
    _trainer(max_steps=2, precision=precision, limit_val_batches=0, callbacks=[recorder]).fit(model, datamodule=dm)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)) / len(before)
    return recorder.losses, changed


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_two_step_fit(shapes, precision):
    losses, changed = _fit_steps(shapes, precision=precision)
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert changed > 0.9  # nearly every tensor moved (the rest: unused-by-these-images corner cases)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(shapes, monkeypatch, recwarn, native):
    # an x86 CPU's capabilities as torch reports them, faked both ways
    monkeypatch.setattr("lightning_modules.detector.platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model = OneStageDetector(_datamodule(shapes).num_classes)
    trainer = _trainer(max_steps=1, precision="bf16-mixed")
    trainer.strategy.connect(model)
    model.trainer = trainer
    model.setup("fit")
    emulated = [w for w in recwarn if "without bf16 instructions" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
    assert all("--trainer.precision 32" in str(w.message) for w in emulated)


@pytest.mark.parametrize("recipe", ["gfl", "ppyoloe", "yolov8"])  # "tood" is the default above
def test_each_recipe_trains(shapes, recipe):
    losses, changed = _fit_steps(shapes, criterion=recipe)
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert changed > 0.9


def test_assigner_warmup_follows_the_training_epoch(shapes):
    class AssignerRecorder(pl.Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, str]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.seen.append((trainer.current_epoch, type(pl_module.criterion.active_assigner).__name__))

    criterion = {"recipe": "tood", "warmup_epochs": 1}
    model = OneStageDetector(5, criterion=criterion)
    recorder = AssignerRecorder()
    _trainer(max_epochs=2, limit_val_batches=0, callbacks=[recorder]).fit(model, datamodule=_datamodule(shapes))
    assert recorder.seen == [(0, "ATSSAssigner")] * 2 + [(1, "TaskAlignedAssigner")] * 2


def test_class_names_and_category_ids_from_datamodule(shapes):
    dm = _datamodule(shapes)
    model = OneStageDetector(dm.num_classes)
    _trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=dm)
    assert model.hparams.category_ids == [1, 3, 5, 7, 9]  # make_shapes' non-contiguous ids
    assert model.hparams.class_names == ["circle", "rectangle", "triangle", "star", "cross"]


def test_nan_loss_stops_and_never_checkpoints(shapes, tmp_path, monkeypatch):
    dm = _datamodule(shapes)
    model = OneStageDetector(dm.num_classes)
    forward = type(model.criterion).forward

    def nan_after_first_epoch(self, *args):
        losses = forward(self, *args)
        if model.global_step >= 2:  # epoch 0 = steps 0, 1 trains and checkpoints normally
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(type(model.criterion), "forward", nan_after_first_epoch)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/AP", mode="max", save_last=True)
    trainer = _trainer(max_epochs=5, enable_checkpointing=True, callbacks=[checkpoint])
    with pytest.raises(FloatingPointError, match=r"loss is not finite at step 2 \(epoch 1, batch 0\)"):
        trainer.fit(model, datamodule=dm)
    saved = sorted(tmp_path.glob("*.ckpt"))
    assert saved, "epoch 0 should have been checkpointed"
    for path in saved:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- validation / prediction
class OracleDetector(OneStageDetector):
    """Predicts the ground truth of each batch, so validation must give AP = 1."""

    def _detect(self, out, targets):
        return [Detections(t["boxes"], torch.ones(len(t["labels"])), t["labels"]) for t in targets], 0


def test_validation_maps_boxes_back_exactly(shapes):
    # 64 px images letterboxed to 96 (scale 1.5): predictions in network pixels must map back
    # onto the original ground truth; pycocotools then gives AP = AR100 = 1.
    dm = _datamodule(shapes, image_size=96)
    model = OracleDetector(dm.num_classes)
    (metrics,) = _trainer().validate(model, datamodule=dm, verbose=False)
    assert metrics["val/num_images"] == 5
    assert metrics["val/AP"] == pytest.approx(1.0)
    assert metrics["val/AR100"] == pytest.approx(1.0)


def test_predict_returns_detections_in_original_pixels(shapes):
    dm = _datamodule(shapes, image_size=96)
    model = OneStageDetector(dm.num_classes, nms={"score_thr": 0.0})
    batches = _trainer().predict(model, datamodule=dm)
    dets = [det for batch in batches for det in batch]
    assert len(dets) == 5
    for det in dets:
        assert isinstance(det, Detections) and len(det.boxes) > 0
        assert det.boxes.min() >= 0 and det.boxes.max() <= IMAGE_SIZE  # original images are 64 px
        assert det.labels.max() < dm.num_classes


# --------------------------------------------------------------------------- time budget
class FakeClock(pl.Callback):
    """``time.monotonic`` for the Trainer's Timer and the detector: a training batch takes 2 s
    and a validation 2 s, whatever the machine does; records each step's learning rate."""

    def __init__(self, monkeypatch) -> None:
        self.now = 1000.0
        self.lrs: list[float] = []
        monkeypatch.setattr(time, "monotonic", lambda: self.now)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.now += 2.0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.now += 2.0


class StopAfter(pl.Callback):
    """Ends a run after ``epochs`` epochs, as a kill right after a checkpoint would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epochs:
            trainer.should_stop = True


def _budget_fit(shapes, root, clock, *callbacks, ckpt_path=None) -> pl.Trainer:
    pl.seed_everything(0)
    dm = _datamodule(shapes)  # 8 training images, batch 4: 2 batches an epoch, 6 s with validation
    model = OneStageDetector(dm.num_classes, head="decoupled", lr=1e-3, warmup_epochs=1.0, min_lr_ratio=0.05)
    last = ModelCheckpoint(dirpath=root, filename="last", enable_version_counter=False)
    trainer = _trainer(
        max_time={"seconds": 20}, enable_checkpointing=True, callbacks=[clock, last, *callbacks], limit_val_batches=1
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def test_time_budget_fills_the_budget_and_ends_the_decay(shapes, tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    trainer = _budget_fit(shapes, tmp_path, clock)
    # 6 s an epoch, planned as 1.05 x 6 = 6.3 s: after epoch 1, 14 s left -> 2 more; after epoch 2,
    # 8 s -> 1 more; after epoch 3, 2 s -> stop. The last 2 s stay unused; the Timer never had to
    # cut an epoch short.
    assert trainer.current_epoch == 3 and trainer.global_step == 6
    assert clock.now - 1000.0 == 18.0
    warmup, decay = clock.lrs[:2], clock.lrs[2:]
    assert warmup == pytest.approx([1e-3 * 0.01, 1e-3 * (0.01 + 0.99 * 0.5)])
    assert all(b <= a for a, b in itertools.pairwise(decay)) and decay[0] == pytest.approx(1e-3)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.05)  # ends at the minimum
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 2 and saved["global_step"] == 6  # the last epoch was checkpointed


def test_a_resumed_budget_run_continues_the_same_budget(shapes, tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    _budget_fit(shapes, tmp_path / "whole", clock)
    whole = list(clock.lrs)

    clock = FakeClock(monkeypatch)
    _budget_fit(shapes, tmp_path / "cut", clock, StopAfter(2))  # killed after epoch 2 (12 s)
    first = list(clock.lrs)
    clock = FakeClock(monkeypatch)  # a new process: the clock starts anew; the Timer's state says 12 s
    trainer = _budget_fit(shapes, tmp_path / "cut", clock, ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    assert trainer.current_epoch == 3 and clock.now - 1000.0 == 6.0  # 12 + 6 = the same 18 s
    assert first + clock.lrs == pytest.approx(whole)  # the same schedule, step for step
