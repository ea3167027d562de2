"""What every transport endpoint offers the B2BUA (send, local address, side) and what it calls back.

No SIP logic and no parsing here: only the shapes shared by UDP and stream endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from mypy_extensions import mypyc_attr

log = logging.getLogger(__name__)

Addr = tuple[str, int]


class Handler(Protocol):
    """The receiver of traffic (the B2BUA). Must never raise; errors are its own business."""

    def on_datagram(self, endpoint: Endpoint, data: bytes, addr: Addr) -> None:
        """Raw bytes of one datagram (UDP) to parse."""

    def on_message(self, endpoint: Endpoint, message: Any, addr: Addr) -> None:
        """An already framed and parsed message (streams), or a ParseError the framer reported."""


# Compiled with the call path (sipfilter/compiled.py), so that the B2BUA reads an endpoint's fields and calls
# `send` without a dictionary lookup. The stream endpoints and the tests' recording endpoints are interpreted
# subclasses: they set `transport` and `reliable` on the instance, where compiled code reads them.
@mypyc_attr(allow_interpreted_subclasses=True)
class Endpoint:
    """One listening socket on one side ("inside": dialers, "outside": carriers)."""

    def __init__(self, side: str, host: str, port: int, transport: str = "udp",
                 reliable: bool = False) -> None:  # fmt: skip
        self.side = side
        self.host = host
        self.port = port  # the bound port (resolved when 0 was asked for)
        self.transport = transport  # udp | tcp | tls
        self.reliable = reliable

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def send(self, data: bytes, addr: Addr) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed; True if it is now in use."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
