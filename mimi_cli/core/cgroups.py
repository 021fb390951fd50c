"""What this process's control groups allow it (Linux): CPU time and memory.

A container (``docker --cpus 2 --memory 4g``, a Kubernetes pod's limits, systemd's ``CPUQuota=`` and
``MemoryMax=``) shows its processes the whole machine: ``os.cpu_count()`` and ``sysconf`` count the
machine's cores and memory. Its limits are files of the control group the process is in, and of the
groups above it, which limit it too::

    /proc/self/cgroup           "0::/kubepods/pod1"            (v2: one hierarchy)
                                "4:memory:/kubepods/pod1"      (v1: one per controller)
    /sys/fs/cgroup/kubepods/pod1/memory.max                    (v2)
    /sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes  (v1)
                      ... and each folder up to the hierarchy's root

A process past its group's memory limit is killed by the kernel (SIGKILL: no message, no cleanup), so
a size is checked against the limit before it is allocated, as against the machine's memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

CGROUPS = Path("/sys/fs/cgroup")  # where Linux shows control groups (tests point these two elsewhere)
OWN_GROUPS = Path("/proc/self/cgroup")  # this process's groups, under CGROUPS


def cpu_quota() -> float | None:
    """The smallest CPU quota (cores) of this process's control group and the groups above it (v2's
    ``cpu.max`` "QUOTA PERIOD", v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None for no quota."""
    def v1(group: Path) -> float | None:
        quota, period = ((group / f"cpu.cfs_{n}_us").read_text().strip() for n in ("quota", "period"))
        return _ratio(quota, period)

    def v2(group: Path) -> float | None:
        return _ratio(*(group / "cpu.max").read_text().split())

    quotas = _limits("cpu", v1, v2)
    return min(quotas) if quotas else None


def memory_limit() -> int | None:
    """The smallest memory limit (bytes) of this process's control group and the groups above it (v2's
    ``memory.max``, v1's ``memory.limit_in_bytes``), or None for no limit."""
    def v1(group: Path) -> int | None:
        value = int((group / "memory.limit_in_bytes").read_text())
        return None if value >= 1 << 62 else value  # no limit: the largest count of pages it holds, in bytes

    def v2(group: Path) -> int | None:
        value = (group / "memory.max").read_text().strip()
        return None if value == "max" else int(value)

    limits = _limits("memory", v1, v2)
    return min(limits) if limits else None


def _ratio(quota: str, period: str) -> float | None:
    """Cores of CPU time: ``quota`` µs each ``period`` µs; None for no quota ("max" in v2, -1 in v1)."""
    return None if quota in ("max", "-1") or float(period) <= 0 else float(quota) / float(period)


def _limits(controller: str, v1: Callable[[Path], float | None],
            v2: Callable[[Path], float | None]) -> list[float]:
    """The values ``v1`` or ``v2`` read from each group of ``controller`` that holds this process, from its own
    up to its hierarchy's root (a limit above it limits it too); a group without the file is passed over."""
    try:
        lines = OWN_GROUPS.read_text().splitlines()
    except OSError:  # not Linux, or no /proc
        return []
    values = []
    for line in lines:  # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        is_v1 = controller in controllers.split(",")
        if controllers and not is_v1:
            continue
        root = CGROUPS / ",".join(sorted(controllers.split(","))) if is_v1 else CGROUPS
        if is_v1 and not root.is_dir():  # "cpu,cpuacct" mounted as "cpu" alone
            root = CGROUPS / controller
        folder = root / path.strip("/")
        for group in (folder, *folder.parents):
            try:
                value = (v1 if is_v1 else v2)(group)
            except (OSError, ValueError):
                value = None
            if value is not None:
                values.append(value)
            if group == root:
                break
    return values
