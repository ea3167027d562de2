"""STIR/SHAKEN in the B2BUA: the dialer's Identity is never relayed broken (kept, dropped or re-signed), a
signing trunk signs, a verifying trunk answers RFC 8224's codes, the carrier's STIR verdicts are counted."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from b2bua_rig import (
    CARRIER1,
    FakeEndpoint,
    ManualClock,
    Rig,
    StubPolicy,
    answer,
    invite,
    requests_named,
    write_config,
)

from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.b2bua.observe import Observer
from sipfilter.configure import load_config
from sipfilter.identity.passport import decode, identity_value, parse_identity, protected_header, sign
from sipfilter.policy.engine import PolicyEngine
from sipfilter.sip import ParseError, parse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "identity"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))
from memstore import MemoryStore
from sti_pki import StiPki, X5uServer, key_pem, make_pki

PASS = ["P-Asserted-Identity", "Privacy", "Identity", "User-Agent", "X-*"]
OPEN = {
    "hours": {"weekly": {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}},
    "holidays": {"source": "none"},
    "consent": {"required_from": "2099-01-01"},
}
X5U = "https://certs.example.org/sti.pem"


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def identity_verified(self, trunk: str, result: str) -> None:
        self.events.append(("verified", trunk, result))

    def identity_signed(self, trunk: str, attest: str) -> None:
        self.events.append(("signed", trunk, attest))

    def identity_not_signed(self, trunk: str, reason: str) -> None:
        self.events.append(("not-signed", trunk, reason))

    def identity_dropped(self, trunk: str) -> None:
        self.events.append(("dropped", trunk))

    def carrier_identity(self, trunk: str, target: str, code: str, refused: bool) -> None:
        self.events.append(("carrier", trunk, target, code, refused))

    def x5u_fetch(self, result: str) -> None:
        self.events.append(("x5u", result))


@pytest.fixture(scope="module")
def pki() -> StiPki:
    return make_pki()


def rig(config_path: Path, policy: Any = None, store: Any = None) -> tuple[Rig, Recorder]:
    """The b2bua_rig B2BUA with an observer that records identity events (and a real engine when asked)."""
    config = load_config(config_path)
    clock = ManualClock()
    clock.now = time.time()  # certificates and PASSporTs are checked against the real date
    obs = Recorder()
    inside, outside = FakeEndpoint("inside", 5060), FakeEndpoint("outside", 5080)
    engine = policy if policy is not None else PolicyEngine(config)
    b2b = B2BUA(compile_runtime(config, engine, store=store if store is not None else MemoryStore()),
                parse=parse, parse_error=ParseError, endpoints={"inside": [inside], "outside": [outside]},
                scheduler=clock.later, clock=clock, observer=obs)  # fmt: skip
    return Rig(b2b, inside, outside, clock, policy if isinstance(policy, StubPolicy) else StubPolicy()), obs


def b_invite(r: Rig) -> Any:
    (inv,) = requests_named(r.outside.take(), "INVITE")
    return inv


def dialer_identity(pki: StiPki, orig: str = "33162000001", dest: str = "33612000001",
                    iat: float | None = None, x5u: str = X5U) -> str:  # fmt: skip
    token = sign(pki.leaf_key, protected_header(x5u), orig, dest, "A", "dialer-origid",
                 int(time.time() if iat is None else iat))  # fmt: skip
    return identity_value(token, x5u)


# -- never a broken signature --------------------------------------------------------------------------------


def test_identity_crosses_untouched_when_its_numbers_do(tmp_path: Path, pki: StiPki) -> None:
    r, obs = rig(write_config(tmp_path, headers={"pass": PASS}), policy=StubPolicy())
    value = dialer_identity(pki)
    r.from_dialer(invite(extra=f"Identity: {value}\r\n"))
    inv = b_invite(r)
    assert inv.headers.get_lines("Identity") == [value]
    assert inv.uri.startswith("sip:+33612000001@") and inv.from_.uri.user == "+33162000001"
    assert obs.events == []


@pytest.mark.parametrize(
    ("change", "kw"),
    [
        ("a withheld From goes out as anonymous", {"caller": "Anonymous"}),
        ("To differs from the Request-URI", {"callee": "+33612000001", "extra_to": "+33612000009"}),
    ],
)
def test_identity_is_dropped_and_counted_when_a_number_changes(
    tmp_path: Path, pki: StiPki, change: str, kw: dict[str, str]
) -> None:
    r, obs = rig(write_config(tmp_path, headers={"pass": PASS}), policy=StubPolicy())
    data = invite(kw.get("callee", "+33612000001"), kw.get("caller", "+33162000001"),
                  extra=f"Identity: {dialer_identity(pki)}\r\n")  # fmt: skip
    if "extra_to" in kw:
        data = data.replace(b"To: <sip:+33612000001@", f"To: <sip:{kw['extra_to']}@".encode())
    r.from_dialer(data)
    inv = b_invite(r)
    assert inv.headers.get_lines("Identity") == [], change
    assert obs.events == [("dropped", "dialer")]


def test_a_pai_that_does_not_cross_may_be_what_was_signed(tmp_path: Path, pki: StiPki) -> None:
    r, obs = rig(write_config(tmp_path, headers={"pass": ["Identity"]}), policy=StubPolicy())
    data = invite(extra=f"Identity: {dialer_identity(pki)}\r\n")
    same = data.replace(
        b"P-Asserted-Identity: <sip:+33162000001@", b"P-Asserted-Identity: <sip:+33162000001@"
    )
    r.from_dialer(same)  # PAI = From: nothing the carrier compares changes
    assert b_invite(r).headers.get_lines("Identity") != []
    other = invite(extra=f"Identity: {dialer_identity(pki)}\r\n").replace(
        b"P-Asserted-Identity: <sip:+33162000001@", b"P-Asserted-Identity: <sip:+33162000002@"
    )
    r.from_dialer(other)
    assert b_invite(r).headers.get_lines("Identity") == []
    assert obs.events == [("dropped", "dialer")]


# -- signing -------------------------------------------------------------------------------------------------


@pytest.fixture
def signing(tmp_path: Path, pki: StiPki) -> Iterator[dict[str, Any]]:
    files = pki.write(tmp_path / "sti")
    yield {"overrides": OPEN, "headers": {"pass": PASS},
           "identity": {"sign": {"key": str(files["key"]), "x5u": X5U}}}  # fmt: skip


def _signed_by_us(inv: Any, pki: StiPki) -> Any:
    (value,) = inv.headers.get_lines("Identity")
    h = parse_identity(value)
    assert h.info == X5U and h.ppt == "shaken"
    p = decode(h.token)
    from sipfilter.identity.passport import signature_valid

    assert signature_valid(p, pki.leaf.public_key())
    return p


def test_a_signing_trunk_signs_calls_that_come_unsigned(
    tmp_path: Path, pki: StiPki, signing: dict[str, Any]
) -> None:
    r, obs = rig(write_config(tmp_path, **signing))
    r.from_dialer(invite(caller="0162000001"))  # national form: signed as the policy normalises it
    p = _signed_by_us(b_invite(r), pki)
    assert (p.orig_tn, p.dest_tns, p.attest) == ("33162000001", ("33612000001",), "B")
    assert abs(p.iat - time.time()) < 5 and p.origid
    assert obs.events == [("signed", "dialer", "B")]


def test_attestation_a_for_the_trunks_authorised_numbers(
    tmp_path: Path, pki: StiPki, signing: dict[str, Any]
) -> None:
    r, obs = rig(write_config(tmp_path, lists={"dnc": [], "authorised_caller_ids": ["+33162*"]}, **signing))
    r.from_dialer(invite())
    assert _signed_by_us(b_invite(r), pki).attest == "A"
    assert obs.events == [("signed", "dialer", "A")]


def test_a_signing_trunk_keeps_an_intact_dialer_signature_and_replaces_a_broken_one(
    tmp_path: Path, pki: StiPki, signing: dict[str, Any]
) -> None:
    r, obs = rig(write_config(tmp_path, **signing))
    theirs = dialer_identity(make_pki(name="dialer"), x5u="https://dialer.example/sti.pem")
    r.from_dialer(invite(extra=f"Identity: {theirs}\r\n"))
    assert b_invite(r).headers.get_lines("Identity") == [theirs]
    broken = invite(extra=f"Identity: {theirs}\r\n").replace(
        b"To: <sip:+33612000001@", b"To: <sip:+33612000009@"
    )
    r.from_dialer(broken)
    p = _signed_by_us(b_invite(r), pki)  # re-signed with the numbers the carrier will see
    assert p.dest_tns == ("33612000001",)
    assert obs.events == [("signed", "dialer", "B")]


def test_calls_that_cannot_be_signed_are_counted(tmp_path: Path, signing: dict[str, Any]) -> None:
    r, obs = rig(write_config(tmp_path, automated=False, **signing))  # manual calls: a short number may call
    r.from_dialer(invite(caller="3180").replace(b"P-Asserted-Identity: <sip:3180@10.0.0.9>\r\n", b""))
    assert b_invite(r).headers.get_lines("Identity") == []
    assert obs.events == [("not-signed", "dialer", "caller-not-e164")]


# -- verification --------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, pki: StiPki) -> Iterator[X5uServer]:
    srv = X5uServer(tmp_path / "web", {"sti.pem": pki.chain_pem}).start()
    try:
        yield srv
    finally:
        srv.stop()


def verifying(tmp_path: Path, pki: StiPki, srv: X5uServer, **verify: Any) -> Path:
    files = pki.write(tmp_path / "sti")
    settings = {"ca": str(files["root"]), "x5u_tls_ca": str(srv.ca_file), **verify}
    return write_config(tmp_path, overrides=OPEN, headers={"pass": PASS}, identity={"verify": settings})


async def settle(r: Rig, want: int = 1) -> list[Any]:
    """Wait for the final answers to the dialer (a first x5u fetch runs on the loop)."""
    got: list[Any] = []
    for _ in range(300):
        got += [m for m in r.inside.take() if not m.is_request and m.status >= 200]
        if len(got) >= want:
            return got
        await asyncio.sleep(0.01)
    raise AssertionError("no final answer")


async def test_a_verifying_trunk_relays_a_valid_passport_and_answers_438_to_a_tampered_one(
    tmp_path: Path, pki: StiPki, served: X5uServer
) -> None:
    r, obs = rig(verifying(tmp_path, pki, served))
    good = dialer_identity(pki, x5u=served.url("sti.pem"))
    r.from_dialer(invite(extra=f"Identity: {good}\r\n"))  # the first call waits for the x5u fetch
    for _ in range(300):
        if r.outside.sent:
            break
        await asyncio.sleep(0.01)
    assert b_invite(r).headers.get_lines("Identity") == [good]
    assert ("verified", "dialer", "passed") in obs.events and ("x5u", "ok") in obs.events
    head, payload, _ = good.split(";")[0].split(".")
    other = dialer_identity(pki, dest="33612000002", x5u=served.url("sti.pem")).split(".")[1]
    tampered = good.replace(f"{head}.{payload}.", f"{head}.{other}.")
    r.from_dialer(invite("+33612000002", extra=f"Identity: {tampered}\r\n"))
    (final,) = await settle(r)
    assert final.status == 438 and final.reason == "Invalid Identity Header"
    assert final.headers.get("Reason") == 'SIP;cause=438;text="identity.invalid"'
    assert "signature" in (final.headers.get("Warning") or "")
    assert served.hits == {"sti.pem": 1}  # the second call was checked from memory
    assert r.outside.sent == []


async def test_no_identity_on_a_trunk_that_requires_one_is_428(
    tmp_path: Path, pki: StiPki, served: X5uServer
) -> None:
    r, obs = rig(verifying(tmp_path, pki, served, require=True))
    r.from_dialer(invite())
    (final,) = await settle(r)
    assert (final.status, final.reason) == (428, "Use Identity Header")
    assert obs.events == [("verified", "dialer", "identity.missing")]


# -- the carrier's verdicts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "extra", "code", "refused"),
    [
        (438, "", "438", True),
        (436, 'Reason: STIR;cause=436;text="Bad Identity Info"', "436", True),
        (403, 'Reason: STIR;cause=403;text="Stale Date"', "other", True),
        (603, "Reason: STIR ;cause=437", "437", True),
        (200, 'Reason: STIR;cause=438;text="Invalid Identity Header"', "438", False),
        (486, "Reason: Q.850;cause=17", None, True),
    ],
)
def test_carrier_stir_verdicts_are_counted_per_trunk_and_target(
    tmp_path: Path, status: int, extra: str, code: str | None, refused: bool
) -> None:
    r, obs = rig(write_config(tmp_path), policy=StubPolicy())
    r.from_dialer(invite())
    inv = b_invite(r)
    r.from_carrier(answer(inv, status, extra=extra))
    r.from_carrier(answer(inv, status, extra=extra))  # a retransmission is not a second verdict
    target = f"sip:{CARRIER1[0]}:{CARRIER1[1]}"
    assert obs.events == ([("carrier", "dialer", target, code, refused)] if code else [])
    relayed = [m for m in r.inside.take() if not m.is_request and m.status == status]
    assert relayed and (not extra or f"Reason: {relayed[0].headers.get('Reason')}" == extra)  # relayed too


def test_a_reload_signs_with_the_new_key(tmp_path: Path, pki: StiPki, signing: dict[str, Any]) -> None:
    path = write_config(tmp_path, **signing)
    r, _ = rig(path)
    r.from_dialer(invite())
    _signed_by_us(b_invite(r), pki)
    new = make_pki(name="renewed")
    Path(signing["identity"]["sign"]["key"]).write_bytes(key_pem(new.leaf_key))
    config = load_config(path)  # what SIGHUP does: the config, and so the key file, read again
    r.b2b.swap_runtime(compile_runtime(config, PolicyEngine(config), store=MemoryStore(), old=r.b2b.rt))
    r.from_dialer(invite())
    _signed_by_us(b_invite(r), new)
