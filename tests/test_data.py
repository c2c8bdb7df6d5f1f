"""COCODataModule / COCODetectionDataset / make_shapes on tiny data written to tmp_path."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_modules.data import (
    COCODataModule,
    COCODetectionDataset,
    DataError,
    collate_fn,
    seed_worker,
)
from lightning_modules.shapes import make_shapes, tight_box

TARGET_KEYS = {"boxes", "labels", "image_id", "orig_size", "scale", "pad"}
# distinct pure colours per category, so a box's label can be checked on the pixels
COLOURS = {2: (255, 0, 0), 4: (0, 255, 0), 8: (0, 0, 255)}
CATEGORIES = [{"id": 8, "name": "blue"}, {"id": 2, "name": "red"}, {"id": 4, "name": "green"}]


def _write_coco(root, images, annotations, categories=CATEGORIES, sizes=True):
    """images: list of (file_name, HxWx3 uint8 array | bytes | None = not written)."""
    os.makedirs(root / "img", exist_ok=True)
    entries = []
    for k, (name, content) in enumerate(images):
        entry = {"id": 10 * (k + 1), "file_name": name}
        if isinstance(content, np.ndarray):
            Image.fromarray(content).save(root / "img" / name)
            if sizes:
                entry.update(height=content.shape[0], width=content.shape[1])
        elif isinstance(content, bytes):
            (root / "img" / name).write_bytes(content)
            if sizes:
                entry.update(height=50, width=50)
        else:
            entry.update(height=50, width=50)
        entries.append(entry)
    anns = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": entries, "annotations": anns,
                                    "categories": categories}))  # fmt: skip
    return str(ann_file), str(root / "img")


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _rect_image(h, w, rects):
    """Black image with filled rectangles [(x, y, w, h, category_id)] in COLOURS."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    for x, y, rw, rh, cat in rects:
        image[y : y + rh, x : x + rw] = COLOURS[cat]
    return image


def _anns(image_id, rects):
    return [{"image_id": image_id, "category_id": cat, "bbox": [x, y, rw, rh], "iscrowd": 0}
            for x, y, rw, rh, cat in rects]  # fmt: skip


RECTS_A = [(5, 6, 30, 20, 2), (50, 30, 25, 28, 4), (10, 40, 12, 15, 8)]  # image 90 x 60
RECTS_B = [(4, 10, 30, 40, 8), (5, 60, 28, 30, 2)]  # image 40 x 100


@pytest.fixture
def rect_data(tmp_path):
    images = [("a.png", _rect_image(60, 90, RECTS_A)), ("b.png", _rect_image(100, 40, RECTS_B))]
    return _write_coco(tmp_path, images, _anns(10, RECTS_A) + _anns(20, RECTS_B))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(str(tmp_path_factory.mktemp("shapes")), num_train=6, num_val=4,
                       image_size=64, seed=3)  # fmt: skip


def _datamodule(paths, **kwargs):
    kwargs = {"image_size": 64, "batch_size": 3, "num_workers": 0, **kwargs}
    return COCODataModule(paths["train_ann"], paths["train_images"], paths["val_ann"],
                          paths["val_images"], **kwargs)  # fmt: skip


# ---------------------------------------------------------------------------- make_shapes
def test_tight_box_hand_mask():
    mask = np.zeros((10, 8), dtype=bool)
    mask[2:8, 3:6] = True  # rows 2..7, cols 3..5
    # placed at (x, y) = (10, 20): x = 10 + 3, y = 20 + 2, w = 5 + 1 - 3, h = 7 + 1 - 2
    assert tight_box(mask, 10, 20) == [13.0, 22.0, 3.0, 6.0]


def test_make_shapes_deterministic_and_in_bounds(tmp_path):
    kwargs = {"num_train": 5, "num_val": 3, "image_size": 48}
    a = make_shapes(str(tmp_path / "a"), seed=7, **kwargs)
    b = make_shapes(str(tmp_path / "b"), seed=7, **kwargs)
    c = make_shapes(str(tmp_path / "c"), seed=8, **kwargs)
    for split in ("train", "val"):
        ja, jb, jc = (_read_json(r[f"{split}_ann"]) for r in (a, b, c))
        assert ja == jb and ja != jc
        for im in ja["images"]:
            pa, pb = (os.path.join(r[f"{split}_images"], im["file_name"]) for r in (a, b))
            assert _read_bytes(pa) == _read_bytes(pb)
            assert Image.open(pa).size == (im["width"], im["height"]) == (48, 48)
        assert [c["id"] for c in ja["categories"]] == [1, 3, 5, 7, 9]
        assert len({ann["id"] for ann in ja["annotations"]}) == len(ja["annotations"]) > 0
        for ann in ja["annotations"]:
            x, y, w, h = ann["bbox"]
            assert min(x, y) >= 0 and max(x + w, y + h) <= 48 and min(w, h) >= 1
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
            assert ann["category_id"] in {1, 3, 5, 7, 9}
    assert a["num_classes"] == 5 and a["class_names"][0] == "circle"


