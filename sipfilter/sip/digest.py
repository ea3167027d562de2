"""SIP digest authentication of the dialer (RFC 3261 §22, RFC 7616, RFC 8760): challenges, parsing, checks.

Sans-IO: time and the caller's address are passed in, nonces are stateless (HMAC-signed); no sockets,
no clock reads, no logging. Only qop=auth is offered; auth-int and the qop-less RFC 2069 form are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import sipfilter.sip.grammar as g

# --- algorithms (RFC 8760 §2, RFC 7616 §3.2) ---------------------------------------------------------


def _hasher(name: str) -> Callable[[bytes], str]:
    def digest(data: bytes) -> str:
        return hashlib.new(name, data).hexdigest()

    return digest


_HASHES: Final[Mapping[str, Callable[[bytes], str]]] = {
    "MD5": _hasher("md5"),
    "SHA-256": _hasher("sha256"),
    "SHA-512-256": _hasher("sha512_256"),
}
# Every algorithm we know, with its -sess variant. Preference order when challenging is the caller's.
ALGORITHMS: Final[tuple[str, ...]] = tuple(
    name for base in ("SHA-512-256", "SHA-256", "MD5") for name in (base, base + "-sess")
)
_BY_UPPER: Final[Mapping[str, str]] = {name.upper(): name for name in ALGORITHMS}
MAX_HEADER_CHARS: Final = 8192
MAX_PARAMS: Final = 32


def _base_algorithm(algorithm: str) -> str:
    return algorithm[:-5] if algorithm.endswith("-sess") else algorithm


def h(algorithm: str, data: str) -> str:
    """H(data) in lowercase hex for `algorithm` (with or without -sess). Strings are hashed as UTF-8;
    bytes that were not UTF-8 (decoded with surrogateescape) hash as the original bytes."""
    return _HASHES[_base_algorithm(algorithm)](data.encode("utf-8", "surrogateescape"))


def canonical_algorithm(value: str | None) -> str | None:
    """The algorithm name as we spell it, or None if unknown. Absent means MD5 (RFC 7616 §3.3)."""
    if value is None:
        return "MD5"
    return _BY_UPPER.get(value.strip().upper())


# --- errors ------------------------------------------------------------------------------------------


class DigestError(Exception):
    """Base of the errors raised here."""


class AuthorizationParseError(DigestError):
    """An Authorization / Proxy-Authorization value is malformed; the message says where."""


class UnsupportedScheme(AuthorizationParseError):
    """The credentials use another scheme than Digest (RFC 4475 regaut01: answer with a challenge)."""

    def __init__(self, scheme: str) -> None:
        super().__init__(f"unsupported authorization scheme {scheme[:40]!r}")
        self.scheme = scheme


# --- parsing -----------------------------------------------------------------------------------------


# Token, LWS and quoted-string are the shared grammar's. Header folding is undone by the SIP parser, but
# LWS is matched with its line fold here too so this parser is safe on raw values.
def _skip_lws(s: str, i: int) -> int:
    m = g.FOLDED_LWS_RE.match(s, i)
    return m.end() if m else i


def _parse_quoted(s: str, i: int) -> tuple[str, int]:
    """`s[i]` is the opening quote. Returns the unescaped content and the index after the closing quote."""
    m = g.QUOTED_STRING_RE.match(s, i)
    # Fast path. The loop below runs to say precisely what is wrong, and for what the grammar's
    # quoted-string refuses but credentials may carry (control characters, escaped non-ASCII) or the
    # reverse (an escaped NUL, refused here).
    if m is not None and "\x00" not in (body := m.group()[1:-1]):
        return (g.QUOTED_PAIR_RE.sub(r"\1", body) if "\\" in body else body), m.end()
    out: list[str] = []
    i += 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            nxt = s[i + 1]
            if nxt in "\r\n" or nxt == "\x00":
                raise AuthorizationParseError(f"forbidden escaped character at offset {i + 1}")
            out.append(nxt)
            i += 2
            continue
        if c in "\r\n\x00":
            raise AuthorizationParseError(f"control character inside quoted string at offset {i}")
        out.append(c)
        i += 1
    raise AuthorizationParseError("unterminated quoted string")


def parse_auth_params(value: str) -> tuple[str, dict[str, str], frozenset[str]]:
    """Split `scheme auth-param *("," auth-param)` into (scheme, {lowercased name: value}, quoted names).

    Strict where ambiguity could be abused (duplicate parameters, junk between parameters, control
    characters), lenient on whitespace and empty list elements. Bounded: MAX_HEADER_CHARS, MAX_PARAMS.
    """
    if len(value) > MAX_HEADER_CHARS:
        raise AuthorizationParseError(f"credentials longer than {MAX_HEADER_CHARS} characters")
    s = value
    i = _skip_lws(s, 0)
    m = g.TOKEN_RE.match(s, i)
    if not m:
        raise AuthorizationParseError("missing authentication scheme")
    scheme = m.group()
    i = m.end()
    params: dict[str, str] = {}
    quoted: set[str] = set()
    n = len(s)
    if i < n and s[i] not in " \t\r":
        raise AuthorizationParseError(f"unexpected {s[i]!r} after the scheme")
    i = _skip_lws(s, i)
    expect_param = True
    while i < n:
        if s[i] == ",":
            i = _skip_lws(s, i + 1)
            expect_param = True
            continue
        if not expect_param:
            raise AuthorizationParseError(f"expected ',' at offset {i}")
        m = g.TOKEN_RE.match(s, i)
        if not m:
            raise AuthorizationParseError(f"expected a parameter name at offset {i}")
        name = m.group().lower()
        i = _skip_lws(s, m.end())
        if i >= n or s[i] != "=":
            raise AuthorizationParseError(f"parameter {name!r} has no value")
        i = _skip_lws(s, i + 1)
        if i < n and s[i] == '"':
            val, i = _parse_quoted(s, i)
            quoted.add(name)
        else:
            m = g.TOKEN_RE.match(s, i)
            if not m:
                raise AuthorizationParseError(f"parameter {name!r} has an invalid value")
            val, i = m.group(), m.end()
        if name in params:
            raise AuthorizationParseError(f"duplicate parameter {name!r}")
        if len(params) >= MAX_PARAMS:
            raise AuthorizationParseError(f"more than {MAX_PARAMS} parameters")
        params[name] = val
        i = _skip_lws(s, i)
        expect_param = False
    return scheme, params, frozenset(quoted)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Digest credentials from one Authorization / Proxy-Authorization header field value."""

    username: str  # as sent: the user name, or H(username:realm) when userhash is true
    realm: str
    nonce: str
    uri: str
    response: str  # lowercase hex
    algorithm: str  # canonical (e.g. "SHA-256"); "MD5" when absent
    qop: str | None
    nc: str | None  # 8 hex digits
    cnonce: str | None
    opaque: str | None
    userhash: bool


