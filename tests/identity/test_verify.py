"""The verification service: each failure gets the identity.* rule of RFC 8224 §6.2.2's answer."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sti_pki import StiPki, X5uServer, make_pki, x5u_server

from sipfilter.identity.passport import identity_value, protected_header, sign
from sipfilter.identity.settings import VerifySettings
from sipfilter.identity.verify import Verifier
from sipfilter.identity.x5u import X5uCache, https_fetcher
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.identity import IdentityFinding, IdentityRules
from sipfilter.policy.numbers import Number

CALLER = Number("sip:+33162000001@dialer", "+33162000001", "e164")
CALLEE = Number("sip:0612000001@sipfilter", "+33612000001", "e164")


@pytest.fixture(scope="module")
def pki() -> StiPki:
    return make_pki()


@pytest.fixture
def server(tmp_path: Path, pki: StiPki) -> Iterator[X5uServer]:
    srv = X5uServer(tmp_path / "web", {"sti.pem": pki.chain_pem}).start()
    try:
        yield srv
    finally:
        srv.stop()


def verifier(server: X5uServer, pki: StiPki, **settings: Any) -> Verifier:
    anchors = settings.pop("anchors", (pki.root,))
    vs = VerifySettings(ca=Path("roots.pem"), anchors=tuple(anchors), **settings)
    cache = X5uCache(
        https_fetcher(1.0, ssl.create_default_context(cafile=str(server.ca_file))),
        ttl_s=3600,
        failure_ttl_s=10,
    )
    return Verifier("dialer", vs, IdentityRules(60), cache)


def facts(
    caller: Number = CALLER,
    callee: Number = CALLEE,
    asserted: tuple[Number, ...] = (),
    at: float | None = None,
) -> CallFacts:
    return CallFacts("dialer", time.time() if at is None else at, caller, asserted, frozenset(), callee)


def identity(
    pki: StiPki,
    x5u: str,
    *,
    orig: str = "33162000001",
    dest: str = "33612000001",
    attest: str = "A",
    iat: float | None = None,
    key: Any = None,
) -> str:
    token = sign(
        key or pki.leaf_key,
        protected_header(x5u),
        orig,
        dest,
        attest,
        "origid-1",
        int(time.time() if iat is None else iat),
    )
    return identity_value(token, x5u)


class Obs:
    def __init__(self) -> None:
        self.results: list[str] = []

    def identity_verified(self, trunk: str, result: str) -> None:
        self.results.append(result)


class Policy:
    def __init__(self) -> None:
        self.found: list[IdentityFinding | None] = []

    async def decide(self, facts: CallFacts, store: Any, *, identity: IdentityFinding | None = None) -> str:
        self.found.append(identity)
        return "decision"


class Msg:
    """The part of a parsed request the verifier reads: its Identity header lines."""

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values
        self.headers = self

    def get_lines(self, name: str) -> list[str]:
        assert name == "Identity"
        return list(self.values)


def msg(*values: str) -> Msg:
    return Msg(values)


async def check(v: Verifier, values: list[str], f: CallFacts | None = None) -> IdentityFinding:
    """What `decide` hands the policy for these Identity values."""
    policy = Policy()
    await v.decide(policy, f or facts(), msg(*values), None, (f or facts()).at, Obs())
    (found,) = policy.found
    assert found is not None
    return found


async def test_a_valid_passport_passes_and_later_calls_need_no_fetch(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki)
    value = identity(pki, server.url("sti.pem"))
    f = facts()
    assert v.check([value], f, f.at) == [server.url("sti.pem")]  # never seen: fetch first
    policy, obs = Policy(), Obs()
    assert await v.decide(policy, f, msg(value), None, f.at, obs) == "decision"
    assert policy.found == [IdentityFinding("", "", attest="A")] and obs.results == ["passed"]
    # Cached: the next call is decided from memory, in one step (no suspension, no network).
    coro = v.decide(policy, f, msg(identity(pki, server.url("sti.pem"), attest="B")), None, f.at, obs)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert policy.found[-1] == IdentityFinding("", "", attest="B")
    assert server.hits == {"sti.pem": 1}


async def test_tampered_token_is_438(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki)
    value = identity(pki, server.url("sti.pem"))
    token, _, params = value.partition(";")
    head, _payload, sig = token.split(".")
    other = identity(pki, server.url("sti.pem"), dest="33612000002").split(";")[0].split(".")[1]
    forged = f"{head}.{other}.{sig};{params}"
    found = await check(v, [forged], facts(callee=Number("x", "+33612000002", "e164")))
    assert found.rule == "identity.invalid" and "signature" in found.reason
    wrong_key = identity(pki, server.url("sti.pem"), key=make_pki().leaf_key)
    assert (await check(v, [wrong_key])).rule == "identity.invalid"


async def test_stale_or_future_iat_is_403_stale_date(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki)
    old = await check(v, [identity(pki, server.url("sti.pem"), iat=time.time() - 300)])
    assert old.rule == "identity.stale" and "Stale Date" in old.reason
    assert " s old (at most 60 s)" in old.reason
    ahead = await check(v, [identity(pki, server.url("sti.pem"), iat=time.time() + 120)])
    assert ahead.rule == "identity.stale" and "in the future" in ahead.reason
    assert server.hits == {}  # refused before any fetch


async def test_numbers_must_be_the_calls(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki)
    wrong_dest = await check(v, [identity(pki, server.url("sti.pem"), dest="33612999999")])
    assert wrong_dest.rule == "identity.invalid" and "dest" in wrong_dest.reason
    wrong_orig = await check(v, [identity(pki, server.url("sti.pem"), orig="33162999999")])
    assert wrong_orig.rule == "identity.invalid" and "orig" in wrong_orig.reason
    # With a P-Asserted-Identity, `orig` is that number (SHAKEN), whatever From says.
    pai = Number("sip:+33162000002@d", "+33162000002", "e164")
    signed_pai = identity(pki, server.url("sti.pem"), orig="33162000002")
    assert (await check(v, [signed_pai], facts(asserted=(pai,)))).rule == ""
    assert (
        await check(v, [identity(pki, server.url("sti.pem"))], facts(asserted=(pai,)))
    ).rule == "identity.invalid"


async def test_unreachable_x5u_is_436(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki)
    found = await check(v, [identity(pki, server.url("gone.pem"))])
    assert found.rule == "identity.bad-info" and "404" in found.reason
    closed = "https://127.0.0.1:9/sti.pem"  # the discard port: nothing listens
    found = await check(v, [identity(pki, closed)])
    assert found.rule == "identity.bad-info" and "cannot fetch" in found.reason
    fetched = v.cache.get(closed, time.time())
    assert fetched is not None and fetched.error  # remembered: the next call is refused at once
    allowed = verifier(server, pki, x5u_allowed=("https://certs.example/",))
    found = await check(allowed, [identity(pki, server.url("sti.pem"))])
    assert found.rule == "identity.bad-info" and "x5u_allowed" in found.reason
    assert "sti.pem" not in server.hits  # never fetched


async def test_untrusted_chain_is_437(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki, anchors=(make_pki(name="another").root,))
    found = await check(v, [identity(pki, server.url("sti.pem"))])
    assert found.rule == "identity.unsupported-credential" and "not trusted" in found.reason


async def test_tn_auth_list_must_cover_orig(tmp_path: Path) -> None:
    ranged = make_pki(spcs=(), ranges=[("33162000000", 100)])
    with x5u_server(tmp_path / "w", **{"r.pem": ranged.chain_pem}) as srv:
        v = verifier(srv, ranged)
        assert (await check(v, [identity(ranged, srv.url("r.pem"))])).rule == ""
        outside = identity(ranged, srv.url("r.pem"), orig="33162000200")
        found = await check(v, [outside], facts(caller=Number("x", "+33162000200", "e164")))
        assert found.rule == "identity.unsupported-credential" and "TNAuthList" in found.reason


async def test_missing_identity(server: X5uServer, pki: StiPki) -> None:
    optional = verifier(server, pki)
    assert (await check(optional, [])) == IdentityFinding("", "", present=False)
    required = verifier(server, pki, require=True)
    found = await check(required, [])
    assert found.rule == "identity.missing" and not found.present
    # Only another PASSporT type (here ppt=div): no caller attestation, as if there were none.
    div = identity(pki, server.url("sti.pem")).replace("ppt=shaken", "ppt=div")
    assert (await check(required, [div])).rule == "identity.missing"


async def test_one_good_identity_among_several_is_enough(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki)
    bad = identity(pki, server.url("sti.pem"), dest="33612999999")
    good = identity(pki, server.url("sti.pem"))
    assert (await check(v, ["garbage", bad, good])).rule == ""
    assert (await check(v, ["garbage", bad])).rule == "identity.invalid"


async def test_monitor_mode_findings_do_not_block(server: X5uServer, pki: StiPki) -> None:
    v = verifier(server, pki, mode="monitor")
    found = await check(v, [identity(pki, server.url("sti.pem"), dest="33612999999")])
    assert found.rule == "identity.invalid" and not found.enforce