def test_make_shapes_empty_fraction_one_gives_empty_images(tmp_path):
    paths = make_shapes(str(tmp_path), num_train=3, num_val=0, image_size=32, empty_fraction=1.0)
    coco = _read_json(paths["train_ann"])
    assert len(coco["images"]) == 3 and coco["annotations"] == []


# ---------------------------------------------------------------------------- categories
def test_datamodule_categories_right_after_init(shapes):
    dm = _datamodule(shapes)  # no setup(): LightningCLI links these at instantiation
    assert dm.num_classes == 5
    assert dm.category_ids == [1, 3, 5, 7, 9]
    assert dm.class_names == ["circle", "rectangle", "triangle", "star", "cross"]
    assert dm.val_ann == shapes["val_ann"]


def test_labels_map_back_to_category_ids(rect_data):
    ds = COCODetectionDataset(*rect_data, image_size=64)
    # categories sorted by id: 2 -> 0, 4 -> 1, 8 -> 2
    assert ds.category_ids == [2, 4, 8] and ds.class_names == ["red", "green", "blue"]
    _, target = ds[0]
    assert [ds.category_ids[k] for k in target["labels"].tolist()] == [2, 4, 8]
    assert target["labels"].dtype == torch.int64


def test_train_categories_must_match_val(tmp_path, rect_data):
    other_ann, other_dir = _write_coco(tmp_path / "other", [("a.png", _rect_image(8, 8, []))],
                                       [], categories=[{"id": 2, "name": "red"}])  # fmt: skip
    dm = COCODataModule(other_ann, other_dir, *rect_data, image_size=64, num_workers=0)
    with pytest.raises(ValueError, match="category ids"):
        dm.setup("fit")


# ---------------------------------------------------------------------------- letterbox
def test_val_boxes_map_back_to_json(rect_data):
    ds = COCODetectionDataset(*rect_data, image_size=64)
    # image a, 90 x 60: scale = 64 / 90 = 0.71111; resized 64 x round(42.67) = 43;
    # centred: pad = ((64 - 64) // 2, (64 - 43) // 2) = (0, 10)
    # image b, 40 x 100: scale = 0.64; resized round(25.6) = 26 x 64; pad = (19, 0)
    expected = [(64 / 90, (0.0, 10.0), (60, 90), RECTS_A), (0.64, (19.0, 0.0), (100, 40), RECTS_B)]
    for index, (scale, pad, size, rects) in enumerate(expected):
        image, target = ds[index]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert target["image_id"] == 10 * (index + 1) and target["orig_size"] == size
        assert target["scale"] == pytest.approx(scale, rel=1e-9)
        assert target["pad"] == pad
        pad_xy = torch.tensor(target["pad"] * 2)
        back = (target["boxes"].double() - pad_xy) / target["scale"]
        json_xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in rects]).double()
        torch.testing.assert_close(back, json_xyxy, atol=1e-3, rtol=0)


def test_letterboxed_pixels_agree_with_boxes(rect_data):
    ds = COCODetectionDataset(*rect_data, image_size=64)
    image, target = ds[1]  # 40 x 100: the blue rectangle is box 0
    blue = (image[2] > 127) & (image[0] < 128) & (image[1] < 128)  # (S, S)
    cols = torch.nonzero(blue.any(0)).flatten()
    rows = torch.nonzero(blue.any(1)).flatten()
    pixel_box = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).float()
    # bilinear/area resampling blurs edges by at most one pixel
    torch.testing.assert_close(pixel_box, target["boxes"][0], atol=1.0, rtol=0)
    assert int(image[:, 0, 0].sum()) == 3 * 114  # padding is grey 114


def test_train_boxes_inside_and_labels_align(rect_data):
    ds = COCODetectionDataset(*rect_data, image_size=64, train=True, scale_jitter=(0.4, 2.0),
                              color_jitter=False, mosaic=0.5, seed=1)  # fmt: skip
    colours = torch.tensor([COLOURS[c] for c in ds.category_ids])  # (C, 3) by label
    checked = 0
    for k in range(24):
        image, target = ds[k % len(ds)]
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4)
        assert bool(((boxes >= 0) & (boxes <= 64)).all())
        assert bool((boxes[:, 2:] - boxes[:, :2] >= 2 - 1e-4).all())
        for box, label in zip(boxes, labels, strict=True):
            if min(box[2] - box[0], box[3] - box[1]) < 4:
                continue  # too thin to have an unblurred centre pixel
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            assert (image[:, cy, cx].int() - colours[label]).abs().max() < 60
            checked += 1
    assert checked > 20


