"""Topology hiding and header policy: which headers of a message cross to the other leg.

A trunk's pass list (`headers.pass`) compiled into memoised name filters, and the picking of the lines that
cross. Everything else (Via, Contact, Record-Route, Call-ID, tags) never crosses: the B2BUA builds its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sipfilter.b2bua import wire
from sipfilter.b2bua.in_dialog import IDENTITY_HEADERS
from sipfilter.config import TrunkConfig
from sipfilter.sip.message import Message

# Headers the B2BUA always carries across with a body or a dialog-level meaning (besides the trunk's list).
_CONTENT = ("content-type", "content-disposition", "content-encoding", "content-language")
_IN_DIALOG = (
    "require", "supported", "rseq", "event", "subscription-state", "allow", "allow-events", "session-expires",
    "min-se", "reason", "retry-after", "unsupported", "warning", "accept", "info-package", "recv-info",
    "min-expires", "expires",
)
_COMPACT = {
    "c": "content-type", "e": "content-encoding", "k": "supported", "o": "event", "r": "refer-to",
    "b": "referred-by", "u": "allow-events", "x": "session-expires", "y": "identity",
}


class NameFilter(dict[str, bool]):
    """Which header names (as received) cross, memoised: a hit is a C-level dict lookup, so a relay picking
    headers makes no Python call per line. Bounded: names come from the wire."""

    __slots__ = ("_decide",)

    def __init__(self, decide: Callable[[str], bool]) -> None:
        super().__init__()
        self._decide = decide

    def __missing__(self, name: str) -> bool:
        ok = self._decide(name)
        if len(self) < 1024:
            self[name] = ok
        return ok


def never_relayed(trunk: TrunkConfig) -> tuple[str, ...]:
    """Headers meant for sipfilter alone: the dialer's objection header never reaches the carrier."""
    return (trunk.objection_header,) if trunk.objection_header is not None else ()


def lower_name(name: str) -> str:
    lname = name.lower()
    return _COMPACT.get(lname, lname)


class PassList:
    """A trunk's header pass list ("X-*" style prefixes allowed), compiled into memoised filters: what an
    initial INVITE carries, what in-dialog requests and responses carry towards the dialer and towards the
    carrier, and bodies only. Identity headers never cross to the carrier as the dialer wrote them."""

    __slots__ = ("dialog", "dialog_out", "identity", "invite", "invite_sans_identity", "names", "never",
                 "prefixes")  # fmt: skip

    def __init__(self, names: tuple[str, ...], never: tuple[str, ...] = ()) -> None:
        self.names = frozenset(n.lower() for n in names if not n.endswith("*"))
        self.prefixes = tuple(n[:-1].lower() for n in names if n.endswith("*"))
        self.never = frozenset(n.lower() for n in never)  # ours, whatever the list says (objection_header)
        # Header `name` crosses on the initial INVITE (PAI is rebuilt, not copied) / inside the dialog
        # towards the dialer / inside the dialog towards the carrier (PAI rebuilt there too).
        self.invite = NameFilter(self._on_invite)
        self.dialog = NameFilter(self._in_dialog)
        # The dialer's Identity may cross (sipfilter/b2bua/identity.py decides whether it does, unchanged).
        self.identity = self.allows("identity")
        self.invite_sans_identity = NameFilter(lambda name: lower_name(name) != "identity"
                                                and self.invite[name])  # fmt: skip
        self.dialog_out = NameFilter(self._in_dialog_out)

    def allows(self, lname: str) -> bool:
        return (lname in self.names or (bool(self.prefixes) and lname.startswith(self.prefixes))) and (
            lname not in self.never)

    def _on_invite(self, name: str) -> bool:
        lname = lower_name(name)
        return lname in _CONTENT or (self.allows(lname) and lname not in IDENTITY_HEADERS)

    def _in_dialog(self, name: str) -> bool:
        lname = lower_name(name)
        return lname in _CONTENT or lname in _IN_DIALOG or self.allows(lname)

    def _in_dialog_out(self, name: str) -> bool:
        return lower_name(name) not in IDENTITY_HEADERS and self._in_dialog(name)


NO_PASS = PassList(())
CONTENT_ONLY = NameFilter(lambda name: lower_name(name) in _CONTENT)


def pick_headers(msg: Message, allow: Mapping[str, bool],
                  drop: Callable[[str, str], bool] | None = None) -> list[str]:  # fmt: skip
    safe = wire.safe
    picked = msg.headers.select(allow)  # only the values that cross are stripped
    if drop is None:
        return [f"{name}: {safe(value)}" for name, value in picked]
    return [f"{name}: {safe(value)}" for name, value in picked if not drop(name, value)]
