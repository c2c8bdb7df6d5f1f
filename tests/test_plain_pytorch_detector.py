"""detlosses used by another detector: a tiny plain-PyTorch anchor-free head, no Lightning.

The head is trained with a recipe's criterion on a handful of synthetic images until every
box is found again (IoU > 0.7, right class) after multiclass_nms.
"""

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from detlosses import DetectionCriterion
from detlosses.boxes import distance2bbox
from detlosses.losses.distribution_focal import distribution_integral
from detlosses.nms import multiclass_nms

SIZE, STRIDE, REG_MAX, NUM_CLASSES = 64, 8, 7, 2


def synthetic_images():
    """Four 64x64 images with one or two filled rectangles; the colour channel is the class."""
    boxes = [
        [[8, 8, 36, 30]],
        [[30, 20, 60, 56]],
        [[4, 36, 28, 60], [36, 4, 58, 28]],
        [[16, 12, 48, 44]],
    ]
    labels = [[0], [1], [1, 0], [0]]
    images = torch.full((4, 3, SIZE, SIZE), 0.1)
    targets = []
    for image, image_boxes, image_labels in zip(images, boxes, labels, strict=True):
        for (x1, y1, x2, y2), label in zip(image_boxes, image_labels, strict=True):
            image[:, y1:y2, x1:x2] = 0.1
            image[label, y1:y2, x1:x2] = 1.0
        targets.append({"boxes": torch.tensor(image_boxes, dtype=torch.float32), "labels": torch.tensor(image_labels)})
    return images, targets


class TinyAnchorFreeDetector(nn.Module):
    """Three stride-2 convs to a stride-8 grid, then cls and DFL box branches."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for out in (16, 32, 64):
            layers += [nn.Conv2d(channels, out, 3, 2, 1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        layers += [nn.Conv2d(64, 64, 3, 1, 1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.cls = nn.Conv2d(64, NUM_CLASSES, 1)
        self.reg = nn.Conv2d(64, 4 * (REG_MAX + 1), 1)
        nn.init.constant_(self.cls.bias, -4.6)  # prior probability 0.01
        centres = torch.arange(SIZE // STRIDE) * STRIDE + STRIDE / 2.0
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("anchor_points", torch.stack([xs.flatten(), ys.flatten()], -1))
        self.register_buffer("strides", torch.full((len(centres) ** 2,), float(STRIDE)))

    def forward(self, images):
        feats = self.body(images)
        cls_logits = self.cls(feats).flatten(2).transpose(1, 2)  # (B, A, C)
        dist_logits = self.reg(feats).flatten(2).transpose(1, 2)  # (B, A, 4 * (REG_MAX + 1))
        distances = distribution_integral(dist_logits.reshape(*dist_logits.shape[:2], 4, REG_MAX + 1))
        box_preds = distance2bbox(self.anchor_points, distances * STRIDE)  # (B, A, 4)
        return cls_logits, box_preds, dist_logits


@pytest.mark.parametrize("recipe", ["ppyoloe", "gfl"])
def test_plain_pytorch_head_learns_the_boxes(recipe):
    torch.manual_seed(0)
    images, targets = synthetic_images()
    model = TinyAnchorFreeDetector()
    criterion = DetectionCriterion.from_recipe(recipe, num_classes=NUM_CLASSES, reg_max=REG_MAX)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        cls_logits, box_preds, dist_logits = model(images)
        losses = criterion(cls_logits, box_preds, dist_logits, model.anchor_points, model.strides, targets)
        assert torch.isfinite(losses["loss"])
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        cls_logits, box_preds, _ = model(images)
    detections = multiclass_nms(box_preds, cls_logits.sigmoid(), score_thr=0.2, iou_thr=0.5, max_det=5)
    for dets, target in zip(detections, targets, strict=True):
        for gt_box, gt_label in zip(target["boxes"], target["labels"], strict=True):
            same_class = dets.labels == gt_label
            assert same_class.any(), f"{recipe}: no detection of class {int(gt_label)}"
            best_iou = box_iou(gt_box[None], dets.boxes[same_class]).max()
            assert best_iou > 0.7, f"{recipe}: best IoU {float(best_iou):.3f} for {gt_box.tolist()}"