# ---------------------------------------------------------------------------- bad data
def test_empty_images_are_kept(tmp_path):
    images = [("e.png", _rect_image(30, 40, [])), ("f.png", _rect_image(30, 40, [(1, 1, 9, 9, 2)]))]
    data = _write_coco(tmp_path, images, _anns(20, [(1, 1, 9, 9, 2)]))
    for train in (False, True):
        ds = COCODetectionDataset(*data, image_size=32, train=train)
        assert len(ds) == 2
        _, target = ds[0]
        assert target["image_id"] == 10
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_bad_boxes_are_clipped_or_dropped_and_counted(tmp_path):
    boxes = [
        [10, 10, 20, 20],  # fine
        [90, 70, 30, 30],  # past the bottom-right corner -> clipped to [90, 70, 10, 10]
        [-5, 10, 15, 10],  # negative x -> clipped to [0, 10, 10, 10]
        [30, 30, 0, 10],  # zero width -> dropped
        [math.nan, 1, 2, 3],  # NaN -> dropped
        [200, 200, 10, 10],  # outside: nothing left after clipping -> dropped
        [40, 40, 1, 10],  # w = 1 px -> dropped
        [50, 5, 5],  # not 4 numbers -> dropped
    ]
    anns = [{"image_id": 10, "category_id": 2, "bbox": b, "iscrowd": 0} for b in boxes]
    anns.append({"image_id": 10, "category_id": 4, "bbox": [1, 1, 5, 5], "iscrowd": 1})  # ignored
    data = _write_coco(tmp_path, [("a.png", _rect_image(80, 100, []))], anns)
    with pytest.warns(UserWarning, match=r"clipped 2 boxes.*dropped 5"):
        ds = COCODetectionDataset(*data, image_size=100)
    assert (ds.num_clipped_boxes, ds.num_dropped_boxes) == (2, 5)
    _, target = ds[0]
    # 100 x 80 at S = 100: scale 1, pad (0, (100 - 80) // 2) = (0, 10)
    expected = torch.tensor([[10, 10, 30, 30], [90, 70, 100, 80], [0, 10, 10, 20]]).float()
    torch.testing.assert_close(target["boxes"], expected + torch.tensor([0, 10, 0, 10]))
    assert target["labels"].tolist() == [0, 0, 0]


def test_unknown_category_raises(tmp_path):
    anns = [{"image_id": 10, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 0}]
    data = _write_coco(tmp_path, [("a.png", _rect_image(20, 20, []))], anns)
    with pytest.raises(ValueError, match="unknown category_id 5"):
        COCODetectionDataset(*data)


def test_missing_image_raises_or_is_skipped(tmp_path):
    images = [("here.png", _rect_image(50, 50, [])), ("gone.png", None)]
    data = _write_coco(tmp_path, images, [])
    with pytest.raises(DataError, match=r"1 of 2 images cannot be used:\n  image file not found: .*gone\.png"):
        COCODetectionDataset(*data, image_size=32)
    with pytest.warns(UserWarning, match=r"gone\.png"):
        ds = COCODetectionDataset(*data, image_size=32, skip_bad_images=True)
    assert len(ds) == 1 and ds.image_ids == [10]
    assert ds.skipped_images == [os.path.join(data[1], "gone.png")]


def test_corrupt_image_raises_or_is_skipped_when_built(tmp_path):
    images = [("bad.jpg", b"\xff\xd8 not a jpeg"), ("good.png", _rect_image(50, 50, []))]
    data = _write_coco(tmp_path, images, [])
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg"):
        COCODetectionDataset(*data, image_size=32)
    with pytest.warns(UserWarning, match=r"bad\.jpg"):
        ds = COCODetectionDataset(*data, image_size=32, skip_bad_images=True)
    assert ds.image_ids == [20]


def _jpeg_bytes(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)  # kilobytes of scan data
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_truncated_jpeg_is_found_when_built(tmp_path):
    whole = _jpeg_bytes(50, 50)  # the size _write_coco gives byte images
    assert whole.endswith(b"\xff\xd9")
    images = [("cut.jpg", whole[:-100]), ("whole.jpg", whole)]  # the header decodes, the end is gone
    data = _write_coco(tmp_path, images, [])
    with pytest.raises(DataError, match=r"1 of 2 images cannot be used:\n  image .*cut\.jpg is truncated"):
        COCODetectionDataset(*data, image_size=32)


