"""Train / validate / predict the reference detector (LightningCLI); same as ``detlosses-train``.

python tools/train.py fit --config configs/shapes_tood.yaml --trainer.default_root_dir runs/x
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_modules.train_cli import main

if __name__ == "__main__":
    main()
