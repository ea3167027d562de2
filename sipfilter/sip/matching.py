"""RFC 3261 §17.1.3 and §17.2.3 transaction matching keys, and the messages the transaction layer builds from
a request (the ACK of a non-2xx answer, CANCEL, a response, 100 Trying). Pure functions over parsed messages.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from sipfilter.sip.errors import ParseError
from sipfilter.sip.headers import BRANCH_COOKIE, Headers, Via
from sipfilter.sip.message import Request, Response

TransactionKey: TypeAlias = tuple[str, ...]


class TransactionError(ValueError):
    """The transaction user asked for something §17 does not allow (wrong method, wrong event kind)."""


# --- matching (§17.1.3, §17.2.3) ----------------------------------------------------------------------------
def _top_via(msg: Request | Response) -> Via:
    vias = msg.vias
    if not vias:
        raise ParseError("Missing Via header", is_request=isinstance(msg, Request))
    return vias[0]


def _via_text(via: Via) -> str:
    return via.raw or str(via)


def _server_key(request: Request, method: str) -> TransactionKey:
    top = _top_via(request)
    branch = top.branch
    if branch is not None and len(branch) > _COOKIE_LEN and branch.startswith(BRANCH_COOKIE):
        host = top.host
        return (branch, host.lower() if top.port is None else f"{host.lower()}:{top.port}", method)
    # RFC 2543 peer (§17.2.3, second half): Request-URI, From tag, Call-ID, CSeq number, top Via. The To
    # tag is left out so that the ACK (which carries our tag) finds the INVITE it acknowledges.
    return (
        "2543",
        request.uri,
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.seq),
        _via_text(top),
        method,
    )


_COOKIE_LEN: Final = len(BRANCH_COOKIE)


def server_key(request: Request) -> TransactionKey:
    """The server transaction a request belongs to (§17.2.3); ACK maps to its INVITE's transaction.

    CANCEL keeps its own key (it is a transaction of its own); `cancel_target_key` finds what it cancels.
    """
    method = request.method
    return _server_key(request, "INVITE" if method == "ACK" else method)


def cancel_target_key(cancel: Request) -> TransactionKey:
    """The key of the INVITE server transaction a CANCEL refers to (§9.2: same match, method INVITE)."""
    return _server_key(cancel, "INVITE")


def client_key(response: Response) -> TransactionKey:
    """The client transaction a response belongs to (§17.1.3): top Via branch and CSeq method."""
    return (_top_via(response).branch or "", response.cseq.method)


def client_key_for_request(request: Request) -> TransactionKey:
    """The key a client transaction is filed under: what `client_key` gives for its responses."""
    return (_top_via(request).branch or "", request.method)


# --- messages the transaction layer builds ---------------------------------------------------------------
def _required(request: Request, name: str) -> str:
    value = request.headers.get(name)
    if value is None:
        raise ParseError(f"Missing {name} header", is_request=True, method=request.method)
    return value


def ack_for_non2xx(invite: Request, response: Response) -> Request:
    """The ACK for a 3xx-6xx answer to `invite` (§17.1.1.3): same Request-URI, Call-ID, From and CSeq
    number, the response's To (with its tag), the INVITE's top Via only, and its Route set."""
    via = _via_text(_top_via(invite))
    to = response.headers.get("to")
    if to is None:
        raise ParseError("Missing To header", is_request=False)
    h = invite.headers
    items: list[tuple[str, str]] = [("Via", via), ("Max-Forwards", "70")]
    items.extend(("Route", r) for r in h.get_lines("route"))
    items.append(("From", _required(invite, "from")))
    items.append(("To", to))
    items.append(("Call-ID", _required(invite, "call-id")))
    items.append(("CSeq", f"{invite.cseq.seq} ACK"))
    return Request("ACK", invite.uri, Headers(items))


def cancel_for(invite: Request, reason: str | None = None) -> Request:
    """The CANCEL for a pending INVITE (§9.1): same Request-URI, Call-ID, From, To, CSeq number and top
    Via (so the same branch), Route set copied. `reason` is an RFC 3326 Reason value to add, if any."""
    if invite.method != "INVITE":
        raise TransactionError(f"only an INVITE can be cancelled, not {invite.method}")
    via = _via_text(_top_via(invite))
    h = invite.headers
    items: list[tuple[str, str]] = [("Via", via), ("Max-Forwards", "70")]
    items.extend(("Route", r) for r in h.get_lines("route"))
    items.append(("From", _required(invite, "from")))
    items.append(("To", _required(invite, "to")))
    items.append(("Call-ID", _required(invite, "call-id")))
    items.append(("CSeq", f"{invite.cseq.seq} CANCEL"))
    if reason is not None:
        items.append(("Reason", reason))
    return Request("CANCEL", invite.uri, Headers(items))


def response_for(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """A response to `request` (§8.2.6.2): every Via, From, To (tag added if given and absent), Call-ID,
    CSeq; Timestamp echoed on 100 (§8.2.6.1). The caller adds Contact, Reason, Warning and the rest."""
    h = request.headers
    items: list[tuple[str, str]] = [("Via", v) for v in h.get_lines("via")]
    items.append(("From", _required(request, "from")))
    to = _required(request, "to")
    if to_tag is not None and request.to.tag is None:
        to = f"{to};tag={to_tag}"
    items.append(("To", to))
    items.append(("Call-ID", _required(request, "call-id")))
    items.append(("CSeq", _required(request, "cseq")))
    if status == 100:
        stamp = h.get("timestamp")
        if stamp is not None:
            items.append(("Timestamp", stamp))
    return Response(status, reason, Headers(items))


def trying_for(request: Request) -> Response:
    """The 100 Trying the INVITE server transaction sends by itself (§17.2.1); no To tag."""
    return response_for(request, 100, "Trying")
