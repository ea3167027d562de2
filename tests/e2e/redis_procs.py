"""Real Redis processes on loopback for tests/e2e and bench/: a server (primary or replica), Sentinels that
fail it over, a Cluster of primaries. Free ports picked at run time; every start is paired with a kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sipp_harness import LOOPBACK, HarnessError, free_ports

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
SERVICE = "sipfilter"  # the Sentinel service name the tests monitor


def redis_missing() -> str | None:
    """None when redis-server and redis-cli are installed; else why not (for pytest.skip)."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        return "redis-server/redis-cli are not installed (Debian package redis-server; scripts/setup --test)"
    return None


@dataclass
class RedisProcess:
    """One `redis-server` (a data node, or a Sentinel with `sentinel=True`) configured by a file it may
    rewrite (Sentinel and Cluster do). `start()` waits for PING; `kill()` is SIGKILL: a crash, not a stop."""

    port: int
    workdir: Path
    settings: Sequence[str] = ()  # more config lines, e.g. "replicaof 127.0.0.1 6379"
    sentinel: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, ready_timeout_s: float = 10.0) -> RedisProcess:
        if REDIS_SERVER is None:
            raise HarnessError("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        if not conf.exists():  # a restart keeps what Sentinel/Cluster wrote into it
            lines = [f"port {self.port}", f"bind {LOOPBACK}", "protected-mode no", f"dir {self.workdir}",
                     f"logfile {self.workdir / 'redis.log'}"]
            if not self.sentinel:
                lines += ['save ""', "appendonly yes", "appendfsync everysec"]
            conf.write_text("\n".join([*lines, *self.settings]) + "\n")
        cmd = [REDIS_SERVER, str(conf)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"redis-server on {self.port} exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.kill()
        raise HarnessError(f"redis-server on {self.port} not ready in {ready_timeout_s}s:\n{self.log_tail()}")

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until(what: str, check: object, timeout_s: float, interval_s: float = 0.05) -> None:
    """Poll `check()` (a callable returning truthy) until it holds; HarnessError naming `what` otherwise."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (redis.RedisError, OSError) as exc:
            last = exc
        if last:
            return
        time.sleep(interval_s)
    raise HarnessError(f"{what}: not within {timeout_s}s (last: {last!r})")


@dataclass
class SentinelGroup:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum: a majority) that fail it over after
    `down_after_ms` of silence. `url` is what sipfilter's store.redis_url is set to."""

    workdir: Path
    replicas: int = 1
    sentinels: int = 3
    down_after_ms: int = 500
    failover_timeout_ms: int = 5000
    primary: RedisProcess = field(init=False)
    nodes: list[RedisProcess] = field(default_factory=list, init=False)  # the primary first, then replicas
    watchers: list[RedisProcess] = field(default_factory=list, init=False)

    def start(self) -> SentinelGroup:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SentinelGroup:
        ports = free_ports(1 + self.replicas + self.sentinels)
        # Fast replica reconnection, full syncs without waiting for more replicas: the tests measure a
        # failover, not Redis's default delays.
        node = ["repl-ping-replica-period 1", "repl-timeout 5", "repl-diskless-sync-delay 0"]
        self.primary = RedisProcess(ports[0], self.workdir / "node-0", node).start()
        self.nodes = [self.primary]
        for i, port in enumerate(ports[1 : 1 + self.replicas], 1):
            settings = [*node, f"replicaof {LOOPBACK} {ports[0]}"]
            self.nodes.append(RedisProcess(port, self.workdir / f"node-{i}", settings).start())
        wait_until("replicas in sync", lambda: all(n.client().info("replication").get(
            "master_link_status") == "up" for n in self.nodes[1:]), 15)
        quorum = self.sentinels // 2 + 1
        for i, port in enumerate(ports[1 + self.replicas :]):
            self.watchers.append(RedisProcess(port, self.workdir / f"sentinel-{i}", [
                f"sentinel monitor {SERVICE} {LOOPBACK} {ports[0]} {quorum}",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {SERVICE} 1"], sentinel=True).start())
        # Every Sentinel knows the replica and the other Sentinels (hello messages every 2 s) before any test
        # kills the primary: otherwise the first failover can stall on a Sentinel that sees no majority.
        for watcher in self.watchers:
            wait_until("sentinels discover each other", lambda w=watcher: self._sees_all(w), 20)
        return self

    def _sees_all(self, watcher: RedisProcess) -> bool:
        client = watcher.client()
        try:
            master = client.sentinel_master(SERVICE)
            return (int(master["num-other-sentinels"]) == self.sentinels - 1
                    and int(master["num-slaves"]) == self.replicas)
        finally:
            client.close()

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{w.port}" for w in self.watchers)
        return f"redis://{hosts}/0?sentinel={SERVICE}"

    def master_port(self) -> int:
        """The primary's port as the Sentinels answer it now (the first Sentinel that answers)."""
        for watcher in self.watchers:
            if not watcher.alive():
                continue
            client = watcher.client()
            try:
                _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
            except (redis.RedisError, OSError, TypeError):
                continue
            finally:
                client.close()
        raise HarnessError("no Sentinel answers")

    def settled(self) -> bool:
        """Every live Sentinel names the same primary, a live node that is a primary, and every other live
        node replicates it, in sync."""
        ports = set()
        for watcher in self.watchers:
            if watcher.alive():
                ports.add(self.master_port_of(watcher))
        if len(ports) != 1:
            return False
        (port,) = ports
        if port not in {n.port for n in self.nodes}:
            return False
        for node in self.nodes:
            if not node.alive():
                continue
            client = node.client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            if node.port == port:
                if info.get("role") != "master":
                    return False
            elif info.get("role") != "slave" or info.get("master_port") != port or (
                    info.get("master_link_status") != "up"):
                return False
        return self.node(port).alive() and self.online_replicas(port) == sum(
            1 for n in self.nodes if n.alive() and n.port != port)

    def describe(self) -> str:
        """Who the Sentinels name and what each node says it is, for assertion messages."""
        lines = [f"sentinel {w.port}: primary {self.master_port_of(w)}" for w in self.watchers if w.alive()]
        for node in self.nodes:
            if not node.alive():
                lines.append(f"node {node.port}: dead")
                continue
            client = node.client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            lines.append(f"node {node.port}: {info.get('role')} of {info.get('master_port', '-')}, "
                         f"{info.get('connected_slaves', 0)} replica(s)")
        return "\n".join(lines)

    def master_port_of(self, watcher: RedisProcess) -> int | None:
        client = watcher.client()
        try:
            found = client.sentinel_get_master_addr_by_name(SERVICE)
            return int(found[1]) if found else None
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def online_replicas(self, port: int) -> int:
        """Replicas the node on `port` sees in sync (INFO replication)."""
        client = self.node(port).client()
        try:
            info = client.info("replication")
        finally:
            client.close()
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                   and v.get("state") == "online")

    def stop(self) -> None:
        for proc in [*self.watchers, *self.nodes]:
            proc.kill()


@dataclass
class RedisCluster:
    """`primaries` redis-server processes in cluster mode, slots split by `redis-cli --cluster create`."""

    workdir: Path
    primaries: int = 3
    nodes: list[RedisProcess] = field(default_factory=list, init=False)

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisCluster:
        if REDIS_CLI is None:
            raise HarnessError("redis-cli is not installed")
        for port in _cluster_ports(self.primaries):
            settings = ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000"]
            self.nodes.append(RedisProcess(port, self.workdir / f"node-{port}", settings).start())
        subprocess.run([REDIS_CLI, "--cluster", "create", *[f"{LOOPBACK}:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)  # fmt: skip
        wait_until("cluster state ok", lambda: all(b"cluster_state:ok" in n.client().execute_command(
            "CLUSTER", "INFO") for n in self.nodes), 30)
        return self

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.nodes[0].port}/0?cluster=1"

    def node_of(self, key: str) -> RedisProcess:
        """The primary that serves `key`'s slot."""
        client = self.nodes[0].client()
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        finally:
            client.close()
        raise HarnessError(f"no node serves {key!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_ports(1)[0]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports
