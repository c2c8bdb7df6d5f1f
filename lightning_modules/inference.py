"""A trained :class:`OneStageDetector` on a COCO-format image set: results, evaluation, drawings.

Used by ``detlosses-eval --ckpt`` and by the demo. A checkpoint alone rebuilds the model
(hyper-parameters, class mapping, EMA weights) and names the validation data it was trained
with (the data module's hyper-parameters), so ``--ckpt CKPT`` needs nothing else; any data
argument given explicitly overrides the checkpoint's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from .data import COCODetectionDataset, collate_fn
from .detector import OneStageDetector, coco_results

__all__ = ["checkpoint_data_args", "draw_detections", "load_detector", "predict_coco_results"]

DATA_KEYS = ("val_ann", "val_images", "image_size", "batch_size", "num_workers")
_GT_COLOUR = (40, 220, 60)
_PRED_COLOUR = (255, 60, 40)
_MIN_DRAWN_SIDE = 480  # pixels: drawings of smaller images are enlarged to this longer side


def _require_file(ckpt_path: str | os.PathLike) -> None:
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {os.fspath(ckpt_path)}")


def load_detector(ckpt_path: str | os.PathLike, device: str | torch.device | None = None) -> OneStageDetector:
    """The detector of a checkpoint, in eval mode on ``device`` (default: CUDA if available,
    else CPU); FileNotFoundError names a missing file."""
    _require_file(ckpt_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return OneStageDetector.load_from_checkpoint(ckpt_path, map_location=torch.device(device)).eval()


def checkpoint_data_args(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """``val_ann``, ``val_images``, ``image_size``, ... of the data module a checkpoint was trained
    with (empty when it was trained without a ``COCODataModule``).

    The checkpoint is memory-mapped, so its weights are not read (the model is loaded apart).
    """
    _require_file(ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    hparams = ckpt.get("datamodule_hyper_parameters") or {}
    return {key: hparams[key] for key in DATA_KEYS if key in hparams}


def predict_coco_results(
    model: OneStageDetector,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    image_size: int,
    batch_size: int = 16,
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """COCO result dicts of ``model`` on every image of ``ann_file``, in original image pixels.

    Images are letterboxed to ``image_size`` exactly as in validation and the detections are
    those of ``model.predict_step`` (NMS settings from the checkpoint), so evaluating these
    results gives the ``val/*`` numbers of a validation run on the same checkpoint.
    """
    dataset = COCODetectionDataset(
        ann_file, image_dir, image_size=image_size, train=False, category_ids=model.hparams.category_ids
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for batch_idx, (images, targets) in enumerate(loader):
            detections = model.predict_step((images.to(model.device), targets), batch_idx)
            for det, target in zip(detections, targets, strict=True):
                results += coco_results(det, target["image_id"], model.hparams.category_ids)
    return results


def _draw_box(
    canvas: Image.Image, xywh: Iterable[float], scale: float, colour: tuple[int, int, int], text: str, below: bool
) -> None:
    """An outlined box, ``scale`` times its COCO ``xywh``, with ``text`` on a filled tag above it
    (or, with ``below``, under it); tags that would leave the image go inside the box."""
    draw = ImageDraw.Draw(canvas)
    x, y, w, h = (v * scale for v in xywh)
    draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    tag_h = bottom - top + 2
    outside = y + h if below else y - tag_h
    tag_y = outside if 0 <= outside <= canvas.height - tag_h else (y + h - tag_h if below else y)
    draw.rectangle([x, tag_y, x + right - left + 2, tag_y + tag_h], fill=colour)
    draw.text((x + 1, tag_y + 1 - top), text, fill=(255, 255, 255))


def draw_detections(
    coco: Mapping[str, Any],
    image_dir: str | os.PathLike,
    results: list[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    num_images: int = 8,
    score_thr: float = 0.3,
) -> list[Path]:
    """Draw ground truth (green) and detections scoring >= ``score_thr`` (red) on the first
    ``num_images`` images (by id) of the COCO dataset ``coco`` (as ``read_annotations`` gives
    it); one PNG each, named after the image, enlarged to a longer side of 480 px when smaller.

    Returns the written paths.
    """
    names = {c["id"]: str(c.get("name", c["id"])) for c in coco["categories"]}
    by_image: dict[int, list[tuple[list[float], str]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append((ann["bbox"], names.get(ann["category_id"], "?")))
    dets: dict[int, list[Mapping[str, Any]]] = {}
    for res in results:
        if res["score"] >= score_thr:
            dets.setdefault(res["image_id"], []).append(res)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image in sorted(coco["images"], key=lambda im: im["id"])[:num_images]:
        with Image.open(os.path.join(image_dir, image["file_name"])) as im:
            canvas = im.convert("RGB")
        scale = max(1.0, _MIN_DRAWN_SIDE / max(canvas.size))  # small images are enlarged
        if scale > 1:
            canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.NEAREST)
        for res in sorted(dets.get(image["id"], []), key=lambda r: r["score"]):
            text = f"{names.get(res['category_id'], '?')} {res['score']:.2f}"
            _draw_box(canvas, res["bbox"], scale, _PRED_COLOUR, text, below=False)
        for bbox, name in by_image.get(image["id"], []):  # ground truth on top, tags below
            _draw_box(canvas, bbox, scale, _GT_COLOUR, name, below=True)
        path = out / f"{Path(image['file_name']).stem}.png"
        canvas.save(path)
        written.append(path)
    return written
