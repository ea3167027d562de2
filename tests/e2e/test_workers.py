"""`sip.workers: 2`: a real `sipfilter run` (a supervisor and two worker processes) between SIPp dialers and a
SIPp carrier on loopback.

Every message of a dialog must reach the worker that owns it whatever worker read it (BYE from either side,
CANCEL, re-INVITE), the calls of one dialer IP:port spread over both workers, the frequency cap stays exact
when concurrent calls to one callee arrive from several source ports, a killed worker is restarted and
counted, SIGHUP reaches both, and there is one /metrics and one audit log with one decision line per call.
Each worker keeps the consents of its own callees only: one recorded or withdrawn through the CLI reaches
the worker that decides calls to that callee. The cap and the consents are proven on both store backends
(a real redis-server for the Redis store).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from redis_procs import RedisProcess, redis_missing
from sipfilter_provision import ACCOUNT, Deployment, deploy
from sipp_harness import (
    ALWAYS_OPEN,
    REPO,
    CallCase,
    SippFactory,
    SippRun,
    free_ports,
    metric_sum,
    sipfilter_available,
    sipfilter_cli,
    write_calls_csv,
)

from sipfilter.audit import is_decision
from sipfilter.workers.routing import number_owner

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

WORKERS = 2
CALLEES = [f"+336140{n:05d}" for n in range(40)]  # consented, on no list
CAPPED = "+33614100001"  # consented; the trunk keeps the law's 4 attempts in 30 days
CAPPED_SPELLINGS = (CAPPED, "06.14.10.00.01", "0614100001%20")
LAW_CAP = {key: value for key, value in ALWAYS_OPEN.items() if key != "frequency"}


def start_workers(workdir: Path, *, law_cap: bool = False, store: dict[str, str] | None = None) -> Deployment:
    trunk = {"overrides": LAW_CAP} if law_cap else None
    return deploy(workdir, trunk=trunk, extra_consents=[*CALLEES, CAPPED], workers=WORKERS, store=store)


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str] | None]:
    """Each backend under the workers: the embedded store (the default) and a real redis-server."""
    if request.param == "embedded":
        yield None
        return
    if (missing := redis_missing()) is not None:
        pytest.skip(missing)
    redis = RedisProcess(free_ports(1)[0], tmp_path / "redis").start()
    try:
        yield {"backend": "redis", "redis_url": redis.url}
    finally:
        redis.kill()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = start_workers(tmp_path_factory.mktemp("workers"))
    try:
        yield deployment
    finally:
        deployment.sipfilter.stop()


def workers_of(deployment: Deployment) -> dict[int, int]:
    """pid of each worker process, by index, from the supervisor's children and the metrics they expose."""
    assert deployment.sipfilter.proc is not None
    supervisor = deployment.sipfilter.proc.pid
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {n: int(pid) for n, pid in enumerate(sorted(children, key=int))}


def call(sipp: SippFactory, tmp_path: Path, deployment: Deployment, uac: str, uas: str, cases: list[CallCase],
         *, uas_pause_ms: int = 50, uac_pause_ms: int = 100, rate: float = 20) -> tuple[SippRun, SippRun]:
    carrier = sipp(uas, local_port=deployment.carrier_ports[0], calls=1_000_000, pause_ms=uas_pause_ms,
                   timeout_s=60).start()
    carrier.wait_listening()
    csv_file = write_calls_csv(tmp_path / f"{Path(uac).stem}.csv", cases)
    dialer = sipp(uac, local_port=free_ports(1)[0], remote=deployment.inside, calls=len(cases),
                  csv_file=csv_file, pause_ms=uac_pause_ms, timeout_s=30, rate=rate).start()
    dialer_run = dialer.wait()
    return dialer_run, carrier.finish(grace_s=15)


def per_worker(metrics: str, name: str, **labels: str) -> list[float]:
    return [metric_sum(metrics, name, worker=str(n), **labels) or 0.0 for n in range(WORKERS)]


