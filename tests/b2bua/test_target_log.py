"""A carrier target going down is a warning; the same target answering again is news (INFO), not a problem."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from b2bua_rig import CARRIER2, answer, make_rig
from b2bua_rig import requests_named as _requests


def test_target_down_warns_and_up_again_is_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = make_rig(tmp_path)
    caplog.set_level(logging.INFO, logger="sipfilter.b2bua.core")
    rig.b2b.probe_targets()
    rig.outside.take()
    rig.clock.advance(10)  # no target answers
    rig.b2b.probe_targets()
    for probe in _requests(rig.outside.take(), "OPTIONS"):
        if probe.uri.endswith(str(CARRIER2[1])):
            rig.from_carrier(answer(probe, 200, to_tag="x"), CARRIER2)
    changes = [(r.levelname, r.getMessage()) for r in caplog.records if "carrier target" in r.getMessage()]
    assert ("WARNING", f"carrier target sip:{CARRIER2[0]}:{CARRIER2[1]} of trunk dialer is DOWN") in changes
    assert changes[-1] == ("INFO", f"carrier target sip:{CARRIER2[0]}:{CARRIER2[1]} of trunk dialer is up")
