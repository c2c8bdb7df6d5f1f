"""albumentations pipelines of one COCO sample: the :class:`Letterbox` transform and the train /
eval compositions.

* eval: :class:`Letterbox` — resize the longest side to S with one scale factor, centre on
  an S x S canvas filled with grey 114 (the same image scale in x and y, so the inverse
  mapping is exact).
* train: :class:`Letterbox` with a random extra scale factor (``scale_jitter``) at a random
  position (padding or cropping), horizontal flip, colour jitter. The 4-image mosaic lives in
  :mod:`.dataset` (it needs four samples).

albumentations 2.0.x with ``BboxParams(format="coco", clip=True, filter_invalid_bboxes=True)``
and ``strict=True`` (misspelt arguments raise instead of being replaced by defaults).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.core.type_definitions import Targets
from pydantic import Field

__all__ = ["PAD_VALUE", "Letterbox", "bbox_params", "build_transforms", "set_compose_seed"]

PAD_VALUE = 114  # grey of letterbox padding (as in YOLO detectors)


class Letterbox(A.DualTransform):
    """Resize by one scale factor and place the result on a ``size`` x ``size`` canvas.

    The scale is ``s = size / max(h, w) * r`` with ``r ~ U(scale_range)``; a point maps as
    ``x' = s * x + offset_x`` (pixel-corner coordinates, exact for boxes). ``position``
    places the resized image: "center" (offset = (size - round(s * w)) // 2, likewise in y),
    "top_left" (offset 0) or "random" (uniform integer offset, negative when the resized
    image is larger than the canvas, i.e. a random crop). The applied ``scale`` and
    ``offset`` are in ``self.params`` after each call. Targets: image, bboxes.
    """

    _targets = (Targets.IMAGE, Targets.BBOXES)

    class InitSchema(BaseTransformInitSchema):
        size: int = Field(ge=1)
        scale_range: tuple[float, float]
        position: Literal["center", "top_left", "random"]
        fill: float

    def __init__(
        self,
        size: int,
        scale_range: tuple[float, float] = (1.0, 1.0),
        position: Literal["center", "top_left", "random"] = "center",
        fill: float = PAD_VALUE,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.size = size
        self.scale_range = tuple(scale_range)
        self.position = position
        self.fill = fill

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        scale = self.size / max(h, w) * self.py_random.uniform(*self.scale_range)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))  # cv2.resize's size
        if self.position == "center":
            offset = ((self.size - new_w) // 2, (self.size - new_h) // 2)
        elif self.position == "top_left":
            offset = (0, 0)
        else:
            offset = tuple(self.py_random.randint(min(0, self.size - n), max(0, self.size - n)) for n in (new_w, new_h))
        return {"scale": scale, "offset": offset}

    def apply(self, img: np.ndarray, scale: float, offset: tuple[int, int], **params: Any) -> np.ndarray:
        if scale != 1.0:
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            # fx/fy without dsize: OpenCV maps with exactly this factor (the output size is
            # rounded), so the image agrees with the analytically scaled boxes
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=interp)
        if img.ndim == 2:
            img = img[..., None]
        canvas = np.full((self.size, self.size, img.shape[2]), self.fill, dtype=img.dtype)
        ox, oy = offset
        src_x0, src_y0 = max(0, -ox), max(0, -oy)
        dst_x0, dst_y0 = max(0, ox), max(0, oy)
        w = min(img.shape[1] - src_x0, self.size - dst_x0)
        h = min(img.shape[0] - src_y0, self.size - dst_y0)
        if w > 0 and h > 0:
            canvas[dst_y0 : dst_y0 + h, dst_x0 : dst_x0 + w] = img[src_y0 : src_y0 + h, src_x0 : src_x0 + w]
        return canvas

    def apply_to_bboxes(self, bboxes: np.ndarray, scale: float, offset: tuple[int, int], **params: Any) -> np.ndarray:
        # bboxes: (N, 4 + extra) normalised xyxy of the input -> normalised to the canvas
        h, w = params["shape"][:2]
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * (w * scale) + offset[0]) / self.size
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * (h * scale) + offset[1]) / self.size
        return out


def bbox_params(train: bool) -> A.BboxParams:
    # train: drop boxes cut to slivers by the random crop (< 20 % visible or < 2 px)
    extra = {"min_visibility": 0.2, "min_width": 2.0, "min_height": 2.0} if train else {}
    return A.BboxParams(format="coco", label_fields=["labels"], clip=True, filter_invalid_bboxes=True, **extra)


def build_transforms(
    image_size: int,
    train: bool = False,
    hflip: float = 0.5,
    scale_jitter: tuple[float, float] = (0.5, 1.5),
    color_jitter: bool = True,
) -> A.Compose:
    """The albumentations pipeline of one sample (uint8 HWC image, COCO xywh boxes).

    eval: centred :class:`Letterbox` to ``image_size``. train: :class:`Letterbox` with an
    extra scale ``r ~ U(scale_jitter)`` at a random position, ``HorizontalFlip(p=hflip)``,
    and ``ColorJitter`` (brightness/contrast 0.3, saturation 0.5, hue 0.015, p 0.8) when
    ``color_jitter``.
    """
    if train:
        transforms: list[A.BasicTransform] = [Letterbox(image_size, scale_range=scale_jitter, position="random")]
        if hflip > 0:
            transforms.append(A.HorizontalFlip(p=hflip))
        if color_jitter:
            transforms.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.5, hue=0.015, p=0.8))
    else:
        transforms = [Letterbox(image_size, position="center")]
    return A.Compose(transforms, bbox_params=bbox_params(train), strict=True, save_applied_params=True)


def set_compose_seed(compose: A.Compose, seed: int) -> None:
    """One generator pair shared by all transforms (``Compose(seed=...)`` gives each
    transform its own copy of the same stream, which correlates their draws)."""
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
