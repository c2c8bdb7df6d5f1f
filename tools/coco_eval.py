"""``python tools/coco_eval.py ...``: the ``detlosses-eval`` CLI, runnable from a clone."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_modules.eval_cli import main

if __name__ == "__main__":
    sys.exit(main())
