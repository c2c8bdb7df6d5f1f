"""GPU check suite: what the project's CPU-only machines cannot run (``make gpu-check``).

    python tools/gpu_check.py [--skip-throughput] [--device cuda]

1. every recipe trains a few steps in ``16-mixed`` and in ``bf16-mixed`` with finite losses;
2. ``DetectionCriterion`` under CUDA autocast fp16 equals fp32 on the same (fp16-rounded)
   inputs within 1e-3 relative, every term of every recipe;
3. ``TaskAlignedAssigner``, ``ATSSAssigner`` and ``multiclass_nms`` give on CUDA what they give
   on the CPU (masks, indices and kept boxes identical, scores within 1e-5);
4. with two GPUs or more: ``detlosses-train`` with ``strategy: ddp`` (NCCL) on 2 GPUs gives the
   val mAP of 1 GPU on the same checkpoint;
5. a throughput table: training and inference images per second at 640 px for sizes n, s, m.

Exit status: 0 when every check passed, 1 when one failed, 3 when there is no CUDA device (then
nothing runs). ``--device cpu`` runs checks 1-3 on the CPU (``bf16-mixed`` and fp16 autocast on
the CPU) to check the suite itself; the tests do that.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

EXIT_FAILED, EXIT_NO_CUDA = 1, 3
RECIPES = ("tood", "gfl", "ppyoloe", "yolov8")


def _shapes(root: str) -> dict[str, str]:
    from lightning_modules.shapes import make_shapes

    return make_shapes(os.path.join(root, "shapes"), num_train=16, num_val=8, image_size=128, seed=0)


def check_recipes_train(device: str, root: str) -> str:
    """A few training steps of every recipe in each mixed precision; every loss finite."""
    import pytorch_lightning as pl

    from lightning_modules import COCODataModule, OneStageDetector

    class Losses(pl.Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.values.append(float(outputs["loss"]))

    shapes = _shapes(root)
    precisions = ("16-mixed", "bf16-mixed") if device == "cuda" else ("bf16-mixed",)
    done = []
    for recipe in RECIPES:
        for precision in precisions:
            pl.seed_everything(0)
            dm = COCODataModule(
                shapes["train_ann"], shapes["train_images"], shapes["val_ann"], shapes["val_images"],
                image_size=128, batch_size=4, num_workers=0,
            )  # fmt: skip
            model = OneStageDetector(dm.num_classes, criterion=recipe, warmup_epochs=0.0)
            losses = Losses()
            trainer = pl.Trainer(
                accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision, max_steps=3,
                limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, callbacks=[losses],
            )  # fmt: skip
            trainer.fit(model, datamodule=dm)
            if len(losses.values) != 3 or not all(math.isfinite(v) for v in losses.values):
                raise AssertionError(f"{recipe} {precision}: losses {losses.values}")
            done.append(f"{recipe}/{precision}")
    return "finite losses: " + ", ".join(done)


def _criterion_inputs(device: str, num_classes: int = 80, reg_max: int = 16, image_size: int = 320):
    """Head-like outputs for 2 images at ``image_size`` px (strides 8/16/32) and random targets."""
    generator = torch.Generator().manual_seed(0)
    points, strides = [], []
    for stride in (8, 16, 32):
        cells = torch.arange(image_size // stride, dtype=torch.float32) * stride + stride / 2
        ys, xs = torch.meshgrid(cells, cells, indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()], 1))
        strides.append(torch.full((len(points[-1]),), float(stride)))
    anchor_points, strides = torch.cat(points), torch.cat(strides)  # (A, 2), (A,)
    num = len(anchor_points)
    cls_logits = torch.randn(2, num, num_classes, generator=generator) - 3.0
    sides = torch.rand(2, num, 4, generator=generator) * 4.0 * strides[None, :, None]
    box_preds = torch.cat([anchor_points - sides[..., :2], anchor_points + sides[..., 2:]], -1)
    dist_logits = torch.randn(2, num, 4 * (reg_max + 1), generator=generator)
    targets = []
    for count in (7, 0):
        xy = torch.rand(count, 2, generator=generator) * image_size * 0.7
        wh = 8.0 + torch.rand(count, 2, generator=generator) * image_size * 0.3
        targets.append({
            "boxes": torch.cat([xy, xy + wh], 1).to(device),
            "labels": torch.randint(0, num_classes, (count,), generator=generator).to(device),
        })  # fmt: skip
    tensors = [t.to(device) for t in (cls_logits, box_preds, dist_logits, anchor_points, strides)]
    return tensors, targets


def check_criterion_autocast(device: str, root: str) -> str:
    """Every recipe's terms under fp16 autocast equal fp32 on the same fp16-rounded inputs."""
    from detlosses import DetectionCriterion

    (cls_logits, box_preds, dist_logits, points, strides), targets = _criterion_inputs(device)
    half = [t.half() for t in (cls_logits, box_preds, dist_logits)]  # what an fp16 head would give
    worst = 0.0
    for recipe in RECIPES:
        reg_max = 15 if recipe == "yolov8" else 16
        criterion = DetectionCriterion.from_recipe(recipe, num_classes=80, reg_max=reg_max).to(device)
        dist = [t[..., : 4 * (reg_max + 1)] for t in half[2:]]
        reference = criterion(half[0].float(), half[1].float(), dist[0].float(), points, strides, targets)
        with torch.autocast(device, dtype=torch.float16):
            mixed = criterion(half[0], half[1], dist[0], points, strides, targets)
        for key in ("loss", "loss_cls", "loss_box", "loss_dfl"):
            ref, got = float(reference[key]), float(mixed[key])
            rel = abs(got - ref) / max(abs(ref), 1e-12)
            if not math.isfinite(got) or rel > 1e-3:
                raise AssertionError(f"{recipe} {key}: fp32 {ref}, fp16 autocast {got} (rel {rel:.2e})")
            worst = max(worst, rel)
    return f"fp16 autocast = fp32 within {worst:.1e} relative"


