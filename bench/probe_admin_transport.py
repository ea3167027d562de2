#!/usr/bin/env python3
"""Attack probe of a running `sipfilter run`: the admin port, TCP connections, floods from inside the ACL,
reload, shutdown and RFC 3261 edges, played as a hostile host on the machine or inside a trunk's ACL would.

Prints one Markdown row per attack (attack | expected | observed | ok) and a verdict; asserts nothing. The
table in docs/security.md comes from this script. Everything runs on loopback, on free ports:
the dialer is 127.0.0.2, a second host of the same trunk 127.0.0.3, a stranger 127.0.0.1.

    .venv/bin/python bench/probe_admin_transport.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from sipfilter_provision import provision  # noqa: E402
from sipp_harness import (  # noqa: E402
    Sipfilter,
    SipfilterPorts,
    free_ports,
    metric_sum,
    sipfilter_config,
    write_config,
)

DIALER, SECOND, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.1"
CALLER = "+33162000001"
CONSENTED = "+33612000001"  # provisioned with consent; hours and frequency opened by ALWAYS_OPEN
ON_BLOCTEL = "+33612000100"
FORKED = "+33612000002"  # the carrier stub answers this callee from two forks


class Carrier(threading.Thread):
    """A UDP carrier stub: 200 to every INVITE (twice, from two forks, for FORKED), 200 to BYE and OPTIONS;
    keeps every request it received."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.received.append(data)
            method = data.split(b" ", 1)[0]
            if method == b"INVITE":
                tags = ["fork-a", "fork-b"] if FORKED.encode() in data.split(b"\r\n", 1)[0] else ["c1"]
                for tag in tags:
                    self.sock.sendto(reply(data, "200 OK", tag, f"sip:gw-{tag}@127.0.0.1:{self.port}"), addr)
            elif method in (b"BYE", b"OPTIONS", b"CANCEL"):
                self.sock.sendto(reply(data, "200 OK", ""), addr)

    def requests(self, method: str) -> list[bytes]:
        return [r for r in self.received if r.startswith(method.encode() + b" ")]


