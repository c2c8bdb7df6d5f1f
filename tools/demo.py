"""The main job on one CPU: shapes data -> train the default detector -> COCO table.

    python tools/demo.py [--out runs/shapes_tood] [--data data/shapes] [--config configs/shapes_tood.yaml]
                         [--resume] [any detlosses-train fit option, e.g. --trainer.max_time 00:00:10:00
                         or --trainer.max_epochs 15]

1. Writes the synthetic shapes set to ``--data`` unless it is already there
   (:func:`lightning_modules.shapes.make_shapes`: 800 training and 200 validation images of
   320 px, up to 10 shapes of 10-96 px each on cluttered backgrounds).
2. Trains ``--config`` with LightningCLI (the same as ``detlosses-train fit``) into ``--out``
   (the default config: a 10-minute time budget); after every validation it prints the elapsed
   time and the COCO AP of the EMA weights.
3. Evaluates the best checkpoint (by val/AP) on the validation set and prints pycocotools'
   summary, the per-class table and the wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer

from detlosses.evaluation import COCOReport, coco_evaluate
from lightning_modules.data import COCODataModule
from lightning_modules.inference import load_detector, predict_coco_results
from lightning_modules.shapes import make_shapes
from lightning_modules.train_cli import build_cli, checkpoint_dir


class ProgressReport(pl.Callback):
    """Prints ``epoch, time, AP, AP50`` after every validation (COCO AP of the EMA weights).

    The time is the budget's: Lightning's ``Timer`` (training time, carried over by a resumed
    run) when ``trainer.max_time`` is set, else the seconds since training started.
    """

    def __init__(self) -> None:
        self.timer: Timer | None = None
        self.start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        self.start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or "val/AP" not in metrics:
            return
        seconds = self.timer.time_elapsed() if self.timer is not None else time.monotonic() - self.start
        print(
            f"[demo] epoch {trainer.current_epoch + 1:3d}  {seconds:7.1f} s  "
            f"mAP50-95 {float(metrics['val/AP']):.3f}  mAP50 {float(metrics['val/AP50']):.3f}",
            flush=True,
        )


def evaluate_checkpoint(ckpt_path: str, datamodule: COCODataModule) -> COCOReport:
    """COCO evaluation of a checkpoint on the data module's validation set (one process)."""
    model = load_detector(ckpt_path)
    results = predict_coco_results(
        model, datamodule.val_ann, datamodule.val_images, datamodule.image_size, datamodule.batch_size
    )
    return coco_evaluate(datamodule.val_ann, results, classwise=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/shapes_tood", help="trainer.default_root_dir")
    parser.add_argument("--data", default="data/shapes", help="shapes data folder (generated if missing)")
    parser.add_argument("--config", default="configs/shapes_tood.yaml")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    args, fit_overrides = parser.parse_known_args(argv)
    start = time.perf_counter()
    ann = {split: os.path.join(args.data, "annotations", f"{split}.json") for split in ("train", "val")}
    if not all(os.path.exists(path) for path in ann.values()):
        print(f"[demo] writing the shapes data set to {args.data}", flush=True)
        make_shapes(
            args.data, args.num_train, args.num_val, args.image_size, seed=0, max_objects=10, size_range=(0.03, 0.3)
        )
    if not args.resume:
        shutil.rmtree(checkpoint_dir(args.out), ignore_errors=True)

    cli = build_cli(
        [
            "--config",
            args.config,
            "--trainer.default_root_dir",
            args.out,
            "--data.train_ann",
            ann["train"],
            "--data.train_images",
            os.path.join(args.data, "train"),
            "--data.val_ann",
            ann["val"],
            "--data.val_images",
            os.path.join(args.data, "val"),
            "--trainer.enable_progress_bar",
            "false",
            *fit_overrides,
        ],
        run=False,
    )
    cli.trainer.callbacks.append(ProgressReport())
    fit_start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path="last" if args.resume else None)
    fit_end = time.perf_counter()

    best = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    print(f"\n[demo] evaluating {best}", flush=True)
    report = evaluate_checkpoint(best, cli.datamodule)
    print(report.summary)
    print()
    print(report.format_per_class())
    end = time.perf_counter()
    print(
        f"\n[demo] mAP50-95 {report.stats['AP']:.3f}  mAP50 {report.stats['AP50']:.3f}  "
        f"data {fit_start - start:.0f} s  training {fit_end - fit_start:.0f} s  evaluation {end - fit_end:.0f} s  "
        f"total {end - start:.0f} s ({(end - start) / 60:.1f} min)"
    )


if __name__ == "__main__":
    main()
