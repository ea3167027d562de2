"""The kernel steering program (sipfilter/workers/steering.py) on real SO_REUSEPORT groups: wherever it
decides, it picks the socket of the worker routing.py names; where it cannot tell, the kernel's hash picks
one; every datagram reaches exactly one socket, hostile ones included."""

from __future__ import annotations

import contextlib
import random
import select
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfilter.b2bua import ids, wire
from sipfilter.config.model import MAX_WORKERS
from sipfilter.transport.udp import bind_udp_socket
from sipfilter.workers import steering
from sipfilter.workers.routing import owner, worker_mark


class Group:
    """`count` sockets in one SO_REUSEPORT group on loopback (socket i = worker i), steered, and a sender."""

    def __init__(self, count: int) -> None:
        first = bind_udp_socket("127.0.0.1", 0, reuse_port=True)
        self.port = int(first.getsockname()[1])
        others = [bind_udp_socket("127.0.0.1", self.port, reuse_port=True) for _ in range(count - 1)]
        self.sockets = [first, *others]
        self.hostport = f"127.0.0.1:{self.port}"
        steering.attach(first, steering.program(count, wire.via_prefix("udp", self.hostport).encode()))
        self.sender = bind_udp_socket("127.0.0.1", 0)

    def receivers(self, data: bytes) -> list[int]:
        """The index of every socket that got `data`."""
        self.sender.sendto(data, ("127.0.0.1", self.port))
        got: list[int] = []
        while select.select(self.sockets, [], [], 0.05 if not got else 0.005)[0]:
            for index, sock in enumerate(self.sockets):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sock.recv(70000)
                        got.append(index)
        return got

    def close(self) -> None:
        for sock in (*self.sockets, self.sender):
            sock.close()


@contextlib.contextmanager
def group(count: int) -> Iterator[Group]:
    g = Group(count)
    try:
        yield g
    finally:
        g.close()


@contextlib.contextmanager
def as_worker(index: int) -> Iterator[None]:
    """Tags, branches and Contacts made as worker `index` makes them."""
    ids.set_worker_mark(worker_mark(index))
    try:
        yield
    finally:
        ids.set_worker_mark("")


def response_to_us(hostport: str, status: str = "200 OK") -> bytes:
    """A peer's response to a request we sent: our Via first, echoed as we wrote it."""
    via = wire.via_prefix("udp", hostport) + ids.new_branch() + ";rport=5061;received=10.1.2.3"
    return (f"SIP/2.0 {status}\r\n{via}\r\n"
            f"From: <sip:+33162000001@{hostport}>;tag={ids.new_tag()}\r\n"
            "To: <sip:+33612345678@carrier>;tag=c1\r\n"
            "Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()  # fmt: skip


def in_dialog_request(hostport: str, method: str) -> bytes:
    """A peer's request in a dialog we are in: to our Contact, our tag in its To."""
    contact = wire.contact_line("sipfilter", hostport, "udp")
    target = contact[contact.index("<") + 1 : contact.index(">")]
    return (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-peer\r\n"
            f"From: <sip:+33162000001@dialer>;tag=d1\r\nTo: <sip:+33612345678@x>;tag={ids.new_tag()}\r\n"
            f"Call-ID: d@dialer\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n").encode()  # fmt: skip


def new_request(method: str, user: str) -> bytes:
    return (f"{method} sip:{user}@127.0.0.1:5060;user=phone SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-dialer\r\n"
            "From: <sip:+33162000001@dialer>;tag=d1\r\nTo: <sip:+33612345678@x>\r\n"
            f"Call-ID: n@dialer\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode()  # fmt: skip


@pytest.mark.parametrize("count", [2, 3, 4, 12])
def test_responses_and_in_dialog_requests_reach_the_worker_that_made_them(count: int) -> None:
    with group(count) as g:
        for index in range(count):
            with as_worker(index):
                messages = [response_to_us(g.hostport, status) for status in
                            ("100 Trying", "180 Ringing", "200 OK", "486 Busy Here",
                             "603 Decline (the callee says no, in a longer reason phrase)")]  # fmt: skip
                methods = ("ACK", "BYE", "INVITE", "UPDATE", "INFO")
                messages += [in_dialog_request(g.hostport, m) for m in methods]
            for data in messages:
                assert owner(data, count) == index
                assert g.receivers(data) == [index], data[:60]


@pytest.mark.parametrize(("count", "indices"), [(MAX_WORKERS, (0, 9, 10, 99, 100, 101, 199, 255)),
                                                (130, (0, 99, 100, 129))])
def test_marks_of_three_digits_are_read_too(count: int, indices: tuple[int, ...]) -> None:
    # `sip.workers: auto` on a large server: workers 100 and up mark their tags and branches with 3 digits.
    with group(count) as g:
        for index in indices:
            with as_worker(index):
                messages = [response_to_us(g.hostport), in_dialog_request(g.hostport, "BYE")]
            for data in messages:
                assert owner(data, count) == index
                assert g.receivers(data) == [index], data[:60]


@pytest.mark.parametrize("count", [2, 3, 8, 130])
def test_new_requests_reach_the_worker_of_their_callee(count: int) -> None:
    rng = random.Random(count)
    with group(count) as g:
        for _ in range(60):
            national = f"6{rng.randrange(10**8):08d}"
            for user in (f"+33{national}", f"0{national}", f"0033{national}", f"0{national};npdi;rn=+33612"):
                for method in ("INVITE", "CANCEL", "OPTIONS"):
                    data = new_request(method, user)
                    assert g.receivers(data) == [owner(data, count)], data[:60]


def test_what_the_program_cannot_read_is_still_delivered_once() -> None:
    # A tel: URI, a compact or moved Via, an upper-case scheme, a long status line: the kernel's hash picks
    # the socket, and the worker that reads it hands it over (routing.py decides).
    with group(3) as g:
        with as_worker(2):
            ours = response_to_us(g.hostport)
        moved = ours.replace(b"\r\nVia: ", b"\r\nX-First: 1\r\nVia: ", 1)
        compact = ours.replace(b"\r\nVia: ", b"\r\nv: ", 1)
        long_phrase = ours.replace(b"200 OK", b"200 " + b"O" * 100, 1)
        upper = new_request("INVITE", "+33612345678").replace(b"sip:", b"SIP:", 1)
        tel = b"INVITE tel:+33612345678 SIP/2.0\r\n\r\n"
        for data in (moved, compact, long_phrase, upper, tel, b"\r\n\r\n", b"", b"x" * 3000):
            assert len(g.receivers(data)) == 1, data[:60]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=400),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP ", b"BYE sip:sfw", b"INVITE sip:+",
                               b"INVITE sip:06", b"SIP/2.0 ", b"ACK sip:sfw1", b"ACK sip:sfw99",
                               b"ACK sip:sfw100", b"ACK sip:sfw1000."]),
              st.binary(max_size=200)),
))
def test_hostile_datagrams_reach_exactly_one_socket(data: bytes) -> None:
    with group(3) as g:
        assert len(g.receivers(data)) == 1


def test_the_program_is_refused_on_a_socket_outside_any_group() -> None:
    plain = bind_udp_socket("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            steering.attach(plain, steering.program(2, b"Via: SIP/2.0/UDP 127.0.0.1:1;branch="))
    finally:
        plain.close()


def test_a_single_worker_needs_no_program() -> None:
    with pytest.raises(ValueError):
        steering.program(1, b"Via: SIP/2.0/UDP 127.0.0.1:1;branch=")
