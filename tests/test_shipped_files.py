"""Shipped files speak for themselves: no reference to where or how they were made (machine paths, issue
numbers) in the code, configs, scenarios, scripts, docs or tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = re.compile(r"/work/|\bissues? ?#?\d+\b|\(issue\b", re.IGNORECASE)
CHECKED = ("sipfilter/", "config/", "docker/", "sipp/", "scripts/", "docs/", "tests/", "bench/", ".ci/",
           "README.md", "Makefile", "pyproject.toml")


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *CHECKED], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        names = out.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive)
        names = [str(p.relative_to(ROOT)) for c in CHECKED for p in (ROOT / c).rglob("*") if p.is_file()]
    files = []
    for name in names:
        path = ROOT / name
        if path.suffix in (".so", ".bin", ".dat") or not path.is_file():
            continue
        files.append(path)
    return files


def test_no_internal_references_in_shipped_files() -> None:
    found = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if INTERNAL.search(line) and path != Path(__file__):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "internal references:\n" + "\n".join(found)
