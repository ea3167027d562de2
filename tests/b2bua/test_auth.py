"""Digest authentication of the dialer by the B2BUA: challenge, retry with credentials, relay without them."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from b2bua_rig import Rig, StubPolicy, answer, invite, rig_for, write_config

from sipfilter.b2bua.auth import AUTH_RESULTS, Passed, Refused
from sipfilter.b2bua.core import compile_runtime
from sipfilter.b2bua.observe import Observer
from sipfilter.config import ConfigError
from sipfilter.configure import load_config
from sipfilter.sip import Request, Response, parse

REALM = "dialers.acme.example"
USER, PASSWORD = "dialer1", "s3cret-pass"
RURI = "sip:+33612000001@10.0.0.5:5060"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _config_path(tmp_path: Path, **auth: Any) -> Path:
    path = write_config(tmp_path, headers={"pass": ["P-Asserted-Identity", "X-*", "Proxy-Authorization"]})
    cfg = yaml.safe_load(path.read_text())
    secrets = tmp_path / "nonce.keys"
    secrets.write_text("# rotated monthly\n" + "k" * 32 + "\n")
    cfg["auth"] = {
        "trunks": ["dialer"], "realm": REALM, "algorithms": ["SHA-256", "MD5"], "challenge": "proxy",
        "nonce_secrets_file": str(secrets), "nonce_ttl_s": 300, "bind_nonce_to_source": True,
        "users": [{"username": USER, "ha1": {"SHA-256": _sha256(f"{USER}:{REALM}:{PASSWORD}"),
                                             "MD5": _md5(f"{USER}:{REALM}:{PASSWORD}")}}],
        **auth,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _rig(tmp_path: Path, **auth: Any) -> Rig:
    return rig_for(_config_path(tmp_path, **auth))


@pytest.fixture(name="rig")
def _rig_fixture(tmp_path: Path) -> Rig:
    return _rig(tmp_path)


def _challenges(resp: Response, name: str = "Proxy-Authenticate") -> list[dict[str, str]]:
    out = []
    for value in resp.headers.get_all(name):
        assert value.startswith("Digest ")
        out.append({k: v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', value)})
    return out


def _credentials(challenge: dict[str, str], *, method: str = "INVITE", uri: str = RURI, nc: str = "00000001",
                 password: str = PASSWORD, header: str = "Proxy-Authorization") -> str:  # fmt: skip
    """The client side of RFC 7616 §3.4.1, computed here with hashlib (qop=auth)."""
    alg = challenge["algorithm"]
    hf = _sha256 if alg == "SHA-256" else _md5
    cnonce = "0a4f113b"
    ha1 = hf(f"{USER}:{challenge['realm']}:{password}")
    ha2 = hf(f"{method}:{uri}")
    response = hf(f"{ha1}:{challenge['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'{header}: Digest username="{USER}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={alg}, qop=auth, nc={nc}, cnonce="{cnonce}"\r\n'
    )


def _retry(call_id: str, creds: str, cseq: int = 11, extra: str = "") -> bytes:
    """The dialer's INVITE again, with credentials: same Call-ID, next CSeq, new branch."""
    raw = invite(call_id=call_id, extra=creds + extra)
    return raw.replace(b"CSeq: 10 INVITE", f"CSeq: {cseq} INVITE".encode())


def _challenged(rig: Rig, call_id: str) -> Response:
    rig.from_dialer(invite(call_id=call_id))
    (resp,) = rig.inside.take()
    assert isinstance(resp, Response)
    return resp


