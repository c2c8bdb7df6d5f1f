"""``python tools/viz.py assign ...``: the ``detlosses-viz`` CLI, runnable from a clone."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_modules.viz_cli import main

if __name__ == "__main__":
    sys.exit(main())
