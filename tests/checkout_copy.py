"""A copy of this checkout as a fresh clone would have it (tracked and new, not ignored, files), for tests
that run the project's own scripts and documented commands without touching this tree or its .venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_checkout(dest: Path) -> Path:
    """Copy the checkout to `dest`, sharing only the pinned uv of .tools/ (scripts/uv would install the same
    one from the registry). Returns `dest`."""
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if not source.is_file():  # deleted in the work tree, not yet committed
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    if (ROOT / ".tools").is_dir():
        os.symlink(ROOT / ".tools", dest / ".tools")
    return dest