def check_same_as_cpu(device: str, root: str) -> str:
    """Assigners and NMS on ``device`` give the CPU's results."""
    from detlosses.assigners import ATSSAssigner, TaskAlignedAssigner
    from detlosses.criterion import pad_targets
    from detlosses.nms import multiclass_nms

    (cls_logits, box_preds, _, points, strides), targets = _criterion_inputs("cpu")
    gt = pad_targets(targets, 80, torch.device("cpu"))
    scores = cls_logits.sigmoid()
    for assigner in (TaskAlignedAssigner(topk=13), ATSSAssigner(topk=9)):
        on_cpu = assigner(scores, box_preds, points, *gt, strides=strides)
        moved = [t.to(device) for t in (scores, box_preds, points, *gt, strides)]
        on_device = assigner(*moved[:-1], strides=moved[-1])
        for field in ("fg_mask", "gt_index", "labels"):
            if not torch.equal(getattr(on_cpu, field), getattr(on_device, field).cpu()):
                raise AssertionError(f"{type(assigner).__name__}.{field} differs on {device}")
        torch.testing.assert_close(on_device.scores.cpu(), on_cpu.scores, rtol=1e-5, atol=1e-6)
    nms_args = {"score_thr": 0.05, "iou_thr": 0.6, "max_det": 100}
    for on_cpu, on_device in zip(
        multiclass_nms(box_preds, scores, **nms_args),
        multiclass_nms(box_preds.to(device), scores.to(device), **nms_args),
        strict=True,
    ):
        same = torch.equal(on_cpu.boxes, on_device.boxes.cpu()) and torch.equal(on_cpu.labels, on_device.labels.cpu())
        if not same:
            raise AssertionError(f"multiclass_nms keeps other boxes on {device}")
    return "TaskAlignedAssigner, ATSSAssigner, multiclass_nms: identical"


def _train_cli(*args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args], cwd=REPO, check=True)


def _val_ap(out: Path) -> float:
    (path,) = out.glob("lightning_logs/version_*/metrics.csv")
    with open(path) as f:
        return next(float(row["val/AP"]) for row in csv.DictReader(f) if row.get("val/AP"))


def check_ddp(device: str, root: str) -> str:
    """2-GPU DDP (NCCL) validation equals 1 GPU on the same checkpoint."""
    shapes = _shapes(root)
    data = [
        "--config", str(REPO / "configs" / "shapes_tood.yaml"), "--trainer.accelerator", "gpu",
        "--data.train_ann", shapes["train_ann"], "--data.train_images", shapes["train_images"],
        "--data.val_ann", shapes["val_ann"], "--data.val_images", shapes["val_images"],
        "--data.image_size", "128", "--data.train_size", "128", "--data.num_workers", "0",
    ]  # fmt: skip
    fit = Path(root) / "fit"
    _train_cli("fit", *data, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(fit))
    ckpt = str(fit / "checkpoints" / "last.ckpt")
    aps = {}
    runs = {"1 GPU": ("--trainer.devices", "1"), "2 GPUs": ("--trainer.devices", "2", "--trainer.strategy", "ddp")}
    for name, extra in runs.items():
        out = Path(root) / name.replace(" ", "")
        _train_cli("validate", *data, *extra, "--trainer.default_root_dir", str(out), "--ckpt_path", ckpt)
        aps[name] = _val_ap(out)
    if aps["1 GPU"] != aps["2 GPUs"]:
        raise AssertionError(f"val/AP differs: {aps}")
    return f"val/AP {aps['1 GPU']:.4f} on 1 and 2 GPUs"


def throughput(device: str) -> list[dict]:
    """Training and inference images per second at 640 px, sizes n, s, m (tools/bench.py train)."""
    from tools.bench import format_table
    from tools.benchmarks import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--sizes", "n", "s", "m", "--image-size", "640", "--device", device])
    rows = train.run(args)
    print(format_table(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: check the suite itself")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; the GPU check suite needs one (nothing was run)", file=sys.stderr)
        return EXIT_NO_CUDA

    checks: list[tuple[str, Callable[[str, str], str]]] = [
        ("recipes train in mixed precision", check_recipes_train),
        ("criterion under fp16 autocast", check_criterion_autocast),
        (f"assigners and NMS on {args.device} = CPU", check_same_as_cpu),
    ]
    if args.device == "cuda" and torch.cuda.device_count() >= 2:
        checks.append(("2-GPU DDP = 1 GPU", check_ddp))
    elif args.device == "cuda":
        print("gpu-check: one GPU only: the 2-GPU DDP check is not run")
    failed = 0
    with tempfile.TemporaryDirectory() as root:
        for name, check in checks:
            start = time.perf_counter()
            try:
                result = f"ok    {check(args.device, root)}"
            except Exception as e:  # report every check, then fail
                failed += 1
                result = f"FAIL  {type(e).__name__}: {e}"
            print(f"[{time.perf_counter() - start:6.1f} s] {name}: {result}", flush=True)
    if args.device == "cuda" and not args.skip_throughput:
        throughput(args.device)
    print(f"gpu-check: {len(checks) - failed} passed, {failed} failed")
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
