"""Metric names a PromQL expression reads (a light scanner, enough for our rules and panels).

Helps the tests check that no alert or panel queries a series sipfilter does not export; not a parser.
"""

from __future__ import annotations

import re
from typing import Any

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ]
)


def referenced_metrics(expr: str) -> set[str]:
    """Series names selected by `expr` (function names and keywords excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = _OFFSET.sub("", text)
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or aggregation
        if text[max(0, m.start() - 1)] in "0123456789.e" and m.start() > 0 and word[0] in "eE":
            continue  # the exponent of a number like 1e-3
        names.add(word)
    return names


# Grafana's variables, replaced by what a query would get with "All" selected.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$trunk": ".*",
                "$instance": ".*", "$worker": ".*"}  # fmt: skip
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^{}]*\})?")


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its `{…}` matchers or "") for every series selector of `expr`."""
    names = referenced_metrics(expr)
    masked = _STRING.sub(lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)  # same offsets
    out: list[tuple[str, str]] = []
    for m in _SELECTOR.finditer(masked):
        if m.group(1) in names:
            out.append((m.group(1), expr[m.start(2) : m.end(2)] if m.group(2) else ""))
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL with variables substituted) for every target of every panel, rows included, and
    for every annotation query ("annotation: <name>")."""
    out: list[tuple[str, str]] = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            out.append((panel["title"], grafana_to_promql(target["expr"])))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            out.append((f"annotation: {annotation['name']}", grafana_to_promql(annotation["expr"])))
    return out
