"""The host-memory budget of `preprocess --memory-gb` and `predict --memory-gb`, and what a
process holds (Linux `/proc`; elsewhere the budget is still kept by the estimates).

`--memory-gb` is the most RAM the command's process tree may use; the default is what the machine
has available when the command starts, minus a margin for everything else (`MARGIN`). Workers
hold their share of it as an address-space limit (`limit_address_space`): an allocation beyond it
raises MemoryError inside nnlite, which names the case, instead of the kernel killing a worker.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from nnlite.common.errors import UserError

GIB = 2**30
MARGIN = 0.1  # share of the available memory the default budget leaves to the rest of the machine


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the command may use in all, and whether the user set them (`--memory-gb`)."""

    total: int
    explicit: bool

    def describe(self) -> str:
        return f"--memory-gb {self.total / GIB:g}" if self.explicit else f"the available memory ({self.total / GIB:.1f} GB)"


def memory_budget(memory_gb: float | None) -> MemoryBudget:
    """`--memory-gb` as bytes, else the machine's available memory minus `MARGIN`."""
    if memory_gb is None:
        return MemoryBudget(int(available_bytes() * (1 - MARGIN)), explicit=False)
    if not memory_gb > 0:
        raise UserError("--memory-gb", f"must be a positive number of gigabytes, got {memory_gb:g}")
    return MemoryBudget(int(memory_gb * GIB), explicit=True)


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping); else physical RAM."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _statm(field: int) -> int:
    """Field of /proc/self/statm in bytes (0: total mapped, 1: resident); 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def resident_bytes() -> int:
    """This process's resident set now (0 where /proc is missing)."""
    return _statm(1)


def private_bytes() -> int:
    """This process's own pages (smaps_rollup Private_*): what a forked worker adds to the machine
    beyond the pages it still shares with its parent (its RSS counts those too)."""
    total = 0
    try:
        with open("/proc/self/smaps_rollup") as handle:
            for line in handle:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return resident_bytes()
    return total


def peak_resident_bytes() -> int:
    """The largest resident set this process has had (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def limit_address_space(allowance: int) -> None:
    """Let this process map at most `allowance` more bytes than it has mapped now: numpy and
    Python then raise MemoryError instead of the kernel killing the process. The limit only grows
    what is mapped after the call (libraries already loaded keep their reservations)."""
    now = _statm(0)  # what the process has mapped now
    if now == 0:
        return  # no /proc: nothing to anchor the limit to
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = now + max(0, allowance)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
