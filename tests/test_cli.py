"""detlosses-train (LightningCLI) end to end, in subprocesses: config, fast_dev_run, resume after
SIGKILL, and DDP on 2 CPU processes (gloo) agreeing with 1 process."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules import OneStageDetector
from lightning_modules.shapes import make_shapes
from lightning_modules.train_cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "shapes_tood.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 5 validation images: odd, so DistributedSampler on 2 ranks pads one repeat.
    return make_shapes(str(tmp_path_factory.mktemp("shapes")), num_train=8, num_val=5, image_size=64, seed=0)


def _args(shapes, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        CONFIG,
        "--data.train_ann",
        shapes["train_ann"],
        "--data.train_images",
        shapes["train_images"],
        "--data.val_ann",
        shapes["val_ann"],
        "--data.val_images",
        shapes["val_images"],
        "--data.image_size",
        "64",
        "--data.train_size",
        "64",
        "--data.batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--trainer.default_root_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _logged(out: Path, key: str) -> list[float]:
    """Values of ``key`` in every metrics.csv the CSV logger wrote under ``out``."""
    values = []
    for path in sorted(out.glob("lightning_logs/version_*/metrics.csv")):
        with open(path) as f:
            values += [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    return values


def test_print_config(shapes, tmp_path):
    proc = _cli("fit", *_args(shapes, tmp_path), "--print_config")
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["criterion"] == {"recipe": "tood", "warmup_epochs": 4}
    assert cfg["trainer"]["accelerator"] == "cpu" and cfg["data"]["train_size"] == 64
    assert cfg["data"]["val_ann"] == shapes["val_ann"]
    assert cfg["checkpoint"]["monitor"] == "val/AP" and cfg["last_checkpoint"]["save_last"] == "link"
    assert any("EMAWeightAveraging" in cb["class_path"] for cb in cfg["trainer"]["callbacks"])


def test_fast_dev_run(shapes, tmp_path):
    proc = _cli("fit", *_args(shapes, tmp_path, "--trainer.fast_dev_run=true"))
    assert "fast_dev_run" in proc.stdout + proc.stderr


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, timeout: float = 180) -> dict:
    """Freeze ``proc`` (SIGSTOP) once ``path`` loads completely; returns the loaded checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-5000:]
        if path.exists():
            proc.send_signal(signal.SIGSTOP)
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception:  # caught mid-write: let it finish
                proc.send_signal(signal.SIGCONT)
        time.sleep(0.5)
    raise TimeoutError(f"{path} never appeared")