_HEX_RE: Final = re.compile(r"[0-9a-fA-F]+")
_NC_RE: Final = re.compile(r"[0-9a-fA-F]{8}")


def parse_authorization(value: str) -> Credentials:
    """Parse a Digest Authorization / Proxy-Authorization value; raises AuthorizationParseError."""
    scheme, p, _quoted = parse_auth_params(value)
    if scheme.lower() != "digest":
        raise UnsupportedScheme(scheme)
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
    if missing:
        raise AuthorizationParseError(f"missing parameter(s): {', '.join(missing)}")
    for name in ("username", "realm", "nonce", "uri", "cnonce", "opaque"):
        if name in p and g.CTL_RE.search(p[name]):
            raise AuthorizationParseError(f"control character in {name}")
    algorithm = canonical_algorithm(p.get("algorithm"))
    if algorithm is None:
        raise AuthorizationParseError(f"unknown algorithm {p.get('algorithm', '')[:40]!r}")
    response = p["response"]
    if not _HEX_RE.fullmatch(response):
        raise AuthorizationParseError("response is not hexadecimal")
    qop = p.get("qop")
    nc = p.get("nc")
    cnonce = p.get("cnonce")
    if qop is not None:
        if nc is None or cnonce is None:
            raise AuthorizationParseError("qop given without nc and cnonce")
        if not _NC_RE.fullmatch(nc):
            raise AuthorizationParseError("nc is not 8 hexadecimal digits")
    userhash = p.get("userhash", "false").lower()
    if userhash not in ("true", "false"):
        raise AuthorizationParseError("userhash must be true or false")
    return Credentials(
        username=p["username"],
        realm=p["realm"],
        nonce=p["nonce"],
        uri=p["uri"],
        response=response.lower(),
        algorithm=algorithm,
        qop=qop.lower() if qop is not None else None,
        nc=nc.lower() if nc is not None else None,
        cnonce=cnonce,
        opaque=p.get("opaque"),
        userhash=userhash == "true",
    )


