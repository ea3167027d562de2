"""How many cores this process may use: what `sip.workers: auto` starts one worker per.

`os.cpu_count()` counts the host's cores. In a container or a systemd slice the process may use fewer: the
cores of its affinity mask (`taskset`, `docker --cpuset-cpus`, systemd `CPUAffinity=`) and the CPU time its
cgroup's quota allows (`docker --cpus`, Kubernetes `limits.cpu`, systemd `CPUQuota=`). A worker per host core
there would start dozens of processes that share two cores' worth of time and each hold the lists in memory.

Reads files only (no subprocess); a file that is missing or unreadable limits nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(proc_cgroup: Path = PROC_SELF_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores of this process's affinity mask, fewer if its cgroups' CPU quota allows less (rounded up:
    a quota of 1.5 cores runs 2 workers); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def cgroup_cpu_quota(proc_cgroup: Path = PROC_SELF_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU time, in cores, that the tightest quota on this process's cgroup or any parent allows (cgroup
    v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when none is set."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # the unified (v2) hierarchy
            for base in (cgroup_root, cgroup_root / "unified"):
                quotas += _walk(base, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            # Where distributions mount it; the hierarchy's own name is often one of the usual two.
            mounts = (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct")
            for mount in dict.fromkeys(mounts):
                quotas += _walk(mount, path, _v1_quota)
    return min(quotas) if quotas else None


def _walk(base: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set on `path` and each of its parents under `base`. A container sees its own cgroup as the
    root of the mount while /proc/self/cgroup may name the host's path: the mount's root is read too."""
    found: list[float] = []
    parts = [p for p in path.split("/") if p and p != ".."]
    for depth in range(len(parts), -1, -1):
        quota = read(base.joinpath(*parts[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    quota = _read(directory / "cpu.cfs_quota_us")
    period = _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for no quota


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
