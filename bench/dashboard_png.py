#!/usr/bin/env python3
"""The Grafana dashboard (docker/grafana/dashboards/sipfilter.json) drawn panel by panel to PNG from a
Prometheus, without Grafana: what a NOC operator would see, to look at when panels or metrics change.

Every panel's queries run as Grafana would run them with every variable on "All" (`$__rate_interval` is
4 scrape intervals, at least 1 m as in Grafana's default), over the chosen time range; annotations
(restarts, config reloads, list imports) are drawn as vertical lines on the time-series panels. Time series,
state timelines, stats, bar gauges and tables are supported: enough for this dashboard, not a Grafana clone.
Prints one line per panel (series drawn, last values) and writes `NN-title.png` files.

    .venv/bin/python bench/dashboard_png.py --lab 8 --out /tmp/panels          # a lab scene, then draw it
    .venv/bin/python bench/dashboard_png.py --prometheus http://127.0.0.1:9090 --since 6h --out /tmp/panels

`--lab MINUTES` runs a scene on loopback first (free ports, everything stopped at the end): sipfilter with
two trunks ("dialer" enforcing with two carrier targets, "callback" in monitor mode with a busy carrier),
SIPp dialers replaying sipp/csv/policy_mix.csv at 6 and 2 calls/s, a Prometheus scraping every 2 s, and
these events: a config reload lowering the dialer's max_cps (25 %), a list import (40 %), the first carrier
killed (50 %, calls fail over) and back (65 %), a burst above max_cps (75 %), a sipfilter restart (85 %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "sipfilter.json"


class Source(Protocol):
    """What the drawing needs from Prometheus (its HTTP API, or a fake in the tests)."""

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]: ...

    def query(self, expr: str, at: float | None = None) -> list[Any]: ...


# -- Grafana's variables and legends --------------------------------------------------------------------


def substitute(expr: str, *, rate_interval_s: float, range_s: float, step_s: float) -> str:
    """The PromQL Grafana sends with every template variable on "All"."""
    values = {"$__rate_interval": f"{round(rate_interval_s)}s", "$__interval": f"{round(step_s)}s",
              "$__range": f"{round(range_s)}s", "$instance": ".*", "$worker": ".*",
              "$trunk": ".*"}  # fmt: skip
    for var in sorted(values, key=len, reverse=True):
        expr = expr.replace(var, values[var])
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr


def legend(fmt: str, labels: dict[str, str], expr: str) -> str:
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or expr[:40]
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


# -- units -------------------------------------------------------------------------------------------------


def scale_for(unit: str, values: Sequence[float]) -> tuple[float, str]:
    """A factor and an axis label that make `values` readable in `unit`."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    if unit == "percentunit":
        return 100.0, "%"
    if unit == "s":
        if top and top < 1e-3:
            return 1e6, "µs"
        if top and top < 1:
            return 1e3, "ms"
        if top >= 7200:
            return 1 / 3600, "hours"
        return 1.0, "s"
    if unit == "bytes":
        return 1 / 2**20, "MiB"
    if unit == "reqps":
        return 1.0, "per second"
    if unit == "d":
        return 1.0, "days"
    return 1.0, ""


def fmt_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "∞" if value > 0 else "—" if math.isnan(value) else "-∞"
    factor, label = scale_for(unit, [value])
    shown = value * factor
    number = f"{shown:.0f}" if abs(shown) >= 100 or shown == int(shown) else f"{shown:.2f}"
    return f"{number} {label}".strip() if label not in ("per second",) else f"{number}/s"


# -- drawing -----------------------------------------------------------------------------------------------


def _threshold_color(defaults: dict[str, Any], value: float) -> str:
    color = "gray"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or (math.isfinite(value) and value >= step["value"]):
            color = step["color"]
    return {"green": "#2e7d32", "red": "#c62828", "orange": "#ef6c00"}.get(color, color)


def _mapped(defaults: dict[str, Any], value: float) -> str | None:
    for mapping in defaults.get("mappings", []):
        if mapping.get("type") == "value" and math.isfinite(value):
            hit = mapping["options"].get(str(int(value))) if value == int(value) else None
            if hit:
                return str(hit.get("text", value))
    return None


