"""Lightning callbacks of the reference detector.

``AssignmentVisualizer`` watches the label assignment during training. Off by default; turn
it on with one line, on the command line::

    detlosses-train fit --config configs/shapes_tood.yaml \
        --trainer.callbacks+=lightning_modules.callbacks.AssignmentVisualizer

or in a config's ``trainer.callbacks`` list::

    - class_path: lightning_modules.callbacks.AssignmentVisualizer
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from detlosses.visualization import assignment_summary, render

from .data import collate_fn
from .viz_cli import Assignment, Predictions, assign, detector_predictions, draw_image

__all__ = ["AssignmentVisualizer"]


class AssignmentVisualizer(Callback):
    """Draw and summarise what the detector's assigner does on fixed validation images.

    In every validation epoch (not the sanity check), on the first ``num_stat_images``
    validation images (letterboxed as in validation, the model as validation runs it — EMA
    weights when averaging, eval mode), the criterion's current assigner
    (``criterion.active_assigner``, so a warm-up assigner during its epochs) assigns the
    model's predictions, and the positives per GT are logged
    (:func:`detlosses.visualization.assignment_summary`):

    * ``assign/pos_per_gt_mean``, ``assign/pos_per_gt_min``, ``assign/gt_without_pos`` (share
      of GTs that won no anchor), and the same per level as ``assign/s<stride>/...``.

    Every ``every_n_epochs`` validation epochs, the drawings of ``num_images`` fixed images (the
    first of the validation set, or ``image_ids``) go to
    ``<out_dir>/epoch<NNN>/<image id>_assign.png`` with the per-GT rows in ``assignment.json``
    there, and to the logger when it takes images (a ``log_image`` method, or TensorBoard's
    ``experiment.add_image``), as ``assign/<image id>``.

    Args:
        every_n_epochs: draw every this many validation epochs (0: statistics only).
        num_images: images drawn (ignored when ``image_ids`` is given).
        image_ids: COCO ids of the images to draw.
        num_stat_images: images the statistics are computed on (the drawn ones are added).
        out_dir: where the drawings go; default ``<trainer.log_dir or default_root_dir>/assign``.
        log_images: also send the drawings to the logger.
        batch_size: images per forward pass.
        dpi: drawing resolution.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 4,
        image_ids: list[int] | None = None,
        num_stat_images: int = 32,
        out_dir: str | None = None,
        log_images: bool = True,
        batch_size: int = 16,
        dpi: float = 80,
    ) -> None:
        super().__init__()
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_images", num_images),
            ("num_stat_images", num_stat_images),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.image_ids = None if image_ids is None else [int(i) for i in image_ids]
        self.num_stat_images = num_stat_images
        self.out_dir = out_dir
        self.log_images = log_images
        self.batch_size = batch_size
        self.dpi = dpi

    # ------------------------------------------------------------------ selection
    def _positions(self, dataset: Any) -> tuple[list[int], list[int]]:
        """Dataset positions of the drawn images and of the statistics images."""
        ids = dataset.image_ids
        if self.image_ids is None:
            drawn = list(range(min(self.num_images, len(ids))))
        else:
            position = {image_id: i for i, image_id in enumerate(ids)}
            unknown = [i for i in self.image_ids if i not in position]
            if unknown:
                raise ValueError(f"AssignmentVisualizer image_ids {unknown} are not in the validation set")
            drawn = [position[i] for i in self.image_ids]
        stats = list(dict.fromkeys([*range(min(self.num_stat_images, len(ids))), *drawn]))
        return drawn, stats

    def _directory(self, trainer: pl.Trainer) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "assign"

    # ------------------------------------------------------------------ hook
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Inside the validation loop, after its first batch: the model is then exactly as validation
        # runs it, whatever the callback order (WeightAveraging swaps its averaged weights in at the
        # validation epoch's start and out at its end).
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        self._watch(trainer, pl_module)

    def _watch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(trainer.datamodule, "val_dataset", None) if trainer.datamodule is not None else None
        if dataset is None:
            raise ValueError("AssignmentVisualizer needs a data module with a val_dataset (COCODataModule)")
        drawn, stat_positions = self._positions(dataset)
        epoch = trainer.current_epoch
        draw = self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0 and trainer.is_global_zero
        assigner = pl_module.criterion.active_assigner
        num_classes = pl_module.criterion.num_classes
        names = pl_module.hparams.get("class_names")
        counts: dict[str, list[float]] = {}
        tables: dict[str, Any] = {}
        out = self._directory(trainer) / f"epoch{epoch:03d}"
        for start in range(0, len(stat_positions), self.batch_size):
            chunk = stat_positions[start : start + self.batch_size]
            images, targets = collate_fn([dataset[i] for i in chunk])
            preds = detector_predictions(pl_module, images)
            assignment, (_, _, gt_mask) = assign(assigner, preds, targets, num_classes)
            stats = assignment_summary(assignment.result, preds.strides, gt_mask)
            for key, value in stats.items():
                counts.setdefault(key, []).append(value)
            if not draw:
                continue
            for b, position in enumerate(chunk):
                if position in drawn:
                    image_id = int(targets[b]["image_id"])
                    tables[str(image_id)] = self._draw(
                        trainer, out, images, targets, preds, assignment, b, image_id, names, epoch
                    )
        if tables:
            (out / "assignment.json").write_text(
                json.dumps({"epoch": epoch, "assigner": repr(assigner), "images": tables}, indent=2) + "\n"
            )
        if counts:
            pl_module.log_dict(_combine(counts), sync_dist=False)  # same images on every rank

    def _draw(
        self,
        trainer: pl.Trainer,
        out: Path,
        images: torch.Tensor,
        targets: list[dict[str, Any]],
        preds: Predictions,
        assignment: Assignment,
        index: int,
        image_id: int,
        names: list[str] | None,
        epoch: int,
    ) -> list[dict[str, Any]]:
        """Write (and log) the drawing of image ``index`` of the batch; returns its per-GT rows."""
        rows, fig = draw_image(
            images, targets, preds, assignment, index, names, title=f"epoch {epoch}, image {image_id}", dpi=self.dpi
        )
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"{image_id}_assign.png")
        if self.log_images and trainer.loggers:
            image = render(fig)
            for logger in trainer.loggers:
                _log_image(logger, f"assign/{image_id}", image, trainer.global_step)
        return [row.as_dict() for row in rows]


def _combine(per_batch: dict[str, list[float]]) -> dict[str, float]:
    """Batch statistics -> statistics over all the images: means weighted by the GT count."""
    weights = np.asarray(per_batch["num_gt"])
    stats = {"assign/num_gt": float(weights.sum())}
    for key, values in per_batch.items():
        if key == "num_gt":
            continue
        values = np.asarray(values)
        combined = values.min() if key.endswith("_min") else (values * weights).sum() / weights.sum()
        stats[f"assign/{key}"] = float(combined)
    return stats


def _log_image(logger: Any, tag: str, image: np.ndarray, step: int) -> None:
    """Send an (H, W, 3) uint8 image to a logger that takes images; others are skipped."""
    if hasattr(logger, "log_image"):  # e.g. WandbLogger, NeptuneLogger
        logger.log_image(key=tag, images=[image], step=step)
    elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
        logger.experiment.add_image(tag, image, step, dataformats="HWC")
