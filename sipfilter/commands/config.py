"""`sipfilter config check|show`: validate a configuration (and its rule packs) or print what it resolves to.

`check` also opens the configured store, read only, to name the lists the trunks check that were never
imported (`--no-store` skips that); `show` reads files only. Exit 0 valid, 1 invalid, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from sipfilter import stores
from sipfilter.config import RESTART_KEYS, Config, ConfigError
from sipfilter.configure import load_config
from sipfilter.readiness import describe_missing, missing_lists

DEFAULT_CONFIG = os.environ.get("SIPFILTER_CONFIG", "config/sipfilter.yaml")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("config", help="validate or show the configuration")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    for name, helptext, func in (
        ("check", "validate the configuration and its rule packs", check),
        ("show", "print the validated configuration as JSON", show),
    ):
        q = sub.add_parser(name, help=helptext, description=helptext)
        q.add_argument("--config", default=DEFAULT_CONFIG, help="configuration file (default: %(default)s)")
        q.set_defaults(func=func)
        if name == "check":
            q.add_argument("--no-store", dest="store", action="store_false",
                           help="do not open the store to see which lists were imported")
        if name == "show":
            q.add_argument("--trunk", help="show only this trunk and its compiled rule values")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return None


def warnings(config: Config) -> list[str]:
    """Valid but risky choices an operator should see before going live (fail-open settings, [U] points)."""
    out: list[str] = []
    trunks = list(config.trunks.values())
    for i, a in enumerate(trunks):
        for b in trunks[i + 1 :]:
            if (
                a.match.header is None
                and b.match.header is None
                and any(
                    x.version == y.version and x.overlaps(y) for x in a.match.sources for y in b.match.sources
                )
            ):
                out.append(f"trunks {a.name} and {b.name}: overlapping match.sources and no match.header")
    token_file = config.admin.token_file
    if token_file is not None and token_file.exists() and token_file.stat().st_mode & 0o077:
        out.append(f"admin.token_file {token_file} is readable by others than its owner (chmod 600 it)")
    for t in trunks:
        rules = config.rules[t.name]
        where = f"trunk {t.name}"
        if t.mode == "monitor":
            out.append(f"{where}: monitor mode — would-be rejections are relayed (counted and logged only)")
        if t.on_store_error == "allow":
            out.append(f"{where}: on_store_error: allow — calls pass unchecked while the store is down")
        if t.on_stale_list == "allow-and-alert":
            out.append(f"{where}: on_stale_list: allow-and-alert — stale or missing DNC lists do not block")
        if t.prospecting and not t.lists.dnc:
            out.append(f"{where}: prospecting without any do-not-call list (company opt-outs?)")
        if t.prospecting and rules.lists.consent_from == float("inf"):
            out.append(f"{where}: consent.required_from is null — the opt-in rule (L223-1, 2026) is off")
        if not t.automated:
            out.append(f"{where}: automated: false — caller-ID (NPV) rules are not applied")
        for cat in {c.name: c for c in rules.caller_id.prefixes.values()}.values():
            if cat.allow and cat.name == "special-rate":
                out.append(
                    f"{where}: 081/082 caller IDs allowed — uncertain legal basis (needs a legal check)"
                )
    return out


def check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    packs = ", ".join(f"{n} (version {p.version}, {p.path})" for n, p in config.rule_packs.items())
    print(f"{config.path}: OK")
    print(f"  rule packs: {packs}")
    sides = [f"{side} " + ", ".join(listen.describe() for listen in listens)
             for side, listens in (("inside", config.sip.inside), ("outside", config.sip.outside)) if listens]
    print(f"  listening: {'; '.join(sides)}")
    for t in config.trunks.values():
        print(
            f"  trunk {t.name}: account {t.account}, mode {t.mode}, rule pack {t.rule_pack}, "
            f"{'automated' if t.automated else 'manual'}, "
            f"{'prospecting' if t.prospecting else 'non-prospecting'}, "
            f"dnc lists {', '.join(t.lists.dnc) or 'none'}, {len(t.targets)} target(s)"
        )
    print(f"  store: {config.store.backend}; audit log: {config.audit.path}")
    admin = config.admin
    if admin.token_file is not None:
        token = f"token from {admin.token_file}" + ("" if admin.token else " (created at the first start)")
    else:
        token = "token inline" if admin.token else "no token: the admin API is closed"
    print(f"  admin: {admin.host}:{admin.port}, {token}")
    print(f"  on SIGHUP everything applies but {', '.join(RESTART_KEYS)} (a restart applies those)")
    for w in warnings(config) + (store_warnings(config) if args.store else []):
        print(f"warning: {w}")
    return 0


def store_warnings(config: Config) -> list[str]:
    """The lists in use that the store never imported, or why the store could not be asked."""
    async def ask() -> list[str]:
        store = await stores.open_store(config, watch=False)
        try:
            return describe_missing(config, missing_lists(config, store))
        finally:
            await store.close()

    try:
        return asyncio.run(ask())
    except (stores.StoreUnavailable, OSError) as exc:
        return [f"cannot open the {config.store.backend} store to see which lists were imported: {exc}"]


_SECRET = ("token", "ha1")  # never printed


def _plain(value: Any) -> Any:
    """JSON-friendly view of config dataclasses (compiled structures shown as their fields)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: "<redacted>"
            if f.name in _SECRET and getattr(value, f.name)
            else _plain(getattr(value, f.name))
            for f in fields(value)
            if not f.name.startswith("_") and f.name != "memo"
        }
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def show(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    if args.trunk:
        if args.trunk not in config.trunks:
            print(f"no trunk named {args.trunk!r}", file=sys.stderr)
            return 2
        rules = config.rules[args.trunk]
        out = {
            "trunk": _plain(config.trunks[args.trunk]),
            "rules": {k: _plain(v) for k, v in asdict_shallow(rules).items() if k != "normaliser"},
        }
    else:
        out = {k: _plain(v) for k, v in asdict_shallow(config).items() if k not in ("rules", "rule_packs")}
        out["rule_packs"] = {
            n: {"version": p.version, "path": str(p.path)} for n, p in config.rule_packs.items()
        }
    print(json.dumps(out, indent=2, ensure_ascii=False, default=str))
    return 0


def asdict_shallow(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
