"""Throughput of the reference detector on CPU: a training step and inference, images per second.

Training step = forward + ``DetectionCriterion`` (assignment and losses) + backward + AdamW step;
inference = ``OneStageDetector.predict_step``: forward, sigmoid, clipping to the image and the
detector's default NMS, mapped back to original pixels. Synthetic batches: uniform-noise images
and ``--boxes`` random boxes per image.
"""

from __future__ import annotations

import argparse
import time

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=["n", "s"], help="model sizes (n, s, m)")
    parser.add_argument("--head", default="decoupled", help="head type (decoupled: the CPU default config; tood)")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per image")
    parser.add_argument("--recipe", default="tood", help="criterion recipe of the training step")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (after 1 warm-up)")
    parser.add_argument("--precision", choices=["32", "bf16", "16"], default="32", help="16: fp16 autocast (CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")


def _batch(args: argparse.Namespace, generator: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
    size, n = args.image_size, args.boxes
    images = torch.rand(args.batch_size, 3, size, size, generator=generator)
    targets = []
    for _ in range(args.batch_size):
        xy = torch.rand(n, 2, generator=generator) * size * 0.8
        wh = (0.05 + 0.3 * torch.rand(n, 2, generator=generator)) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)  # (n, 4) xyxy
        labels = torch.randint(0, args.num_classes, (n,), generator=generator)
        letterbox = {"orig_size": (size, size), "scale": 1.0, "pad": (0.0, 0.0)}  # square: no padding
        targets.append({"boxes": boxes, "labels": labels, **letterbox})
    return images, targets


def _seconds_per_call(fn, iters: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()  # warm-up (allocator, anchor cache)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def run(args: argparse.Namespace) -> list[dict]:
    from lightning_modules.detector import OneStageDetector

    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images, targets = _batch(args, generator)
    images = images.to(args.device)
    targets = [{k: v.to(args.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(args.precision)
    autocast = torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None)
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        detector = OneStageDetector(args.num_classes, size=size, head=args.head, criterion=args.recipe).to(args.device)
        optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-4)

        def train_step(detector=detector, optimizer=optimizer) -> None:
            with autocast:
                out = detector.model(images)
                loss = detector.criterion(
                    out.cls_logits, out.box_preds, out.box_dist_logits, out.anchor_points, out.strides, targets
                )["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def infer(detector=detector) -> None:
            with torch.inference_mode(), autocast:
                detector.predict_step((images, targets), 0)

        detector.train()
        train_s = _seconds_per_call(train_step, args.iters, args.device)
        detector.eval()
        infer_s = _seconds_per_call(infer, args.iters, args.device)
        rows.append(
            {
                "size": size,
                "head": args.head,
                "params_M": detector.model.num_parameters / 1e6,
                "image_size": args.image_size,
                "batch": args.batch_size,
                "device": args.device,
                "precision": args.precision,
                "threads": torch.get_num_threads(),
                "train_img_s": args.batch_size / train_s,
                "train_ms_batch": 1e3 * train_s,
                "infer_img_s": args.batch_size / infer_s,
                "infer_ms_batch": 1e3 * infer_s,
            }
        )
    return rows