def test_407_then_invite_with_credentials_is_relayed_without_them(rig: Rig) -> None:
    resp = _challenged(rig, "auth-call-1")
    assert resp.status == 407 and resp.reason == "Proxy Authentication Required"
    assert resp.to.tag and resp.call_id == "auth-call-1"
    challenges = _challenges(resp)
    assert [c["algorithm"] for c in challenges] == ["SHA-256", "MD5"]  # preference order (RFC 8760)
    assert {c["realm"] for c in challenges} == {REALM} and len({c["nonce"] for c in challenges}) == 1
    assert all(c["qop"] == "auth" and "stale" not in c for c in challenges)
    # Nothing happened on the carrier side, no call or slot is held for the challenged INVITE.
    assert rig.outside.sent == [] and rig.b2b.active_calls == 0 and rig.policy.seen == []
    assert rig.b2b.admission.active_dialogs() == 0
    # The dialer's ACK for the 407 is absorbed.
    ack = f"ACK {RURI} SIP/2.0\r\nVia: {resp.headers.get('Via')}\r\nMax-Forwards: 70\r\n" \
          f"From: {resp.headers.get('From')}\r\nTo: {resp.headers.get('To')}\r\nCall-ID: auth-call-1\r\n" \
          "CSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n"  # fmt: skip
    rig.from_dialer(ack.encode())
    assert rig.inside.sent == [] and rig.outside.sent == []
    foreign = 'Proxy-Authorization: Digest username="acme", realm="carrier.example", nonce="n", uri="x", response="ab"\r\n'  # noqa: E501
    rig.from_dialer(_retry("auth-call-1", _credentials(challenges[0]), extra=foreign))
    assert [r.status for r in rig.inside.take()] == [100]
    assert rig.policy.seen == ["+33612000001"]
    (b_inv,) = [m for m in rig.outside.take() if isinstance(m, Request)]
    assert b_inv.method == "INVITE"
    relayed = b_inv.headers.get_all("Proxy-Authorization")
    # Ours is consumed here; the one for another realm is the trunk's pass list's business.
    assert len(relayed) == 1 and 'realm="carrier.example"' in relayed[0]
    assert REALM not in bytes(b_inv).decode()
    assert rig.b2b.active_calls == 1


def test_md5_credentials_are_accepted_too(rig: Rig) -> None:
    md5 = _challenges(_challenged(rig, "auth-md5"))[1]
    rig.from_dialer(_retry("auth-md5", _credentials(md5)))
    assert [r.status for r in rig.inside.take()] == [100]
    assert len(rig.outside.take()) == 1


def test_wrong_password_is_challenged_again_not_relayed(rig: Rig) -> None:
    challenge = _challenges(_challenged(rig, "auth-bad"))[0]
    rig.from_dialer(_retry("auth-bad", _credentials(challenge, password="guess")))
    (resp,) = rig.inside.take()
    assert resp.status == 407
    again = _challenges(resp)
    assert again[0]["nonce"] != challenge["nonce"] and "stale" not in again[0]
    assert rig.outside.sent == [] and rig.b2b.active_calls == 0


def test_credentials_for_another_request_uri_or_replayed_are_refused(rig: Rig) -> None:
    challenge = _challenges(_challenged(rig, "auth-replay"))[0]
    rig.from_dialer(_retry("auth-replay", _credentials(challenge, uri="sip:+33612000002@10.0.0.5:5060")))
    assert [r.status for r in rig.inside.take()] == [407]
    creds = _credentials(challenge)
    rig.from_dialer(_retry("auth-replay", creds))
    assert [r.status for r in rig.inside.take()] == [100]
    rig.outside.take()
    # The same credentials (same nonce and nc) on a new INVITE: a replay.
    rig.from_dialer(_retry("auth-replay-2", creds))
    assert [r.status for r in rig.inside.take()] == [407]
    assert rig.outside.sent == []


def test_expired_nonce_gets_a_stale_challenge(rig: Rig) -> None:
    challenge = _challenges(_challenged(rig, "auth-stale"))[0]
    rig.clock.advance(301)
    rig.from_dialer(_retry("auth-stale", _credentials(challenge)))
    (resp,) = rig.inside.take()
    assert resp.status == 407
    fresh = _challenges(resp)
    assert all(c["stale"] == "true" for c in fresh) and fresh[0]["nonce"] != challenge["nonce"]
    rig.from_dialer(_retry("auth-stale", _credentials(fresh[0]), cseq=12))
    assert [r.status for r in rig.inside.take()] == [100]


