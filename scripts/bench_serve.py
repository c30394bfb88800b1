"""Load test for ``medsynth-serve``: N concurrent clients for a bounded time against a local server.

Starts the server as a child process on 127.0.0.1 (a free port), sends one warm-up request, then for each
client count runs that many threads, each posting its own synthetic volume again and again (through the
standard-library client that Slicer uses) until ``--seconds`` have passed. Prints a table (clients, requests,
throughput, p50/p95 latency, errors, 503s) and writes the figures with the machine's description to
``scripts/results/bench_serve_<host>.json``.

Every answer is checked: status 200 and a NIfTI of the sent shape; anything else is an error, except 503 (queue
full), counted apart. Below the queue limit (the default ``--queue-size`` is the largest client count) errors and
503s must both be 0.

Examples:
    python scripts/bench_serve.py --seconds 5 --clients 1,4 --shape 32x32x16           # tiny model, CPU
    python scripts/bench_serve.py --generator resnet9 --ngf 64 --shape 256x256x64 --device cuda
    python scripts/bench_serve.py --model runs/t1t2/model.pt --clients 1,2,4,8 --seconds 30
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def make_model(path: Path, generator: str, ngf: int) -> Path:
    """An untrained model of the given architecture: the server's cost does not depend on the weights."""
    import torch

    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.cyclegan import export_model
    from medsynth.networks import build_generator, init_weights

    torch.manual_seed(0)
    config = TrainConfig(names=("t1", "t2"), model=ModelConfig(generator=generator, ngf=ngf, ndf=4), size=32)
    nets = [build_generator(config.model) for _ in range(2)]
    for net in nets:
        init_weights(net)
    stats = {"t1": {"lo": 100.0, "hi": 900.0, "background": 0.0, "threshold": 10.0},
             "t2": {"lo": 200.0, "hi": 1400.0, "background": 0.0, "threshold": 10.0}}
    return export_model(path, config, nets[0], nets[1], stats)


