"""The admin HTTP guard: one aiohttp middleware that checks the Host header, the bearer token and the body
type of every request, so that a route added later is guarded without a line of its own.

Decides who may call what; serves no route and knows nothing of stores. Settings swap atomically on reload.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

log = logging.getLogger("sipfilter.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

# Probes carry no secret and reveal only "up/ready": orchestrators and Docker HEALTHCHECK call them bare,
# under whatever name they reach the container by.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"
JSON_TYPES = ("application/json",)
# Methods a browser may send cross-site without asking first (no CORS preflight), POST with a text/plain,
# form or multipart body: every POST must declare one of its route's body types, even an empty one.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_TYPES_ATTR = "admin_body_types"


def accepts(*types: str) -> Callable[[H], H]:
    """Declare the body media types a route takes (default: application/json only). Set on the handler that
    is registered with the router."""

    def mark(handler: H) -> H:
        setattr(handler, _BODY_TYPES_ATTR, tuple(t.lower() for t in types))
        return handler

    return mark


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name we cannot vouch for: treat as exposed


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """What the guard enforces; built from `admin:` and replaced as a whole on reload."""

    token_digest: bytes | None  # SHA-256 of "Bearer <token>"; None: no token, the API is closed
    hosts: frozenset[str]  # Host names accepted (lower case, no port)
    any_address: bool  # bound to a wildcard address: any IP-literal Host names this server
    metrics_open: bool  # loopback bind: /metrics needs no token

    @classmethod
    def build(cls, token: str | None, bind_host: str, allowed_hosts: Iterable[str] = ()) -> GuardSettings:
        digest = hashlib.sha256(f"Bearer {token}".encode()).digest() if token else None
        hosts = {h.lower().rstrip(".") for h in allowed_hosts}
        wildcard = False
        try:
            bound = ipaddress.ip_address(bind_host)
        except ValueError:
            hosts.add(bind_host.lower())
        else:
            wildcard = bound.is_unspecified
            hosts.add(str(bound))
            if bound.is_loopback:
                hosts.add("localhost")
        return cls(digest, frozenset(hosts), wildcard, is_loopback(bind_host))


def host_name(header: str) -> str:
    """The host of a Host header value: lower case, without port, brackets or a trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class AdminGuard:
    """The middleware's state: `configure()` swaps the settings (a reload), `middleware` is added once."""

    def __init__(self, token: str | None, bind_host: str, allowed_hosts: Iterable[str] = ()) -> None:
        self.settings = GuardSettings.build(token, bind_host, allowed_hosts)

    def configure(self, token: str | None, bind_host: str, allowed_hosts: Iterable[str] = ()) -> None:
        self.settings = GuardSettings.build(token, bind_host, allowed_hosts)

    def host_allowed(self, header: str | None) -> bool:
        """DNS rebinding defence: a page served under a name the attacker controls reaches us with that name
        in Host. A request without Host (HTTP/1.0 tools) comes from no browser."""
        if header is None:
            return True
        settings = self.settings
        name = host_name(header)
        if name in settings.hosts:
            return True
        if settings.any_address:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True
        return False

    def token_ok(self, authorization: str) -> bool:
        expected = self.settings.token_digest
        if expected is None:
            return False
        # Digests of equal length: the comparison time says nothing about the token, not even its length.
        given = hashlib.sha256(authorization.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(given, expected)

    @property
    def middleware(self) -> Any:
        guard = self

        @web.middleware
        async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            path = request.path
            if path in OPEN_PATHS:
                return await handler(request)
            if not guard.host_allowed(request.headers.get("Host")):
                return _error(421, "this admin port does not answer to that Host name (admin.allowed_hosts)")
            settings = guard.settings
            if not (path == METRICS_PATH and settings.metrics_open):
                if settings.token_digest is None:
                    return _error(403, "the admin API is closed: set admin.token_file (or admin.token)")
                if not guard.token_ok(request.headers.get("Authorization", "")):
                    return _error(401, "missing or wrong bearer token",
                                  {"WWW-Authenticate": 'Bearer realm="sipfilter-admin"'})  # fmt: skip
            refused = _body_type_refusal(request)
            if refused is not None:
                return refused
            return await handler(request)

        return admin_guard


def _body_type_refusal(request: web.Request) -> web.Response | None:
    """415 for a request whose body is not of a type its route takes (JSON unless the route says otherwise):
    a browser cannot send JSON cross-site without a preflight, so a form or text/plain POST is no call of
    ours (CSRF)."""
    if request.method in _SAFE_METHODS:
        return None
    declared = request.headers.get("Content-Type")
    if declared is None and request.method != "POST" and not request.body_exists:
        return None  # DELETE, PUT without a body: nothing to interpret
    types = getattr(request.match_info.handler, _BODY_TYPES_ATTR, JSON_TYPES)
    mime = declared.split(";", 1)[0].strip().lower() if declared is not None else ""
    if mime in types:
        return None
    got = f"got {mime!r}" if mime else "none given"
    return _error(415, f"Content-Type must be {' or '.join(types)} ({got})")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
