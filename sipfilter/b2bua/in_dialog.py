"""Inside an established call: which requests cross to the other leg, and which identities they carry.

Pure decisions over method and header names and the call's checked identities; the B2BUA core relays or
answers. Nothing here parses a message or sends one.
"""

from __future__ import annotations

from typing import Final

from sipfilter.b2bua.facts import CallIdentities, pai_values
from sipfilter.sip.message import Message

# Requests relayed inside a call (ACK and CANCEL have their own paths): what a call needs to be held,
# refreshed, re-negotiated and ended. Also what the B2BUA answers to out-of-dialog requests in `Allow`.
RELAYED: Final = frozenset({"INVITE", "BYE", "UPDATE", "PRACK", "INFO", "OPTIONS"})
ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO"

# Known methods refused inside a call (403 with a Warning saying why), and why. REFER would make the carrier
# (or the dialer) place a call to its Refer-To on its own: a call the policy never checked, with no audit
# line; a transfer goes through sipfilter as a new INVITE instead. Subscriptions and instant messages are not
# part of a telemarketing call and would carry content or create dialog usages nobody checks.
REFUSED: Final[dict[str, str]] = {
    "REFER": "REFER is not relayed: a transfer must be a new INVITE through sipfilter",
    "MESSAGE": "MESSAGE is not relayed inside a call",
    "SUBSCRIBE": "SUBSCRIBE is not relayed inside a call",
    "NOTIFY": "NOTIFY is not relayed: no subscription crosses sipfilter",
    "PUBLISH": "PUBLISH is not relayed inside a call",
    "REGISTER": "REGISTER is not relayed inside a call",
}

# Headers that assert who calls. A carrier may present any of them as the caller ID, so the dialer's are
# never copied to the carrier: the B2BUA writes the identities the policy checked (P-Asserted-Identity), or
# none (P-Preferred-Identity, Remote-Party-ID), whatever the trunk's `headers.pass` says.
IDENTITY_HEADERS: Final = frozenset({"p-asserted-identity", "p-preferred-identity", "remote-party-id"})


def refusal(method: str) -> tuple[int, str] | None:
    """(status, why) for a request that must not cross inside a call; None when it is relayed. Unknown
    methods get 501 (RFC 3261 §21.5.2), known ones that sipfilter will not relay 403 (RFC 3515 §2.4.2)."""
    if method in RELAYED:
        return None
    why = REFUSED.get(method)
    if why is not None:
        return 403, why
    return 501, f"{method[:32]} is not relayed inside a call"


def asserted_lines(msg: Message, ids: CallIdentities | None, host: str) -> list[str]:
    """P-Asserted-Identity lines for a message the dialer sends inside a call: in place of its own, the
    identities the policy checked on the INVITE, written as on the B-leg INVITE (our host); none when the
    message asserts none."""
    if ids is None or "p-asserted-identity" not in msg.headers:
        return []
    return [f"P-Asserted-Identity: {v}" for v in pai_values(ids, host)]
