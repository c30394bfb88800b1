"""Where computation runs: the device, the number of CPU threads, and whether bf16 pays on this hardware.

Shared by training, conversion, the server and the benchmarks; it sits below all of them.
"""

from __future__ import annotations

import functools
import os

import torch

from medsynth.errors import InputError

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` on a machine without it is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device", "cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device != "cpu":
        raise InputError("--device", f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def set_threads(threads: int | None = None, world: int = 1) -> int:
    """Use ``threads`` intra-op threads (default: ``OMP_NUM_THREADS`` when set, as torch itself reads it, else
    the usable cores shared among ``world`` local processes).

    Returns:
        The number of threads now in use.
    """
    if threads is not None and threads < 1:
        raise InputError("--threads", f"{threads} must be at least 1")
    env = os.environ.get("OMP_NUM_THREADS", "")
    n = threads or (int(env) if env.isdigit() and int(env) > 0 else max(usable_cores() // max(world, 1), 1))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 ``avx512_bf16`` or AMX, Arm ``bf16``).

    Without it, oneDNN emulates bf16 and autocast makes convolutions slower, not faster.
    """
    try:
        text = open("/proc/cpuinfo", encoding="ascii", errors="ignore").read()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def autocast_enabled(device: torch.device, precision: str = "auto") -> bool:
    """Whether to run the networks under bf16 autocast on ``device``.

    ``auto``: on CUDA always, on a CPU when it has native bf16; ``bf16`` forces it; ``fp32`` turns it off.
    """
    if precision not in PRECISIONS:
        raise InputError("--precision", f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return False
    if precision == "bf16" or device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_has_native_bf16()


def describe(device: torch.device, autocast: bool) -> str:
    """``"cpu, 2 threads, bf16"``: what a plan line or a log says about where work runs."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"cpu, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"
    return f"{where}, {'bf16 autocast' if autocast else 'fp32'}"