def select_credentials(values: Iterable[str], realm: str) -> Credentials | None:
    """From all Authorization (or Proxy-Authorization) values of a request, the Digest one for `realm`.

    Values for other realms or schemes are skipped (they belong to someone else); a malformed value
    claiming our realm raises, so that the caller can answer 400 rather than challenge again.
    """
    for value in values:
        try:
            creds = parse_authorization(value)
        except UnsupportedScheme:
            continue
        except AuthorizationParseError:
            _s, p, _q = _params_or_empty(value)
            if p.get("realm") == realm:
                raise
            continue
        if creds.realm == realm:
            return creds
    return None


def _params_or_empty(value: str) -> tuple[str, dict[str, str], frozenset[str]]:
    try:
        return parse_auth_params(value)
    except AuthorizationParseError:
        return "", {}, frozenset()


# --- computing responses (RFC 7616 §3.4.1) -----------------------------------------------------------


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username ":" realm ":" password): what a user table may store instead of the password."""
    return h(algorithm, f"{username}:{realm}:{password}")


def userhash(algorithm: str, username: str, realm: str) -> str:
    """H(username ":" realm), the hidden user name of RFC 7616 §3.4.4."""
    return h(algorithm, f"{username}:{realm}")


def compute_response(
    algorithm: str,
    ha1_hex: str,
    *,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str = "auth",
) -> str:
    """The `response` value for qop=auth, from the stored H(A1) (un-sessioned; -sess applied here)."""
    if qop != "auth":
        raise DigestError(f"qop {qop!r} not supported")
    a1 = h(algorithm, f"{ha1_hex}:{nonce}:{cnonce}") if algorithm.endswith("-sess") else ha1_hex
    ha2 = h(algorithm, f"{method}:{uri}")
    return h(algorithm, f"{a1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- challenges --------------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A quoted-string for a header; refuses CR, LF and NUL so nothing can be injected."""
    if g.CTL_RE.search(value):
        raise ValueError("control characters cannot be placed in a SIP header")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Challenge:
    """One WWW-Authenticate / Proxy-Authenticate value."""

    realm: str
    nonce: str
    algorithm: str
    qop: str = "auth"
    stale: bool = False
    opaque: str | None = None
    userhash: bool = False

    def header_value(self) -> str:
        parts = [
            f"Digest realm={quote(self.realm)}",
            f"nonce={quote(self.nonce)}",
        ]
        if self.opaque is not None:
            parts.append(f"opaque={quote(self.opaque)}")
        parts.append(f"algorithm={self.algorithm}")
        parts.append(f"qop={quote(self.qop)}")
        if self.stale:
            parts.append("stale=true")
        if self.userhash:
            parts.append("userhash=true")
        return ", ".join(parts)


# --- users -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestUser:
    """A dialer account. Give a password, or H(A1) per algorithm so the password is never stored."""

    username: str
    password: str | None = None
    # algorithm -> hex H(username:realm:password); "SHA-256" and "SHA-256-sess" share one value
    ha1: Mapping[str, str] | None = None

    def ha1_for(self, algorithm: str, realm: str) -> str | None:
        base = _base_algorithm(algorithm)
        if self.ha1 is not None:
            for key in (base, base + "-sess"):
                if key in self.ha1:
                    return self.ha1[key].lower()
        if self.password is not None:
            return ha1(base, self.username, realm, self.password)
        return None


