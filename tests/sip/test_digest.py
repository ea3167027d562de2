"""Digest authentication: RFC 7616 §3.9 vectors, the parser, nonces, replay window, challenges."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipfilter.sip.digest import (
    AuthFailed,
    AuthOk,
    AuthorizationParseError,
    Challenge,
    Credentials,
    DigestAuthenticator,
    DigestError,
    DigestUser,
    UnsupportedScheme,
    UserTable,
    compute_response,
    ha1,
    parse_auth_params,
    parse_authorization,
    quote,
    select_credentials,
    userhash,
)

RFC4475 = Path(__file__).resolve().parents[1] / "data" / "rfc4475"

# --- RFC 7616 §3.9.1 (MD5 and SHA-256) and §3.9.2 (SHA-512-256 with userhash), errata applied ---

RFC_391_AUTHORIZATION_SHA256 = """Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
       qop=auth,
       response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"""".replace("\n", "\r\n")


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_3_9_1_vectors(algorithm: str, expected: str) -> None:
    a1 = ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    got = compute_response(
        algorithm,
        a1,
        method="GET",
        uri="/dir/index.html",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert got == expected


def test_rfc7616_3_9_2_sha512_256_userhash_vector() -> None:
    user, realm = "J\u00e4s\u00f8n Doe", "api@example.org"
    assert userhash("SHA-512-256", user, realm) == (
        "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
    )
    got = compute_response(
        "SHA-512-256",
        ha1("SHA-512-256", user, realm, "Secret, or not?"),
        method="GET",
        uri="/doe.json",
        nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK",
        nc="00000001",
        cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
    )
    assert got == "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"


def test_parse_the_rfc_authorization_header_with_folded_lines() -> None:
    c = parse_authorization(RFC_391_AUTHORIZATION_SHA256)
    assert c.username == "Mufasa" and c.realm == "http-auth@example.org"
    assert c.algorithm == "SHA-256" and c.qop == "auth" and c.nc == "00000001"
    assert c.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert c.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert not c.userhash


# --- parser ---


def test_parser_unescapes_quoted_pairs_and_is_case_insensitive_on_names() -> None:
    scheme, p, quoted = parse_auth_params(r'DIGEST UserName="a\"b\\c" ,, REALM = "r" , nonce=tok')
    assert scheme == "DIGEST"
    assert p == {"username": 'a"b\\c', "realm": "r", "nonce": "tok"}
    assert quoted == {"username", "realm"}


def test_algorithm_defaults_to_md5_and_is_canonicalised() -> None:
    base = 'Digest username="u", realm="r", nonce="n", uri="sip:x@y", response="00ff"'
    assert parse_authorization(base).algorithm == "MD5"
    assert parse_authorization(base + ", algorithm=sha-512-256-SESS").algorithm == "SHA-512-256-sess"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('Digest username="u", username="v", realm="r"', "duplicate parameter 'username'"),
        ('Digest username="u', "unterminated quoted string"),
        ('Digest username="u"realm="r"', "expected ','"),
        ("Digest username", "has no value"),
        ('Digest username="u", realm="r", nonce="n", uri="s", response="zz"', "not hexadecimal"),
        ('Digest username="u", realm="r", nonce="n", uri="s"', "missing parameter(s): response"),
        ('Digest username="u", realm="r", nonce="n", uri="s", response="ab", algorithm=SHA-1', "algorithm"),
        ('Digest username="u", realm="r", nonce="n", uri="s", response="ab", qop=auth', "nc and cnonce"),
        ('Digest username="u", realm="r", nonce="n", uri="s", response="ab", qop=auth, nc=1, cnonce=c', "nc"),
        ('Digest username="u\r\nVia: x", realm="r"', "control character"),
        ('Digest username="u\\\r", realm="r"', "forbidden escaped"),
        ('Digest username="u\x00", realm="r", nonce="n", uri="s", response="ab"', "control character"),
        ("", "missing authentication scheme"),
        ("Digest, =x", "unexpected ','"),
        ("Digest =x", "parameter name"),
        ("Digest " + ", ".join(f"p{i}=v" for i in range(40)), "more than 32"),
        ("Digest a=" + "b" * 9000, "longer than"),
    ],
)
def test_parser_rejects_malformed_values(value: str, fragment: str) -> None:
    with pytest.raises(AuthorizationParseError) as info:
        parse_authorization(value)
    assert fragment in str(info.value)


def test_unknown_scheme_from_rfc4475_regaut01() -> None:
    raw = (RFC4475 / "regaut01.dat").read_bytes().decode()
    line = next(x for x in raw.split("\r\n") if x.startswith("Authorization:"))
    value = line.split(":", 1)[1].strip()
    with pytest.raises(UnsupportedScheme) as info:
        parse_authorization(value)
    assert info.value.scheme == "NoOneKnowsThisScheme"
    assert select_credentials([value], "sipfilter") is None


def test_select_credentials_picks_our_realm() -> None:
    ours = 'Digest username="u", realm="ours", nonce="n", uri="s", response="ab"'
    theirs = 'Digest username="u", realm="theirs", nonce="n", uri="s", response="ab"'
    c = select_credentials(["Basic dXNlcjpwYXNz", theirs, ours], "ours")
    assert c is not None and c.realm == "ours"
    with pytest.raises(AuthorizationParseError):
        select_credentials(['Digest realm="ours", username="u"'], "ours")
    assert select_credentials(['Digest realm="theirs", username="u"'], "ours") is None


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_parser_only_ever_raises_its_own_error(value: str) -> None:
    try:
        parse_authorization(value)
    except AuthorizationParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), max_size=50))
def test_quote_round_trips_through_the_parser(value: str) -> None:
    _, p, _ = parse_auth_params(f"Digest x={quote(value)}")
    assert p["x"] == value


def test_quote_refuses_header_injection() -> None:
    for bad in ("a\r\nVia: evil", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            quote(bad)
    with pytest.raises(ValueError):
        Challenge("realm\r\nX-Evil: 1", "n", "MD5").header_value()


# --- authenticator ---

REALM = "sipfilter.example"
SECRET = b"0123456789abcdef0123456789abcdef"
URI = "sip:+33612345678@carrier.example;user=phone"


def make_auth(**kw: object) -> DigestAuthenticator:
    users = UserTable(
        [
            DigestUser("dialer1", password="s3cret"),
            DigestUser("legacy", ha1={"MD5": ha1("MD5", "legacy", REALM, "old")}),
        ],
        REALM,
    )
    params: dict[str, object] = {"algorithms": ("SHA-256", "MD5")}
    params.update(kw)
    return DigestAuthenticator(REALM, [SECRET], users, **params)  # type: ignore[arg-type]


def answer(
    challenge: Challenge,
    *,
    user: str = "dialer1",
    password: str = "s3cret",
    nc: int = 1,
    method: str = "INVITE",
    uri: str = URI,
    cnonce: str = "0a4f113b",
    hide_user: bool = False,
) -> Credentials:
    """What a UAC (the dialer) computes from the challenge."""
    resp = compute_response(
        challenge.algorithm,
        ha1(challenge.algorithm, user, challenge.realm, password),
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        nc=f"{nc:08x}",
        cnonce=cnonce,
    )
    name = userhash(challenge.algorithm, user, challenge.realm) if hide_user else user
    value = (
        f'Digest username="{name}", realm="{challenge.realm}", nonce="{challenge.nonce}", uri="{uri}", '
        f'response="{resp}", algorithm={challenge.algorithm}, qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
        + (", userhash=true" if hide_user else "")
    )
    return parse_authorization(value)


def test_challenge_headers_list_algorithms_in_preference_order() -> None:
    auth = make_auth(algorithms=("SHA-512-256", "SHA-256", "MD5"))
    headers = auth.challenge_headers(1000.0)
    assert [n for n, _ in headers] == ["Proxy-Authenticate"] * 3
    algs = [parse_auth_params(v)[1]["algorithm"] for _, v in headers]
    assert algs == ["SHA-512-256", "SHA-256", "MD5"]
    _, p, quoted = parse_auth_params(headers[0][1])
    assert p["realm"] == REALM and p["qop"] == "auth" and "stale" not in p
    assert {"realm", "nonce", "qop"} <= quoted
    www = auth.challenge_headers(1000.0, proxy=False, stale=True)
    assert www[0][0] == "WWW-Authenticate" and "stale=true" in www[0][1]


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-512-256", "SHA-256-sess", "MD5-sess"])
def test_round_trip_each_algorithm(algorithm: str) -> None:
    auth = make_auth(algorithms=(algorithm,))
    (ch,) = auth.challenges(1000.0)
    result = auth.verify(answer(ch), method="INVITE", now=1001.0, request_uri=URI)
    assert result == AuthOk("dialer1", algorithm)


def test_userhash_and_ha1_only_users() -> None:
    auth = make_auth()
    sha, md5 = auth.challenges(0.0)
    assert auth.verify(answer(sha, hide_user=True), method="INVITE", now=1.0) == AuthOk("dialer1", "SHA-256")
    # Same nonce (shared by both challenges): the next nc.
    ok = auth.verify(answer(md5, user="legacy", password="old", nc=2), method="INVITE", now=1.0)
    assert ok == AuthOk("legacy", "MD5")
    # Only an MD5 H(A1) is stored for `legacy`: SHA-256 cannot be checked.
    sha_legacy = answer(sha, user="legacy", password="old", nc=3)
    assert auth.verify(sha_legacy, method="INVITE", now=1.0) == AuthFailed("algorithm")


def test_wrong_password_unknown_user_wrong_method_or_uri() -> None:
    auth = make_auth()
    ch = auth.challenges(0.0)[0]
    assert auth.verify(answer(ch, password="guess"), method="INVITE", now=1.0) == AuthFailed("bad-response")
    assert auth.verify(answer(ch, user="nobody"), method="INVITE", now=1.0) == AuthFailed("unknown-user")
    # Credentials computed for a REGISTER do not authorise an INVITE.
    assert auth.verify(answer(ch, method="REGISTER"), method="INVITE", now=1.0) == AuthFailed("bad-response")
    other = "sip:+33699999999@carrier.example"
    assert auth.verify(answer(ch, uri=other), method="INVITE", now=1.0, request_uri=URI) == AuthFailed("uri")


def test_realm_and_algorithm_not_offered() -> None:
    auth = make_auth(algorithms=("SHA-256",))
    ch = auth.challenges(0.0)[0]
    forged = Challenge("elsewhere", ch.nonce, "SHA-256")
    assert auth.verify(answer(forged), method="INVITE", now=1.0) == AuthFailed("realm")
    md5 = Challenge(REALM, ch.nonce, "MD5")
    assert auth.verify(answer(md5), method="INVITE", now=1.0) == AuthFailed("algorithm")


def test_qop_less_rfc2069_credentials_are_refused() -> None:
    auth = make_auth()
    ch = auth.challenges(0.0)[0]
    creds = parse_authorization(
        f'Digest username="dialer1", realm="{REALM}", nonce="{ch.nonce}", uri="{URI}", response="00"'
    )
    assert auth.verify(creds, method="INVITE", now=1.0) == AuthFailed("qop")


def test_nonce_expiry_gives_stale_and_future_nonce_too() -> None:
    auth = make_auth(nonce_ttl_s=60)
    ch = auth.challenges(1000.0)[0]
    assert isinstance(auth.verify(answer(ch), method="INVITE", now=1060.0), AuthOk)
    assert auth.verify(answer(ch, nc=2), method="INVITE", now=1060.5) == AuthFailed("stale", stale=True)
    future = auth.challenges(5000.0)[0]
    assert auth.verify(answer(future), method="INVITE", now=1000.0) == AuthFailed("stale", stale=True)


def test_tampered_foreign_or_rebound_nonce_is_bad() -> None:
    auth = make_auth()
    ch = auth.challenges(0.0, bind="10.0.0.1")[0]
    assert isinstance(auth.verify(answer(ch), method="INVITE", now=1.0, bind="10.0.0.1"), AuthOk)
    # The same credentials replayed from another address: the nonce was bound to the first one.
    assert auth.verify(answer(ch, nc=2), method="INVITE", now=1.0, bind="10.0.0.2") == AuthFailed("bad-nonce")
    flipped = ch.nonce[:10] + ("A" if ch.nonce[10] != "A" else "B") + ch.nonce[11:]
    bad = Challenge(REALM, flipped, "SHA-256")
    assert auth.verify(answer(bad), method="INVITE", now=1.0, bind="10.0.0.1") == AuthFailed("bad-nonce")
    for junk in ("", "x" * 44, "!" * 44, "abc"):
        assert auth.verify(answer(Challenge(REALM, junk, "SHA-256")), method="INVITE", now=1.0) == AuthFailed(
            "bad-nonce"
        )
    other = DigestAuthenticator(REALM, [b"another-secret-of-32-bytes......"], UserTable([], REALM))
    foreign = other.challenges(0.0)[0]
    assert auth.verify(answer(foreign), method="INVITE", now=1.0) == AuthFailed("bad-nonce")


def test_secret_rotation_accepts_old_nonces() -> None:
    old = make_auth()
    ch = old.challenges(0.0)[0]
    users = UserTable([DigestUser("dialer1", password="s3cret")], REALM)
    new = DigestAuthenticator(REALM, [b"new-secret-new-secret-new-secret", SECRET], users)
    assert isinstance(new.verify(answer(ch), method="INVITE", now=1.0), AuthOk)
    dropped = DigestAuthenticator(REALM, [b"new-secret-new-secret-new-secret"], users)
    assert dropped.verify(answer(ch), method="INVITE", now=1.0) == AuthFailed("bad-nonce")


def test_nc_replay_window() -> None:
    auth = make_auth(replay_window=8)
    ch = auth.challenges(0.0)[0]

    def v(nc: int) -> AuthOk | AuthFailed:
        return auth.verify(answer(ch, nc=nc), method="INVITE", now=1.0)

    assert isinstance(v(1), AuthOk)
    assert v(1) == AuthFailed("replay")
    assert isinstance(v(5), AuthOk)
    assert isinstance(v(3), AuthOk)  # out of order but inside the window (UDP reordering)
    assert v(3) == AuthFailed("replay")
    assert isinstance(v(20), AuthOk)
    assert v(12) == AuthFailed("replay")  # fell out of the 8-wide window
    assert isinstance(v(13), AuthOk)
    assert v(5) == AuthFailed("replay")
    assert v(0) == AuthFailed("replay")


def test_failed_attempts_do_not_burn_nc_values() -> None:
    auth = make_auth()
    ch = auth.challenges(0.0)[0]
    assert auth.verify(answer(ch, nc=1, password="x"), method="INVITE", now=1.0) == AuthFailed("bad-response")
    assert isinstance(auth.verify(answer(ch, nc=1), method="INVITE", now=1.0), AuthOk)


def test_nonce_table_is_bounded_and_forgotten_nonces_cannot_be_replayed() -> None:
    auth = make_auth(max_tracked_nonces=10)
    first = auth.challenges(0.0)[0]
    assert isinstance(auth.verify(answer(first), method="INVITE", now=0.0), AuthOk)
    for i in range(1, 50):
        ch = auth.challenges(i / 100)[0]
        assert isinstance(auth.verify(answer(ch), method="INVITE", now=i / 100), AuthOk)
        assert auth.tracked_nonces() <= 10
    # `first` was evicted: a replay of its nc=1 must not pass, and even a fresh nc must renew the nonce.
    assert auth.verify(answer(first), method="INVITE", now=1.0) == AuthFailed("stale", stale=True)
    assert auth.verify(answer(first, nc=2), method="INVITE", now=1.0) == AuthFailed("stale", stale=True)


def test_expired_nonces_leave_the_table() -> None:
    auth = make_auth(nonce_ttl_s=10)
    for i in range(5):
        ch = auth.challenges(float(i))[0]
        auth.verify(answer(ch), method="INVITE", now=float(i))
    assert auth.tracked_nonces() == 5
    ch = auth.challenges(100.0)[0]
    assert isinstance(auth.verify(answer(ch), method="INVITE", now=100.0), AuthOk)
    assert auth.tracked_nonces() == 1


def test_configuration_errors() -> None:
    users = UserTable([], REALM)
    with pytest.raises(DigestError):
        DigestAuthenticator(REALM, [b"short"], users)
    with pytest.raises(DigestError):
        DigestAuthenticator(REALM, [SECRET], users, algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        DigestAuthenticator("bad\r\nrealm", [SECRET], users)
    with pytest.raises(DigestError):
        UserTable([DigestUser("a", password="x"), DigestUser("a", password="y")], REALM)
    with pytest.raises(DigestError):
        UserTable([DigestUser("a")], REALM)


def test_non_utf8_values_hash_as_their_original_bytes() -> None:
    # A SIP core decoding header bytes with surrogateescape hands such strings over; found by fuzz_digest.
    raw_cnonce = b"c\xeb"
    text = raw_cnonce.decode("utf-8", "surrogateescape")
    got = compute_response(
        "MD5", "00" * 16, method="INVITE", uri="sip:x", nonce="n", nc="00000001", cnonce=text
    )
    ha2 = hashlib.md5(b"INVITE:sip:x").hexdigest()
    want = hashlib.md5(b"00" * 16 + b":n:00000001:" + raw_cnonce + b":auth:" + ha2.encode()).hexdigest()
    assert got == want


def test_ha1_keyed_by_sess_or_base_name_serves_both() -> None:
    stored = ha1("SHA-256", "u", REALM, "pw")
    user = DigestUser("u", ha1={"SHA-256-sess": stored.upper()})
    assert user.ha1_for("SHA-256", REALM) == stored
    assert user.ha1_for("SHA-256-sess", REALM) == stored
    assert user.ha1_for("MD5", REALM) is None
