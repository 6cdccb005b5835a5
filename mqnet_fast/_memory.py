"""Memory estimates checked before allocating: an op, a run or a file whose shapes need more memory
than the device has available is refused with the estimate and the limit, instead of being tried
(which fails late, or takes the machine's memory from everything else).

The limit is the memory available now (MemAvailable on Linux; free GPU memory on CUDA), or
MQNET_FAST_MEMORY_LIMIT (bytes, or a number with K, M, G or T: "64G") where it is set, to raise or
lower it."""
from __future__ import annotations

import os
import re

ENV = "MQNET_FAST_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryLimitError(ValueError):
    """What the inputs would need is more than the memory limit; the message gives both."""


class InvalidLimit(MemoryLimitError):
    """MQNET_FAST_MEMORY_LIMIT is not a size."""


def human(nbytes: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise InvalidLimit(f"{ENV}={text!r} is not a size; give bytes or a number with K, M, G or T, e.g. 64G")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _cgroup_room() -> int | None:
    """What this process's memory cgroup still allows (v2 memory.max - memory.current, or v1
    limit - usage); None where there is no limit or no cgroup to read."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def _available_cpu() -> int | None:
    """MemAvailable, or less where the cgroup (a container's limit) allows less."""
    room = _cgroup_room()
    available = _meminfo_available()
    if room is not None and (available is None or room < available):
        return room
    return available


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def limit(device=None) -> tuple[int | None, str]:
    """(bytes, what they are) that `device` (a torch.device or name; None: the CPU) may use now."""
    if os.environ.get(ENV):
        return parse_size(os.environ[ENV]), f"the limit {ENV}={os.environ[ENV]}"
    kind = getattr(device, "type", str(device) if device is not None else "cpu").split(":")[0]
    if kind == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free, f"the free memory of {device} (raise or lower it with {ENV})"
    available = _available_cpu()
    return available, f"the memory available on this machine (raise or lower it with {ENV})"


def check(what: str, need: int, device=None) -> None:
    """Raise MemoryLimitError if `need` bytes (an estimate of what `what` allocates) exceed the limit."""
    cap, source = limit(device)
    if cap is not None and need > cap:
        raise MemoryLimitError(f"{what} needs about {human(need)}, more than {source}: {human(cap)}")