def test_malformed_credentials_for_our_realm_get_400(rig: Rig) -> None:
    bad = f'Proxy-Authorization: Digest username="{USER}", realm="{REALM}", nonce="abc", uri="{RURI}", response="zz"\r\n'  # noqa: E501
    rig.from_dialer(_retry("auth-400", bad))
    (resp,) = rig.inside.take()
    assert resp.status == 400 and "Proxy-Authorization" in resp.reason
    assert rig.outside.sent == [] and rig.b2b.active_calls == 0


def test_out_of_dialog_options_is_challenged_and_answered_once_authenticated(rig: Rig) -> None:
    options = (
        "OPTIONS sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bKo{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{USER}@10.0.0.9>;tag=o1\r\nTo: <sip:sipfilter@127.0.0.1>\r\n"
        "Call-ID: auth-options\r\nCSeq: {n} OPTIONS\r\n{creds}Content-Length: 0\r\n\r\n"
    )
    rig.from_dialer(options.format(n=1, creds="").encode())
    (resp,) = rig.inside.take()
    assert resp.status == 407
    creds = _credentials(_challenges(resp)[0], method="OPTIONS", uri="sip:sipfilter@127.0.0.1:5060")
    rig.from_dialer(options.format(n=2, creds=creds).encode())
    assert [r.status for r in rig.inside.take()] == [200]


def test_www_challenge_uses_401_and_authorization(tmp_path: Path) -> None:
    rig = _rig(tmp_path, challenge="www")
    resp = _challenged(rig, "auth-www")
    assert resp.status == 401 and resp.headers.get_all("Proxy-Authenticate") == []
    challenge = _challenges(resp, "WWW-Authenticate")[0]
    rig.from_dialer(_retry("auth-www", _credentials(challenge, header="Authorization")))
    assert [r.status for r in rig.inside.take()] == [100]
    (b_inv,) = rig.outside.take()
    assert b_inv.headers.get_all("Authorization") == []


