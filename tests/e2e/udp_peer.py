"""A raw UDP SIP peer for end-to-end tests: records every datagram, answers like a minimal carrier or UAC.

Test helper only (real sockets on loopback, a thread per peer); SIP is written and read with plain regexes,
independently of sipfilter's own parser.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Listener:
    """A UDP socket that records every datagram. As a carrier (`answer`) it answers INVITEs `answer_status`
    (486 by default; a 2xx carries a Contact) and other requests 200; as a UAC it ACKs the final error
    answers it gets, so nothing is retransmitted at it."""

    host: str = "127.0.0.1"
    answer: bool = False
    answer_status: int = 486
    answers_probes: bool = False  # a carrier answers sipfilter's OPTIONS health probes (not recorded)
    received: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    sock: socket.socket = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.host, 0))
        self.sock.settimeout(0.05)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> Listener:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.answers_probes and data.startswith(b"OPTIONS "):
                self.sock.sendto(response(data, 200, "OK"), addr)
                continue
            self.received.append((data, addr))
            if self.answer and data.startswith(b"INVITE "):
                status = self.answer_status
                contact = f"<sip:carrier@{self.host}:{self.port}>" if status < 300 else None
                self.sock.sendto(response(data, status, "OK" if status < 300 else "Busy Here", contact), addr)
            elif self.answer and re.match(rb"(BYE|UPDATE|INFO|OPTIONS|REFER|MESSAGE|SUBSCRIBE) ", data):
                self.sock.sendto(response(data, 200, "OK"), addr)
            elif re.match(rb"SIP/2.0 [3-6]\d\d ", data) and re.search(
                rb"(?im)^cseq\s*:\s*\d+\s+INVITE", data
            ):
                self.sock.sendto(ack(data), addr)

    def requests(self, method: str) -> list[bytes]:
        return [d for d, _ in list(self.received) if d.startswith(method.encode() + b" ")]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()


def response(request: bytes, code: int, phrase: str, contact: str | None = None) -> bytes:
    """An answer to `request` (its Via, From, To with a tag, Call-ID, CSeq), with a Contact if given."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    keep = [h for h in head[1:] if re.match(r"(?i)(via|v|from|f|to|t|call-id|i|cseq)\s*:", h)]
    keep = [h + ";tag=carrier" if re.match(r"(?i)(to|t)\s*:", h) and "tag=" not in h else h for h in keep]
    if contact:
        keep.append(f"Contact: {contact}")
    return (f"SIP/2.0 {code} {phrase}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()


def ack(response: bytes) -> bytes:
    """The ACK of a non-2xx final answer (RFC 3261 §17.1.1.3): same Via, From, To (with tag), Call-ID."""
    head = response.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    get = {m.group(1).lower(): m.group(2) for h in head[1:] if (m := re.match(r"([\w-]+)\s*:\s*(.*)", h))}
    to_uri = re.search(r"<([^>]+)>", get.get("to", "")) or re.search(r"(sip:\S+)", get.get("to", ""))
    seq = get.get("cseq", "1").split()[0]
    return (
        f"ACK {to_uri.group(1) if to_uri else 'sip:x'} SIP/2.0\r\nVia: {get.get('via', '')}\r\n"
        f"Max-Forwards: 70\r\nFrom: {get.get('from', '')}\r\nTo: {get.get('to', '')}\r\n"
        f"Call-ID: {get.get('call-id', '')}\r\nCSeq: {seq} ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()
