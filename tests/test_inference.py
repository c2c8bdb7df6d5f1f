"""A checkpoint on its own validation images: lightning_modules.inference and ``detlosses-eval --ckpt``.

The reference for the numbers is Lightning's own validation loop on the same checkpoint
(``OneStageDetector.validation_step`` gathers the detections, ``on_validation_epoch_end``
evaluates them): the CLI must reproduce its 12 stats exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from detlosses.evaluation import STAT_NAMES, coco_evaluate
from lightning_modules import COCODataModule, OneStageDetector
from lightning_modules.data import read_annotations
from lightning_modules.eval_cli import main
from lightning_modules.inference import checkpoint_data_args, draw_detections, load_detector
from lightning_modules.shapes import make_shapes

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Shapes data, a checkpoint after a few steps, and Lightning's validation metrics of it."""
    root = tmp_path_factory.mktemp("ckpt")
    shapes = make_shapes(str(root / "shapes"), num_train=8, num_val=5, image_size=IMAGE_SIZE, seed=0)
    dm = COCODataModule(
        shapes["train_ann"], shapes["train_images"], shapes["val_ann"], shapes["val_images"],
        image_size=96, batch_size=4, num_workers=0,
    )  # fmt: skip
    pl.seed_everything(0)
    # score_thr 0: every image keeps max_det boxes, so AP and recall are above 0 this early
    model = OneStageDetector(dm.num_classes, lr=4e-3, warmup_epochs=0.0, nms={"score_thr": 0.0})
    options = {
        "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False,
    }  # fmt: skip
    trainer = pl.Trainer(max_steps=30, num_sanity_val_steps=0, limit_val_batches=0, **options)
    trainer.fit(model, datamodule=dm)
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    (metrics,) = pl.Trainer(**options).validate(model, datamodule=dm, verbose=False)
    return {"shapes": shapes, "ckpt": ckpt, "metrics": metrics, "root": root}


def test_checkpoint_alone_names_its_data_and_rebuilds_the_model(trained):
    data = checkpoint_data_args(trained["ckpt"])
    assert data["val_ann"] == trained["shapes"]["val_ann"] and data["image_size"] == 96
    model = load_detector(trained["ckpt"])
    assert not model.training and model.hparams.category_ids == [1, 3, 5, 7, 9]
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_detector(trained["root"] / "missing.ckpt")


def test_cli_ckpt_reproduces_lightning_validation(trained, capsys):
    code = main(["--ckpt", str(trained["ckpt"]), "--num-vis", "3"])
    out = capsys.readouterr().out
    assert code == 0
    save_dir = trained["root"] / "run" / "eval"  # default: beside checkpoints/
    report = json.loads((save_dir / "report.json").read_text())
    expected = {name: trained["metrics"][f"val/{name}"] for name in STAT_NAMES}
    assert report["stats"] == pytest.approx(expected, abs=1e-6)  # Lightning logs float32
    assert report["stats"]["AP"] > 0 and report["stats"]["AR100"] > 0  # real numbers, not zeros
    results = json.loads((save_dir / "results.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3, 4, 5}
    assert coco_evaluate(trained["shapes"]["val_ann"], results).stats == report["stats"]
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in out and "circle" in out
    drawn = sorted((save_dir / "vis").glob("*.png"))
    assert [p.name for p in drawn] == ["000000.png", "000001.png", "000002.png"]
    with Image.open(drawn[0]) as im:
        assert im.format == "PNG" and im.size == (480, 480)  # 64 px images enlarged


def test_cli_ckpt_data_overrides(trained, tmp_path, capsys):
    # --val-ann / --val-images / --image-size beat the checkpoint's data: a 1-image subset here
    val = json.loads(Path(trained["shapes"]["val_ann"]).read_text())
    val["images"] = val["images"][:1]
    val["annotations"] = [a for a in val["annotations"] if a["image_id"] == val["images"][0]["id"]]
    subset = tmp_path / "one.json"
    subset.write_text(json.dumps(val))
    args = ["--ckpt", str(trained["ckpt"]), "--save-dir", str(tmp_path / "eval"), "--num-vis", "0"]
    assert main([*args, "--val-ann", str(subset), "--image-size", "64"]) == 0
    assert "at 64 px" in capsys.readouterr().out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {r["image_id"] for r in results} == {1}
    assert not (tmp_path / "eval" / "vis").exists()

    # a LightningCLI config's data: section, init_args form
    config = tmp_path / "cfg.yaml"
    config.write_text(f"data:\n  init_args:\n    val_ann: {subset}\n    image_size: 32\n")
    assert main([*args, "--config", str(config)]) == 0
    assert "at 32 px" in capsys.readouterr().out


def test_cli_ckpt_bad_input_exits_2(trained, tmp_path, capsys):
    assert main(["--ckpt", str(tmp_path / "nope.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    # a checkpoint trained without a COCODataModule does not know its images
    bare = tmp_path / "bare.ckpt"
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    del ckpt["datamodule_hyper_parameters"]
    torch.save(ckpt, bare)
    assert main(["--ckpt", str(bare), "--save-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "--val-ann" in err and "--val-images" in err and "--image-size" in err
    # a missing image is named
    assert main(["--ckpt", str(trained["ckpt"]), "--val-images", str(tmp_path), "--save-dir", str(tmp_path / "e")]) == 2
    assert "image file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    assert main(["--ckpt", str(trained["ckpt"]), "--config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --gt belongs to --pred
        main(["--ckpt", str(trained["ckpt"]), "--gt", trained["shapes"]["val_ann"]])


def test_draw_detections_by_hand(tmp_path):
    # one 100 x 50 white image; a GT box and two detections, one below the drawing threshold
    Image.new("RGB", (100, 50), "white").save(tmp_path / "a.jpg")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 10, 30, 20], "area": 600}],
        "categories": [{"id": 2, "name": "cat"}],
    }))  # fmt: skip
    results = [
        {"image_id": 7, "category_id": 2, "bbox": [60, 20, 30, 20], "score": 0.9},
        {"image_id": 7, "category_id": 2, "bbox": [0, 0, 99, 49], "score": 0.1},
    ]
    (path,) = draw_detections(read_annotations(ann), tmp_path, results, tmp_path / "vis", score_thr=0.3)
    with Image.open(path) as im:
        assert im.size == (480, 240)  # enlarged 4.8x
        px = im.load()
        scale = 4.8
        assert px[int(10 * scale), int(20 * scale)] == (40, 220, 60)  # GT left edge, green
        assert px[int(90 * scale) - 1, int(30 * scale)] == (255, 60, 40)  # detection right edge, red
        assert px[2, 120] == (255, 255, 255)  # the 0.1 detection along the image border is not drawn
