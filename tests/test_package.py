"""Package-level contract: what `import detlosses` pulls in, what it exports, and an import audit
of the extras declared in pyproject.toml.

The audit runs each extra's code paths in a fresh interpreter, maps every imported top-level
module to the distribution that provides it (importlib.metadata), and checks that each such
distribution is one the extra's requirements bring in — the requirements named in
pyproject.toml and, recursively, their own requirements as installed. So an extra that would
fail after `pip install "detlosses[that extra]"` because it imports an undeclared package
fails here.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
GT = REPO / "tests" / "data" / "tide" / "planted_gt.json"  # 3 classes: few plots to draw
RESULTS = REPO / "tests" / "data" / "tide" / "planted_results.json"
OWN = {"detlosses", "lightning_modules", "tools", "tests"}
NOT_MODULES = {"cython_runtime"}  # a name Cython extensions put in sys.modules
# imported by a dependency only if installed, inside try/except ImportError: not a requirement
OPPORTUNISTIC = {"tqdm", "opencv-python-headless"}  # torch.hub; faster_coco_eval.core.mask


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extras: tuple[str, ...], base: bool) -> list[Requirement]:
    """Requirements of the given extras (self-references like detlosses[eval] expanded)."""
    out = [Requirement(r) for r in PYPROJECT["dependencies"]] if base else []
    for extra in extras:
        for text in PYPROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            if _normalise(req.name) == "detlosses":
                out += _declared(tuple(req.extras), base=False)
            else:
                out.append(req)
    return out


def _closure(requirements: list[Requirement]) -> set[str]:
    """Normalised names of the distributions these requirements install (as installed here)."""
    seen: set[str] = set()
    todo = [(req.name, set(req.extras)) for req in requirements]
    while todo:
        name, extras = todo.pop()
        key = _normalise(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            environment = [{"extra": extra} for extra in extras | {""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environment):
                todo.append((req.name, set(req.extras)))
    return seen


@functools.cache
def _startup_modules() -> frozenset[str]:
    """Modules an empty interpreter already has (site hooks such as setuptools' _distutils_hack)."""
    code = "import json, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return frozenset(json.loads(run.stdout))


@functools.cache
def _imported_distributions(code: str) -> tuple[set[str], set[str]]:
    """(distributions, unmapped top-level modules) imported by running ``code`` in a fresh
    interpreter (standard library and this repository's packages left out)."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    modules = set(json.loads(run.stdout.strip().splitlines()[-1])) - _startup_modules() - NOT_MODULES
    providers = metadata.packages_distributions()
    dists, unmapped = set(), set()
    for module in modules - set(sys.stdlib_module_names) - OWN:
        if module in providers:
            dists |= {_normalise(d) for d in providers[module]}
        elif not module.startswith("_"):
            unmapped.add(module)
    return dists - {"detlosses"} - OPPORTUNISTIC, unmapped


BASE_CODE = """
import detlosses
from detlosses import LOSSES, ASSIGNERS, NMS, Registry, DetectionCriterion, functional, recipes
import detlosses.boxes, detlosses.nms, detlosses.assigners, detlosses.losses
crit = DetectionCriterion.from_recipe("tood", num_classes=3)
"""
EVAL_CODE = f"""
import sys
from lightning_modules.eval_cli import main
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    code = main(["--gt", {str(GT)!r}, "--pred", {str(RESULTS)!r}, "--errors", "--plots", tmp,
                 "--out", tmp + "/report.json"])
assert code == 0
assert "torch" not in sys.modules, "detlosses-eval --gt/--pred imported torch"
"""
FAST_CODE = f"""
import sys
from detlosses.evaluation import coco_evaluate
report = coco_evaluate({str(GT)!r}, {str(RESULTS)!r}, backend="faster", errors=True)
assert "torch" not in sys.modules
"""
TRAIN_CODE = """
import lightning_modules
from lightning_modules import OneStageDetector, COCODataModule, DenseDetectorModel
import lightning_modules.train_cli, lightning_modules.inference, lightning_modules.eval_cli
import lightning_modules.detector, lightning_modules.data, lightning_modules.shapes
"""
SCENARIOS = {
    # name: (code, extras, with the base requirements torch/torchvision)
    "base": (BASE_CODE, (), True),
    "eval": (EVAL_CODE, ("eval",), False),
    "fast": (FAST_CODE, ("fast",), False),
    "train": (TRAIN_CODE, ("train",), True),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_extra_imports_only_what_it_declares(scenario):
    code, extras, base = SCENARIOS[scenario]
    allowed = _closure(_declared(extras, base))
    imported, unmapped = _imported_distributions(code)
    assert imported <= allowed, f"{scenario}: imports {sorted(imported - allowed)} not brought in by its requirements"
    assert not unmapped, f"{scenario}: modules of unknown origin {sorted(unmapped)}"


def test_dependencies_and_extras_as_designed():
    names = {_normalise(Requirement(r).name) for r in PYPROJECT["dependencies"]}
    assert names == {"torch", "torchvision"}
    extras = {key: {_normalise(r.name) for r in _declared((key,), False)} for key in PYPROJECT["optional-dependencies"]}
    assert {"pycocotools", "matplotlib"} <= extras["eval"]
    assert "faster-coco-eval" in extras["fast"]
    assert {"pytorch-lightning", "jsonargparse", "albumentations"} | extras["eval"] <= extras["train"]
    assert extras["all"] == extras["eval"] | extras["fast"] | extras["train"]
    assert (
        "signatures"
        in next(
            Requirement(r) for r in PYPROJECT["optional-dependencies"]["train"] if r.startswith("jsonargparse")
        ).extras
    )


def test_import_detlosses_needs_only_torch_and_torchvision():
    imported, _ = _imported_distributions(BASE_CODE)  # the same run as the "base" audit above
    assert {"torch", "torchvision"} <= imported
    for heavy in ("pytorch-lightning", "lightning", "pycocotools", "faster-coco-eval", "albumentations", "matplotlib"):
        assert heavy not in imported


def test_import_detlosses_alone_is_lazy():
    code = "import sys, detlosses\nprint(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_public_names():
    import detlosses
    from detlosses import functional

    for name in (
        "LOSSES",
        "ASSIGNERS",
        "NMS",
        "Registry",
        "DetectionCriterion",
        "recipes",
        "functional",
        "evaluation",
        "losses",
        "assigners",
        "nms",
    ):
        assert hasattr(detlosses, name), name
        assert name in dir(detlosses)
    assert set(detlosses.__all__) <= set(dir(detlosses))
    assert "GIoULoss" in detlosses.LOSSES.names() and "TaskAlignedAssigner" in detlosses.ASSIGNERS.names()
    assert "MultiClassNMS" in detlosses.NMS.names()
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = detlosses.nonexistent
    for name in (
        "sigmoid_focal_loss",
        "quality_focal_loss",
        "varifocal_loss",
        "distribution_focal_loss",
        "iou_loss",
        "distribution_integral",
    ):
        assert callable(getattr(functional, name)), name


def test_lightning_modules_names_are_lazy():
    code = (
        "import sys, lightning_modules, lightning_modules.eval_cli\n"
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules), dir(lightning_modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[] ['COCODataModule', 'DenseDetectorModel', 'OneStageDetector']"
    import lightning_modules
    from lightning_modules.data import COCODataModule
    from lightning_modules.detector import OneStageDetector

    assert lightning_modules.OneStageDetector is OneStageDetector
    assert lightning_modules.COCODataModule is COCODataModule
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = lightning_modules.Nope


def test_registry_imported_directly_knows_the_builtins():
    code = (
        "from detlosses.registry import ASSIGNERS, LOSSES, NMS\n"
        "print(len(LOSSES.names()), 'TaskAlignedAssigner' in ASSIGNERS, NMS.names())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    count, has_tal, nms = out.stdout.strip().split(" ", 2)
    assert int(count) >= 8 and has_tal == "True" and nms == "['MultiClassNMS']"