# Grafana panel types this tool draws, and the Drawer method for each.
KINDS = {"timeseries": "_timeseries", "state-timeline": "_timeline", "stat": "_stat", "bargauge": "_bargauge",
         "table": "_table"}  # fmt: skip


class Drawer:
    """Queries one panel's targets and draws them with matplotlib (Agg: files only)."""

    def __init__(self, source: Source, start: float, end: float, step: float, rate_interval_s: float,
                 annotations: list[tuple[float, str, str]], dpi: int = 100) -> None:  # fmt: skip
        self.source, self.start, self.end, self.step, self.dpi = source, start, end, step, dpi
        self.rate_interval_s = rate_interval_s
        self.annotations = annotations

    def promql(self, expr: str) -> str:
        return substitute(expr, rate_interval_s=self.rate_interval_s, range_s=self.end - self.start,
                          step_s=self.step)  # fmt: skip

    def series(self, panel: dict[str, Any]) -> Iterator[tuple[str, str, list[float], list[float]]]:
        """(refId, legend, times, values) of every series of every target, over the range."""
        for target in panel["targets"]:
            expr = self.promql(target["expr"])
            for result in self.source.query_range(expr, self.start, self.end, self.step):
                times = [float(t) for t, _ in result["values"]]
                values = [_float(v) for _, v in result["values"]]
                name = legend(target.get("legendFormat", ""), result["metric"], expr)
                yield target["refId"], name, times, values

    def instant(self, panel: dict[str, Any]) -> list[tuple[dict[str, str], str, float, str]]:
        """(labels, legend, value, refId) of every series of every target, at the end of the range."""
        out = []
        for target in panel["targets"]:
            expr = self.promql(target["expr"])
            for result in self.source.query(expr, self.end):
                label = legend(target.get("legendFormat", ""), result["metric"], expr)
                out.append((result["metric"], label, _float(result["value"][1]), target["refId"]))
        return out

    def draw(self, panel: dict[str, Any], path: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kind = panel["type"]
        width = max(4.0, panel["gridPos"]["w"] * 0.55)
        height = max(2.6, panel["gridPos"]["h"] * 0.55)
        fig, ax = plt.subplots(figsize=(width, height), dpi=self.dpi)
        try:
            summary: str = getattr(self, KINDS[kind])(panel, fig, ax)
            ax.set_title(panel["title"], fontsize=10, loc="left")
            fig.tight_layout()
            fig.savefig(path)
        finally:
            plt.close(fig)
        return summary

    def _time_axis(self, ax: Any) -> None:
        import matplotlib.dates as mdates

        ax.set_xlim(datetime.fromtimestamp(self.start), datetime.fromtimestamp(self.end))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
        ax.tick_params(labelsize=7)
        for at, title, color in self.annotations:
            if self.start <= at <= self.end:
                ax.axvline(datetime.fromtimestamp(at), color=color, linestyle=":", linewidth=1)
                ax.annotate(title, (datetime.fromtimestamp(at), 1.0), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=6, color=color)  # fmt: skip

    def _timeseries(self, panel: dict[str, Any], fig: Any, ax: Any) -> str:
        defaults = panel["fieldConfig"]["defaults"]
        by_ref = _ref_overrides(panel)
        right_refs = {ref: props for ref, props in by_ref.items()
                      if props.get("custom.axisPlacement") == "right"}  # fmt: skip
        drawn = list(self.series(panel))
        unit = defaults.get("unit", "short")
        left = [s for s in drawn if s[0] not in right_refs]
        factor, label = scale_for(unit, [v for s in left for v in s[3]])
        stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
        axes: dict[str | None, Any] = {None: ax}
        if right_refs:
            axes["right"] = ax.twinx()
        quiet = 0
        if stacked and left:
            # As Grafana's table legend sorted by max: the busiest first; series at 0 throughout left out.
            busy = sorted((s for s in left if any(v for v in s[3] if math.isfinite(v))),
                          key=lambda s: -max((v for v in s[3] if math.isfinite(v)), default=0.0))  # fmt: skip
            quiet = len(left) - len(busy)
            grid = _grid(self.start, self.end, self.step)
            rows = [_on_grid(grid, s[2], s[3], factor) for s in busy]
            colors = [matplotlib_color(i) for i in range(len(busy))]
            if busy:
                ax.stackplot([datetime.fromtimestamp(t) for t in grid], rows, labels=[s[1] for s in busy],
                             colors=colors, alpha=0.85)  # fmt: skip
        else:
            for _ref, name, times, values in left:
                ax.plot([datetime.fromtimestamp(t) for t in times], [v * factor for v in values], label=name,
                        linewidth=1.2)  # fmt: skip
        right_label = ""
        for ref, name, times, values in drawn:
            if ref in right_refs:
                r_unit = right_refs[ref].get("unit", unit)
                r_factor, right_label = scale_for(r_unit, values)
                axes["right"].plot([datetime.fromtimestamp(t) for t in times], [v * r_factor for v in values],
                                   label=f"{name} (right)", linestyle="--", linewidth=1.2)  # fmt: skip
        if "right" in axes:
            axes["right"].set_ylabel(right_label or "right axis", fontsize=7)
            axes["right"].tick_params(labelsize=7)
        style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
        if style != "off":
            for step in defaults.get("thresholds", {}).get("steps", []):
                if step.get("value") is not None:
                    ax.axhline(step["value"] * factor, color=_threshold_color(defaults, step["value"]),
                               linestyle="--", linewidth=0.8)  # fmt: skip
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"] * factor)
        if "max" in defaults:
            ax.set_ylim(top=defaults["max"] * factor)
        ax.set_ylabel(label, fontsize=7)
        self._time_axis(ax)
        handles, labels = ax.get_legend_handles_labels()
        if "right" in axes:
            more = axes["right"].get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if quiet:
            ax.text(0.99, 0.01, f"+{quiet} series at 0", transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=6, color="gray")  # fmt: skip
        if handles:
            ax.legend(handles[:12], labels[:12], fontsize=6, loc="upper left",
                      ncols=2 if len(handles) > 6 else 1)  # fmt: skip
        elif not quiet:
            ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color="gray")
        lasts = [f"{name}={fmt_value(_last(values), right_refs.get(ref, {}).get('unit', unit))}"
                 for ref, name, _times, values in drawn[:6]]  # fmt: skip
        return f"{len(drawn)} series; last: " + ", ".join(lasts)

    def _timeline(self, panel: dict[str, Any], fig: Any, ax: Any) -> str:
        import matplotlib.dates as mdates

        drawn = list(self.series(panel))
        width = self.step / 86400  # matplotlib dates are days
        for row, (_ref, _name, times, values) in enumerate(drawn):
            for t, v in zip(times, values, strict=True):
                color = "#2e7d32" if v >= 1 else "#c62828"
                start = mdates.date2num(datetime.fromtimestamp(t))  # type: ignore[no-untyped-call]
                ax.broken_barh([(start, width)], (row - 0.4, 0.8), color=color)
        ax.set_yticks(range(len(drawn)), [s[1] for s in drawn], fontsize=6)
        self._time_axis(ax)
        downs = sum(1 for s in drawn for v in s[3] if v < 1)
        return f"{len(drawn)} series; {downs} samples down"

    def _stat(self, panel: dict[str, Any], fig: Any, ax: Any) -> str:
        defaults = panel["fieldConfig"]["defaults"]
        by_ref = _ref_overrides(panel)
        values = self.instant(panel)
        ax.axis("off")
        if not values:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", color="gray")
            return "no data"
        n = len(values)
        cols = min(n, 4)
        rows = math.ceil(n / cols)
        shown: list[str] = []
        for i, (_labels, name, value, ref) in enumerate(values):
            x, y = (i % cols + 0.5) / cols, 1 - (i // cols + 0.5) / rows
            unit = by_ref.get(ref, {}).get("unit", defaults.get("unit", "short"))
            text = _mapped(defaults, value) or fmt_value(value, unit)
            ax.text(x, y + 0.08 / rows, text, ha="center", va="center", fontsize=14 if n < 5 else 10,
                    color=_threshold_color(defaults, value), weight="bold")  # fmt: skip
            ax.text(x, y - 0.18 / rows, name, ha="center", va="center", fontsize=7)
            shown.append(f"{name}={text}")
        return ", ".join(shown)

    def _bargauge(self, panel: dict[str, Any], fig: Any, ax: Any) -> str:
        values = sorted(self.instant(panel), key=lambda item: item[2])
        ax.barh([name for _l, name, _v, _r in values], [v for _l, _n, v, _r in values], color="#1565c0")
        ax.tick_params(labelsize=7)
        if not values:
            ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color="gray")
        return ", ".join(f"{name}={v:g}" for _l, name, v, _r in reversed(values))

    def _table(self, panel: dict[str, Any], fig: Any, ax: Any) -> str:
        excluded: set[str] = {"__name__"}
        for transformation in panel.get("transformations", []):
            if transformation["id"] == "organize":
                excluded |= {k for k, v in transformation["options"].get("excludeByName", {}).items() if v}
        rows = [labels for labels, _name, _value, _ref in self.instant(panel)]
        columns = sorted({k for labels in rows for k in labels} - excluded)
        ax.axis("off")
        if not rows:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", color="gray")
            return "no data"
        cells = [[labels.get(c, "") for c in columns] for labels in rows]
        table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        for (row, col), cell in table.get_celld().items():
            if row and columns[col] == "mode" and cell.get_text().get_text() == "monitor":
                cell.set_facecolor("#ffe0b2")
        return "; ".join(", ".join(f"{c}={v}" for c, v in zip(columns, r, strict=True) if v) for r in cells)


