"""The import contract of pyproject.toml ([tool.importlinter]) holds on the tree, and it is not
vacuous: the same check fails, naming the broken contract, once a lower layer imports a higher
one (a model package importing a study, ptq importing theory) or one model imports the other.

Each case copies the three packages and pyproject.toml into a temporary folder, adds one import
line, and runs the real `lint-imports` there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for pkg in ("ptq", "theory", "experiments"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree):
    out = lint(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("experiments/models/minilm/weights.py", "import experiments.studies.minilm",
     "the layers of experiments"),
    ("experiments/figures/lm.py", "import experiments.studies.lm", "the layers of experiments"),
    ("experiments/measure.py", "import experiments.driver", "the layers of experiments"),
    ("ptq/grid.py", "import theory", "experiments above theory above ptq"),
    ("experiments/models/smollm2/text.py", "import experiments.models.minilm.text",
     "model packages independent of each other"),
])
def test_a_deliberate_violation_breaks_its_contract(tree, module, line, contract):
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # the deliberate violation\n")
    out = lint(tree)
    assert out.returncode != 0
    assert f"{contract} BROKEN" in out.stdout, out.stdout
