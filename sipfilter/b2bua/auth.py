"""Digest authentication of the dialer at the B2BUA's door (`auth:` section): check, challenge, strip.

Compiled once per runtime from AuthConfig (secrets file read here); answers are decided here but sent by
the B2BUA core. It never opens sockets, keeps no per-call state and never logs credentials.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipfilter.config import AuthConfig, ConfigError
from sipfilter.sip.digest import (
    AuthFailed,
    AuthorizationParseError,
    DigestAuthenticator,
    DigestError,
    DigestUser,
    UserTable,
    parse_auth_params,
    select_credentials,
)
from sipfilter.sip.message import Request

MIN_SECRET_BYTES = 16

# The `result` label of sipfilter_auth_total: a fixed set, whatever reason the digest core gives.
RESULT_PASSED = "passed"  # valid credentials
RESULT_CHALLENGED = "challenged"  # no credentials for our realm: the normal first round of a dialer
RESULT_STALE = "stale"  # the nonce expired: challenged again with stale=true (not a wrong password)
RESULT_MALFORMED = "malformed"  # unreadable credentials header: 400
RESULT_FAILED = "failed"  # wrong password, unknown user, replayed or forged nonce, wrong realm/uri/algorithm
AUTH_RESULTS = (RESULT_PASSED, RESULT_CHALLENGED, RESULT_STALE, RESULT_MALFORMED, RESULT_FAILED)
_RESULT_OF_WHY = {"missing": RESULT_CHALLENGED, "stale": RESULT_STALE, "malformed": RESULT_MALFORMED}


@dataclass(frozen=True, slots=True)
class Passed:
    """Valid credentials: the request goes on (the username is for logs and audit)."""

    username: str

    @property
    def result(self) -> str:
        return RESULT_PASSED


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer the request with `status` (407/401 with a challenge, or 400) and stop there."""

    status: int
    reason: str
    extra: tuple[str, ...]  # header lines (the challenge)
    why: str  # missing | stale | bad-response | malformed … (for logs and metrics)

    @property
    def result(self) -> str:
        """One of AUTH_RESULTS (the metric label); `why` keeps the detail for logs."""
        return _RESULT_OF_WHY.get(self.why, RESULT_FAILED)


class AuthGate:
    """The compiled `auth:` section: which trunks must authenticate and the authenticator they share."""

    __slots__ = ("authenticator", "bind", "config", "header", "proxy", "secrets", "status", "trunks")

    def __init__(self, config: AuthConfig, secrets: tuple[bytes, ...],
                 authenticator: DigestAuthenticator | None = None) -> None:  # fmt: skip
        self.config = config
        self.secrets = secrets
        self.trunks = frozenset(config.trunks)
        self.proxy = config.challenge == "proxy"
        self.status = 407 if self.proxy else 401
        self.header = "Proxy-Authorization" if self.proxy else "Authorization"
        self.bind = config.bind_nonce_to_source
        if authenticator is None:
            users = UserTable(
                [DigestUser(u.username, ha1=dict(u.ha1)) for u in config.users], config.realm
            )
            authenticator = DigestAuthenticator(
                config.realm, secrets, users, algorithms=config.algorithms, nonce_ttl_s=config.nonce_ttl_s
            )
        self.authenticator = authenticator

    def applies(self, trunk: str) -> bool:
        return trunk in self.trunks

    def check(self, msg: Request, source_ip: str, now: float) -> Passed | Refused:
        """Credentials of an out-of-dialog request from `source_ip`: Passed, or the answer to send."""
        bind = source_ip if self.bind else ""
        auth = self.authenticator
        try:
            creds = select_credentials(msg.headers.get_all(self.header), auth.realm)
        except AuthorizationParseError:
            return Refused(400, f"Malformed {self.header}", (), "malformed")
        if creds is None:
            return self._challenge(now, bind, stale=False, why="missing")
        result = auth.verify(creds, method=msg.method, now=now, request_uri=msg.uri, bind=bind)
        if isinstance(result, AuthFailed):
            return self._challenge(now, bind, stale=result.stale, why=result.reason)
        return Passed(result.username)

    def _challenge(self, now: float, bind: str, *, stale: bool, why: str) -> Refused:
        pairs = self.authenticator.challenge_headers(now, proxy=self.proxy, stale=stale, bind=bind)
        reason = "Proxy Authentication Required" if self.proxy else "Unauthorized"
        return Refused(self.status, reason, tuple(f"{n}: {v}" for n, v in pairs), why)

    def ours(self, name: str, value: str) -> bool:
        """True for a credentials header meant for us (our realm): never relayed to the carrier."""
        if name.lower() != self.header.lower():
            return False
        try:
            _scheme, params, _quoted = parse_auth_params(value)
        except AuthorizationParseError:
            return True  # unreadable credentials are not forwarded either
        return params.get("realm") == self.authenticator.realm


def read_secrets(config: AuthConfig) -> tuple[bytes, ...]:
    """The nonce secrets file: one secret per line (blank lines and # comments skipped), first one signs."""
    path = config.nonce_secrets_file
    field = "auth.nonce_secrets_file"
    try:
        text = path.read_bytes()
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(f"cannot read the nonce secrets file: {why}", path, None, field) from exc
    secrets: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if len(line) < MIN_SECRET_BYTES:
            raise ConfigError(f"secret shorter than {MIN_SECRET_BYTES} bytes", path, number, field)
        secrets.append(line)
    if not secrets:
        raise ConfigError("no secret in the nonce secrets file", path, None, field)
    return tuple(secrets)


def compile_gate(config: AuthConfig | None, old: AuthGate | None = None) -> AuthGate | None:
    """The gate for a (re)loaded config. An unchanged section and secrets keep the running authenticator,
    so nonces issued before a reload keep their replay windows. Errors are ConfigError."""
    if config is None:
        return None
    secrets = read_secrets(config)
    if old is not None and old.config == config and old.secrets == secrets:
        return AuthGate(config, secrets, old.authenticator)
    try:
        return AuthGate(config, secrets)
    except DigestError as exc:
        raise ConfigError(str(exc), None, None, "auth") from exc

