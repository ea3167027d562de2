"""On a fresh clone whose pyproject.toml changed without uv.lock, `.ci/run` (so `make test`, `make run` and
`make demo`) stops at setup, before any test, and says what to run."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from checkout_copy import copy_checkout


@pytest.mark.timeout(300)
def test_ci_run_stops_with_what_to_run_when_the_lock_no_longer_matches(tmp_path: Path) -> None:
    clone = copy_checkout(tmp_path / "clone")
    pyproject = clone / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('    "hiredis>=3.0",\n',
                                                       '    "hiredis>=3.0",\n    "six>=1.16",\n'))
    proc = subprocess.Popen([str(clone / ".ci" / "run")], cwd=clone, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, SIPFILTER_PURE="1"))
    try:
        out, _ = proc.communicate(timeout=240)  # a missed mismatch would run the whole suite: far longer
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, out
    assert "setup: uv.lock no longer matches pyproject.toml" in out, out
    assert "make lock" in out and "scripts/uv lock" in out
    assert "== pytest" not in out  # stopped before any test
