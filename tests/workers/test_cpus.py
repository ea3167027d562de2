"""`sip.workers: auto` counts the cores this process may use (sipfilter/config/cpus.py): its affinity mask
and its cgroups' CPU quota, read from files laid out as cgroup v2, v1 and containers show them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipfilter.config.cpus import cgroup_cpu_quota, usable_cpus


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 64-core host: every core in the affinity mask."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    return tmp_path


def test_v2_quota_of_the_process_cgroup(host: Path) -> None:
    write(host / "proc", "0::/system.slice/sipfilter.service\n")
    write(host / "cg/system.slice/sipfilter.service/cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(host / "proc", host / "cg") == 1.5
    assert usable_cpus(host / "proc", host / "cg") == 2  # 1.5 cores: 2 workers


def test_v2_tightest_quota_of_a_parent(host: Path) -> None:
    write(host / "proc", "0::/kubepods/pod1/ctr\n")
    write(host / "cg/kubepods/pod1/ctr/cpu.max", "max 100000\n")
    write(host / "cg/kubepods/pod1/cpu.max", "400000 100000\n")
    write(host / "cg/kubepods/cpu.max", "3200000 100000\n")
    assert usable_cpus(host / "proc", host / "cg") == 4


def test_v2_container_sees_its_cgroup_as_the_root(host: Path) -> None:
    # Without a cgroup namespace /proc/self/cgroup names the host's path, absent inside the container.
    write(host / "proc", "0::/docker/0123abcd\n")
    write(host / "cg/cpu.max", "200000 100000\n")
    assert usable_cpus(host / "proc", host / "cg") == 2


def test_v2_no_quota(host: Path) -> None:
    write(host / "proc", "0::/user.slice\n")
    write(host / "cg/user.slice/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(host / "proc", host / "cg") is None
    assert usable_cpus(host / "proc", host / "cg") == 64


def test_v1_quota(host: Path) -> None:
    write(host / "proc", "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n")
    write(host / "cg/cpu,cpuacct/docker/x/cpu.cfs_quota_us", "50000\n")
    write(host / "cg/cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(host / "proc", host / "cg") == 0.5
    assert usable_cpus(host / "proc", host / "cg") == 1


def test_v1_unlimited_and_hybrid_hierarchies(host: Path) -> None:
    write(host / "proc", "1:cpu:/\n0::/\n")
    write(host / "cg/cpu/cpu.cfs_quota_us", "-1\n")
    write(host / "cg/cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(host / "proc", host / "cg") is None


def test_the_affinity_mask_limits_too(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5})
    write(host / "proc", "0::/\n")
    write(host / "cg/cpu.max", "800000 100000\n")
    assert usable_cpus(host / "proc", host / "cg") == 3


@pytest.mark.parametrize("content", ["", "garbage", "0::/x\n", "0::/x\n1:cpu:/y\n"])
@pytest.mark.parametrize("quota_file", [None, "", "max", "abc 100000", "100000 0", "-5 100000", "1 2 3"])
def test_what_cannot_be_read_limits_nothing(host: Path, content: str, quota_file: str | None) -> None:
    write(host / "proc", content)
    if quota_file is not None:
        write(host / "cg/x/cpu.max", quota_file)
        write(host / "cg/cpu/y/cpu.cfs_quota_us", quota_file)
        write(host / "cg/cpu/y/cpu.cfs_period_us", quota_file)
    assert usable_cpus(host / "proc", host / "cg") == 64
    assert usable_cpus(host / "missing", host / "cg") == 64


def test_at_least_one(host: Path) -> None:
    write(host / "proc", "0::/\n")
    write(host / "cg/cpu.max", "1000 100000\n")  # a hundredth of a core
    assert usable_cpus(host / "proc", host / "cg") == 1


def test_this_machine() -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