def decisions(deployment: Deployment) -> list[dict[str, object]]:
    path = deployment.sipfilter.workdir.parent / "audit" / "decisions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # a torn or interleaved line would not parse
    return [r for r in records if is_decision(r)]


def assert_no_dialog_left(deployment: Deployment) -> None:
    left = deployment.sipfilter.wait_no_dialogs(timeout_s=15)
    assert not left, f"{left} dialog(s) left:\n{deployment.sipfilter.log_tail()}"
    assert deployment.sipfilter.alive(), deployment.sipfilter.log_tail()


@pytest.mark.parametrize(("uac", "uas", "uas_pause_ms", "uac_pause_ms"), [
    ("dialer_uac.xml", "carrier_uas.xml", 50, 100),  # BYE from the dialer
    ("dialer_uac_wait_bye.xml", "carrier_uas_bye.xml", 300, 100),  # BYE from the carrier
    ("dialer_uac_cancel.xml", "carrier_uas_ringing.xml", 50, 300),  # CANCEL while ringing
    ("dialer_uac_reinvite.xml", "carrier_uas.xml", 50, 100),  # re-INVITE mid-call
])
def test_every_dialog_message_reaches_its_owner(sipp: SippFactory, tmp_path: Path, shared: Deployment,
                                                uac: str, uas: str, uas_pause_ms: int,
                                                uac_pause_ms: int) -> None:
    before = shared.sipfilter.metrics()
    cases = [CallCase("+33162000001", callee, "relay") for callee in CALLEES[:16]]
    dialer, carrier = call(sipp, tmp_path, shared, uac, uas, cases, uas_pause_ms=uas_pause_ms,
                           uac_pause_ms=uac_pause_ms)
    assert dialer.successful == len(cases) and dialer.failed == 0, dialer.summary()
    assert carrier.invites == len(cases) and carrier.failed == 0, carrier.summary()
    assert_no_dialog_left(shared)
    after = shared.sipfilter.metrics()
    # One dialer IP:port, yet both workers decided calls: the callee, not the source, picks the worker.
    invites = [b - a for a, b in zip(per_worker(before, "sipfilter_invites_received_total"),
                                     per_worker(after, "sipfilter_invites_received_total"), strict=True)]
    assert sum(invites) == len(cases) and all(invites), invites
    # SIPp echoes our Via and sends to our Contact: the kernel put every message on its owner's socket.
    handed = [b - a for a, b in zip(per_worker(before, "sipfilter_worker_handovers_total"),
                                    per_worker(after, "sipfilter_worker_handovers_total"), strict=True)]
    assert sum(handed) == 0, handed
    assert metric_sum(after, "sipfilter_retransmissions_total", direction="received") == 0