def test_nonce_is_bound_to_the_dialer_address(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    challenge = _challenges(_challenged(rig, "auth-bind"))[0]
    gate = rig.b2b.rt.auth
    assert gate is not None
    msg = parse(_retry("auth-bind", _credentials(challenge)))
    assert isinstance(gate.check(msg, "127.0.0.1", rig.clock.now), Passed)
    msg = parse(_retry("auth-bind", _credentials(challenge, nc="00000002")))
    refused = gate.check(msg, "127.0.0.2", rig.clock.now)  # the same nonce from another address
    assert isinstance(refused, Refused) and refused.status == 407 and refused.why == "bad-nonce"


def test_authenticator_is_built_once_and_kept_across_an_unchanged_reload(tmp_path: Path) -> None:
    config = load_config(_config_path(tmp_path))
    first = compile_runtime(config, StubPolicy(), store=None)
    assert first.auth is not None
    again = compile_runtime(load_config(config.path), StubPolicy(), store=None, old=first)
    assert again.auth is not None and again.auth.authenticator is first.auth.authenticator
    (tmp_path / "nonce.keys").write_text("n" * 32 + "\n" + "k" * 32 + "\n")  # rotation: new signing key
    rotated = compile_runtime(load_config(config.path), StubPolicy(), store=None, old=again)
    assert rotated.auth is not None and rotated.auth.authenticator is not first.auth.authenticator
    (tmp_path / "nonce.keys").write_text("short\n")
    with pytest.raises(ConfigError, match="16 bytes") as err:
        compile_runtime(load_config(config.path), StubPolicy(), store=None, old=rotated)
    assert err.value.line == 1
    (tmp_path / "nonce.keys").unlink()
    with pytest.raises(ConfigError, match="nonce secrets file"):
        compile_runtime(load_config(config.path), StubPolicy(), store=None)


def test_in_dialog_requests_do_not_carry_our_credentials_to_the_carrier(rig: Rig) -> None:
    challenge = _challenges(_challenged(rig, "auth-dialog"))[0]
    creds = _credentials(challenge)
    rig.from_dialer(_retry("auth-dialog", creds))
    (b_inv,) = rig.outside.take()
    rig.from_carrier(answer(b_inv, 200))
    ok = next(r for r in rig.inside.take() if r.status == 200)
    head = (
        "{m} sip:sipfilter@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bK{m}\r\n"
        f"Max-Forwards: 70\r\nFrom: {ok.headers.get('From')}\r\nTo: {ok.headers.get('To')}\r\n"
        "Call-ID: auth-dialog\r\nCSeq: {n} {m}\r\n"
    )
    rig.from_dialer((head.format(m="ACK", n=11) + "Content-Length: 0\r\n\r\n").encode())
    rig.outside.take()
    rig.from_dialer((head.format(m="BYE", n=12) + creds + "Content-Length: 0\r\n\r\n").encode())
    (b_bye,) = rig.outside.take()
    assert b_bye.method == "BYE" and b_bye.headers.get_all("Proxy-Authorization") == []


class _AuthRecorder(Observer):
    def __init__(self) -> None:
        self.results: list[tuple[str, str]] = []

    def auth(self, trunk: str, result: str) -> None:
        self.results.append((trunk, result))


def test_every_auth_outcome_is_reported_with_a_fixed_result_label(rig: Rig) -> None:
    rec = _AuthRecorder()
    rig.b2b.obs = rec
    challenge = _challenges(_challenged(rig, "auth-m1"))[0]  # no credentials: challenged
    rig.from_dialer(_retry("auth-m1", _credentials(challenge, password="guess")))  # wrong password
    fresh = _challenges(rig.inside.take()[0])[0]
    bad = f'Proxy-Authorization: Digest username="{USER}", realm="{REALM}", nonce="abc", uri="{RURI}", response="zz"\r\n'  # noqa: E501
    rig.from_dialer(_retry("auth-m1", bad, cseq=12))  # unreadable: malformed
    rig.inside.take()
    rig.clock.advance(301)
    rig.from_dialer(_retry("auth-m1", _credentials(fresh), cseq=13))  # expired nonce: stale
    stale = _challenges(rig.inside.take()[0])[0]
    rig.from_dialer(_retry("auth-m1", _credentials(stale), cseq=14))  # passed
    assert [r.status for r in rig.inside.take()] == [100]
    assert rec.results == [("dialer", r) for r in ("challenged", "failed", "malformed", "stale", "passed")]
    assert {r for _, r in rec.results} <= set(AUTH_RESULTS)


def test_auth_outcomes_reach_the_prometheus_counter(rig: Rig) -> None:
    from sipfilter import metrics

    rig.b2b.obs = metrics.PrometheusObserver(metrics.CALLS)

    def count(result: str) -> float:
        labels = {"trunk": "dialer", "result": result}
        return metrics.REGISTRY.get_sample_value("sipfilter_auth_total", labels) or 0.0

    before = count("challenged"), count("failed")
    challenge = _challenges(_challenged(rig, "auth-p1"))[0]
    rig.from_dialer(_retry("auth-p1", _credentials(challenge, password="guess")))
    assert (count("challenged"), count("failed")) == (before[0] + 1, before[1] + 1)


def test_refusal_reasons_map_to_results() -> None:
    def refused(why: str) -> Refused:
        return Refused(407, "x", (), why)

    assert Passed("u").result == "passed"
    assert refused("missing").result == "challenged" and refused("stale").result == "stale"
    assert refused("malformed").result == "malformed"
    for why in ("bad-response", "unknown-user", "replay", "bad-nonce", "realm", "algorithm", "qop", "uri"):
        assert refused(why).result == "failed", why
