"""The identifiers the B2BUA makes up: tags, Via branches and Call-IDs, from one pool of random bytes.

Every one of them is generated here and nowhere else, so what they encode is decided in one place: randomness,
and with several worker processes the worker's mark at the start of every tag and branch (see
sipfilter/workers/routing.py), so that a dialog's requests and the responses find their way back to it.
"""

from __future__ import annotations

import os


class _RandomPool:
    """Bytes of os.urandom taken a page at a time: tags, branches and Call-IDs stay unpredictable (RFC 3261
    §19.3 asks for cryptographic randomness) without a getrandom() system call for each one."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def hex(self, nbytes: int) -> str:
        pos = self._pos
        end = pos + nbytes
        if end > len(self._buf):
            self._buf = os.urandom(4096)
            pos, end = 0, nbytes
        self._pos = end
        return self._buf[pos:end].hex()


_RANDOM = _RandomPool()  # process-wide by nature: bytes are never handed out twice
_mark = ""


def set_worker_mark(mark: str) -> None:
    global _mark
    _mark = mark


def new_tag() -> str:
    return _mark + _RANDOM.hex(6)


def new_branch() -> str:
    return "z9hG4bK" + _mark + _RANDOM.hex(8)


def local_user(hostname: str) -> str:
    """The user part of our Contact: with several workers, their mark first, so that the kernel can steer a
    peer's in-dialog requests to the worker from their Request-URI (sipfilter/workers/steering.py)."""
    return _mark + hostname


def new_call_id(host: str) -> str:
    return f"{_RANDOM.hex(10)}@{host}"