def make_volume(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """A noisy ellipsoid on a zero background, written by nibabel."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = sum((g / 0.8) ** 2 for g in grids) < 1
    data = (head * (500.0 + 50 * grids[0] + rng.normal(0, 20, shape))).clip(0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.5, 1.0])), str(path))
    return path


class Server:
    """``python -m medsynth serve`` as a child process; its log is read on a thread."""

    def __init__(self, args: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medsynth", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        self.lines: list[str] = []
        self._urls: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._urls.get(timeout=300)
        if self.url is None:
            raise SystemExit("server did not start:\n" + "".join(self.lines))
        deadline = time.monotonic() + 120
        while not self.healthy():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("server did not answer /health:\n" + "".join(self.lines))
            time.sleep(0.1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self._urls.put(found.group(1))
        self._urls.put(None)

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def info(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/models", timeout=10) as response:
            return json.loads(response.read())["models"][0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reader.join(timeout=10)  # the last log lines


def one_request(url: str, path: Path, shape: tuple[int, ...], axis: str) -> tuple[str, float]:
    """Post one volume; returns (outcome, seconds) with outcome ``ok``, ``503`` or an error description."""
    import nibabel as nib

    from medsynth.client import post_infer

    start = time.perf_counter()
    try:
        with post_infer(url, path, axis=axis, timeout=600) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        return ("503" if exc.code == 503 else f"HTTP {exc.code}"), time.perf_counter() - start
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}", time.perf_counter() - start
    seconds = time.perf_counter() - start
    try:
        answer = nib.Nifti1Image.from_bytes(gzip.decompress(body))
        if answer.shape != shape:
            return f"wrong shape {answer.shape}", seconds
    except Exception as exc:  # an answer that is not the volume asked for
        return f"bad answer ({type(exc).__name__})", seconds
    return "ok", seconds


def run_clients(url: str, volumes: list[Path], shape: tuple[int, ...], clients: int, seconds: float,
                axis: str) -> dict[str, Any]:
    """``clients`` threads posting until ``seconds`` have passed; requests started before the end complete."""
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(i: int, deadline_box: list[float]) -> None:
        barrier.wait()
        while time.perf_counter() < deadline_box[0]:
            outcome = one_request(url, volumes[i % len(volumes)], shape, axis)
            with lock:
                results.append(outcome)

    deadline_box = [float("inf")]
    threads = [threading.Thread(target=client, args=(i, deadline_box)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline_box[0] = start + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ok = [s for outcome, s in results if outcome == "ok"]
    errors = [outcome for outcome, _ in results if outcome not in ("ok", "503")]
    return {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(ok) / elapsed, 3),
        "p50_s": round(float(np.percentile(ok, 50)), 4) if ok else None,
        "p95_s": round(float(np.percentile(ok, 95)), 4) if ok else None,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "rejected_503": sum(1 for outcome, _ in results if outcome == "503"),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import monai
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "monai": monai.__version__, "gpu": gpu}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, help="model.pt to serve (default: an untrained one, see --generator)")
    parser.add_argument("--generator", default="resnet6", help="architecture of the generated model")
    parser.add_argument("--ngf", type=int, default=4, help="width of the generated model (64 = the real size)")
    parser.add_argument("--clients", default="1,4,8", help="comma-separated concurrent client counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each client count")
    parser.add_argument("--shape", default="64x64x32", help="volume shape IxJxK")
    parser.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal", "all"))
    parser.add_argument("--device", default="auto", help="server device: auto, cpu, cuda")
    parser.add_argument("--batch-size", type=int, help="server slices per forward pass")
    parser.add_argument("--queue-size", type=int, help="server queue (default: the largest client count)")
    parser.add_argument("--workers", type=int, default=1, help="server workers")
    parser.add_argument("--threads", type=int, help="server CPU threads per translation (default: torch's)")
    parser.add_argument("--out", type=Path, help="JSON path (default scripts/results/bench_serve_<host>.json)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    shape = tuple(int(n) for n in args.shape.lower().split("x"))
    if len(shape) != 3 or min(shape) < 1 or min(counts) < 1:
        parser.error("--shape needs three positive sizes and --clients positive counts")
    queue_size = args.queue_size if args.queue_size is not None else max(counts)

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        work = Path(tmp)
        model = args.model or make_model(work / "bench" / "model.pt", args.generator, args.ngf)
        volumes = [make_volume(work / f"vol{i}.nii.gz", shape, seed=i) for i in range(max(counts))]
        server_args = ["--model", f"bench={model}", "--device", args.device, "--queue-size", str(queue_size),
                       "--workers", str(args.workers), "--max-upload-mb", "4096", "--tmp-dir", str(work / "srv")]
        if args.batch_size:
            server_args += ["--batch-size", str(args.batch_size)]
        if args.threads:
            server_args += ["--threads", str(args.threads)]
        server = Server(server_args)
        try:
            info = server.info()
            outcome, warm = one_request(server.url, volumes[0], shape, args.axis)
            if outcome != "ok":
                raise SystemExit(f"warm-up request failed: {outcome}\n" + "".join(server.lines[-20:]))
            rows = [run_clients(server.url, volumes, shape, n, args.seconds, args.axis) for n in counts]
        finally:
            server.stop()
        leftover = list((work / "srv").iterdir())  # after a graceful stop every answer has been sent
    logged = sum(1 for line in server.lines if " POST /infer" in line)
    sent = 1 + sum(r["requests"] for r in rows)

    print(f"medsynth-serve on {info['config'].get('device', '?')}: model {info['config'].get('generator')} "
          f"ngf {info['config'].get('ngf')}, volume {args.shape}, axis {args.axis}, queue {queue_size}, "
          f"threads {args.threads or 'default'}, {args.seconds:g} s per row, warm-up {warm:.2f} s")
    header = f"{'clients':>7} {'requests':>8} {'req/s':>8} {'p50 s':>8} {'p95 s':>8} {'errors':>6} {'503s':>5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        p50 = f"{r['p50_s']:.3f}" if r["p50_s"] is not None else "-"
        p95 = f"{r['p95_s']:.3f}" if r["p95_s"] is not None else "-"
        print(f"{r['clients']:>7} {r['requests']:>8} {r['throughput_rps']:>8.2f} {p50:>8} {p95:>8} "
              f"{r['errors']:>6} {r['rejected_503']:>5}")
        if r["error_kinds"]:
            print(f"        errors: {', '.join(r['error_kinds'])}")
    print(f"server log lines for /infer: {logged} of {sent} requests; temporary files left: {len(leftover)}")

    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname()) or "host"
    out = args.out or ROOT / "scripts" / "results" / f"bench_serve_{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "server": {"device": info["config"].get("device"), "model": info["config"],
                                               "queue_size": queue_size, "workers": args.workers,
                                               "threads": args.threads},
              "volume_shape": list(shape), "axis": args.axis, "seconds_per_row": args.seconds,
              "warmup_s": round(warm, 3), "rows": rows, "log_lines": logged, "requests_sent": sent,
              "temporary_files_left": len(leftover)}
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(part, out)
    print(f"written {out}")
    failed = any(r["errors"] for r in rows) or any(r["rejected_503"] for r in rows if r["clients"] <= queue_size)
    return 1 if failed or leftover else 0


if __name__ == "__main__":
    sys.exit(main())
