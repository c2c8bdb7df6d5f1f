"""Benchmarks (not tests): speed and memory of detlosses components on this machine.

    python tools/bench.py losses          # forward+backward of every loss vs reference code
    python tools/bench.py assign          # task-aligned assigner: time and peak memory
    python tools/bench.py nms             # multi-class NMS
    python tools/bench.py eval            # COCO evaluation backends
    python tools/bench.py train           # detector training / inference images per second
    python tools/bench.py all --json      # everything, machine-readable

Each suite lives in tools/benchmarks/<name>.py and exposes ``add_arguments(parser)`` and
``run(args) -> list[dict]`` (one dict per table row).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUITES = ("losses", "assign", "nms", "eval", "train")


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as an aligned Markdown table (columns in first-seen order)."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    body = [[cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in body)) for i, col in enumerate(columns)]
    lines = ["| " + " | ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="suite", required=True)
    for name in (*SUITES, "all"):
        sp = sub.add_parser(name)
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name != "all":
            importlib.import_module(f"tools.benchmarks.{name}").add_arguments(sp)
    args = parser.parse_args(argv)
    suites = SUITES if args.suite == "all" else (args.suite,)
    results = {}
    for name in suites:
        module = importlib.import_module(f"tools.benchmarks.{name}")
        if args.suite == "all":  # defaults of that suite's own arguments
            sp = argparse.ArgumentParser()
            module.add_arguments(sp)
            suite_args = sp.parse_args([])
        else:
            suite_args = args
        results[name] = module.run(suite_args)
        if not args.json:
            print(f"\n## {name}\n\n{format_table(results[name])}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
