"""RFC 3261 §17 / RFC 6026 transaction timer names and their base values (T1, T2, T4).

Pure data: durations are handed to the caller as actions; nothing here reads a clock or schedules anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALL_TIMERS",
    "DEFAULT_TIMERS",
    "TIMER_A",
    "TIMER_B",
    "TIMER_D",
    "TIMER_E",
    "TIMER_F",
    "TIMER_G",
    "TIMER_H",
    "TIMER_I",
    "TIMER_J",
    "TIMER_K",
    "TIMER_L",
    "TIMER_M",
    "TIMER_TRYING",
    "TimerConfig",
]

# Names as in RFC 3261 Table 4 and RFC 6026 §8.11; TIMER_TRYING is the §17.2.1 "200 ms" 100 Trying rule.
TIMER_A: Final = "A"  # INVITE request retransmit (unreliable), doubling
TIMER_B: Final = "B"  # INVITE transaction timeout, 64*T1
TIMER_D: Final = "D"  # wait for response retransmissions after non-2xx final (client), >32 s
TIMER_E: Final = "E"  # non-INVITE request retransmit (unreliable), doubling capped at T2
TIMER_F: Final = "F"  # non-INVITE transaction timeout, 64*T1
TIMER_G: Final = "G"  # INVITE non-2xx final response retransmit (unreliable), doubling capped at T2
TIMER_H: Final = "H"  # wait for ACK, 64*T1
TIMER_I: Final = "I"  # absorb ACK retransmissions, T4
TIMER_J: Final = "J"  # absorb non-INVITE request retransmissions, 64*T1
TIMER_K: Final = "K"  # absorb non-INVITE response retransmissions, T4
TIMER_L: Final = "L"  # RFC 6026: INVITE server Accepted state, 64*T1
TIMER_M: Final = "M"  # RFC 6026: INVITE client Accepted state, 64*T1
TIMER_TRYING: Final = "100"  # send 100 Trying if the TU has not answered an INVITE yet

ALL_TIMERS: Final = frozenset(
    {TIMER_A, TIMER_B, TIMER_D, TIMER_E, TIMER_F, TIMER_G, TIMER_H, TIMER_I, TIMER_J, TIMER_K, TIMER_L,
     TIMER_M, TIMER_TRYING}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1 (RTT estimate), T2 (max non-INVITE retransmit interval), T4 (max network lifetime), seconds.

    `timer_d` is Timer D on unreliable transports (RFC 3261: at least 32 s); `trying` is how long the
    INVITE server transaction waits for the TU before sending 100 Trying itself.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0
    trying: float = 0.2

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_d", "trying"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"TimerConfig.{name} must be a positive number of seconds, not {value!r}")
        if self.t2 < self.t1:
            raise ValueError(f"TimerConfig.t2 ({self.t2}) must not be below t1 ({self.t1})")

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L and M."""
        return 64 * self.t1


DEFAULT_TIMERS: Final = TimerConfig()