class UserTable:
    """Looks users up by name or by userhash; immutable once built (swap a new one on reload)."""

    def __init__(self, users: Iterable[DigestUser], realm: str) -> None:
        self._users: dict[str, DigestUser] = {}
        for u in users:
            if u.username in self._users:
                raise DigestError(f"duplicate digest user {u.username!r}")
            if u.password is None and not u.ha1:
                raise DigestError(f"digest user {u.username!r} has neither password nor ha1")
            self._users[u.username] = u
        self._by_hash: dict[tuple[str, str], DigestUser] = {
            (base, userhash(base, u.username, realm)): u for base in _HASHES for u in self._users.values()
        }

    def __len__(self) -> int:
        return len(self._users)

    def find(self, creds: Credentials) -> DigestUser | None:
        if creds.userhash:
            return self._by_hash.get((_base_algorithm(creds.algorithm), creds.username.lower()))
        return self._users.get(creds.username)


# --- nonces and verification -------------------------------------------------------------------------

_NONCE_VERSION: Final = 1
_NONCE_STRUCT: Final = struct.Struct(">BQ8s")  # version, issued at (ms since epoch), random salt
_MAC_BYTES: Final = 16
_NONCE_BYTES: Final = _NONCE_STRUCT.size + _MAC_BYTES