def test_every_unusable_image_is_named_in_one_error(tmp_path):
    images = [(f"gone{i}.png", None) for i in range(7)] + [("here.png", _rect_image(50, 50, []))]
    data = _write_coco(tmp_path, images, [])
    listed = r"7 of 8 images cannot be used:(\n  image file not found: \S+){5}\n  and 2 more"
    with pytest.raises(DataError, match=listed):
        COCODetectionDataset(*data, image_size=32)


def test_corrupt_image_without_json_size_raises_when_built(tmp_path):
    data = _write_coco(tmp_path, [("bad.png", b"garbage")], [], sizes=False)
    with pytest.raises(ValueError, match=r"bad\.png"):
        COCODetectionDataset(*data)


def test_image_size_disagreeing_with_json_raises(tmp_path):
    data = _write_coco(tmp_path, [("a.png", _rect_image(30, 20, []))], [])
    coco = _read_json(data[0])
    coco["images"][0]["width"] = 21
    with open(data[0], "w") as f:
        json.dump(coco, f)
    with pytest.raises(DataError, match=r"a\.png is 20x30 pixels but its annotation says 21x30"):
        COCODetectionDataset(*data)


# ---------------------------------------------------------------------------- loaders
def test_collate_shapes_and_dtypes():
    img = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    t = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    images, targets = collate_fn([(img, t), (img.clone(), t)])
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    assert float(images.max()) == 1.0 and targets == [t, t]


def test_datamodule_loaders_iterate(shapes):
    dm = _datamodule(shapes, mosaic=0.5, cache_images=True)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert len(targets) == 3 and all(set(t) == TARGET_KEYS for t in targets)
    for loader in (dm.val_dataloader(), dm.predict_dataloader()):
        ids = []
        for images, targets in loader:
            assert images.shape[1:] == (3, 64, 64)
            for t in targets:
                assert set(t) == TARGET_KEYS and t["orig_size"] == (64, 64)
                assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
                assert bool((t["labels"] < dm.num_classes).all())
            ids += [t["image_id"] for t in targets]
        assert ids == [1, 2, 3, 4]  # every val image exactly once, in order


def test_train_size_letterboxes_training_images_only(shapes):
    # 64 px images: training letterboxes them to 32 px (scale 0.5, no jitter), validation to 96
    dm = _datamodule(shapes, image_size=96, train_size=32, scale_jitter=(1.0, 1.0), hflip=0.0,
                     color_jitter=False)  # fmt: skip
    dm.setup("fit")
    train_json = _read_json(shapes["train_ann"])
    boxes_of = {img["id"]: [] for img in train_json["images"]}
    for ann in train_json["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes_of[ann["image_id"]].append([x, y, x + w, y + h])
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 32, 32)
    for t in targets:
        assert t["scale"] == 0.5 and t["pad"] == (0.0, 0.0)
        json_xyxy = torch.tensor(boxes_of[t["image_id"]], dtype=torch.float32).reshape(-1, 4)
        kept = (json_xyxy[:, 2:] - json_xyxy[:, :2] >= 4).all(1)  # >= 2 px at scale 0.5
        torch.testing.assert_close(t["boxes"], 0.5 * json_xyxy[kept], atol=1e-4, rtol=0)
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 96, 96) and all(t["scale"] == 1.5 for t in targets)


def test_train_loader_is_reproducible_for_a_seed(shapes):
    def first_batch(seed):
        dm = _datamodule(shapes, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    (a, ta), (b, tb), (c, _) = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a, b) and [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
    assert not torch.equal(a, c)


def test_workers_get_distinct_augmentation_streams(tmp_path, shapes):
    # four entries of one image, one sample per worker: without per-worker seeding both
    # workers copy the same random state and augment indices 0 and 1 identically
    rects = [(5, 5, 20, 20, 2)]
    data = _write_coco(tmp_path, [(f"{k}.png", _rect_image(40, 40, rects)) for k in range(4)],
                       [a for k in range(4) for a in _anns(10 * (k + 1), rects)])  # fmt: skip
    ds = COCODetectionDataset(*data, image_size=32, train=True, scale_jitter=(0.5, 1.5))

    def first_two(worker_init_fn):
        loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_fn,
                            worker_init_fn=worker_init_fn)  # fmt: skip
        (a, ta), (b, tb), *_ = loader
        return a, b, ta[0]["boxes"], tb[0]["boxes"]

    a, b, box_a, box_b = first_two(None)
    assert torch.equal(a, b) and torch.equal(box_a, box_b)  # the pitfall, reproduced
    a, b, box_a, box_b = first_two(seed_worker)
    assert not torch.equal(a, b) and not torch.equal(box_a, box_b)
    dm = _datamodule(shapes, num_workers=2)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):  # workers not started here
        assert loader.worker_init_fn is seed_worker and loader.persistent_workers
