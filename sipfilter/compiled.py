"""The call path compiled with mypyc: which modules, and whether their compiled form may be used.

`scripts/compile` builds MODULES into C extensions next to their sources (`message.cpython-311-….so`
beside `message.py`, their shared runtime in `_native__mypyc….so`) and then writes MANIFEST: each
source's SHA-256. Python imports an extension before a source of the same name, so `use_compiled()` runs
first, when the package is imported. If SIPFILTER_PURE is set, or a source changed after it was compiled
(or the build is incomplete), every listed module is loaded from its source instead. All of them: compiled
modules call each other directly, so a fresh source beside a stale extension would still run old code.

The methods `dataclass()` generates stay interpreted under mypyc: a dataclass built for every message or call
writes out its own `__init__` (and `__eq__`/`__hash__` when the call path compares or hashes it), which is
compiled (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The call path, compiled together (mypyc's group: one shared library): what every SIP message goes through,
# from the socket on, then what decides and audits a new INVITE.
MODULES: tuple[str, ...] = (
    # The UDP socket's reads and sends, and which worker owns a datagram.
    "sipfilter.transport.base",
    "sipfilter.transport.udp",
    "sipfilter.workers.routing",
    "sipfilter.sip.errors",
    "sipfilter.sip.grammar",
    "sipfilter.sip.status",
    "sipfilter.sip.uri",
    "sipfilter.sip.header_values",
    "sipfilter.sip.headers",
    "sipfilter.sip.typed_headers",
    "sipfilter.sip.message",
    "sipfilter.sip.timers",
    "sipfilter.sip.matching",
    "sipfilter.sip.transaction_events",
    "sipfilter.sip.transaction",
    "sipfilter.b2bua.ids",
    "sipfilter.b2bua.wire",
    "sipfilter.b2bua.wheel",
    "sipfilter.b2bua.topology",
    "sipfilter.b2bua.calls",
    "sipfilter.b2bua.runtime",
    # The B2BUA's rooms, each class extending the one before it (b2bua/plumbing.py), then its dispatch.
    "sipfilter.b2bua.plumbing",
    "sipfilter.b2bua.gate",
    "sipfilter.b2bua.transactions",
    "sipfilter.b2bua.lifecycle",
    "sipfilter.b2bua.b_leg",
    "sipfilter.b2bua.relay",
    "sipfilter.b2bua.health",
    "sipfilter.b2bua.drain",
    "sipfilter.b2bua.core",
    # Which trunk a request comes from, where it goes, what crosses inside a dialog.
    "sipfilter.b2bua.trunks",
    "sipfilter.b2bua.in_dialog",
    # What decides a new INVITE: its facts, the admission limits, the policy's rule families and engine.
    "sipfilter.b2bua.facts",
    "sipfilter.b2bua.limits",
    "sipfilter.policy.verdict",
    "sipfilter.policy.numbers",
    "sipfilter.policy.facts",
    "sipfilter.policy.territory",
    "sipfilter.policy.hours",
    "sipfilter.policy.caller_id",
    "sipfilter.policy.lists",
    "sipfilter.policy.frequency",
    "sipfilter.policy.opposition",
    "sipfilter.policy.proof",
    "sipfilter.policy.identity",
    "sipfilter.policy.engine",
    # The embedded store's answers from memory: list lookups, consents, contracts, objections, attempt counts.
    "sipfilter.stores.numberset",
    "sipfilter.stores.embedded_records",
    "sipfilter.stores.history",
    "sipfilter.stores.call_path",
    # The audit line written before each answer goes out.
    "sipfilter.audit",
    # The events the B2BUA reports, and the metrics' side of them (the call counters' dict updates).
    "sipfilter.b2bua.observe",
    "sipfilter.metrics.events",
)
GROUP = "sipfilter._native"  # mypyc names the shared library after it: sipfilter/_native__mypyc….so
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "compiled.json"

# What the running process uses, for the start-up log: "compiled (mypyc)" or "pure Python (why)".
status = "pure Python (not compiled)"


def source_path(module: str) -> Path:
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_paths(module: str) -> list[Path]:
    """The compiled files of `module` present next to its source (none when it was not compiled)."""
    base = source_path(module).with_suffix("")
    return [p for suffix in importlib.machinery.EXTENSION_SUFFIXES if (p := Path(f"{base}{suffix}")).exists()]


def all_extensions() -> list[Path]:
    """Every compiled file in the package, listed in MODULES or not (any left by an earlier build)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [p for p in PACKAGE_DIR.rglob("*.so") if p.name.endswith(suffixes)]


def digests() -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in MODULES}


def stale_reason() -> str | None:
    """Why the compiled modules must not be used (None: they are up to date)."""
    if not all(extension_paths(m) for m in (*MODULES, GROUP + "__mypyc")):
        return "the build is incomplete: run scripts/compile"
    try:
        built = json.loads(MANIFEST.read_text(encoding="utf-8"))["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return "the build did not finish: run scripts/compile"
    if not isinstance(built, dict) or set(built) != set(MODULES):
        return "the list of compiled modules changed: run scripts/compile"
    changed = [m for m, digest in digests().items() if built[m] != digest]
    if changed:
        return f"{', '.join(changed)} changed since compiled: run scripts/compile"
    return None


class _FromSource(importlib.abc.MetaPathFinder):
    """Finds the listed modules' .py sources ahead of their compiled extensions."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:  # fmt: skip
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def use_compiled() -> None:
    """Called once, by the package's __init__, before any listed module is imported."""
    global status
    if not any(extension_paths(m) for m in (*MODULES, GROUP + "__mypyc")):
        return  # nothing compiled: plain imports find the sources
    if os.environ.get("SIPFILTER_PURE"):
        reason: str | None = "SIPFILTER_PURE is set"
    else:
        reason = stale_reason()
        if reason is not None:
            print(f"sipfilter: compiled modules not used: {reason}", file=sys.stderr)
    if reason is None:
        status = "compiled (mypyc)"
        return
    status = f"pure Python ({reason})"
    sys.meta_path.insert(0, _FromSource(MODULES))