def test_resume_after_sigkill(shapes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # The shapes config starts its EMA at step 100; start it at once here so that its state moves.
    ema_now = tmp_path / "ema.yaml"
    ema_now.write_text(
        "trainer:\n  callbacks:\n  - class_path: pytorch_lightning.callbacks.EMAWeightAveraging\n"
        "    init_args: {decay: 0.9, update_starting_at_step: 0}\n"
    )
    args = _args(shapes, out, "--config", str(ema_now), "--trainer.max_epochs", "40")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "train.py"), "fit", *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ckpt = _wait_for_checkpoint(proc, out / "checkpoints" / "last.ckpt")
    finally:
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.communicate()
    assert ckpt["global_step"] >= 2 and "current_model_state" in ckpt  # EMA weights + raw weights
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"]  # one EMA update a step
    # A checkpoint alone rebuilds the model (hyper-parameters, class mapping, EMA weights).
    rebuilt = OneStageDetector.load_from_checkpoint(out / "checkpoints" / "last.ckpt", map_location="cpu")
    assert rebuilt.hparams.category_ids == [1, 3, 5, 7, 9]
    torch.testing.assert_close(rebuilt.state_dict(), ckpt["state_dict"])

    # Resume in-process with the same command + --ckpt_path last; record the state at train start.
    seen = {}

    def probe(self):
        trainer = self.trainer
        ema = next(cb for cb in trainer.callbacks if type(cb).__name__ == "EMAWeightAveraging")
        seen.update(
            copy.deepcopy(
                {  # state_dict()s hold live tensors that training goes on to change
                    "epoch": trainer.current_epoch,
                    "global_step": trainer.global_step,
                    "optimizer": trainer.optimizers[0].state_dict(),
                    "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
                    "ema": ema._average_model.state_dict(),
                    "ema_step": ema._latest_update_step,
                    "weights": self.state_dict(),
                }
            )
        )

    monkeypatch.setattr(OneStageDetector, "on_train_start", probe)
    resumed_epochs = ckpt["epoch"] + 2
    main(["fit", *args[:-1], str(resumed_epochs), "--ckpt_path", "last"])

    assert seen["epoch"] == ckpt["epoch"] + 1 and seen["global_step"] == ckpt["global_step"]
    assert seen["scheduler"]["last_epoch"] == ckpt["lr_schedulers"][0]["last_epoch"] == ckpt["global_step"]
    saved_opt = ckpt["optimizer_states"][0]
    assert seen["optimizer"]["state"].keys() == saved_opt["state"].keys()
    for key, state in saved_opt["state"].items():
        torch.testing.assert_close(seen["optimizer"]["state"][key]["exp_avg"], state["exp_avg"])
        assert float(seen["optimizer"]["state"][key]["step"]) == ckpt["global_step"]
    torch.testing.assert_close(seen["weights"], ckpt["current_model_state"])  # raw weights
    ema_saved = {"module." + k: v for k, v in ckpt["state_dict"].items()} | ckpt["averaging_state"]
    torch.testing.assert_close(seen["ema"], ema_saved)  # averaged weights and n_averaged
    assert seen["ema_step"] == ckpt["global_step"]

    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    steps_per_epoch = ckpt["global_step"] // (ckpt["epoch"] + 1)
    assert final["epoch"] == resumed_epochs - 1
    assert final["global_step"] == ckpt["global_step"] + steps_per_epoch * (resumed_epochs - 1 - ckpt["epoch"])


def test_ddp_fit_and_validate_match_one_process(shapes, tmp_path):
    ddp = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    fit_dir = tmp_path / "fit"
    _cli("fit", *_args(shapes, fit_dir, "--trainer.max_epochs", "1", *ddp), timeout=300)
    last = fit_dir / "checkpoints" / "last.ckpt"
    assert last.exists()
    assert _logged(fit_dir, "val/num_images") == [5.0]  # 3 + 3 sampled, one repeat removed

    results = {}
    for name, extra in (("ddp", ddp), ("single", ())):
        out = tmp_path / name
        _cli("validate", *_args(shapes, out, *extra), "--ckpt_path", str(last), timeout=300)
        assert _logged(out, "val/num_images") == [5.0]
        results[name] = {key: _logged(out, key) for key in ("val/AP", "val/AP50", "val/AR100")}
    assert results["ddp"] == results["single"]
    assert len(results["single"]["val/AP"]) == 1


