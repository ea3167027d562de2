"""Kernel steering of each datagram to the worker that owns it: a classic BPF program on the SO_REUSEPORT
group of a listening address (SO_ATTACH_REUSEPORT_CBPF), so that the kernel queues a datagram on its owner's
socket and no worker reads, parses and hands over what another owns.

Without it the kernel picks a socket by the peer's address and port: a dialer that sends everything from one
IP:port fills one worker, which hands half of it over (docs/performance.md measured the tail that gives).

The program reads only what the B2BUA itself wrote and the peer must echo verbatim, at places it can find
without a loop (classic BPF has none):
- a response: the status line, then our Via as we sent it (`wire.via_prefix`), whose branch carries the
  worker mark `sfw<index>.` (routing.MARK_PREFIX);
- a request whose Request-URI user starts with the mark: an in-dialog request, sent to the Contact we gave;
- any other `sip:` request whose user is digits (after an optional `+`) up to `@` or `;`: the callee's owner,
  `routing.callee_owner` (the number its last digits make, modulo the workers).

Anything else (a peer that reorders or rewrites headers, a tel: URI, a mark longer than MAX_WORKERS allows)
gets a result past the group's end, which makes the kernel fall back to its hash of the peer's address; the
worker that reads it then hands it over (worker.py). The program only saves that work: routing.py alone
decides who owns a datagram, and the tests check both agree wherever the program decides.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass, field

from sipfilter.workers.routing import CALLEE_DIGITS, MARK_DIGITS, MARK_PREFIX

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; socket module does not name it
STATUS_LINE_SCAN = 64  # bytes searched for the status line's end ("SIP/2.0 603 Decline" and longer phrases)
METHOD_SCAN = 16  # the longest method name we look for a space after
USER_DIGITS_SCAN = 32  # digits of a callee's user part (E.164 has 15 at most; 00 prefixes and visual slack)
INDEX_DIGITS = MARK_DIGITS  # of a worker mark's index
FALL_BACK = 0xFFFFFFFF  # past the group's end: the kernel picks by hash

# Classic BPF opcodes (<linux/filter.h>)
_LD, _LDX, _ST, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
_W, _B = 0x00, 0x10
_IMM, _ABS, _IND, _MEM, _LEN = 0x00, 0x20, 0x40, 0x60, 0x80
_ADD, _SUB, _MUL, _AND, _MOD = 0x00, 0x10, 0x20, 0x50, 0x90
_JA, _JEQ, _JGT, _JGE = 0x00, 0x10, 0x20, 0x30
_K, _X, _A = 0x00, 0x08, 0x10
_TAX, _TXA = 0x00, 0x80


@dataclass
class _Program:
    """Instructions with symbolic jump targets, resolved by `assemble`."""

    code: list[tuple[int, str | None, str | None, int | str]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def label(self, name: str) -> None:
        assert name not in self.labels, name
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int = 0) -> None:
        self.code.append((code, None, None, k))

    def jump(self, code: int, k: int, jt: str | None, jf: str | None) -> None:
        """A conditional jump: to `jt` if the test holds, else `jf` (None: the next instruction)."""
        self.code.append((code, jt, jf, k))

    def goto(self, target: str) -> None:
        self.code.append((_JMP | _JA, None, None, target))

    def find(self, byte: int, offsets: range, found: str) -> None:
        """Classic BPF has no loops: test each offset in turn; at the first that holds `byte`, X = that
        offset and on to `found`; if none does, fall back."""
        for i in offsets:
            self.op(_LD | _B | _ABS, i)
            self.jump(_JMP | _JEQ | _K, byte, None, f"not{found}{i}")
            self.op(_LDX | _W | _IMM, i)
            self.goto(found)
            self.label(f"not{found}{i}")
        self.goto("fall")

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.code):
            if isinstance(k, str):  # an unconditional jump: 32-bit offset
                k = self.labels[k] - pc - 1
            t = 0 if jt is None else self.labels[jt] - pc - 1
            f = 0 if jf is None else self.labels[jf] - pc - 1
            if not (0 <= t <= 255 and 0 <= f <= 255 and k >= 0):
                raise ValueError(f"steering program: jump out of range at {pc}")
            out += struct.pack("=HBBI", code, t, f, k)
        if len(self.code) > 4096:  # BPF_MAXINSNS
            raise ValueError("steering program: too long")
        return bytes(out)


def _word(text: bytes) -> int:
    return int.from_bytes(text, "big")


def program(workers: int, via_prefix: bytes) -> bytes:
    """The steering program of one listening address for `workers` sockets (socket i = worker i), whose
    own Via lines start with `via_prefix` ("Via: SIP/2.0/UDP host:port;branch=")."""
    if workers < 2:
        raise ValueError("steering needs at least 2 workers")
    p = _Program()
    p.op(_LD | _W | _LEN)
    p.jump(_JMP | _JGE | _K, 16, None, "short")
    p.op(_LD | _W | _ABS, 0)
    p.jump(_JMP | _JEQ | _K, _word(b"SIP/"), None, "request")
    p.goto("response")  # conditional jumps reach 255 instructions at most
    p.label("short")
    p.op(_RET | _K, FALL_BACK)
    p.label("request")
    p.find(ord(" "), range(1, METHOD_SCAN), "uri")  # a request: X = the space after the method
    p.label("uri")
    p.op(_LD | _W | _IND, 1)
    p.jump(_JMP | _JEQ | _K, _word(b"sip:"), None, "fall_near")
    marker = MARK_PREFIX.encode()
    assert len(marker) == 3
    p.op(_LD | _W | _IND, 5)
    p.op(_ALU | _AND | _K, 0xFFFFFF00)
    p.jump(_JMP | _JEQ | _K, _word(marker + b"\x00"), None, "callee")
    p.op(_MISC | _TXA)  # the mark's index digits start after "sip:sfw"
    p.op(_ALU | _ADD | _K, 8)
    p.op(_MISC | _TAX)
    p.goto("index")
    p.label("fall_near")
    p.op(_RET | _K, FALL_BACK)
    # -- a new request: the number the callee's last digits make
    p.label("callee")
    p.op(_LD | _B | _IND, 5)
    p.jump(_JMP | _JEQ | _K, ord("+"), None, "digits")
    p.op(_MISC | _TXA)
    p.op(_ALU | _ADD | _K, 1)
    p.op(_MISC | _TAX)
    p.label("digits")
    first = 5
    for k in range(first, first + USER_DIGITS_SCAN):
        p.op(_LD | _B | _IND, k)
        p.op(_ALU | _SUB | _K, ord("0"))
        p.jump(_JMP | _JGT | _K, 9, None, f"d{k + 1}")  # not a digit: the user ends here, or is no number
        if k - first < CALLEE_DIGITS:
            p.op(_RET | _K, FALL_BACK)
        else:
            p.jump(_JMP | _JEQ | _K, ord("@") - ord("0"), f"end{k}", None)
            p.jump(_JMP | _JEQ | _K, ord(";") - ord("0"), None, f"fall{k}")
            p.label(f"end{k}")
            p.op(_LD | _W | _IMM, k - CALLEE_DIGITS)
            p.goto("last_digits")
            p.label(f"fall{k}")
            p.op(_RET | _K, FALL_BACK)
        p.label(f"d{k + 1}")
    p.op(_RET | _K, FALL_BACK)
    p.label("last_digits")  # A = offset of the first of the last CALLEE_DIGITS digits from X
    p.op(_ALU | _ADD | _X)
    p.op(_ST, 2)
    p.op(_MISC | _TAX)
    p.op(_LD | _W | _IMM, 0)
    for j in range(CALLEE_DIGITS):  # M[1] = the number they make, digit by digit
        p.op(_ALU | _MUL | _K, 10)
        p.op(_ST, 1)
        p.op(_LD | _B | _IND, j)
        p.op(_ALU | _SUB | _K, ord("0"))
        p.op(_LDX | _W | _MEM, 1)
        p.op(_ALU | _ADD | _X)
        if j < CALLEE_DIGITS - 1:
            p.op(_LDX | _W | _MEM, 2)  # X back to the digits' start (kept in M[2])
    p.goto("modulo")
    # -- a response: X = the end of the status line, then our Via, then the mark's index digits
    p.label("response")
    p.find(ord("\r"), range(12, 12 + STATUS_LINE_SCAN), "via")
    p.label("via")
    expected = b"\r\n" + via_prefix + b"z9hG4bK" + marker
    whole = len(expected) - len(expected) % 4
    for offset in range(0, whole, 4):
        p.op(_LD | _W | _IND, offset)
        p.jump(_JMP | _JEQ | _K, _word(expected[offset : offset + 4]), None, "fall")
    for offset in range(whole, len(expected)):
        p.op(_LD | _B | _IND, offset)
        p.jump(_JMP | _JEQ | _K, expected[offset], None, "fall")
    p.op(_MISC | _TXA)
    p.op(_ALU | _ADD | _K, len(expected))
    p.op(_MISC | _TAX)
    # -- X = the first index digit of a mark: one to INDEX_DIGITS digits, then "."
    p.label("index")
    p.op(_MISC | _TXA)
    p.op(_ST, 3)  # M[3] = where the mark's digits start (X holds each digit while it is added)
    p.op(_LD | _W | _IMM, 0)
    p.op(_ST, 1)  # M[1] = the index read so far
    for digit in range(INDEX_DIGITS):
        p.op(_LD | _B | _IND, digit)
        if digit > 0:
            p.jump(_JMP | _JEQ | _K, ord("."), "index_read", None)
        p.op(_ALU | _SUB | _K, ord("0"))
        p.jump(_JMP | _JGT | _K, 9, "fall", None)
        p.op(_MISC | _TAX)
        p.op(_LD | _W | _MEM, 1)
        p.op(_ALU | _MUL | _K, 10)
        p.op(_ALU | _ADD | _X)
        p.op(_ST, 1)
        p.op(_LDX | _W | _MEM, 3)
    p.op(_LD | _B | _IND, INDEX_DIGITS)
    p.jump(_JMP | _JEQ | _K, ord("."), None, "fall")
    p.label("index_read")
    p.op(_LD | _W | _MEM, 1)
    p.label("modulo")
    p.op(_ALU | _MOD | _K, workers)
    p.op(_RET | _A)
    p.label("fall")
    p.op(_RET | _K, FALL_BACK)
    return p.assemble()


def attach(sock: socket.socket, code: bytes) -> None:
    """Install `code` as the steering program of `sock`'s SO_REUSEPORT group (every socket of the group)."""
    filters = ctypes.create_string_buffer(code, len(code))
    count = len(code) // 8
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native layout
    fprog = struct.pack("HL", count, ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
