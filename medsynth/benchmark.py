"""Helpers shared by the benchmark scripts: machine description, peak memory, FLOP counting, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

#: Dense bf16 tensor-core peak in TFLOP/s by GPU name fragment (NVIDIA data sheets, without sparsity).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "RTX 4090": 165.0}


def machine() -> dict[str, Any]:
    """Where a figure was measured: host, CPU, GPU, versions."""
    import monai

    info: dict[str, Any] = {
        "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "monai": monai.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    from medsynth.devices import cpu_has_native_bf16

    # the same "AMD EPYC" name covers VMs with and without avx512_bf16: the figures differ by 2-3x
    info["cpu_native_bf16"] = cpu_has_native_bf16()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_bf16_peak_tflops"] = bf16_peak(info["gpu"])
    return info


def bf16_peak(name: str) -> float | None:
    """The GPU's dense bf16 peak (TFLOP/s), if known."""
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (forward and, if ``fn`` runs it, backward), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def sync(device: torch.device) -> None:
    """Wait for the device (timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, seconds: float, min_calls: int = 2,
          warmup: int = 1) -> tuple[float, int]:
    """Seconds per call of ``fn``, measured for about ``seconds`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    calls, tic = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - tic < seconds:
        fn()
        calls += 1
        if calls >= min_calls:
            sync(device)
    sync(device)
    return (time.perf_counter() - tic) / calls, calls


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (also valid Markdown)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], folder: Path | None = None) -> Path:
    """``scripts/results/<name>_<host-kind>.json`` (or ``folder``), atomically; the kind is ``gpu``, ``cpu`` (with
    native bf16) or ``cpu_fp32`` (without), so that one kind of machine does not overwrite another's figures."""
    folder = folder or Path(__file__).resolve().parents[1] / "scripts" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{host_kind()}.json"
    from medsynth.files import write_atomic

    return write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def host_kind() -> str:
    """``gpu``, ``cpu`` (a CPU with native bf16) or ``cpu_fp32``: the part of a results file's name that says
    which kind of machine measured it."""
    from medsynth.devices import cpu_has_native_bf16

    if torch.cuda.is_available():
        return "gpu"
    return "cpu" if cpu_has_native_bf16() else "cpu_fp32"


def matmul_peak_gflops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16, n: int = 2048,
                       seconds: float = 1.0) -> float:
    """Measured dense matmul rate (GFLOP/s) of ``n`` x ``n`` matrices: the practical peak the networks are compared
    with (on this CPU's current thread count)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)
    sync(device)
    calls, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds or calls < 2:
        torch.matmul(a, b)
        calls += 1
    sync(device)
    return 2 * n**3 * calls / (time.perf_counter() - tic) / 1e9
