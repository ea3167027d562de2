"""atheris target: the digest Authorization parser and verifier never raise anything but their own error.

Run: .venv/bin/python tests/fuzz/fuzz_digest.py -max_total_time=60 [corpus_dir]
"""

from __future__ import annotations

import sys

import atheris
from _fuzzlib import run

with atheris.instrument_imports():
    from sipfilter.sip import digest

REALM = "sipfilter.fuzz"
AUTH = digest.DigestAuthenticator(
    REALM,
    [b"fuzzing-secret-fuzzing-secret-00"],
    digest.UserTable([digest.DigestUser("dialer", password="pw")], REALM),
    algorithms=("SHA-256", "MD5", "SHA-512-256-sess"),
    max_tracked_nonces=64,
    random_bytes=lambda n: b"\x00" * n,
)
NONCE = AUTH.make_nonce(1000.0)
SEEDS = {
    "good.txt": (
        f'Digest username="dialer", realm="{REALM}", nonce="{NONCE}", uri="sip:x@y", '
        'response="0123abcd", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c"'
    ).encode(),
    "escaped.txt": b'Digest username="a\\"b", realm="r\\\\", nonce=n, uri="u", response=00',
}


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        _scheme, params, _quoted = digest.parse_auth_params(text)
    except digest.AuthorizationParseError:
        return
    for value in params.values():
        # Anything the parser accepted must survive quoting and re-parsing unchanged, or be refused
        # by quote() because it holds a control character (which must never reach a header).
        try:
            quoted = digest.quote(value)
        except ValueError:
            continue
        again = digest.parse_auth_params(f"Digest x={quoted}")[1]["x"]
        assert again == value, (value, again)
    try:
        creds = digest.parse_authorization(text)
    except digest.AuthorizationParseError:
        return
    result = AUTH.verify(creds, method="INVITE", now=1001.0, request_uri="sip:x@y")
    assert isinstance(result, digest.AuthOk | digest.AuthFailed)
    assert AUTH.tracked_nonces() <= 64


if __name__ == "__main__":
    run(test_one_input, SEEDS)
    sys.exit(0)