@contextlib.contextmanager
def one_core_by_affinity() -> Iterator[None]:
    """This process (and what it starts) on one core of its affinity mask, as `taskset -c 0` would."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


@contextlib.contextmanager
def one_core_by_quota() -> Iterator[None]:
    """This process (and what it starts) in a new cgroup allowed one core's time, as `docker --cpus 1` would:
    cgroup v1's cpu controller or v2's cpu.max. Skips where this process may not make cgroups."""
    name = f"sipfilter-test-{os.getpid()}"
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            group, home = v1 / name, v1
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text("100000")
        elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            home = v2 / Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip().lstrip("/")
            group = v2 / name
            group.mkdir()
            (group / "cpu.max").write_text("100000 100000")
        else:
            pytest.skip("no cgroup cpu controller to make a quota with")
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc}")
    try:
        yield
    finally:
        for pid in [os.getpid(), *map(int, (group / "cgroup.procs").read_text().split())]:
            with contextlib.suppress(ProcessLookupError):  # what has not exited yet leaves it too
                (home / "cgroup.procs").write_text(str(pid))
        group.rmdir()


OneCore = Callable[[], AbstractContextManager[None]]


@pytest.mark.parametrize("one_core", [one_core_by_affinity, one_core_by_quota])
def test_auto_runs_one_worker_per_core_this_process_may_use(sipp: SippFactory, tmp_path: Path,
                                                            one_core: OneCore) -> None:
    # Started on one core's worth of CPU, `auto` runs one process however many cores the host has, and it
    # relays calls. (sipfilter, SIPp and this test all run in that core's worth until the end.)
    with one_core():
        deployment = deploy(tmp_path / "auto", extra_consents=CALLEES, workers="auto")
        try:
            assert deployment.sipfilter.proc is not None
            pid = deployment.sipfilter.proc.pid
            assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == []  # one process
            cases = [CallCase("+33162000001", callee, "relay") for callee in CALLEES[:4]]
            dialer, carrier = call(sipp, tmp_path, deployment, "dialer_uac.xml", "carrier_uas.xml", cases)
            assert dialer.successful == len(cases) and dialer.failed == 0, dialer.summary()
            assert carrier.invites == len(cases), carrier.summary()
        finally:
            deployment.sipfilter.stop()


def test_what_the_kernel_cannot_steer_is_handed_over(shared: Deployment) -> None:
    # A tel: Request-URI, or a CRLF before the start line, is not read by the steering program: the kernel
    # picks a worker by the source port, and the one that parses a request it does not own hands it over.
    # Each probe is answered once.
    host, port = shared.inside.rsplit(":", 1)
    before = per_worker(shared.sipfilter.metrics(), "sipfilter_worker_handovers_total", read="parsed")
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(24)]
    try:
        for n, peer in enumerate(peers):
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(2.0)
            uri = f"sip:061234{n:04d}@h" if n % 2 else f"tel:+3361234{n:04d}"
            request = ("\r\n" if n % 2 else "") + (  # odd: a CRLF the parser skips, the kernel does not
                       f"OPTIONS {uri} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP 127.0.0.1:{peer.getsockname()[1]};branch=z9hG4bK-probe-{n}\r\n"
                       f"From: <sip:+33162000001@dialer>;tag=p{n}\r\nTo: <tel:+3361234{n:04d}>\r\n"
                       f"Call-ID: probe-{n}@dialer\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                       "Content-Length: 0\r\n\r\n")  # fmt: skip
            peer.sendto(request.encode(), (host, int(port)))
        for n, peer in enumerate(peers):
            answer = peer.recv(65536)
            assert answer.startswith(b"SIP/2.0 200"), answer[:80]
            assert f"branch=z9hG4bK-probe-{n}".encode() in answer
            peer.settimeout(0.3)
            with pytest.raises(TimeoutError):
                peer.recv(65536)  # answered once
    finally:
        for peer in peers:
            peer.close()
    after = per_worker(shared.sipfilter.metrics(), "sipfilter_worker_handovers_total", read="parsed")
    assert sum(after) > sum(before), (before, after)


def test_one_audit_line_per_call_and_one_metrics(sipp: SippFactory, tmp_path: Path,
                                                 shared: Deployment) -> None:
    before = len(decisions(shared))
    cases = [CallCase("+33162000001", callee, "relay") for callee in CALLEES[16:40]]
    dialer, _ = call(sipp, tmp_path, shared, "dialer_uac.xml", "carrier_uas.xml", cases, rate=100)
    assert dialer.successful == len(cases), dialer.summary()
    lines = decisions(shared)[before:]
    assert sorted(str(r["to"]) for r in lines) == sorted(CALLEES[16:40])  # exactly one line per call
    metrics = shared.sipfilter.metrics()
    assert metric_sum(metrics, "sipfilter_workers") == WORKERS
    assert all(metric_sum(metrics, "process_cpu_seconds_total", worker=str(n)) for n in range(WORKERS))


def test_sighup_reaches_every_worker(shared: Deployment) -> None:
    before = per_worker(shared.sipfilter.metrics(), "sipfilter_config_reloads_total", result="ok")
    assert shared.sipfilter.proc is not None
    os.kill(shared.sipfilter.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    after = before
    while time.monotonic() < deadline:
        after = per_worker(shared.sipfilter.metrics(), "sipfilter_config_reloads_total", result="ok")
        if all(b > a for a, b in zip(before, after, strict=True)):
            break
        time.sleep(0.1)
    assert all(b == a + 1 for a, b in zip(before, after, strict=True)), (before, after)


def test_cap_exact_across_workers(sipp: SippFactory, tmp_path: Path, store: dict[str, str] | None) -> None:
    # Sixteen concurrent calls to one callee from four dialers (four source ports), each spelling the call
    # its own way, whichever worker reads them: the law's cap lets exactly four through. The escaped space's
    # digits ("%20") must not make another worker the owner of one spelling's calls, nor a To URI that
    # carries `;tag=` with another worker's mark (a URI parameter, not a To tag: the parsed message is a new
    # INVITE to the callee, decided by the callee's owner).
    deployment = start_workers(tmp_path / "cap", law_cap=True, store=store)
    plain = (REPO / "sipp" / "dialer_uac.xml").read_text(encoding="utf-8")
    to_line = "To: <sip:[field1]@[remote_ip]:[remote_port]>"
    assert to_line in plain
    foreign_mark = number_owner(CAPPED, WORKERS) ^ 1
    fooling = tmp_path / "dialer_uac_tag_in_to_uri.xml"
    fooling.write_text(plain.replace(to_line, to_line[:-1] + f";tag=sfw{foreign_mark}.x>"), encoding="utf-8")
    plan = [("dialer_uac.xml", spelling) for spelling in CAPPED_SPELLINGS] + [(str(fooling), CAPPED)]
    try:
        carrier = sipp("carrier_uas.xml", local_port=deployment.carrier_ports[0], calls=1_000_000,
                       pause_ms=50, timeout_s=60).start()
        carrier.wait_listening()
        dialers = []
        for n, (scenario, spelling) in enumerate(plan):
            cases = [CallCase("+33162000001", spelling, "relay")] * 4
            csv_file = write_calls_csv(tmp_path / f"cap{n}.csv", cases)
            dialers.append(sipp(scenario, local_port=free_ports(1)[0], remote=deployment.inside,
                                calls=4, csv_file=csv_file, pause_ms=100, timeout_s=30, rate=50, limit=4))
        for dialer in dialers:
            dialer.start()
        runs = [dialer.wait() for dialer in dialers]
        carrier_run = carrier.finish(grace_s=15)
        outcomes = [o for run in runs for o in run.outcomes]
        assert len(outcomes) == 16, [run.summary() for run in runs]
        assert sorted((o.code, o.rule) for o in outcomes) == [(200, None)] * 4 + [(603, "frequency.cap")] * 12
        assert carrier_run.invites == 4, carrier_run.summary()
        lines = [r for r in decisions(deployment) if r["to"] == CAPPED]
        assert sorted(str(r["action"]) for r in lines) == ["allow"] * 4 + ["reject"] * 12, lines
        # Restarted, each worker reads back the attempts of the callees it owns: the fifth call is refused.
        deployment.sipfilter.stop()
        deployment.sipfilter.start()
        csv_file = write_calls_csv(tmp_path / "cap-after.csv", [CallCase("+33162000001", CAPPED, "relay")])
        after = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=deployment.inside, calls=1,
                     csv_file=csv_file, pause_ms=100, timeout_s=30).start().wait()
        assert [(o.code, o.rule) for o in after.outcomes] == [(603, "frequency.cap")], after.summary()
    finally:
        deployment.sipfilter.stop()


def test_killed_worker_is_restarted_and_reported(sipp: SippFactory, tmp_path: Path) -> None:
    deployment = start_workers(tmp_path / "kill")
    try:
        pids = workers_of(deployment)
        assert len(pids) == WORKERS
        os.kill(pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            metrics = deployment.sipfilter.metrics()
            restarts = metric_sum(metrics, "sipfilter_worker_restarts_total", worker="1")
            workers = workers_of(deployment)
            if restarts == 1 and len(workers) == WORKERS and pids[1] not in workers.values():
                break
            time.sleep(0.1)
        assert restarts == 1, deployment.sipfilter.log_tail()
        assert "killed by SIGKILL" in deployment.sipfilter.log_tail(200)
        time.sleep(1.0)  # the new worker 1 is listening once it exposes its metrics
        cases = [CallCase("+33162000001", callee, "relay") for callee in CALLEES[:8]]
        dialer, _ = call(sipp, tmp_path, deployment, "dialer_uac.xml", "carrier_uas.xml", cases)
        assert dialer.successful == len(cases) and dialer.failed == 0, dialer.summary()
        metrics = deployment.sipfilter.metrics()
        assert all(per_worker(metrics, "sipfilter_invites_received_total")), deployment.sipfilter.log_tail()
        # SIGTERM: every worker drains and stops, then the supervisor exits 0.
        assert deployment.sipfilter.stop() == 0, deployment.sipfilter.log_tail()
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers_of_gone(workers))
    finally:
        deployment.sipfilter.stop()


def workers_of_gone(workers: dict[int, int]) -> list[int]:
    """The worker pids that are still processes other than zombies."""
    alive = []
    for pid in workers.values():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def test_consents_reach_the_worker_that_owns_the_callee(sipp: SippFactory, tmp_path: Path,
                                                        store: dict[str, str] | None) -> None:
    # One callee of each worker, without consent: refused. Consent recorded through the CLI: relayed by each
    # worker (from the copy of its own callees, caught up from the store). Withdrawn: refused again.
    candidates = [f"+336142{n:05d}" for n in range(40)]
    callees = [next(n for n in candidates if number_owner(n, WORKERS) == w) for w in range(WORKERS)]
    shared = start_workers(tmp_path / "consents", store=store)
    try:
        _grant_then_withdraw(sipp, tmp_path, shared, callees)
    finally:
        shared.sipfilter.stop()


def _grant_then_withdraw(sipp: SippFactory, tmp_path: Path, shared: Deployment, callees: list[str]) -> None:
    config = str(shared.sipfilter.config_path)

    def outcomes(step: str) -> list[tuple[int, str | None]]:
        cases = [CallCase("+33162000001", callee, "relay") for callee in callees]
        (tmp_path / step).mkdir()
        dialer, _ = call(sipp, tmp_path / step, shared, "dialer_uac.xml", "carrier_uas.xml", cases, rate=50)
        by_callee = {o.callee: (o.code, o.rule) for o in dialer.outcomes}
        return [by_callee[callee] for callee in callees]

    def settled(expected: tuple[int, str | None], step: str) -> list[tuple[int, str | None]]:
        deadline = time.monotonic() + 10  # the workers poll the change log every second
        found = outcomes(step)
        n = 0
        while found != [expected] * WORKERS and time.monotonic() < deadline:
            time.sleep(0.5)
            n += 1
            found = outcomes(f"{step}-{n}")
        return found

    assert outcomes("before") == [(603, "callee.consent")] * WORKERS
    for callee in callees:
        sipfilter_cli(["consent", "add", "--config", config, "--account", ACCOUNT, "--proof", "e2e", callee])
    assert settled((200, None), "granted") == [(200, None)] * WORKERS
    for callee in callees:
        sipfilter_cli(["consent", "revoke", "--config", config, "--account", ACCOUNT, callee])
    assert settled((603, "callee.consent"), "withdrawn") == [(603, "callee.consent")] * WORKERS
