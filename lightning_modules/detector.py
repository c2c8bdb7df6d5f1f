"""The reference one-stage detector as a LightningModule.

``OneStageDetector`` wires :class:`~lightning_modules.models.DenseDetectorModel` (backbone,
FPN/PAN neck, dense anchor-free head) to a :class:`detlosses.DetectionCriterion` built from a
recipe name or a component config, and evaluates with an ``NMS`` registry module (``MultiClassNMS``)
and :func:`detlosses.evaluation.coco_evaluate`. Nothing here re-implements a loss, an
assigner or NMS.

Batches are ``(images (B, 3, S, S), targets)`` as produced by
:class:`~lightning_modules.data.COCODataModule`; each target carries ``image_id``,
``orig_size (h, w)``, ``scale`` and ``pad (x, y)`` so that detections map back to the original
image as ``(xy - pad) / scale``. Before NMS, boxes are clipped to the image region of the
letterboxed input (``pad`` to ``pad + size * scale``), so that no detection lies in the padding;
boxes that end up empty are dropped and counted (``val/dropped_boxes``).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities import rank_zero_warn

import detlosses.assigners  # noqa: F401  (registers the assigners the recipes name)
from detlosses.criterion import DetectionCriterion
from detlosses.evaluation import STAT_NAMES
from detlosses.nms import Detections
from detlosses.registry import NMS

from .models import DenseDetectorModel, DenseOutput
from .schedule import WarmupCosine, epochs_that_fit

__all__ = [
    "OneStageDetector",
    "build_criterion",
    "clip_to_regions",
    "coco_results",
    "image_regions",
    "to_original",
]

OPTIMIZERS = ("adamw", "sgd")
_FIRST_ESTIMATE_BATCHES = 20  # time-budget mode: first length estimate after this many batches
_VALIDATION_GUESS = 1.2  # ... taking validation as 20 % of an epoch until one is measured
DEFAULT_NMS = {"type": "MultiClassNMS", "score_thr": 0.01, "iou_thr": 0.6, "max_det": 100, "pre_nms_topk": 1000}


def build_criterion(criterion: str | Mapping[str, Any], num_classes: int, reg_max: int) -> DetectionCriterion:
    """A ``DetectionCriterion`` from a recipe name or a config dict.

    A dict with a ``"recipe"`` key overrides that recipe's components
    (``{"recipe": "tood", "assigner": {...}}``); any other dict is the full set of
    ``DetectionCriterion`` keyword arguments. ``num_classes`` and ``reg_max`` come from the
    detector so that the loss always matches the head.
    """
    if isinstance(criterion, str):
        return DetectionCriterion.from_recipe(criterion, num_classes=num_classes, reg_max=reg_max)
    if not isinstance(criterion, Mapping):
        raise ValueError(f"criterion must be a recipe name or a dict, got {type(criterion).__name__}")
    cfg = dict(criterion)
    clashes = {"num_classes", "reg_max"} & set(cfg)
    if clashes:
        raise ValueError(f"criterion config must not set {sorted(clashes)}; they come from the detector")
    recipe = cfg.pop("recipe", None)
    if recipe is not None:
        return DetectionCriterion.from_recipe(recipe, num_classes=num_classes, reg_max=reg_max, **cfg)
    return DetectionCriterion(num_classes=num_classes, reg_max=reg_max, **cfg)


def _warn_if_bf16_is_emulated() -> None:
    """bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX) is emulated by oneDNN and
    trains several times slower than float32 (an AVX2-only CPU: 3.5-9x); say so at set-up."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return  # the capability queries below speak of x86 instruction sets only
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if None not in probes and not any(probe() for probe in probes):
        rank_zero_warn(
            "trainer.precision is bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): it is "
            "emulated and trains several times slower than float32; use --trainer.precision 32 here"
        )


