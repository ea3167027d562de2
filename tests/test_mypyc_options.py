"""The mypyc build's type pass (scripts/mypyc.ini) tolerates typing-only drift outside the compiled modules
(an unused `type: ignore` after a stub update), which the strict check of the suite still refuses; and it
still refuses a real type error inside a compiled module. mypy runs on a throwaway copy of the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipfilter import compiled

ROOT = Path(__file__).resolve().parents[1]


def _mypy(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tree / ".mypy_cache"), *args],
                          cwd=tree, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.timeout(900)
def test_mypyc_pass_ignores_drift_outside_compiled_modules_the_suite_does_not(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "sipfilter", tree / "sipfilter",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    # Drift in a module the compiled ones import but that is not compiled itself.
    config_py = tree / "sipfilter" / "config" / "model.py"
    config_py.write_text(config_py.read_text() + "\nDRIFT: int = 1  # type: ignore[assignment]\n")
    compiled_paths = [str(compiled.source_path(m).relative_to(ROOT)) for m in compiled.MODULES]
    mypyc_pass = _mypy(tree, "--config-file", str(ROOT / "scripts" / "mypyc.ini"), *compiled_paths)
    assert mypyc_pass.returncode == 0, mypyc_pass.stdout + mypyc_pass.stderr
    suite = _mypy(tree)  # pyproject.toml's [tool.mypy], as scripts/test runs it
    assert suite.returncode == 1 and 'sipfilter/config/model.py' in suite.stdout, suite.stdout
    assert 'Unused "type: ignore" comment' in suite.stdout
    # A real error inside a compiled module still fails the mypyc pass.
    wire = tree / "sipfilter" / "b2bua" / "wire.py"
    wire.write_text(wire.read_text() + '\nBROKEN: int = "not an int"\n')
    mypyc_pass = _mypy(tree, "--config-file", str(ROOT / "scripts" / "mypyc.ini"), *compiled_paths)
    assert mypyc_pass.returncode == 1 and "sipfilter/b2bua/wire.py" in mypyc_pass.stdout, mypyc_pass.stdout