@dataclass(frozen=True, slots=True)
class AuthOk:
    username: str
    algorithm: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Why credentials were refused. `stale`: the nonce only expired; challenge again with stale=true,
    the dialer retries without treating it as a wrong password."""

    reason: str  # unknown-user | bad-response | bad-nonce | stale | replay | realm | algorithm | qop | uri
    stale: bool = False


AuthResult = AuthOk | AuthFailed


class _NcWindow:
    __slots__ = ("highest", "issued_ms", "seen")

    def __init__(self, issued_ms: int) -> None:
        self.issued_ms = issued_ms
        self.highest = 0
        self.seen = 0  # bit k set: nc == highest - k was accepted


class DigestAuthenticator:
    """Issues challenges and verifies credentials for one realm.

    Nonces carry their issue time and an HMAC over it (and over `bind`, e.g. the dialer's address),
    so any instance holding the secret can check them without shared state. The first secret signs;
    all of them verify, which lets operators rotate secrets without failing calls in flight.
    Replays are caught by a per-nonce nc window held in a bounded table.
    """

    def __init__(
        self,
        realm: str,
        secrets: Sequence[bytes],
        users: UserTable,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_ttl_s: float = 300.0,
        replay_window: int = 64,
        max_tracked_nonces: int = 100_000,
        check_uri: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        quote(realm)  # validates: no control characters
        if not secrets or any(len(s) < 16 for s in secrets):
            raise DigestError("digest nonce secrets must be at least 16 bytes each")
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not algorithms:
            raise DigestError(f"unsupported digest algorithm(s): {unknown or 'none given'}")
        if replay_window < 1 or replay_window > 1024:
            raise DigestError("replay_window must be between 1 and 1024")
        self.realm = realm
        self.algorithms = tuple(algorithms)
        self.nonce_ttl_s = nonce_ttl_s
        self._secrets = tuple(secrets)
        self._users = users
        self._window = replay_window
        self._max_tracked = max_tracked_nonces
        self._check_uri = check_uri
        self._random = random_bytes
        self._nonces: OrderedDict[str, _NcWindow] = OrderedDict()
        # Nonces issued at or before this instant but no longer tracked count as stale: forgetting
        # them must never reopen their nc window to replays.
        self._forgotten_until_ms = -1

    # -- nonces --

    def _mac(self, secret: bytes, body: bytes, bind: str) -> bytes:
        msg = body + b"\x00" + self.realm.encode() + b"\x00" + bind.encode()
        return hmac.new(secret, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def make_nonce(self, now: float, bind: str = "") -> str:
        body = _NONCE_STRUCT.pack(_NONCE_VERSION, int(now * 1000), self._random(8))
        raw = body + self._mac(self._secrets[0], body, bind)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _nonce_issued_ms(self, nonce: str, bind: str) -> int | None:
        """Issue time of a nonce we signed for `bind`, else None."""
        if len(nonce) != (_NONCE_BYTES * 4 + 2) // 3:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != _NONCE_BYTES:
            return None
        body, mac = raw[: _NONCE_STRUCT.size], raw[_NONCE_STRUCT.size :]
        version, issued_ms, _salt = _NONCE_STRUCT.unpack(body)
        if version != _NONCE_VERSION:
            return None
        if not any(hmac.compare_digest(mac, self._mac(s, body, bind)) for s in self._secrets):
            return None
        return int(issued_ms)

    # -- challenges --

    def challenges(self, now: float, *, stale: bool = False, bind: str = "") -> list[Challenge]:
        """One challenge per offered algorithm, most preferred first (RFC 8760 §2.4), sharing a nonce."""
        nonce = self.make_nonce(now, bind)
        return [Challenge(self.realm, nonce, a, stale=stale) for a in self.algorithms]

    def challenge_headers(
        self, now: float, *, proxy: bool = True, stale: bool = False, bind: str = ""
    ) -> list[tuple[str, str]]:
        """(name, value) pairs for a 407 (`proxy=True`: Proxy-Authenticate) or a 401 (WWW-Authenticate)."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        return [(name, c.header_value()) for c in self.challenges(now, stale=stale, bind=bind)]

    # -- verification --

    def verify(
        self,
        creds: Credentials,
        *,
        method: str,
        now: float,
        request_uri: str | None = None,
        bind: str = "",
    ) -> AuthResult:
        """Check `creds` for a request with `method` (and Request-URI). Records nc only on success."""
        if creds.realm != self.realm:
            return AuthFailed("realm")
        if creds.algorithm not in self.algorithms:
            return AuthFailed("algorithm")
        if creds.qop != "auth" or creds.nc is None or creds.cnonce is None:
            return AuthFailed("qop")
        if self._check_uri and request_uri is not None and creds.uri != request_uri:
            return AuthFailed("uri")
        issued_ms = self._nonce_issued_ms(creds.nonce, bind)
        if issued_ms is None:
            return AuthFailed("bad-nonce")
        now_ms = int(now * 1000)
        if issued_ms > now_ms + 5000:  # signed by us in the future: clock trouble, make it renew
            return AuthFailed("stale", stale=True)
        if now_ms - issued_ms > self.nonce_ttl_s * 1000:
            return AuthFailed("stale", stale=True)
        user = self._users.find(creds)
        if user is None:
            return AuthFailed("unknown-user")
        stored = user.ha1_for(creds.algorithm, self.realm)
        if stored is None:
            return AuthFailed("algorithm")
        expected = compute_response(
            creds.algorithm,
            stored,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        if not hmac.compare_digest(expected, creds.response):
            return AuthFailed("bad-response")
        verdict = self._record_nc(creds.nonce, int(creds.nc, 16), issued_ms, now_ms)
        if verdict is not None:
            return verdict
        return AuthOk(user.username, creds.algorithm)

    def _record_nc(self, nonce: str, nc: int, issued_ms: int, now_ms: int) -> AuthFailed | None:
        self._purge(now_ms)
        win = self._nonces.get(nonce)
        if win is None:
            if issued_ms <= self._forgotten_until_ms:
                return AuthFailed("stale", stale=True)
            while len(self._nonces) >= self._max_tracked:
                _, old = self._nonces.popitem(last=False)
                self._forgotten_until_ms = max(self._forgotten_until_ms, old.issued_ms)
            if issued_ms <= self._forgotten_until_ms:
                return AuthFailed("stale", stale=True)
            win = self._nonces[nonce] = _NcWindow(issued_ms)
        if nc == 0:
            return AuthFailed("replay")
        if nc > win.highest:
            shift = nc - win.highest
            win.seen = ((win.seen << shift) | 1) & ((1 << self._window) - 1) if shift < self._window else 1
            win.highest = nc
            return None
        back = win.highest - nc
        if back >= self._window or win.seen >> back & 1:
            return AuthFailed("replay")
        win.seen |= 1 << back
        return None

    def _purge(self, now_ms: int) -> None:
        ttl_ms = self.nonce_ttl_s * 1000
        nonces = self._nonces
        while nonces:
            first = next(iter(nonces.values()))
            if now_ms - first.issued_ms <= ttl_ms:
                break
            nonces.popitem(last=False)

    def tracked_nonces(self) -> int:
        return len(self._nonces)
