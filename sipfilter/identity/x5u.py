"""x5u certificates fetched over HTTPS off the call path and kept: one fetch per URL in flight, served from
memory while fresh, refreshed in the background once stale, failures remembered briefly.

The cache only schedules and remembers; the fetch is an injected coroutine (`https_fetcher` in production).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from cryptography import x509

from sipfilter.identity.certs import CredentialError, load_document

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 65536  # a leaf and two intermediates are ~3 KiB of PEM
MAX_ENTRIES = 1000  # distinct x5u URLs remembered (least recently used dropped first)

Fetch = Callable[[str], Awaitable[bytes]]


class FetchError(Exception):
    """The x5u URL did not give a document (HTTP status, size, transport error); the message says which."""


@dataclass(frozen=True, slots=True)
class Document:
    """What one x5u URL gave: its certificates (leaf first), or why there are none."""

    url: str
    certs: tuple[x509.Certificate, ...]
    error: str  # "" when `certs` were fetched
    fetched_at: float
    fresh_until: float  # past this, a use triggers a background refresh
    usable_until: float  # past this, the entry is gone: the next call waits for a fetch


class X5uCache:
    """x5u URL → Document. `get` never waits; `fetch` gives the one pending fetch of a URL."""

    def __init__(self, fetch: Fetch, *, ttl_s: float, failure_ttl_s: float, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.time,
                 on_fetch: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self._fetch = fetch
        self.ttl_s = ttl_s
        self.failure_ttl_s = failure_ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self.on_fetch = on_fetch  # called with "ok" or "error" after each fetch (metrics)
        self._entries: OrderedDict[str, Document] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Document]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, url: str, now: float) -> Document | None:
        """The usable document of `url`, or None (never fetched, or expired). A stale one is returned all the
        same and refreshed in the background, so a URL in use never costs a call a network round trip."""
        doc = self._entries.get(url)
        if doc is None:
            return None
        if now >= doc.usable_until:
            del self._entries[url]
            return None
        self._entries.move_to_end(url)
        if now >= doc.fresh_until and url not in self._pending:
            self._start(url)
        return doc

    def fetch(self, url: str) -> asyncio.Future[Document]:
        """The pending fetch of `url` (started now unless one runs): every waiting call shares it."""
        pending = self._pending.get(url)
        return pending if pending is not None else self._start(url)

    def _start(self, url: str) -> asyncio.Future[Document]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Document] = loop.create_future()
        self._pending[url] = future
        task = loop.create_task(self._run(url, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    async def _run(self, url: str, future: asyncio.Future[Document]) -> None:
        started = self._clock()
        try:
            doc = await self._get_document(url, started)
        except Exception as exc:  # never leave waiters hanging, whatever broke
            log.exception("x5u fetch of %s failed unexpectedly", url)
            doc = self._failure(url, started, f"internal error: {type(exc).__name__}")
        self._pending.pop(url, None)
        old = self._entries.get(url)
        if doc.error and old is not None and not old.error and self._clock() < old.usable_until:
            # A failed refresh keeps the certificates still in use until they expire.
            log.warning("x5u refresh of %s failed (%s): keeping the copy fetched at %.0f", url, doc.error,
                        old.fetched_at)  # fmt: skip
        else:
            self._entries[url] = doc
            self._entries.move_to_end(url)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        if self.on_fetch is not None:
            self.on_fetch("error" if doc.error else "ok")
        if not future.done():
            future.set_result(doc)

    async def _get_document(self, url: str, now: float) -> Document:
        try:
            data = await self._fetch(url)
            certs = load_document(data)
        except CredentialError as exc:
            return self._failure(url, now, exc.reason)
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too (and ClientErrors)
            return self._failure(url, now, f"cannot fetch x5u {url}: no answer in time")
        except (FetchError, aiohttp.ClientError, OSError, ssl.SSLError, ValueError) as exc:
            return self._failure(url, now, f"cannot fetch x5u {url}: {str(exc) or type(exc).__name__}")
        # Never kept past the leaf's expiry (the chain is checked again at each use anyway).
        expires = certs[0].not_valid_after_utc.timestamp()
        return Document(url, tuple(certs), "", now, min(now + self.ttl_s, expires),
                        min(now + 2 * self.ttl_s, expires))  # fmt: skip

    def _failure(self, url: str, now: float, reason: str) -> Document:
        until = now + self.failure_ttl_s
        return Document(url, (), reason, now, until, until)

    def adopt(self, old: X5uCache) -> None:
        """Keep the documents of the cache this one replaces (a config reload)."""
        self._entries = old._entries
        self._pending = old._pending
        self._tasks = old._tasks


def https_fetcher(timeout_s: float, ssl_context: ssl.SSLContext | None,
                  max_bytes: int = MAX_DOCUMENT_BYTES) -> Fetch:  # fmt: skip
    """GET over HTTPS only, no redirects, `timeout_s` for everything (connect, TLS, body), at most
    `max_bytes`. `ssl_context` None: the system's CAs."""
    context = ssl_context or ssl.create_default_context()
    accept = "application/pem-certificate-chain, application/pkix-cert;q=0.9, */*;q=0.1"

    async def fetch(url: str) -> bytes:
        if not url.lower().startswith("https://"):
            raise FetchError(f"x5u {url!r} is not an https URL")
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            url, ssl=context, allow_redirects=False, headers={"Accept": accept}
        ) as resp:
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status}")
            if (resp.content_length or 0) > max_bytes:
                raise FetchError(f"document larger than {max_bytes} bytes")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(8192):
                data += chunk
                if len(data) > max_bytes:
                    raise FetchError(f"document larger than {max_bytes} bytes")
            return bytes(data)

    return fetch
