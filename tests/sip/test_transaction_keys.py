"""Transaction matching (§17.1.3, §17.2.3 incl. RFC 2543 fallback), the table, and ACK/CANCEL/100 builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipfilter.sip import Request, Response, parse
from sipfilter.sip.timers import TimerConfig
from sipfilter.sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    MessageReceived,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    SendResponse,
    TimerFired,
    TransactionError,
    TransactionTable,
    ack_for_non2xx,
    cancel_for,
    cancel_target_key,
    client_key,
    client_key_for_request,
    is_reliable,
    response_for,
    server_key,
    trying_for,
)

RFC4475 = Path(__file__).resolve().parents[1] / "data" / "rfc4475"


def req(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK74bf9",
    host: str = "pc33.atlanta.example.com",
    cseq: int = 1,
    to_tag: str | None = None,
    ruri: str = "sip:bob@biloxi.example.com",
) -> Request:
    via_params = f";branch={branch}" if branch is not None else ""
    to = "<sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    msg = parse(
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060{via_params}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds7\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:ss1.biloxi.example.com;lr>\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
        f"To: {to}\r\n"
        "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(msg, Request)
    return msg


def resp(request: Request, status: int, *, method: str | None = None, tag: str = "8321234356") -> Response:
    out = response_for(request, status, to_tag=tag if status > 100 else None)
    if method is not None:
        out.headers.set("CSeq", f"{request.cseq.seq} {method}")
    wire = parse(out.serialize())
    assert isinstance(wire, Response)
    return wire


# --- server keys (§17.2.3) ----------------------------------------------------------------------------------
def test_server_key_rfc3261() -> None:
    invite = req()
    assert server_key(invite) == ("z9hG4bK74bf9", "pc33.atlanta.example.com:5060", "INVITE")
    assert server_key(req()) == server_key(invite)  # a retransmission finds the transaction
    assert server_key(req(branch="z9hG4bKother")) != server_key(invite)
    assert server_key(req(host="pc34.atlanta.example.com")) != server_key(
        invite
    )  # same branch, other sent-by
    assert server_key(req(host="PC33.Atlanta.Example.COM")) == server_key(invite)  # hosts are case-blind
    assert server_key(req("OPTIONS")) != server_key(invite)  # method is part of the key


def test_ack_for_non2xx_matches_the_invite_server_transaction() -> None:
    invite = req()
    ack = ack_for_non2xx(invite, resp(invite, 486))
    assert server_key(ack) == server_key(invite)
    # A 2xx ACK (new branch, as a dialog sends it) does not.
    ack2 = ack.copy()
    ack2.headers.set("Via", "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnew")
    assert server_key(ack2) != server_key(invite)


def test_cancel_has_its_own_key_and_targets_the_invite() -> None:
    invite = req()
    cancel = cancel_for(invite)
    assert server_key(cancel) == ("z9hG4bK74bf9", "pc33.atlanta.example.com:5060", "CANCEL")
    assert server_key(cancel) != server_key(invite)
    assert cancel_target_key(cancel) == server_key(invite)
    assert cancel_target_key(cancel_for(req(branch="z9hG4bKzzz"))) != server_key(invite)


def test_rfc2543_fallback_without_magic_cookie() -> None:
    invite = req(branch=None)
    key = server_key(invite)
    assert key[0] == "2543" and key[-1] == "INVITE"
    assert server_key(req(branch=None)) == key  # retransmission
    ack = ack_for_non2xx(invite, resp(invite, 404))  # carries our To tag: must still match
    assert ack.to.tag == "8321234356"
    assert server_key(ack) == key
    assert server_key(req(branch=None, cseq=2)) != key
    assert server_key(req(branch=None, ruri="sip:carol@biloxi.example.com")) != key
    assert server_key(req(branch="1234abcd")) != key  # an old-style branch is part of the top Via
    assert server_key(req(branch="1234abcd"))[0] == "2543"
    assert cancel_target_key(cancel_for(invite)) == key
    assert server_key(cancel_for(invite)) != key


def test_rfc4475_badbranch_uses_the_fallback() -> None:
    msg = parse((RFC4475 / "badbranch.dat").read_bytes())
    assert isinstance(msg, Request)
    key = server_key(msg)
    assert key[0] == "2543" and key[-1] == "OPTIONS"  # "z9hG4bK" alone is not an RFC 3261 branch


# --- client keys (§17.1.3) ----------------------------------------------------------------------------------
def test_client_key_branch_and_cseq_method() -> None:
    invite = req()
    tx = InviteClientTransaction(invite)
    assert tx.key == client_key_for_request(invite) == ("z9hG4bK74bf9", "INVITE")
    assert client_key(resp(invite, 180)) == tx.key
    assert client_key(resp(invite, 487)) == tx.key
    # The CANCEL shares the branch; its 200 belongs to the CANCEL's own client transaction.
    cancel = cancel_for(invite)
    ctx = NonInviteClientTransaction(cancel)
    assert ctx.key == ("z9hG4bK74bf9", "CANCEL") != tx.key
    assert client_key(resp(cancel, 200)) == ctx.key


# --- table --------------------------------------------------------------------------------------------------
def test_table_find_insert_remove() -> None:
    table = TransactionTable()
    invite = req()
    stx = InviteServerTransaction(invite)
    ctx = InviteClientTransaction(req(branch="z9hG4bKbleg"))
    table.add(stx)
    table.add(ctx)
    assert len(table) == 2 and stx.key in table and set(table) == {stx, ctx}
    assert table.match_request(req()) is stx
    assert table.match_request(ack_for_non2xx(invite, resp(invite, 486))) is stx
    assert table.match_request(req(branch="z9hG4bKbleg")) is None  # a client tx is not a server match
    assert table.match_response(resp(ctx.request, 180)) is ctx
    assert table.match_response(resp(invite, 180)) is None
    assert table.match_cancel(cancel_for(invite)) is stx
    assert table.match_request(cancel_for(invite)) is None  # the CANCEL itself is a new transaction
    assert table.get(stx.key) is stx

    with pytest.raises(TransactionError):
        table.add(InviteServerTransaction(req()))  # a live transaction already has this key
    # Once terminated, a new transaction may take the key; removing the old one must not drop the new.
    stx.handle(SendResponse(resp(invite, 486)))
    stx.handle(MessageReceived(ack_for_non2xx(invite, resp(invite, 486))))
    stx.handle(TimerFired("I"))
    assert stx.terminated
    newer = InviteServerTransaction(req())
    table.add(newer)
    assert table.remove(stx) is False
    assert table.get(newer.key) is newer
    assert table.remove(newer) is True and table.remove(ctx) is True
    assert len(table) == 0


def test_table_keeps_non_invite_server_transactions() -> None:
    table = TransactionTable()
    opt = req("OPTIONS")
    tx = NonInviteServerTransaction(opt)
    table.add(tx)
    assert table.match_request(req("OPTIONS")) is tx
    assert table.match_cancel(cancel_for(req())) is None


# --- builders -----------------------------------------------------------------------------------------------
def test_cancel_for_contents() -> None:
    invite = req()
    cancel = parse(cancel_for(invite, reason='Q.850;cause=16;text="Terminated"').serialize())
    assert isinstance(cancel, Request)
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert cancel.headers.get_lines("via") == [invite.headers.get_lines("via")[0]]
    assert cancel.headers.get("from") == invite.headers.get("from")
    assert cancel.headers.get("to") == invite.headers.get("to") and cancel.to.tag is None
    assert cancel.call_id == invite.call_id
    assert (cancel.cseq.seq, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.headers.get_lines("route") == ["<sip:ss1.biloxi.example.com;lr>"]
    assert cancel.reasons[0].protocol == "Q.850" and cancel.reasons[0].cause == 16
    assert "contact" not in cancel.headers and cancel.body == b""
    assert "reason" not in cancel_for(invite).headers
    with pytest.raises(TransactionError):
        cancel_for(req("OPTIONS"))


def test_response_for_and_trying() -> None:
    invite = req()
    invite.headers.add("Timestamp", "54.2 0.1")
    ok = response_for(invite, 200, to_tag="abc")
    assert ok.status == 200 and ok.reason == "OK"
    assert ok.headers.get_lines("via") == invite.headers.get_lines("via")  # every Via, in order
    assert ok.to.tag == "abc" and "timestamp" not in ok.headers
    assert response_for(req(to_tag="keep"), 200, to_tag="abc").to.tag == "keep"  # never a second tag
    trying = trying_for(invite)
    assert (trying.status, trying.reason) == (100, "Trying")
    assert trying.to.tag is None and trying.headers.get("timestamp") == "54.2 0.1"
    assert trying.headers.get("cseq") == "1 INVITE"


def test_timer_config_validation() -> None:
    assert TimerConfig().timeout == 32.0
    assert TimerConfig(t1=0.25).timeout == 16.0
    for bad in (
        {"t1": 0},
        {"t2": -1.0},
        {"t4": float("nan")},
        {"t1": 5.0, "t2": 4.0},
        {"trying": float("inf")},
    ):
        with pytest.raises(ValueError):
            TimerConfig(**bad)  # type: ignore[arg-type]


def test_is_reliable() -> None:
    assert not is_reliable("UDP") and not is_reliable("udp")
    assert all(is_reliable(t) for t in ("TCP", "tls", "SCTP", "WS", "WSS"))
    assert is_reliable(req().vias[0].transport) is False
