"""What the call path remembers across calls is bounded: memos of parsed values, the trunk matcher's source
cache, the header pass lists' memos and the admission buckets stay under their caps whatever the traffic
(per-call values such as tags, branches, Call-IDs and callees; a spray of source addresses)."""

from __future__ import annotations

from pathlib import Path

from b2bua_rig import CARRIER1, DIALER, answer, invite, make_rig

from sipfilter.b2bua.topology import PassList
from sipfilter.sip import Request, message, parse, uri
from sipfilter.sip import header_values as values

N = 6000  # more than every memo's cap


def _memo_sizes() -> dict[str, int]:
    return {
        "via": len(values._VIA_MEMO), "tagless": len(values._TAGLESS_MEMO),
        "name-addr": len(values._NA_MEMO), "cseq": len(values._CSEQ_MEMO), "uri": len(uri._MEMO),
        "uri-host": len(uri._HOST_PART_MEMO), "header-names": len(message._KEYS),
    }  # fmt: skip


def test_parse_memos_stay_bounded_under_per_call_values() -> None:
    for i in range(N):
        host = f"10.0.{i // 250}.{i % 250}"
        raw = invite(f"+336{i:08d}", f"+331{i:08d}", call_id=f"m-{i}",
                     extra=f"X-Header-{i}: v\r\nContact: <sip:agent{i}@{host}>\r\n")  # fmt: skip
        raw = raw.replace(b"10.0.0.9:5999;", f"10.1.{i // 250}.{i % 250}:5999;".encode(), 1)
        msg = parse(raw)
        assert isinstance(msg, Request)
        # Touch what the B2BUA reads, so each lazy parser (and its memo) runs.
        assert msg.vias and msg.from_ is not None and msg.to is not None and msg.cseq is not None
        assert msg.contacts and msg.request_uri is not None and msg.p_asserted_identities
        assert msg.record_routes
    sizes = _memo_sizes()
    assert max(v for k, v in sizes.items() if k != "header-names") <= 4096, sizes
    assert sizes["header-names"] <= message._KEYS_MAX, sizes


def test_pass_list_memos_stay_bounded() -> None:
    passes = PassList(("P-Asserted-Identity", "X-*"))
    for i in range(N):
        assert passes.invite[f"X-Tag-{i}"] and passes.dialog[f"X-Tag-{i}"]
        assert not passes.invite[f"Y-Tag-{i}"]
    assert len(passes.invite) <= 1024 and len(passes.dialog) <= 1024


def test_a_spray_of_sources_leaves_bounded_state(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    b2b = rig.b2b
    for i in range(N):  # unknown sources: refused, nothing kept per address beyond the matcher's cache
        rig.from_dialer(invite(call_id=f"u-{i}"), (f"198.51.{i // 250}.{i % 250}", 5060))
    assert len(b2b.rt.matcher._cache) <= 4097
    assert b2b.admission.snapshot().tracked_sources == 0
    assert {d.split(b"\r\n", 1)[0] for d, _ in rig.inside.sent} == {b"SIP/2.0 403 Forbidden"}  # no `limits:`
    rig.inside.sent.clear()
    assert b2b.active_calls == 0 and not b2b.server_tx and not b2b.client_tx
    # A known dialer's calls afterwards still go through: the cache was emptied, never made wrong.
    rig.from_dialer(invite(call_id="known"))
    b_inv = next(parse(d) for d, _ in rig.outside.sent if d.startswith(b"INVITE"))
    rig.from_carrier(answer(b_inv, 486), CARRIER1)
    assert b2b.admission.snapshot().tracked_sources == 1
    assert DIALER[0] in b2b.rt.matcher._cache
