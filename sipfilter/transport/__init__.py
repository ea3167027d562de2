"""asyncio SIP transports (UDP, TCP, TLS): bytes in, bytes out, one `Endpoint` per listening socket.

Knows nothing of SIP rules: framing of streams is delegated to the SIP core's StreamFramer.
"""

from sipfilter.transport.base import Endpoint, Handler, install_uvloop
from sipfilter.transport.stream import StreamEndpoint, open_stream_endpoint
from sipfilter.transport.udp import UdpEndpoint, open_udp_endpoint

__all__ = [
    "Endpoint",
    "Handler",
    "StreamEndpoint",
    "UdpEndpoint",
    "install_uvloop",
    "open_stream_endpoint",
    "open_udp_endpoint",
]
