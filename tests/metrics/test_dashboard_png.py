"""bench/dashboard_png.py draws every panel of the shipped dashboard (fed by a fake Prometheus here; the real
one in bench/dashboard_png.py --lab)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "sipfilter.json"

pytest.importorskip("matplotlib")


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_png", REPO / "bench" / "dashboard_png.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePrometheus:
    """Two series per query: a ramp and a step, with labels every legend of the dashboard uses."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def _labels(self, i: int) -> dict[str, str]:
        return {"trunk": f"t{i}", "target": f"sip:c{i}", "list": "bloctel", "rule": "time.window",
                "code": "200", "instance": "sf1", "result": "ok", "mode": "monitor" if i else "enforce",
                "version": "0.1.0"}

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        self.queries.append(expr)
        times = [start + k * step for k in range(int((end - start) // step) + 1)]
        ramp = [[[t, str(i + k / len(times))] for k, t in enumerate(times)] for i in range(2)]
        return [{"metric": self._labels(i), "values": ramp[i]} for i in range(2)]

    def query(self, expr: str, at: float | None = None) -> list[Any]:
        self.queries.append(expr)
        return [{"metric": self._labels(i), "value": [at or 0, str(float(i))]} for i in range(2)]


def test_one_panel_of_each_kind_is_drawn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_tool()
    dashboard = json.loads(DASHBOARD.read_text())
    first_of_kind: dict[str, Any] = {}
    for panel in dashboard["panels"]:
        first_of_kind.setdefault(panel["type"], panel)
    first_of_kind.pop("row")
    assert set(first_of_kind) == set(tool.KINDS)  # what the dashboard uses, the tool draws
    sample = dict(dashboard, panels=list(first_of_kind.values()))
    fake = FakePrometheus()
    written = tool.render(sample, fake, 1_800_000_000.0, 1_800_003_600.0, tmp_path, step=60.0,
                          scrape_interval_s=15.0, dpi=30)  # fmt: skip
    assert len(written) == len(first_of_kind)
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 500, path.name
    assert any("[60s]" in q for q in fake.queries)
    out = capsys.readouterr().out
    assert "annotation" in out and "01-trunks.png" in out


def test_every_panel_of_the_dashboard_can_be_drawn() -> None:
    tool = load_tool()
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["type"] in tool.KINDS, panel["title"]
        for target in panel["targets"]:
            assert "$" not in tool.substitute(target["expr"], rate_interval_s=60, range_s=3600, step_s=15)


def test_values_and_variables() -> None:
    tool = load_tool()
    assert tool.fmt_value(0.25, "percentunit") == "25 %"
    assert tool.fmt_value(0.125, "percentunit") == "12.50 %"
    assert tool.fmt_value(0.0042, "s") == "4.20 ms"
    assert tool.fmt_value(math.inf, "short") == "∞"
    assert tool.fmt_value(3 * 2**20, "bytes") == "3 MiB"
    expr = 'rate(x{instance=~"$instance",trunk=~"$trunk"}[$__rate_interval]) + increase(y[$__range])'
    assert tool.substitute(expr, rate_interval_s=60, range_s=3600, step_s=15) == (
        'rate(x{instance=~".*",trunk=~".*"}[60s]) + increase(y[3600s])'
    )
    with pytest.raises(ValueError, match="unknown Grafana variable"):
        tool.substitute("x{a=~\"$nope\"}", rate_interval_s=60, range_s=60, step_s=15)
    assert tool.legend("{{trunk}} / {{target}}", {"trunk": "t", "target": "c"}, "e") == "t / c"
