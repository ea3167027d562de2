"""Lab helpers shared by `sipfilter demo`, the end-to-end tests and the benchmarks: free loopback ports, the
rule-pack overrides of a lab trunk, and the dialer CSV / OUTCOME lines of the SIPp scenarios in sipp/.

Nothing here is used by `sipfilter run`: a lab trunk's overrides are written into a generated config, never
into a shipped rule pack.
"""

from __future__ import annotations

import random
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

# Rule-pack overrides of a lab trunk, so that what a test or the demo shows does not depend on the clock:
# the D223-9 window open every day all day, no public holidays, a frequency cap nobody reaches, and Bloctel's
# 30-day age rule whatever the date (the pack ends it with the service, on 2026-08-10). Every other rule stays
# as the pack says. A lab setting only: a production trunk keeps the law's values.
LAB_OVERRIDES: dict[str, Any] = {
    "hours": {"weekly": {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}},
    "holidays": {"source": "none"},
    "frequency": {"cap": 1_000_000},
    "lists": {"bloctel": {"max_age_until": None}},
}


class LabError(RuntimeError):
    """A lab process or resource could not be had; the message says which."""


# --------------------------------------------------------------------------------------------- ports


# Lab ports are picked below the kernel's ephemeral range. A port of that range that is free now can be taken
# by any process's outgoing connection or port-0 bind before the lab process binds it (seconds later, after
# provisioning), and the process then fails to start with "Address already in use". Picked at random, from
# the system's entropy: processes that seeded `random` alike still pick different ports.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_LAB_PORT = 10_000
_pick = random.SystemRandom()


def lab_port_range() -> range:
    """Where free_port looks: from 10000 up to the ephemeral range's start (or to the top, when that range
    leaves too little room below it)."""
    try:
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    if ephemeral_low - _LOWEST_LAB_PORT < 1000:
        return range(_LOWEST_LAB_PORT, 65536)
    return range(_LOWEST_LAB_PORT, ephemeral_low)


def free_port() -> int:
    """A port number free for both UDP and TCP on 127.0.0.1 right now (SIP listens on both), outside the
    kernel's ephemeral range."""
    ports = lab_port_range()
    for _ in range(200):
        port = _pick.choice(ports)
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            ):
                tcp.bind((LOOPBACK, port))
                udp.bind((LOOPBACK, port))
        except OSError:
            continue
        return port
    raise LabError(f"no free UDP+TCP port pair on {LOOPBACK} in {ports.start}-{ports.stop - 1}")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (kept distinct even if the kernel hands the same one back twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def port_bound(port: int, *, tcp: bool) -> bool:
    """True when a socket listens on 127.0.0.1:`port` (or any address), read from /proc/net: probing by
    binding would race with the process we wait for."""
    table = Path("/proc/net/tcp" if tcp else "/proc/net/udp")
    want_state = "0A" if tcp else "07"  # TCP_LISTEN; UDP sockets sit in TCP_CLOSE (07)
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        address, _, hex_port = fields[1].partition(":")
        if int(hex_port, 16) == port and fields[3] == want_state and address in ("0100007F", "00000000"):
            return True
    return False


# --------------------------------------------------------------------------------------------- CSV


@dataclass(frozen=True, slots=True)
class CallCase:
    """One line of a dialer CSV: who calls whom, and what sipfilter must do with it."""

    caller: str
    callee: str
    expected: str  # "relay" | "<code>" | "<code> <rule>", e.g. "403 caller-id"


def write_calls_csv(path: Path, cases: Iterable[CallCase]) -> Path:
    """Write a SIPp -inf file (SEQUENTIAL: line N is call N)."""
    lines = ["SEQUENTIAL"] + [f"{c.caller};{c.callee};{c.expected};" for c in cases]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def read_calls_csv(path: Path) -> list[CallCase]:
    cases: list[CallCase] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith(("#", "SEQUENTIAL", "RANDOM", "USER")):
            continue
        caller, callee, expected = [*line.split(";"), "", "", ""][:3]
        cases.append(CallCase(caller, callee, expected))
    return cases


# --------------------------------------------------------------------------------------------- results

_REASON_TEXT = re.compile(r'text\s*=\s*"([^"]*)"', re.IGNORECASE)
_WARNING_TEXT = re.compile(r'^\s*\d{3}\s+\S+\s+"([^"]*)"')
_RULE = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)+")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one call of dialer_uac.xml, from its OUTCOME log line."""

    call_number: int
    caller: str
    callee: str
    expected: str
    code: int
    reason: str  # the Reason header value, "" when absent
    warning: str  # the Warning header value, "" when absent
    verdict: str  # "match" / "MISMATCH" as judged by SIPp on the code alone

    @property
    def rule(self) -> str | None:
        """The rule sipfilter named: a dotted id (e.g. "callee.consent") in Reason's text or Warning."""
        for header, pattern in ((self.reason, _REASON_TEXT), (self.warning, _WARNING_TEXT)):
            text = pattern.search(header)
            found = _RULE.search(text.group(1) if text else header)
            if found:
                return found.group(0)
        return None

    @property
    def warning_text(self) -> str:
        """The human reason of the Warning header (`399 host "text"` → text), "" when absent."""
        text = _WARNING_TEXT.search(self.warning)
        return text.group(1) if text else ""

    def problem(self) -> str | None:
        """None when the outcome is what the CSV expects; else a sentence saying how it differs."""
        want = self.expected.split()
        if not want:
            return f"call {self.call_number}: empty expected column"
        if want[0] == "relay":
            return None if self.code == 200 else f"call {self.call_number} {self.caller}->{self.callee}: " \
                f"expected relay, got {self.code} ({self.reason or self.warning})"
        if str(self.code) != want[0]:
            return (f"call {self.call_number} {self.caller}->{self.callee}: expected {self.expected}, "
                    f"got {self.code} ({self.reason or self.warning})")
        if len(want) > 1:
            rule = self.rule
            # "callee.dnc", "callee.dnc.*", "callee.dnc.bloctel" match callee.dnc.bloctel (whole words)
            family = want[1].removesuffix("*").removesuffix(".")
            if rule is None or not (rule == family or rule.startswith(family + ".")):
                return (f"call {self.call_number} {self.caller}->{self.callee}: expected rule {want[1]}, "
                        f"got {rule!r} (Reason: {self.reason!r}, Warning: {self.warning!r})")
        return None


def parse_outcome(line: str) -> Outcome | None:
    """One OUTCOME|number|caller|callee|expected|code|Reason|Warning|verdict line, or None."""
    if not line.startswith("OUTCOME|"):
        return None
    parts = line.rstrip("\r\n").split("|")
    if len(parts) < 9:
        return None
    number, caller, callee, expected, code = parts[1:6]
    # a '|' inside a header value would shift fields: keep the verdict last and rejoin the middle
    warning, verdict = parts[-2], parts[-1].strip()
    reason = "|".join(parts[6:-2])
    try:
        return Outcome(int(number), caller, callee, expected, int(code or 0), reason.strip(), warning.strip(),
                       verdict)
    except ValueError:
        return None


def parse_outcomes(log_text: str) -> list[Outcome]:
    """Every OUTCOME line of a dialer_uac.xml log, by call number."""
    outcomes = [o for o in map(parse_outcome, log_text.splitlines()) if o is not None]
    return sorted(outcomes, key=lambda o: o.call_number)
