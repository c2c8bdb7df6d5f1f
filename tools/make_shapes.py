"""Write the synthetic shapes detection set (COCO format); see ``lightning_modules.shapes``.

python tools/make_shapes.py --out data/shapes [--num-train N --num-val N --image-size S]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_modules.shapes import make_shapes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=3000, help="training images")
    parser.add_argument("--num-val", type=int, default=300, help="validation images")
    parser.add_argument("--image-size", type=int, default=160, help="square image side (px)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = make_shapes(args.out, args.num_train, args.num_val, args.image_size, args.seed)
    print(json.dumps(paths, indent=2))
    print(f"wrote {args.num_train} + {args.num_val} images in {time.perf_counter() - start:.1f} s")
    return paths


if __name__ == "__main__":
    main()
