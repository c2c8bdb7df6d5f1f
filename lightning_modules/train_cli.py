"""``detlosses-train``: LightningCLI for :class:`OneStageDetector` on :class:`COCODataModule`.

    detlosses-train fit --config configs/shapes_tood.yaml [--trainer.default_root_dir OUT]
    detlosses-train fit --config configs/shapes_tood.yaml --trainer.default_root_dir OUT --ckpt_path last
    detlosses-train validate --config configs/shapes_tood.yaml --ckpt_path OUT/checkpoints/last.ckpt

``num_classes``, ``class_names`` and ``category_ids`` of the model are linked from the data
module (read from the annotation file in its ``__init__``). Checkpoints always go to
``<default_root_dir>/checkpoints`` (``last.ckpt``, a link to ``latest.ckpt`` rewritten after every
validation, and ``best-*.ckpt``, the best by ``val/AP``), whatever the
logger's version directory, so ``--ckpt_path last`` resumes a killed run from its own
directory; ``config.yaml`` is overwritten on resume.

Bad configuration or data is found before training starts: the classes are instantiated and
the data sets built (every image file checked, see :class:`~lightning_modules.data.COCODataModule`)
first, and a problem there ends the command with exit code 2 and one message naming it, without
a traceback. Anything that goes wrong later is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .data import COCODataModule
from .detector import OneStageDetector

__all__ = ["DetectorCLI", "SetupError", "build_cli", "checkpoint_dir", "main"]

PROG = "detlosses-train"
EXIT_SETUP_ERROR = 2  # as argparse's usage errors
_SETUP_ERRORS = (ValueError, KeyError, FileNotFoundError)


class SetupError(Exception):
    """A configuration or data problem found before training starts (exit code 2, no traceback)."""


def checkpoint_dir(default_root_dir: str | os.PathLike | None) -> str:
    """``<default_root_dir>/checkpoints`` (the working directory when unset, like the Trainer)."""
    return os.path.join(os.fspath(default_root_dir or os.getcwd()), "checkpoints")


class DetectorCLI(LightningCLI):
    """LightningCLI with the data -> model links and a fixed-directory ``ModelCheckpoint``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("num_classes", "class_names", "category_ids"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        # Two checkpoint callbacks in one fixed directory: with a monitor, Lightning 2.6 rewrites
        # last.ckpt only when the monitored metric improves, so "last" needs its own callback.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")  # the best by val/AP
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")  # every validation
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/AP",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-ap{val/AP:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.filename": "latest",
                "last_checkpoint.enable_version_counter": False,
                "last_checkpoint.save_last": "link",  # last.ckpt -> latest.ckpt
            }
        )
        for key in ("checkpoint", "last_checkpoint"):
            parser.link_arguments("trainer.default_root_dir", f"{key}.dirpath", compute_fn=checkpoint_dir)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer, check that they fit together, and build the data sets,
        so that bad configuration or data stops the command before training starts."""
        try:
            super().instantiate_classes()
            stride = max(self.model.model.strides)
            for name in ("image_size", "train_size"):
                size = getattr(self.datamodule, name)
                if size % stride:
                    raise ValueError(
                        f"data.{name} must be a multiple of the model's largest stride {stride}, got {size}"
                    )
            subcommand = self.config.get("subcommand")
            self.datamodule.setup("fit" if subcommand in (None, "fit") else "validate")
        except _SETUP_ERRORS as e:
            raise SetupError(e.args[0] if isinstance(e, KeyError) and e.args else str(e)) from e


def build_cli(args: list[str] | None = None, run: bool = True) -> DetectorCLI:
    """Parse ``args`` (``sys.argv`` when None) and, with ``run``, execute the subcommand."""
    return DetectorCLI(
        OneStageDetector,
        COCODataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``detlosses-train``): a configuration or data problem exits
    with code 2 and its message; any other error keeps its traceback."""
    try:
        build_cli(args)
    except SetupError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_SETUP_ERROR)


if __name__ == "__main__":
    main()