def reply(request: bytes, status: str, to_tag: str, contact: str = "") -> bytes:
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    if to_tag:
        keep = [h + f";tag={to_tag}" if h.lower().startswith("to:") and "tag=" not in h else h for h in keep]
    if contact:
        keep.append(f"Contact: <{contact}>")
    return (f"SIP/2.0 {status}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()


def invite(
    src: tuple[str, int], inside: int, callee: str, call_id: str, transport: str = "UDP", body: bytes = b""
) -> bytes:
    head = (
        f"INVITE sip:{callee}@127.0.0.1:{inside} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {src[0]}:{src[1]};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{CALLER}@{src[0]}>;tag=d1\r\nTo: <sip:{callee}@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:dialer@{src[0]}:{src[1]}>\r\n"
        f"P-Asserted-Identity: <sip:{CALLER}@{src[0]}>\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Probe:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.carrier = Carrier()
        self.carrier.start()
        ports = SipfilterPorts(*free_ports(3))
        config = sipfilter_config(
            workdir,
            ports,
            [self.carrier.port],
            trunk={"match": {"sources": ["127.0.0.2/31"]}},
            sip={"drain_timeout_s": 30},
        )
        self.token_file = workdir / "secrets" / "admin.token"
        config["admin"] = {"host": "127.0.0.1", "port": ports.admin, "token_file": str(self.token_file)}
        config["limits"] = {
            "source_rate": 20,
            "source_burst": 40,
            "max_dialogs": 2000,
            "unknown_source": "drop",
            "trunks": {"dialer": {"max_dialogs": 500, "max_cps": 30, "cps_burst": 60}},
            "connections": {"max_total": 200, "max_per_source": 64, "idle_timeout_s": 3},
        }
        self.config = config
        self.path = write_config(workdir / "sipfilter.yaml", config)
        provision(self.path, workdir)
        self.proc = Sipfilter(self.path, ports, workdir / "run").start()
        self.ports = ports
        self.rows: list[tuple[str, str, str, bool]] = []

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def http(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | None = None,
        ctype: str | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> tuple[int, str]:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if ctype:
            headers["Content-Type"] = ctype
        if host:
            headers["Host"] = host
        req = urllib.request.Request(
            f"http://127.0.0.1:{port or self.ports.admin}{path}", data=body, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")

    def row(self, attack: str, expected: str, observed: str, ok: bool) -> None:
        self.rows.append((attack, expected, observed, ok))
        print(f"  {'ok  ' if ok else 'FAIL'} {attack}: {observed}", file=sys.stderr)

    def udp(self, src: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.settimeout(0.3)
        return s

    def call(self, callee: str, src: str = DIALER, body: bytes = b"") -> str:
        """One INVITE over UDP; the dialer's final status (or 'none')."""
        s = self.udp(src)
        call_id = f"probe-{uuid.uuid4().hex[:10]}"
        try:
            s.sendto(
                invite(s.getsockname(), self.ports.inside, callee, call_id, body=body),
                ("127.0.0.1", self.ports.inside),
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    data = s.recv(65535)
                except TimeoutError:
                    continue
                if (
                    call_id.encode() in data
                    and data.startswith(b"SIP/2.0 ")
                    and not data.startswith(b"SIP/2.0 1")
                ):
                    return data.split(b" ", 2)[1].decode()
            return "none"
        finally:
            s.close()

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.http("GET", "/metrics")[1], name, **labels) or 0.0

    # -- admin port ---------------------------------------------------------------------------------------

    def admin(self) -> None:
        api = "/api/lists/bloctel"
        attempts = [
            ("PUT", f"{api}?mode=remove", b"0612000100\n", "text/csv"),
            ("GET", f"{api}/numbers", None, None),
            ("DELETE", api, None, None),
            (
                "POST",
                "/api/consents",
                json.dumps({"account": "e2e-account", "number": "0612000050", "proof": "x"}).encode(),
                "application/json",
            ),
        ]
        got = [self.http(m, p, body=b, ctype=c)[0] for m, p, b, c in attempts]
        bloctel = self.call(ON_BLOCTEL)
        self.row(
            "Admin API without the token, from loopback: remove a Bloctel number, dump the list, delete it, "
            "add a consent",
            "401 each; the Bloctel number still refused",
            f"{got}; call to it -> {bloctel}",
            set(got) == {401} and bloctel == "603",
        )
        wrong = self.http("GET", "/api/lists", token="x" * 43)[0]
        self.row("Wrong bearer token", "401", str(wrong), wrong == 401)
        body = b'{"account": "e2e-account", "number": "0612000050", "proof": "csrf"}'
        csrf = [
            self.http("POST", "/api/consents", token=self.token, body=body, ctype=c)[0]
            for c in ("text/plain", "application/x-www-form-urlencoded")
        ]
        fetch = self.http("POST", "/api/refusals?account=e2e-account&number=0612000001", token=self.token)[0]
        self.row(
            "Cross-site POST a browser can send without preflight (text/plain, form, no body), even with the "
            "token",
            "415",
            f"{[*csrf, fetch]}",
            set([*csrf, fetch]) == {415},
        )
        rebound = [
            self.http("GET", p, token=self.token, host="attacker.example:9090")[0]
            for p in ("/api/lists", "/metrics")
        ]
        self.row("DNS rebinding: Host attacker.example", "421", str(rebound), set(rebound) == {421})
        open_paths = [self.http("GET", p)[0] for p in ("/metrics", "/healthz", "/readyz")]
        self.row(
            "Metrics and probes on a loopback bind, no token",
            "200",
            str(open_paths),
            set(open_paths) == {200},
        )

    def admin_input(self) -> None:
        t, js = self.token, "application/json"
        cases = [
            ("POST", "/api/refusals", b'{"account":"e2e-account","number":"0612000001","at":NaN}', js),
            ("GET", "/api/refusals?account=e2e-account&number=0612000001&window_s=abc", None, None),
            ("GET", "/api/lists/bad%00name", None, None),
            ("PUT", "/api/lists/x?source_name=a%00b", b"0612000001\n", "text/csv"),
            ("PUT", "/api/lists/bloctel?max_shrink=nan", b"0612000001\n", "text/csv"),
            ("POST", "/api/refusals", b"[" * 100_000 + b"]" * 100_000, js),
            (
                "POST",
                "/api/consents",
                b'{"account":"e2e-account","number":"0612000001","proof":"a\\u0000b"}',
                js,
            ),
        ]
        got = [self.http(m, p, token=t, body=b, ctype=c)[0] for m, p, b, c in cases]
        ready = [self.http("GET", "/readyz")[0] for _ in range(3)]
        self.row(
            "Hostile admin input with the token: at=NaN, window_s=abc, NUL in a list name or source name, "
            "max_shrink=nan, 100k-deep JSON, NUL in a proof",
            "400 each; /readyz stays 200",
            f"{got}; readyz {ready}",
            set(got) == {400} and set(ready) == {200},
        )

    # -- TCP ----------------------------------------------------------------------------------------------

    def tcp_strangers(self) -> None:
        before = self.metric("sipfilter_connections_closed_total", reason="unknown-source")
        socks = []
        for _ in range(1100):
            s = socket.socket()
            s.setblocking(False)
            s.bind((STRANGER, 0))
            try:
                s.connect(("127.0.0.1", self.ports.inside))
            except BlockingIOError:
                pass
            socks.append(s)
            if len(socks) % 100 == 0:
                time.sleep(0.2)
        time.sleep(2)
        refused = self.metric("sipfilter_connections_closed_total", reason="unknown-source") - before
        admin = self.http("GET", "/healthz")[0]
        os.kill(self.proc.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        time.sleep(1)
        reloaded = "config reloaded" in self.proc.log_tail(5)
        call = self.tcp_call(DIALER)
        for s in socks:
            s.close()
        self.row(
            "1,100 TCP connections from a source outside the ACL",
            "each reset at accept; admin, SIGHUP and TCP calls keep working",
            f"{int(refused)} reset; /healthz {admin}; reload {reloaded}; dialer TCP INVITE -> {call}",
            refused >= 1000 and admin == 200 and reloaded and call.startswith("1"),
        )

    def tcp_call(self, src: str) -> str:
        """An INVITE over TCP: the first status line answered (100 Trying is enough: it was admitted)."""
        s = socket.create_connection(("127.0.0.1", self.ports.inside), timeout=3, source_address=(src, 0))
        try:
            s.sendall(
                invite(s.getsockname(), self.ports.inside, CONSENTED, f"tcp-{uuid.uuid4().hex[:8]}", "TCP")
            )
            return s.recv(65535).split(b" ", 2)[1].decode()
        except OSError as exc:
            return type(exc).__name__
        finally:
            s.close()

    def tcp_known_flood(self) -> None:
        socks, reset = [], 0
        for _ in range(300):
            try:
                socks.append(
                    socket.create_connection(
                        ("127.0.0.1", self.ports.inside), timeout=2, source_address=(SECOND, 0)
                    )
                )
            except OSError:
                reset += 1
        time.sleep(1)
        held = self.metric("sipfilter_connections_closed_total", reason="per-source")
        call = self.tcp_call(DIALER)
        admin = self.http("GET", "/healthz")[0]
        for s in socks:
            s.close()
        self.row(
            "300 TCP connections from a host inside the ACL (max_per_source 64)",
            "64 kept, the rest reset; the dialer's TCP calls and the admin port unaffected",
            f"{int(held)} reset; dialer TCP INVITE -> {call}; /healthz {admin}",
            held >= 236 and call.startswith("1") and admin == 200,
        )

    def tcp_idle_and_framing(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.ports.inside), timeout=10, source_address=(DIALER, 0))
        s.sendall(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:1;branch=z9hG4bKslow\r\n")
        started = time.monotonic()
        try:
            closed = s.recv(100) == b""
        except OSError:
            closed = True
        waited = time.monotonic() - started
        s.close()
        self.row(
            "Slowloris: half a request, then silence (idle_timeout_s 3)",
            "closed after ~3 s",
            f"closed {closed} after {waited:.1f} s",
            closed and 2.5 <= waited < 9,
        )
        answers = []
        for extra, length in ((b"", b"1000000"), (b"X-Pad: " + b"a" * 70_000 + b"\r\n", b"0"), (b"", b"-1")):
            s = socket.create_connection(
                ("127.0.0.1", self.ports.inside), timeout=5, source_address=(DIALER, 0)
            )
            s.sendall(
                b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:1;branch=z9hG4bKbig\r\n"
                b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: big\r\nCSeq: 1 OPTIONS\r\n"
                + extra
                + b"Content-Length: "
                + length
                + b"\r\n\r\n"
            )
            data = b""
            try:
                while chunk := s.recv(65535):
                    data += chunk
            except OSError:
                pass
            answers.append(data.split(b" ", 2)[1].decode() if data.startswith(b"SIP/2.0 ") else "nothing")
            s.close()
        self.row(
            "TCP: 1 MB Content-Length, 70 kB header, negative Content-Length",
            "513, 513, 400, then close",
            str(answers),
            answers == ["513", "513", "400"],
        )

    # -- limits -------------------------------------------------------------------------------------------

    def flood_fairness(self) -> None:
        stop = threading.Event()

        def flood() -> None:
            s = self.udp(SECOND)
            n = 0
            while not stop.is_set():
                s.sendto(
                    invite(s.getsockname(), self.ports.inside, CONSENTED, f"flood-{n}"),
                    ("127.0.0.1", self.ports.inside),
                )
                n += 1
                time.sleep(0.004)
            s.close()

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        time.sleep(1)
        results = []
        for _ in range(20):
            results.append(self.call(CONSENTED))
            time.sleep(0.2)
        stop.set()
        thread.join()
        refused = sum(r == "503" for r in results)
        self.row(
            "A second host inside the ACL floods INVITEs (~250/s) while the dialer places 20 calls",
            "0 of the dialer's calls refused 503",
            f"{refused} of 20 refused 503 ({sorted(set(results))})",
            refused == 0,
        )

    def unknown_source_metric(self) -> None:
        before = self.metric("sipfilter_overload_drops_total", reason="unknown-source")
        s = self.udp(STRANGER)
        for i in range(10):
            s.sendto(
                invite(s.getsockname(), self.ports.inside, CONSENTED, f"stranger-{i}"),
                ("127.0.0.1", self.ports.inside),
            )
        try:
            answered = s.recv(65535)[:20].decode()
        except TimeoutError:
            answered = "nothing"
        s.close()
        time.sleep(0.3)
        counted = self.metric("sipfilter_overload_drops_total", reason="unknown-source") - before
        self.row(
            "10 UDP INVITEs from outside the ACL",
            "no answer; overload_drops{unknown-source} +10",
            f"answer: {answered}; counted +{int(counted)}",
            answered == "nothing" and counted == 10,
        )

    # -- RFC 3261 edges ------------------------------------------------------------------------------------

    def forked_2xx(self) -> None:
        self.carrier.received.clear()
        status = self.call(FORKED)
        time.sleep(1)
        acks = [r for r in self.carrier.requests("ACK") if b"tag=fork-b" in r]
        byes = [r for r in self.carrier.requests("BYE") if b"tag=fork-b" in r]
        self.row(
            "The carrier answers one INVITE 200 from two forks",
            "the call goes on with the first; the second dialog is ACKed and BYEd",
            f"dialer {status}; fork-b ACK {len(acks)}, BYE {len(byes)}",
            status == "200" and len(acks) >= 1 and len(byes) == 1,
        )

    def large_invite(self) -> None:
        before = self.metric("sipfilter_large_requests_total", transport="udp")
        sdp = b"v=0\r\n" + b"".join(b"a=fmtp:%d mode-set=0,1,2,3,4,5,6,7\r\n" % i for i in range(60))
        status = self.call(CONSENTED, body=sdp)
        counted = self.metric("sipfilter_large_requests_total", transport="udp") - before
        self.row(
            "A 2.6 kB INVITE to a UDP-only carrier",
            "relayed over UDP (no TCP path) and counted",
            f"dialer {status}; large_requests{{udp}} +{int(counted)}",
            status == "200" and counted == 1,
        )

    def reload_token(self) -> None:
        old = self.token
        new = "rotated-" + uuid.uuid4().hex + uuid.uuid4().hex
        self.token_file.write_text(new + "\n")
        os.kill(self.proc.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        time.sleep(1)
        got = (self.http("GET", "/api/lists", token=old)[0], self.http("GET", "/api/lists", token=new)[0])
        self.row(
            "Token rotated in admin.token_file, then SIGHUP",
            "old token 401 at once, new 200",
            str(got),
            got == (401, 200),
        )

    def second_sigterm(self) -> None:
        self.carrier.received.clear()
        s = self.udp(DIALER)
        s.sendto(
            invite(s.getsockname(), self.ports.inside, CONSENTED, "kept-up"), ("127.0.0.1", self.ports.inside)
        )
        time.sleep(0.5)
        pid = self.proc.proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        got = []
        while time.monotonic() < deadline:
            try:
                got.append(s.recv(65535))
            except TimeoutError:
                if self.proc.proc.poll() is not None:  # type: ignore[union-attr]
                    break
        s.close()
        carrier_bye = len(self.carrier.requests("BYE"))
        dialer_bye = sum(d.startswith(b"BYE ") for d in got)
        code = self.proc.proc.wait(timeout=10)  # type: ignore[union-attr]
        self.row(
            "SIGTERM, then SIGTERM again with a call up",
            "BYE to the carrier and to the dialer, then exit 0",
            f"carrier BYE {carrier_bye}, dialer BYE {dialer_bye}, exit {code}",
            carrier_bye >= 1 and dialer_bye >= 1 and code == 0,
        )

    def close(self) -> None:
        self.proc.stop()
        self.carrier.stop = True


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sipfilter-probe-") as tmp:
        probe = Probe(Path(tmp))
        steps: list[Callable[[], None]] = [
            probe.admin,
            probe.admin_input,
            probe.unknown_source_metric,
            probe.tcp_strangers,
            probe.tcp_known_flood,
            probe.tcp_idle_and_framing,
            probe.flood_fairness,
            probe.forked_2xx,
            probe.large_invite,
            probe.reload_token,
            probe.second_sigterm,
        ]
        started = time.monotonic()
        try:
            for step in steps:
                try:
                    step()
                except Exception as exc:  # a probe step that breaks is a finding too
                    probe.row(step.__name__, "runs", f"probe error: {exc!r}", False)
        finally:
            probe.close()
        print("| Attack | Expected | Observed | |")
        print("|---|---|---|---|")
        for attack, expected, observed, ok in probe.rows:
            print(f"| {attack} | {expected} | {observed} | {'ok' if ok else '**FAIL**'} |")
        failed = sum(not ok for *_, ok in probe.rows)
        took = time.monotonic() - started
        print(f"\n{len(probe.rows) - failed} of {len(probe.rows)} as expected, in {took:.0f} s")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