def coco_results(det: Detections, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` of one image.

    ``det`` holds xyxy boxes in original image pixels and contiguous labels;
    ``category_ids[label]`` is the COCO category id (the label itself when None).
    """
    boxes = det.boxes.float()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()  # (K, 4)
    labels = det.labels.tolist()
    cats = labels if category_ids is None else [int(category_ids[label]) for label in labels]
    return [
        {"image_id": int(image_id), "category_id": cat, "bbox": box, "score": float(score)}
        for box, cat, score in zip(xywh, cats, det.scores.tolist(), strict=True)
    ]


def image_regions(targets: Sequence[Mapping[str, Any]], device: torch.device | None = None) -> torch.Tensor:
    """``(B, 4)`` xyxy region of each original image inside its letterboxed network input:
    ``pad`` to ``pad + (w, h) * scale``, from the targets' ``pad``, ``scale`` and ``orig_size (h, w)``."""
    rows = []
    for target in targets:
        (h, w), scale, (pad_x, pad_y) = target["orig_size"], float(target["scale"]), target["pad"]
        rows.append((pad_x, pad_y, pad_x + float(w) * scale, pad_y + float(h) * scale))
    return torch.tensor(rows, dtype=torch.float32, device=device).reshape(-1, 4)


def clip_to_regions(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """``boxes (B, A, 4)`` xyxy clipped to ``regions (B, 4)`` xyxy, one region per image."""
    low = regions[:, None, [0, 1, 0, 1]]  # (B, 1, 4)
    high = regions[:, None, [2, 3, 2, 3]]
    return torch.minimum(torch.maximum(boxes, low), high)


def to_original(det: Detections, target: Mapping[str, Any]) -> tuple[Detections, int]:
    """``det`` mapped from network-input pixels to the original image, ``(xy - pad) / scale``,
    clamped to it; boxes left with no width or height are dropped. Returns the detections and the
    number dropped."""
    h, w = (float(v) for v in target["orig_size"])
    pad = det.boxes.new_tensor(tuple(target["pad"])).repeat(2)  # (4,) x, y, x, y
    boxes = (det.boxes.float() - pad) / float(target["scale"])
    boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor((w, h)).repeat(2))  # (K, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (K,)
    if bool(keep.all()):
        return Detections(boxes=boxes, scores=det.scores, labels=det.labels), 0
    return Detections(boxes=boxes[keep], scores=det.scores[keep], labels=det.labels[keep]), int((~keep).sum())


class OneStageDetector(pl.LightningModule):
    """Dense anchor-free detector trained with a ``DetectionCriterion``.

    Args:
        num_classes: number of foreground classes C (linked from the data module by the CLI).
        size: model width/depth preset, ``"n"``, ``"s"`` or ``"m"``.
        head: head type of ``DenseDetectorModel`` (``"tood"`` task-aligned or ``"decoupled"``).
        reg_max: DFL distances span ``[0, reg_max]`` strides (``reg_max + 1`` bins a side).
        criterion: recipe name (``"tood"``, ``"gfl"``, ``"ppyoloe"``, ``"yolov8"``) or a
            ``DetectionCriterion`` config dict (see :func:`build_criterion`).
        lr: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay; biases and norm
            parameters get none.
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov, ``momentum``).
        momentum: SGD momentum.
        warmup_epochs: linear warm-up length in epochs (fractions allowed); then cosine decay
            to ``lr * min_lr_ratio`` at the last step. Stepped every optimiser step. With
            ``trainer.max_time`` and no ``max_epochs`` / ``max_steps`` the run is a time budget:
            the number of epochs that fit (validation included) is estimated after the first
            batches and re-estimated after every epoch from the measured epoch times, the decay
            is stretched or shrunk to match without a jump (:class:`~.schedule.WarmupCosine`),
            and training stops after the last epoch whose validation and checkpoint still fit.
        warmup_start: learning-rate factor at step 0 of the warm-up.
        min_lr_ratio: final learning-rate factor of the cosine decay.
        nms: ``NMS`` registry config for validation and prediction, merged over
            ``{"type": "MultiClassNMS", "score_thr": 0.01, "iou_thr": 0.6, "max_det": 100,
            "pre_nms_topk": 1000}`` (so ``{"score_thr": 0.001}`` changes only that).
        class_names: class names in contiguous order (filled from the data module if None).
        category_ids: COCO category id of each contiguous class (same).
    """

    def __init__(
        self,
        num_classes: int,
        size: str = "n",
        head: str = "tood",
        reg_max: int = 16,
        criterion: str | dict[str, Any] = "tood",
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        warmup_epochs: float = 1.0,
        warmup_start: float = 0.01,
        min_lr_ratio: float = 0.05,
        nms: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        for name, names in (("class_names", class_names), ("category_ids", category_ids)):
            if names is not None and len(names) != num_classes:
                raise ValueError(f"{name} must have num_classes = {num_classes} entries, got {len(names)}")
        self.save_hyperparameters()
        self.model = DenseDetectorModel(num_classes, size=size, reg_max=reg_max, head=head)
        self.criterion = build_criterion(criterion, num_classes, reg_max)
        self.nms = NMS.build({**DEFAULT_NMS, **(nms or {})})
        self._val_preds: dict[int, list[dict[str, Any]]] = {}
        self._schedule: WarmupCosine | None = None
        self._budget: Timer | None = None  # the trainer's Timer in time-budget mode
        self._epoch_seconds: list[float] = []  # measured epochs (train + validation), budget mode
        self._epoch_start = 0.0

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        """Take class names and COCO category ids from the data module when not given; warn
        when bf16 runs on a CPU that can only emulate it."""
        if self.trainer.strategy.root_device.type == "cpu" and str(self.trainer.precision).startswith("bf16"):
            _warn_if_bf16_is_emulated()
        datamodule = self.trainer.datamodule
        for name in ("class_names", "category_ids"):
            if self.hparams.get(name) is None and getattr(datamodule, name, None) is not None:
                self.hparams[name] = list(getattr(datamodule, name))

    def forward(self, images: torch.Tensor) -> DenseOutput:
        """``DenseOutput`` of the model for ``images (B, 3, S, S)`` in [0, 1]."""
        return self.model(images)

    # ------------------------------------------------------------------ training
    def _losses(self, out: DenseOutput, targets: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self.criterion(
            out.cls_logits, out.box_preds, out.box_dist_logits, out.anchor_points, out.strides, targets
        )

    def training_step(self, batch: tuple[torch.Tensor, list[dict[str, Any]]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self._losses(self.model(images), targets)
        loss = losses["loss"]
        # Every rank must agree, or the healthy ranks would wait for the failed one forever.
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"loss is not finite at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}) on some rank: {parts}. Training stopped; lower the learning "
                f"rate, raise the warm-up or check the data."
            )
        self.log_dict(
            {f"train/{k}": v.float() for k, v in losses.items()},
            batch_size=len(images),
            prog_bar=False,
        )
        self.log("loss", loss.detach(), batch_size=len(images), prog_bar=True, logger=False)
        return loss

    def on_train_epoch_start(self) -> None:
        self.criterion.set_epoch(self.current_epoch)  # the recipe's warm-up phase, if any
        self._epoch_start = time.monotonic()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (decay if param.ndim > 1 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        else:
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)

        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        self._budget = None
        if not math.isfinite(total):
            self._budget = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
            if self._budget is None or self._budget.time_remaining() is None:
                raise ValueError(
                    "the LR schedule needs a length: set trainer.max_epochs, trainer.max_steps or "
                    "trainer.max_time (a time budget)"
                )
        if not math.isfinite(trainer.num_training_batches):  # max_steps given: not loaded yet
            trainer.fit_loop.setup_data()
        warmup = round(hp.warmup_epochs * self._steps_per_epoch())
        if self._budget is not None:
            total = warmup + self._steps_per_epoch()  # a first guess; re-estimated once timed
        warmup = min(int(total), warmup)
        self._schedule = WarmupCosine(int(total), warmup, hp.warmup_start, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))

    # ------------------------------------------------------------------ time budget
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._budget is None or self._epoch_seconds or batch_idx + 1 != _FIRST_ESTIMATE_BATCHES:
            return
        # First estimate, from the first batches of the first epoch: the whole epoch takes
        # batches x time per batch, plus a guess for its validation.
        per_batch = (time.monotonic() - self._epoch_start) / (batch_idx + 1)
        epoch_s = per_batch * self.trainer.num_training_batches * _VALIDATION_GUESS
        rest_of_epoch = epoch_s - (time.monotonic() - self._epoch_start)
        self._plan(epochs_that_fit(self._budget.time_remaining() - rest_of_epoch, [epoch_s]), epochs_done=0)

    def on_train_epoch_end(self) -> None:
        if self._budget is None:
            return
        self._epoch_seconds.append(time.monotonic() - self._epoch_start)  # validation included
        self._plan(epochs_that_fit(self._budget.time_remaining(), self._epoch_seconds), epochs_done=1)

    def _plan(self, epochs_left: int, epochs_done: int) -> None:
        """Stretch the schedule to end after ``epochs_left`` more epochs (after this one, if
        ``epochs_done``), and stop when none is left. Rank 0 decides for every rank."""
        epochs_left = self.trainer.strategy.broadcast(epochs_left, src=0)
        epochs_total = self.current_epoch + epochs_done + epochs_left
        self._schedule.retarget(self.global_step, epochs_total * self._steps_per_epoch())
        if epochs_done and epochs_left == 0:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["epoch_seconds"] = list(self._epoch_seconds)  # the schedule is in the LR scheduler's state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._epoch_seconds = list(checkpoint.get("epoch_seconds", []))

    # ------------------------------------------------------------------ inference
    def _detect(self, out: DenseOutput, targets: Sequence[Mapping[str, Any]]) -> tuple[list[Detections], int]:
        """Detections in network-input pixels, clipped to each image's region before NMS, and the
        number of candidate boxes dropped because nothing of them lies inside the image."""
        boxes = clip_to_regions(out.box_preds.float(), image_regions(targets, out.box_preds.device))  # (B, A, 4)
        empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])  # (B, A)
        scores = out.cls_logits.float().sigmoid()  # (B, A, C)
        dropped = int((scores[empty].amax(-1) > self.nms.settings.score_thr).sum())  # empty anchors only
        return self.nms(boxes, scores.masked_fill(empty[..., None], 0.0)), dropped

    def detect(self, out: DenseOutput, targets: Sequence[Mapping[str, Any]]) -> tuple[list[Detections], int]:
        """Detections in original image pixels and the number of boxes dropped as empty."""
        dets, dropped = self._detect(out, targets)
        mapped = []
        for det, target in zip(dets, targets, strict=True):
            det, n = to_original(det, target)
            mapped.append(det)
            dropped += n
        return mapped, dropped

    def validation_step(self, batch: tuple[torch.Tensor, list[dict[str, Any]]], batch_idx: int) -> None:
        images, targets = batch
        out = self.model(images)
        losses = self._losses(out, targets)
        self.log_dict({f"val/{k}": v.float() for k, v in losses.items()}, batch_size=len(images), sync_dist=True)
        dets, dropped = self.detect(out, targets)
        self.log("val/dropped_boxes", float(dropped), reduce_fx="sum", batch_size=len(images), sync_dist=True)
        for det, target in zip(dets, targets, strict=True):
            image_id = int(target["image_id"])
            self._val_preds[image_id] = coco_results(det, image_id, self.hparams.get("category_ids"))

    def on_validation_epoch_start(self) -> None:
        self._val_preds = {}

    def on_validation_epoch_end(self) -> None:
        """COCO mAP over the whole validation set, once, on rank 0; logged on every rank."""
        preds, self._val_preds = self._val_preds, {}
        if self.trainer.sanity_checking:
            return
        # DistributedSampler pads with repeats: key by image_id and keep one copy of each image.
        per_rank = [preds]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, preds)
        merged: dict[int, list[dict[str, Any]]] = {}
        for rank_preds in per_rank:
            for image_id, dets in rank_preds.items():
                merged.setdefault(image_id, dets)

        stats = None
        if self.trainer.is_global_zero:
            stats = self._coco_stats([d for image_id in sorted(merged) for d in merged[image_id]])
        stats = self.trainer.strategy.broadcast(stats, src=0)
        self.log_dict({f"val/{k}": float(v) for k, v in stats.items()}, sync_dist=False)
        self.log("val/num_images", float(len(merged)), sync_dist=False)

    def _coco_stats(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        from detlosses.evaluation import coco_evaluate

        datamodule = getattr(self.trainer, "datamodule", None)
        # the data module's parsed json (read once per run), else its annotation file
        ground_truth = getattr(datamodule, "val_coco", None) or getattr(datamodule, "val_ann", None)
        if ground_truth is None:
            raise ValueError("validation needs the COCO ground truth: a data module with a val_ann attribute")
        report = coco_evaluate(ground_truth, predictions, classwise=False)
        return {k: float(report.stats[k]) for k in STAT_NAMES}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[Detections]:
        """Detections per image in original image pixels (boxes xyxy, scores, contiguous labels)."""
        images, targets = batch
        return self.detect(self.model(images), targets)[0]
