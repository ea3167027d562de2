"""Fixtures for the end-to-end tests: SIPp processes (and sipfilter, see test modules) on free ports.

Every process a fixture starts is killed in its teardown, whatever the test did.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sipp_harness import SIPP, Sipp, SippFactory


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippFactory]:
    """`sipp(scenario, local_port=…, **Sipp fields)` builds a Sipp whose traces go under tmp_path;
    the caller starts it. All of them are stopped at teardown."""
    if SIPP is None:
        pytest.skip("sipp is not installed (Debian package sip-tester; scripts/setup --test)")
    made: list[Sipp] = []

    def make(scenario: str, **kwargs: Any) -> Sipp:
        name = kwargs.pop("name", None) or f"{len(made):02d}-{Path(scenario).stem}"
        proc = Sipp(scenario=scenario, workdir=tmp_path / name, name=name, **kwargs)
        made.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in made:
            proc.stop()
