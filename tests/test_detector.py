"""OneStageDetector in-process: schedule, coordinate mapping, short fits, NaN stop, COCO validation."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from detlosses.nms import Detections
from lightning_modules import COCODataModule, OneStageDetector
from lightning_modules.detector import build_criterion, coco_results, warmup_cosine_factor
from lightning_modules.shapes import make_shapes

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 8 training images (2 batches of 4), 5 validation images.
    return make_shapes(str(tmp_path_factory.mktemp("shapes")), num_train=8, num_val=5, image_size=IMAGE_SIZE, seed=0)


def _datamodule(shapes, image_size: int = IMAGE_SIZE) -> COCODataModule:
    return COCODataModule(
        shapes["train_ann"], shapes["train_images"], shapes["val_ann"], shapes["val_images"],
        image_size=image_size, batch_size=4, num_workers=0,
    )


def _trainer(**kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**options, **kwargs})


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


# --------------------------------------------------------------------------- pure helpers
def test_warmup_cosine_factor_by_hand():
    # warm-up 10 of 110 steps from 0.1: step 5 -> 0.1 + 0.9 * 5 / 10 = 0.55
    assert warmup_cosine_factor(0, 110, 10, 0.1, 0.05) == pytest.approx(0.1)
    assert warmup_cosine_factor(5, 110, 10, 0.1, 0.05) == pytest.approx(0.55)
    assert warmup_cosine_factor(10, 110, 10, 0.1, 0.05) == pytest.approx(1.0)
    # half-way through the cosine (step 60): 0.05 + 0.95 * (1 + cos(pi / 2)) / 2 = 0.525
    assert warmup_cosine_factor(60, 110, 10, 0.1, 0.05) == pytest.approx(0.525)
    assert warmup_cosine_factor(110, 110, 10, 0.1, 0.05) == pytest.approx(0.05)
    # a quarter: 0.05 + 0.95 * (1 + cos(pi / 4)) / 2
    assert warmup_cosine_factor(35, 110, 10, 0.1, 0.05) == pytest.approx(0.05 + 0.95 * (1 + math.sqrt(0.5)) / 2)
    assert warmup_cosine_factor(0, 100, 0, 0.1, 0.0) == pytest.approx(1.0)  # no warm-up


def test_build_criterion_forms():
    recipe = build_criterion("gfl", 3, 16)
    assert type(recipe.assigner).__name__ == "ATSSAssigner" and recipe.dfl_loss is not None
    override = build_criterion({"recipe": "tood", "assigner": {"type": "ATSSAssigner", "topk": 9}}, 3, 8)
    assert type(override.assigner).__name__ == "ATSSAssigner" and override.reg_max == 8
    full = build_criterion(
        {"assigner": "TaskAlignedAssigner", "cls_loss": "VarifocalLoss", "box_loss": "CIoULoss", "dfl_loss": None},
        3, 16,
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
    mapped = OneStageDetector._to_original(det, target)
    # (3.2 - 0) / 0.32 = 10, (19.2 - 16) / 0.32 = 10, 35.2 / 0.32 = 110, (35.2 - 16) / 0.32 = 60;
    # second box: (-5 / 0.32 -> clip 0, (10 - 16) / 0.32 -> clip 0, 70 / 0.32 = 218.75 -> clip 200,
    # (60 - 16) / 0.32 = 137.5 -> clip 100).
    torch.testing.assert_close(mapped.boxes, torch.tensor([[10.0, 10.0, 110.0, 60.0], [0.0, 0.0, 200.0, 100.0]]))
    results = coco_results(mapped, 7, category_ids=[5, 9])
    assert [r["category_id"] for r in results] == [9, 5]
    assert results[0]["image_id"] == 7 and results[0]["score"] == pytest.approx(0.9)
    assert results[0]["bbox"] == pytest.approx([10.0, 10.0, 100.0, 50.0])  # x, y, w = 110 - 10, h = 60 - 10


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

    def validation_step(self, batch, batch_idx):
        self._targets = batch[1]
        return super().validation_step(batch, batch_idx)

    def _detect(self, out):
        return [Detections(t["boxes"], torch.ones(len(t["labels"])), t["labels"]) for t in self._targets]


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
    model = OneStageDetector(dm.num_classes, score_thr=0.0)
    batches = _trainer().predict(model, datamodule=dm)
    dets = [det for batch in batches for det in batch]
    assert len(dets) == 5
    for det in dets:
        assert isinstance(det, Detections) and len(det.boxes) > 0
        assert det.boxes.min() >= 0 and det.boxes.max() <= IMAGE_SIZE  # original images are 64 px
        assert det.labels.max() < dm.num_classes