# --------------------------------------------------------------------------- bad configuration or data
def _bad_setup(capsys, args: list[str]) -> str:
    """Runs the CLI in-process; it must exit 2 before training with one message and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "detlosses-train: error: " in err
    return err


def _copy_shapes(shapes, root: Path) -> dict[str, str]:
    """A private copy of the shapes data that a test may break."""
    copy = {}
    for key in ("train_images", "val_images"):
        copy[key] = str(root / key)
        shutil.copytree(shapes[key], copy[key])
    for key in ("train_ann", "val_ann"):
        copy[key] = str(root / f"{key}.json")
        shutil.copy(shapes[key], copy[key])
    return copy


def _edit_json(path: str, edit) -> None:
    coco = json.loads(Path(path).read_text())
    edit(coco)
    Path(path).write_text(json.dumps(coco))


def test_bad_data_exits_2_before_training(shapes, tmp_path, capsys):
    data = _copy_shapes(shapes, tmp_path)
    val_files = sorted(Path(data["val_images"]).iterdir())
    val_files[0].unlink()  # a missing image
    raw = val_files[1].read_bytes()
    val_files[1].write_bytes(raw[: len(raw) - 200])  # a truncated one
    err = _bad_setup(capsys, ["fit", *_args(data, tmp_path / "out")])
    assert "2 of 5 images cannot be used" in err
    assert f"image file not found: {val_files[0]}" in err and f"{val_files[1].name}" in err
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize(
    "break_data, message",
    [
        (lambda d: _edit_json(d["train_ann"], lambda c: c["annotations"][0].update(category_id=99)),
         "unknown category_id 99"),
        (lambda d: _edit_json(d["train_ann"], lambda c: c["categories"].pop()), "has category ids"),
        (lambda d: os.remove(d["val_ann"]), "annotation file not found"),
        (lambda d: shutil.rmtree(d["train_images"]), "train_images: image folder not found"),
    ],
    ids=["unknown-category", "train-val-categories-differ", "missing-annotations", "missing-image-folder"],
)  # fmt: skip
def test_bad_annotations_exit_2(shapes, tmp_path, capsys, break_data, message):
    data = _copy_shapes(shapes, tmp_path)
    break_data(data)
    assert message in _bad_setup(capsys, ["fit", *_args(data, tmp_path / "out")])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.head", "bogus"], "head must be one of ('tood', 'decoupled'), got 'bogus'"),
        (["--data.image_size", "50"], "data.image_size must be a multiple of the model's largest stride 32, got 50"),
        (["--data.train_size", "48"], "data.train_size must be a multiple of the model's largest stride 32, got 48"),
        (["--data.train_size", "16"], "image_size and train_size must be >= 32, got 64, 16"),
    ],
)
def test_bad_configuration_exits_2(shapes, tmp_path, capsys, extra, message):
    assert message in _bad_setup(capsys, ["fit", *_args(shapes, tmp_path / "out"), *extra])


def test_an_internal_error_keeps_its_traceback(shapes, tmp_path, monkeypatch):
    def broken_step(self, batch, batch_idx):
        raise RuntimeError("a bug in the training step")

    monkeypatch.setattr(OneStageDetector, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="a bug in the training step"):
        main(["fit", *_args(shapes, tmp_path / "out"), "--trainer.max_steps", "1"])


def test_two_epoch_mode_runs_are_identical(shapes, tmp_path):
    """Same seed, same machine, same data, worker processes on: the same weights, bit for bit."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        main(["fit", *_args(shapes, out), "--trainer.max_epochs", "2", "--data.num_workers", "2"])
        runs.append(torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False))
    a, b = runs
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    ap = [
        next(v for k, v in run["callbacks"].items() if "ModelCheckpoint" in k and v.get("current_score") is not None)
        for run in runs
    ]
    assert ap[0]["current_score"] == ap[1]["current_score"]


def test_demo_trains_and_prints_the_coco_table(shapes, tmp_path):
    """``make demo``'s script on a small set: a line per validation, pycocotools' summary and the
    time split; the table's mAP is the last validation's (the best checkpoint of a 1-epoch run)."""
    data = Path(shapes["train_ann"]).parents[1]  # <data>/annotations/train.json, as the demo writes it
    overrides = ["--data.image_size", "64", "--data.train_size", "64", "--data.batch_size", "4",
                 "--data.num_workers", "0", "--trainer.max_epochs", "1"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--data", str(data), "--out", str(tmp_path), *overrides],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    epoch = re.search(r"\[demo\] epoch +1 +[\d.]+ s  mAP50-95 ([\d.]+)", proc.stdout)
    final = re.search(r"\[demo\] mAP50-95 ([\d.]+) .* data \d+ s  training \d+ s  evaluation \d+ s", proc.stdout)
    assert epoch and final, proc.stdout[-3000:]
    assert epoch.group(1) == final.group(1)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in proc.stdout
