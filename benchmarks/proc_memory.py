"""This process's memory as Linux reports it, for the benchmarks (one fresh process per measured point).

VmHWM, not `ru_maxrss`: on Linux `ru_maxrss` carries a forking parent's peak across execve.
"""
from __future__ import annotations


def status_mb(field: str) -> float:
    """A field of /proc/self/status (e.g. "VmRSS", "VmHWM") in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (these benchmarks need Linux)")


def rss_mb() -> float:
    return status_mb("VmRSS")


def peak_rss_mb() -> float:
    return status_mb("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