def _ref_overrides(panel: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """refId → the field properties Grafana overrides for that query (unit, axis placement)."""
    return {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
            for o in panel["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byFrameRefID"}  # fmt: skip


def matplotlib_color(i: int) -> Any:
    """Twenty distinct colours, then again: stacks of many series stay readable."""
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def _grid(start: float, end: float, step: float) -> list[float]:
    n = int((end - start) // step) + 1
    return [start + i * step for i in range(n)]


def _on_grid(grid: list[float], times: list[float], values: list[float], factor: float) -> list[float]:
    by_time = {round(t, 3): v for t, v in zip(times, values, strict=True)}
    return [(v * factor if math.isfinite(v := by_time.get(round(t, 3), 0.0)) else 0.0) for t in grid]


def _last(values: list[float]) -> float:
    return next((v for v in reversed(values) if not math.isnan(v)), math.nan)


def annotation_marks(dashboard: dict[str, Any], drawer: Drawer) -> list[tuple[float, str, str]]:
    """(time, title, color) of every annotation over the range: the first sample of each run of samples."""
    marks: list[tuple[float, str, str]] = []
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" not in annotation or not annotation.get("enable", True):
            continue
        expr = drawer.promql(annotation["expr"])
        for result in drawer.source.query_range(expr, drawer.start, drawer.end, drawer.step):
            previous = -math.inf
            for t, _v in result["values"]:
                if float(t) - previous > 2 * drawer.step:
                    title = legend(annotation.get("titleFormat", annotation["name"]), result["metric"], expr)
                    marks.append((float(t), title, annotation.get("iconColor", "gray")))
                previous = float(t)
    return sorted(marks)


def render(dashboard: dict[str, Any], source: Source, start: float, end: float, out: Path, *,
           step: float | None = None, scrape_interval_s: float = 15.0,
           dpi: int = 100) -> list[Path]:  # fmt: skip
    """Draw every panel of `dashboard` over [start, end] into `out`; prints a line per panel."""
    out.mkdir(parents=True, exist_ok=True)
    step = step or max(scrape_interval_s, (end - start) / 400)
    drawer = Drawer(source, start, end, step, max(60.0, 4 * scrape_interval_s), [], dpi)
    drawer.annotations = annotation_marks(dashboard, drawer)
    for at, title, _color in drawer.annotations:
        print(f"annotation {datetime.fromtimestamp(at):%H:%M:%S} {title}")
    written: list[Path] = []
    panels = sorted((p for p in dashboard["panels"] if p["type"] != "row"),
                    key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))  # fmt: skip
    for i, panel in enumerate(panels, 1):
        slug = re.sub(r"[^a-z0-9]+", "-", panel["title"].lower()).strip("-")
        path = out / f"{i:02d}-{slug}.png"
        summary = drawer.draw(panel, path)
        print(f"{path.name}: {summary}")
        written.append(path)
    return written


# -- the lab scene -------------------------------------------------------------------------------------------


def run_lab(minutes: float, workdir: Path, out: Path) -> list[Path]:
    """The scene of the module docstring, then `render` over it."""
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    from prometheus_harness import start_prometheus
    from sipfilter_provision import provision
    from sipp_harness import (
        Sipfilter,
        SipfilterPorts,
        Sipp,
        free_ports,
        read_calls_csv,
        sipfilter_cli,
        sipfilter_config,
        write_calls_csv,
        write_config,
    )

    duration = minutes * 60
    ports = free_ports(6)
    sf_ports, carrier_ports = SipfilterPorts(*ports[:3]), ports[3:]
    timers = {"t1_ms": 100, "t2_ms": 800, "t4_ms": 1000}  # a dead carrier times out in 6.4 s
    config = sipfilter_config(workdir, sf_ports, carrier_ports[:2], sip={"timers": timers})
    dialer = config["trunks"]["dialer"]  # ALWAYS_OPEN: hours open, no frequency cap
    dialer["match"] = {"sources": ["127.0.0.1/32"]}
    callback = dict(dialer, match={"sources": ["127.0.0.2/32"]}, mode="monitor",
                    targets=[{"uri": f"sip:127.0.0.1:{carrier_ports[2]}", "transport": "udp", "priority": 1,
                              "weight": 1}])  # fmt: skip
    config["trunks"]["callback"] = callback
    # Per source below the dialer's max_cps even after the reload lowers it to 8 (config check requires it).
    config["limits"] = {"source_rate": 7, "source_burst": 7, "max_dialogs": 120,
                        "trunks": {"dialer": {"max_dialogs": 60, "max_cps": 12}}}
    config_path = write_config(workdir / "sipfilter.yaml", config)
    provision(config_path, workdir)
    cases = read_calls_csv(REPO / "sipp" / "csv" / "policy_mix.csv")
    calls_csv = write_calls_csv(workdir / "calls.csv", cases)
    procs: list[Any] = []
    scenarios = ("carrier_uas.xml", "carrier_uas.xml", "carrier_uas_busy.xml")
    carriers = {
        port: Sipp(scenario, workdir / f"carrier-{port}", port, calls=10_000_000, timeout_s=duration + 120,
                   trace_msg=False)
        for port, scenario in zip(carrier_ports, scenarios, strict=True)
    }  # fmt: skip
    sf = Sipfilter(config_path, sf_ports, workdir / "run")
    prom = None
    try:
        for carrier in carriers.values():
            procs.append(carrier.start())
            carrier.wait_listening()
        sf.start()
        prom = start_prometheus(workdir / "prometheus", f"127.0.0.1:{sf_ports.admin}", None, interval_s=2.0)
        started = time.time()

        def dialer_sipp(name: str, ip: str, rate: float, seconds: float) -> Any:
            return Sipp("dialer_uac.xml", workdir / name, free_ports(1)[0],
                        remote=f"127.0.0.1:{sf_ports.inside}", calls=max(1, int(rate * seconds)),
                        csv_file=calls_csv, rate=rate, pause_ms=4000, timeout_s=seconds + 60, trace_msg=False,
                        local_ip=ip, name=name)  # fmt: skip

        def restart_dialers(left_s: float) -> None:
            for proc in procs:
                if proc.name.startswith("dialer"):
                    proc.stop()
            for name, ip, rate in (("dialer-main", "127.0.0.1", 6.0), ("dialer-callback", "127.0.0.2", 2.0)):
                procs.append(dialer_sipp(name, ip, rate, left_s).start())

        restart_dialers(duration)

        def at(fraction: float, what: str, action: Callable[[], None]) -> None:
            wait = started + fraction * duration - time.time()
            if wait > 0:
                time.sleep(wait)
            print(f"{time.time() - started:6.0f} s  {what}", flush=True)
            action()

        def reload_lower_cps() -> None:
            config["limits"]["trunks"]["dialer"]["max_cps"] = 8
            write_config(config_path, config)
            assert sf.proc is not None
            os.kill(sf.proc.pid, signal.SIGHUP)

        def import_list() -> None:
            numbers = workdir / "optouts-v2.txt"
            numbers.write_text("".join(f"+336990{n:05d}\n" for n in range(5000)) + "+33612000101\n")
            sipfilter_cli(["lists", "import", "--config", str(config_path), "--list", "optouts", "--format",
                           "lines", str(numbers)])  # fmt: skip

        first = carriers[carrier_ports[0]]
        at(0.25, "SIGHUP: dialer max_cps 12 -> 8", reload_lower_cps)
        at(0.40, "lists import optouts (5,001 numbers)", import_list)
        def kill_first() -> None:
            if first.proc is not None:
                first.proc.send_signal(signal.SIGKILL)

        def restart_first() -> None:
            first.stop()
            procs.append(first.start())
            first.wait_listening()

        at(0.50, "carrier 1 killed", kill_first)
        at(0.65, "carrier 1 back", restart_first)
        burst = dialer_sipp("burst", "127.0.0.1", 14.0, 0.07 * duration)
        at(0.75, "burst: 14 calls/s more for 7 % of the run", lambda: procs.append(burst.start()))
        def restart_sipfilter() -> None:
            sf.stop()
            sf.start()
            restart_dialers(0.15 * duration)

        at(0.85, "sipfilter restarted", restart_sipfilter)
        at(1.0, "end of scene", lambda: None)
        time.sleep(4)  # the last scrapes
        dashboard = json.loads(DASHBOARD.read_text())
        return render(dashboard, prom, started - 10, time.time(), out, scrape_interval_s=2.0)
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.stop()
        sf.stop()
        if prom is not None:
            prom.stop()


class HttpSource:
    """An existing Prometheus, by URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: str) -> list[Any]:
        import urllib.parse
        import urllib.request

        with urllib.request.urlopen(f"{self.url}{path}?{urllib.parse.urlencode(params)}", timeout=30) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        result: list[Any] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        return self._get("/api/v1/query_range", query=expr, start=str(start), end=str(end), step=f"{step:g}")

    def query(self, expr: str, at: float | None = None) -> list[Any]:
        return self._get("/api/v1/query", query=expr, **({"time": str(at)} if at is not None else {}))


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m or 6h, got {text!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--lab", type=float, metavar="MINUTES", help="run the lab scene, then draw it")
    source.add_argument("--prometheus", metavar="URL", help="draw from this Prometheus")
    p.add_argument("--since", type=_duration, default=_duration("6h"), help="with --prometheus: range (6h)")
    p.add_argument("--end", type=float, help="with --prometheus: end of the range, epoch seconds (now)")
    p.add_argument("--scrape-interval", type=_duration, default=15.0, help="with --prometheus: its interval")
    p.add_argument("--out", type=Path, required=True, help="directory for the PNG files")
    p.add_argument("--workdir", type=Path, help="with --lab: keep the scene's files here (default: temp)")
    a = p.parse_args(argv)
    if a.lab is not None:
        import tempfile

        if a.workdir is not None:
            run_lab(a.lab, a.workdir, a.out)
        else:
            with tempfile.TemporaryDirectory(prefix="sipfilter-lab-") as tmp:
                run_lab(a.lab, Path(tmp), a.out)
        return 0
    end = time.time() if a.end is None else a.end
    dashboard = json.loads(DASHBOARD.read_text())
    render(dashboard, HttpSource(a.prometheus), end - a.since, end, a.out,
           scrape_interval_s=a.scrape_interval)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
