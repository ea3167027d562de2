"""What the B2BUA reads off an endpoint (its transport, whether it is reliable, its host:port) is held on the
instance, where the compiled call path reads it: a stream endpoint, an interpreted subclass of the compiled
`Endpoint`, must not look unreliable to the §17 machines (which would then retransmit over TCP)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from sipfilter.transport.base import Endpoint
from sipfilter.transport.stream import StreamEndpoint
from sipfilter.transport.udp import open_udp_endpoint


class _Handler:
    def on_datagram(self, endpoint: Any, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def on_message(self, endpoint: Any, message: Any, addr: tuple[str, int]) -> None:
        pass


@pytest.mark.parametrize(("tls", "transport"), [(None, "tcp"), (ssl.create_default_context(), "tls")])
def test_a_stream_endpoint_is_reliable(tls: ssl.SSLContext | None, transport: str) -> None:
    ep = StreamEndpoint("outside", "::1", 5061, _Handler(), tls=tls)  # type: ignore[arg-type]
    assert (ep.transport, ep.reliable, ep.hostport) == (transport, True, "[::1]:5061")
    assert isinstance(ep, Endpoint)


async def test_a_udp_endpoint_is_not_and_names_its_bound_port() -> None:
    ep = await open_udp_endpoint("inside", "127.0.0.1", 0, _Handler())  # type: ignore[arg-type]
    try:
        assert (ep.transport, ep.reliable) == ("udp", False)
        assert ep.port != 0 and ep.hostport == f"127.0.0.1:{ep.port}"
    finally:
        await ep.close()

