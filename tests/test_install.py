"""Packaging: training/ and serving/ install as selfish_deploy.training and selfish_deploy.serving."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_maps_training_and_serving_under_the_package(tmp_path):
    env = {**os.environ, "SELFISH_NO_KERNELS": "1"}  # the layout only: the kernels' build is tested below
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, env=env)
    wheel = next(tmp_path.glob("selfish_deploy-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("selfish_deploy/training/trainer.py", "selfish_deploy/training/methods/static.py",
                   "selfish_deploy/serving/app.py", "selfish_deploy/export/writer.py",
                   "selfish_deploy/kernels/reference.py", "selfish_deploy/runtime/engine.py",
                   "selfish_deploy/kernels/csrc/cpu/kernels.inc"):
        assert module in names, module
    assert not any(n.startswith(("training/", "serving/", "tests/")) for n in names)
    bundled = {n for n in names if n.startswith("selfish_deploy/assets/ptb-lstm-sparse/")}
    assert {f"selfish_deploy/assets/ptb-lstm-sparse/{f}" for f in ("config.json", "model.safetensors",
                                                                   "vocab.txt")} <= bundled
    recipes = {f"selfish_deploy/training/recipes/{r}.toml" for r in ("ptb-cpu", "ptb-stacked-lstm")}
    assert recipes <= names
    # Every package directory in the source tree is declared (pyproject lists them explicitly).
    for d in ("training", "serving", "selfish_deploy"):
        for init in (REPO / d).rglob("__init__.py"):
            rel = init.relative_to(REPO).as_posix()
            rel = rel if d == "selfish_deploy" else "selfish_deploy/" + rel
            assert rel in names, f"{rel} missing from the wheel: add its package to pyproject.toml"


def test_editable_install_imports_from_the_source_tree():
    import selfish_deploy.serving.app as app
    import selfish_deploy.training.trainer as trainer

    assert Path(trainer.__file__).resolve() == REPO / "training" / "trainer.py"
    assert Path(app.__file__).resolve() == REPO / "serving" / "app.py"


def test_editable_install_built_the_compiled_kernels():
    """`pip install -e .` (make test's install) compiles csrc/cpu next to the loader, and it loads."""
    import shutil

    from selfish_deploy import kernels

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        import pytest

        pytest.skip("no C++ compiler: the runtime uses the PyTorch reference kernels")
    assert kernels.report()["compiled_cpu"], kernels.report()["status"]
