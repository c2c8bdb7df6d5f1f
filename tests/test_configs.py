"""Every shipped config on data that looks like real COCO, on CPU.

Each ``configs/*.yaml`` is parsed by LightningCLI, then trained for a few steps with one
validation on the ``coco_like`` fixture (real val2014 annotations: 80 categories with ids up to
90, crowd boxes, non-square images of mixed sizes), with the GPU-only settings overridden as the
README tells a CPU user, and the checkpoint is evaluated with ``detlosses-eval --ckpt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from detlosses.evaluation import STAT_NAMES
from lightning_modules.eval_cli import main as eval_main
from lightning_modules.train_cli import main as train_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# The README's overrides for running a GPU config on a CPU.
CPU_OVERRIDES = [
    "--trainer.accelerator", "cpu", "--trainer.strategy", "auto", "--trainer.devices", "1",
    "--trainer.precision", "bf16-mixed", "--trainer.sync_batchnorm", "false",
]  # fmt: skip


def _data_args(coco_like: dict[str, str], image_size: int = 128) -> list[str]:
    return [
        "--data.train_ann", coco_like["subset_ann"], "--data.train_images", coco_like["images"],
        "--data.val_ann", coco_like["subset_ann"], "--data.val_images", coco_like["images"],
        "--data.image_size", str(image_size), "--data.batch_size", "4", "--data.num_workers", "0",
    ]  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    criterion = cfg["model"]["criterion"]
    recipe = criterion["recipe"] if isinstance(criterion, dict) else criterion
    assert recipe in ("tood", "gfl", "ppyoloe", "yolov8")
    assert cfg["model"]["nms"]["type"] == "MultiClassNMS"
    if cfg["trainer"]["accelerator"] == "gpu":  # GPU configs: DDP and fp16 AMP set in config only
        assert cfg["trainer"]["strategy"] == "ddp" and cfg["trainer"]["precision"] == "16-mixed"
    else:
        assert not cfg["trainer"].get("sync_batchnorm")  # needs CUDA


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fits_and_evaluates_on_coco_like_data(config, coco_like, tmp_path, capsys):
    out = tmp_path / "run"
    train_main(
        [
            "fit", "--config", str(config), *CPU_OVERRIDES, *_data_args(coco_like),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    capsys.readouterr()

    assert eval_main(["--ckpt", str(ckpt), "--num-vis", "1"]) == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["stats"]) == set(STAT_NAMES)
    results = json.loads((out / "eval" / "results.json").read_text())
    images = json.loads(Path(coco_like["subset_ann"]).read_text())["images"]
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    for res in results:  # every entry a valid COCO box inside its own (non-square) image
        x, y, w, h = res["bbox"]
        width, height = sizes[res["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3
