"""Conversion speed, side by side in one run: a naive loop, medsynth axial and medsynth fused.

Rows (the packaged model unless ``--model``; the packaged 240 x 240 x 155 sample T1):
- ``naive``: one axial slice per forward pass, fp32, one thread, eager, the volume already normalised and the
  model already loaded (generous to it: no reading, statistics, reorientation or writing);
- ``medsynth-convert axial`` / ``all``: the whole ``medsynth-convert IN OUT`` process as a user runs it (Python
  start, imports, model loading, reading, statistics, translation, writing), on every usable core, precision
  ``auto`` (bf16 where the CPU has it natively); its peak memory from the kernel;
- the same translations in this process, to split their time: seconds inside the generators (the
  ``Translator``'s own clock) against everything else, and the generators' achieved GFLOP/s against this
  machine's matmul rate in the precision they run in (bf16 or fp32), measured in the same run;
- fp32 against bf16: the output difference (mean, 99.9th percentile, maximum, as a share of the output range)
  and a difference-map PNG to look at;
- ``medsynth-serve`` on 127.0.0.1 (a real server process, the model loaded once): a client's whole round trip,
  upload, translation and the answer written, as Slicer's server option does it (``--no-server`` leaves it out);
- ``python -m medsynth worker`` (the Slicer module's long-lived child, the model loaded once): seconds per
  volume from the job line to ``DONE``, the file uncompressed as the module writes it (``--no-server`` leaves
  it out too);
- ``--big``: a 512 x 512 x 400 float volume, axial, in a child process, for its peak memory (target < 4 GB).

``--against OLD_MODEL`` instead only times ``medsynth-convert`` with both models, alternately, and writes
``bench_convert_against_<kind>.json`` (a new packaged model must convert within 20 % of the one before it).

``--fuse detail`` (or ``median``) fuses the ``all`` rows that way instead of the default ``mean``; their files are
then named ``bench_convert_fuse_<fusion>_<kind>.json`` (and ``bench_convert_against_fuse_<fusion>_...``), so a
fusion's timing does not overwrite the default's.

usage: python scripts/bench_convert.py [--model M] [--against OLD_MODEL] [--fuse F] [--repeats 2] [--big] [--device cpu]
Prints a table and writes scripts/results/bench_convert_<kind>.json (kind: gpu, cpu = a CPU with native bf16,
cpu_fp32 = one without) and bench_convert_bf16_diff_<kind>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsynth.benchmark import (count_flops, host_kind, machine, matmul_peak_gflops, sync, table,  # noqa: E402
                                write_json)
from medsynth.devices import set_threads  # noqa: E402
from medsynth.fusion import DEFAULT_FUSION, FUSIONS  # noqa: E402
from medsynth.inference import Translator, default_model_path  # noqa: E402

AXIS_SLICES = {"axial": 2, "coronal": 1, "sagittal": 0}


def sample_path(direction: str | None = None) -> Path:
    """The packaged sample that ``direction`` reads (the T1 unless it starts from T2)."""
    from medsynth.demo import SAMPLE_T1, SAMPLE_T2

    return Path(SAMPLE_T2 if direction and direction.startswith("t2-") else SAMPLE_T1)


def naive_loop(translator: Translator, volume: np.ndarray, direction: str) -> float:
    """One slice per forward pass, fp32, one thread, eager; the volume already normalised (generous to it)."""
    import copy

    from medsynth.networks import residual_of
    from medsynth.transforms import intensity_stats, normalise

    net = copy.deepcopy(translator.networks[direction]).float().to(memory_format=torch.contiguous_format)
    x = normalise(torch.from_numpy(volume), intensity_stats(volume))[None]
    residual = residual_of(net)
    if residual is not None:
        x = torch.cat([x, residual.volume_base(x)])
    s = translator.stride
    h, w = (int(math.ceil(n / s) * s) for n in x.shape[1:3])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tic = time.perf_counter()
        with torch.no_grad():
            for k in range(x.shape[3]):
                sl = torch.full((1, x.shape[0], h, w), -1.0)
                sl[0, :, : x.shape[1], : x.shape[2]] = x[:, :, :, k]
                _ = net(sl)[0, 0, : x.shape[1], : x.shape[2]].clone()
        return time.perf_counter() - tic
    finally:
        torch.set_num_threads(threads)


def convert_process(src: Path, axis: str, model: str | None, device: str, precision: str,
                    fuse: str = DEFAULT_FUSION, direction: str | None = None) -> dict:
    """The whole ``medsynth-convert`` process: wall seconds and its peak resident memory (``fuse``: how
    ``axis="all"`` combines its passes; ``direction``: the model's first when None)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.nii.gz"
        cmd = [sys.executable, "-m", "medsynth", "convert", str(src), str(out), "--axis", axis, "--device", device,
               "--precision", precision, "--fuse", fuse, "--progress", "lines"]  # as the Slicer module runs it
        if model:
            cmd += ["--model", model]
        if direction:
            cmd += ["--direction", direction]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        tic = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
        seconds = time.perf_counter() - tic
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: only a new maximum is this child's own
    return {"seconds": seconds, "peak_rss_mb": peak / 1024 if peak > before else None}


def server_round_trips(src: Path, axes: tuple[str, ...], model: str | None, device: str, precision: str,
                       repeats: int, fuse: str = DEFAULT_FUSION) -> dict[str, float]:
    """Best client round trip (upload, translation, answer written) per axis through a real ``medsynth-serve``
    on 127.0.0.1: the start-up and model loading are paid once, as by a Slicer user who keeps a local server."""
    import socket
    import urllib.request

    from medsynth.client import remote_translate

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "medsynth", "serve", "--port", str(port), "--device", device,
           "--precision", precision, "--log-level", "warning"] + (["--model", model] if model else [])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("medsynth-serve did not start") from None
                time.sleep(0.2)
        best = {}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.nii.gz"
            remote_translate(url, src, out, axis="axial")  # the server's first translation warms the kernels
            for axis in axes:
                times = []
                for _ in range(repeats):
                    tic = time.perf_counter()
                    remote_translate(url, src, out, axis=axis, fuse=fuse)
                    times.append(time.perf_counter() - tic)
                best[axis] = min(times)
        return best
    finally:
        server.terminate()
        server.wait(30)


def worker_jobs(src: Path, axes: tuple[str, ...], model: str | None, device: str, precision: str,
                repeats: int, fuse: str = DEFAULT_FUSION) -> dict[str, dict]:
    """Best job per axis (seconds from the job line to ``DONE``, and the worker's own network seconds of that job)
    in a real ``python -m medsynth worker``, as the Slicer module runs it after its first Translate; the input is
    an uncompressed .nii copy, as the module writes."""
    import nibabel as nib

    cmd = [sys.executable, "-m", "medsynth", "worker", "--device", device, "--precision", precision]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "input.nii"
        nib.save(nib.load(src), plain)
        worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)

        def job(axis: str) -> dict:
            tic = time.perf_counter()
            network = None
            worker.stdin.write(json.dumps({"input": str(plain), "output": str(Path(tmp) / "output.nii"),
                                           "model": model, "axis": axis, "fuse": fuse}) + "\n")
            worker.stdin.flush()
            for line in worker.stdout:
                if line.startswith("TIMING "):
                    network = float(line.split()[2])
                elif line.startswith(("DONE", "FAILED")):
                    if line.startswith("FAILED"):
                        raise RuntimeError(line.strip())
                    return {"seconds": time.perf_counter() - tic, "network_seconds": network}
            raise RuntimeError("the medsynth worker ended")

        try:
            if worker.stdout.readline().strip() != "READY":
                raise RuntimeError("the medsynth worker did not start")
            job("axial")  # its first job warms the kernels
            return {axis: min((job(axis) for _ in range(repeats)), key=lambda r: r["seconds"]) for axis in axes}
        finally:
            worker.stdin.close()
            worker.wait(60)


def in_process(translator: Translator, src: Path, axis: str, direction: str, fuse: str = DEFAULT_FUSION) -> dict:
    """``translate_file`` in this process, split into time in the generators and time around them."""
    with tempfile.TemporaryDirectory() as tmp:
        translator.network_seconds, translator.network_pixels = 0.0, 0
        translator.time_network = True
        sync(translator.device)
        tic = time.perf_counter()
        translator.translate_file(src, Path(tmp) / "out.nii.gz", direction, axis=axis, fuse=fuse)
        sync(translator.device)
        total = time.perf_counter() - tic
    return {"in_process_seconds": total, "network_seconds": translator.network_seconds,
            "network_pixels": translator.network_pixels, "outside_share": 1 - translator.network_seconds / total}


def batch_and_layout_sweep(translator: Translator, direction: str, side: int = 240) -> list[dict]:
    """Slices/s of the generator alone by batch size and memory layout, at the translator's precision."""
    import copy

    rows = []
    base = translator.networks[direction]
    in_ch = 2 if getattr(translator.config.model, "residual", "none") == "invert" else 1
    for layout in ("contiguous", "channels_last"):
        net = copy.deepcopy(base)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        net = net.to(memory_format=fmt)
        for batch in (1, 4, 8, 16):
            x = (torch.rand(batch, in_ch, side, side, device=translator.device) * 2 - 1)
            if translator.cast is not None:
                x = x.to(translator.cast)
            x = x.contiguous(memory_format=fmt)
            with torch.no_grad():
                net(x)
                calls, tic = 0, time.perf_counter()
                while time.perf_counter() - tic < 1.5 or calls < 2:
                    net(x)
                    calls += 1
                sync(translator.device)
            rows.append({"layout": layout, "batch": batch, "slices_per_s": batch * calls / (time.perf_counter() - tic)})
    return rows


def big_volume_child(model: str | None, device: str) -> dict:
    """Peak memory of a 512 x 512 x 400 axial conversion, measured in a fresh process."""
    code = (
        "import json, time, sys, numpy as np, torch; sys.path.insert(0, '.');"
        "from medsynth.benchmark import peak_rss_mb; from medsynth.inference import Translator;"
        "t = Translator.from_file(json.loads(sys.argv[1]), device=sys.argv[2]); rng = np.random.default_rng(0);"
        "v = np.zeros((512, 512, 400), np.float32);"
        "v[60:450, 50:460, 20:380] = 100 + 900 * rng.random((390, 410, 360), dtype=np.float32);"
        "r0 = peak_rss_mb(); tic = time.perf_counter(); out = t.translate_array(v, np.eye(4), axis='axial');"
        "print(json.dumps({'seconds': time.perf_counter() - tic, 'peak_rss_mb': peak_rss_mb(), 'rss_before_mb': r0,"
        "'gpu_peak_mb': torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(model), device], cwd=ROOT, capture_output=True,
                            text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def precision_difference(model: str | None, device: str, src: Path, out_png: Path) -> dict:
    """fp32 against bf16 on the sample, axial: difference statistics and a difference-map PNG."""
    from medsynth.io import load_image

    image = load_image(src)
    outs = {p: Translator.from_file(model, device=device, precision=p).translate(image).array for p in ("fp32", "bf16")}
    diff = np.abs(outs["fp32"] - outs["bf16"])
    fg = image.array > 0
    span = float(np.percentile(outs["fp32"][fg], 99.5) - np.percentile(outs["fp32"][fg], 0.5))
    stats = {"span": span, "mean": float(diff[fg].mean()), "p99_9": float(np.percentile(diff[fg], 99.9)),
             "max": float(diff.max())}
    stats.update({f"{k}_share": stats[k] / span for k in ("mean", "p99_9", "max")})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = image.array.shape[2] // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, data, kw) in zip(axes, (
            ("fp32", outs["fp32"][:, :, k], {"cmap": "gray"}),
            ("bf16", outs["bf16"][:, :, k], {"cmap": "gray"}),
            ("|fp32 - bf16| (same grey scale x 10)", diff[:, :, k] * 10, {"cmap": "gray"}))):
        vmax = float(np.percentile(outs["fp32"][fg], 99.5))
        ax.imshow(np.flipud(data.T)[:, ::-1], vmin=0, vmax=vmax, **kw)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"packaged model, axial slice {k}: mean |diff| {stats['mean_share']:.2%} of the range, "
                 f"99.9th pct {stats['p99_9_share']:.2%}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return stats


def compare_models(src: Path, model: str | None, against: str, device: str, precision: str, repeats: int,
                   fuse: str = DEFAULT_FUSION, direction: str | None = None) -> list[dict]:
    """``medsynth-convert`` with two models, whole process, axial and fused, timed alternately (so that a busy spell
    of a shared machine hits both alike), best of ``repeats`` each."""
    rows = []
    for axis in ("axial", "all"):
        mine, theirs = [], []
        for _ in range(repeats):
            theirs.append(convert_process(src, axis, against, device, precision, fuse, direction)["seconds"])
            mine.append(convert_process(src, axis, model, device, precision, fuse, direction)["seconds"])
        rows.append({"axis": axis, "model_seconds": min(mine), "against_seconds": min(theirs),
                     "ratio": min(mine) / min(theirs), "model_runs": mine, "against_runs": theirs})
    return rows


def shown(axis: str, fuse: str) -> str:
    """The axis as a row names it: ``all`` with its fusion where that is not the default."""
    return f"{axis} --fuse {fuse}" if axis == "all" and fuse != DEFAULT_FUSION else axis


def named(name: str, fuse: str) -> str:
    """A results file's name: a fusion other than the default gets files of its own."""
    return name if fuse == DEFAULT_FUSION else f"{name}_fuse_{fuse}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model.pt (default: the packaged one)")
    p.add_argument("--against", default=None,
                   help="only compare: medsynth-convert (axial, fused) with --model and with this model.pt, timed "
                        "alternately, and the ratio (e.g. a new packaged model against the one before it); writes "
                        "bench_convert_against_<kind>.json")
    p.add_argument("--direction", default=None,
                   help="with --against: time this direction (t2-to-t1 reads the packaged T2 sample; default: the "
                        "model's first, on the T1 sample)")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per row (best is kept)")
    p.add_argument("--big", action="store_true", help="also the 512 x 512 x 400 peak-memory run")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--fuse", choices=FUSIONS, default=DEFAULT_FUSION,
                   help=f"how the 'all' rows fuse their three passes (default: {DEFAULT_FUSION}, as medsynth-convert)")
    p.add_argument("--tag", default=None, help="name of the difference PNG (default: the machine kind, cpu, cpu_fp32 or gpu)")
    p.add_argument("--no-server", action="store_true", help="leave out the round trips through a local medsynth-serve and the worker")
    p.add_argument("--smoke", action="store_true", help="a quick check of this script on 24 slices; writes nothing")
    args = p.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)
    set_threads(None)
    if args.direction and not args.against:
        p.error("--direction times one direction with --against only")
    src = sample_path(args.direction)
    if args.smoke:
        import nibabel as nib

        img = nib.load(src)
        small = Path(tempfile.mkdtemp()) / "sample_t1_24.nii.gz"
        nib.save(img.slicer[:, :, 60:84], small)
        src = small
    if args.against:
        rows = compare_models(src, args.model, args.against, args.device, args.precision, args.repeats, args.fuse,
                              args.direction)
        print(f"medsynth-convert, whole process, {src.name}: {args.model or 'the packaged model'} against "
              f"{args.against}, best of {args.repeats} each, alternated")
        for r in rows:
            print(f"  {shown(r['axis'], args.fuse):<17s}  {r['model_seconds']:6.2f} s  against  {r['against_seconds']:6.2f} s  "
                  f"ratio {r['ratio']:.2f}")
        if not args.smoke:
            info = machine()
            name = named("bench_convert_against", args.fuse) + (f"_{args.direction}" if args.direction else "")
            path = write_json(name, {
                "machine": info, "volume": src.name, "model": str(args.model or default_model_path()),
                "against": args.against, "args": vars(args), "rows": rows})
            print(f"wrote {path}")
        return
    translator = Translator.from_file(args.model, device=args.device, precision=args.precision)
    device = translator.device
    from medsynth.io import load_image

    volume = load_image(src).array
    direction = translator.directions[0]
    info = machine()
    info["precision"] = translator.precision
    s = translator.stride
    in_ch = 2 if getattr(translator.config.model, "residual", "none") == "invert" else 1
    example = torch.zeros(1, in_ch, int(math.ceil(240 / s) * s), int(math.ceil(240 / s) * s))
    import copy

    fp32_net = copy.deepcopy(translator.networks[direction]).float()
    with torch.no_grad():
        flops_per_slice = count_flops(lambda: fp32_net(example))
    flops_per_pixel = flops_per_slice / (example.shape[-1] * example.shape[-2])
    peaks = {"bf16_matmul_gflops": matmul_peak_gflops(device, torch.bfloat16),
             "fp32_matmul_gflops": matmul_peak_gflops(device, torch.float32)}
    # the peak of the precision the generators run in (bf16 where the CPU has it natively)
    peak_key = "bf16_matmul_gflops" if translator.precision == "bf16" else "fp32_matmul_gflops"
    translator.translate_array(volume[:, :, :8], np.eye(4), direction)  # warm-up
    rows = []
    naive = min(naive_loop(translator, volume, direction) for _ in range(args.repeats))
    plane = int(math.ceil(volume.shape[0] / s) * s) * int(math.ceil(volume.shape[1] / s) * s)
    rows.append({"mode": "naive: 1 slice/pass, fp32, 1 thread (network only)", "seconds": naive,
                 "slices": volume.shape[2], "network_seconds": naive, "network_pixels": plane * volume.shape[2]})
    splits = {}
    for axis in ("axial", "all"):
        runs = [convert_process(src, axis, args.model, args.device, args.precision, args.fuse)
                for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        split = min((in_process(translator, src, axis, direction, args.fuse) for _ in range(args.repeats)),
                    key=lambda r: r["in_process_seconds"])
        splits[axis] = split
        slices = sum(volume.shape) if axis == "all" else volume.shape[AXIS_SLICES[axis]]
        label = shown(axis, args.fuse)
        rows.append({"mode": f"medsynth-convert {label} (whole process)", "seconds": best["seconds"], "slices": slices,
                     "passes": 3 if axis == "all" else 1,
                     "peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in runs) or None, **split})
    if not args.no_server:
        trips = server_round_trips(src, ("axial", "all"), args.model, args.device, args.precision, args.repeats,
                                   args.fuse)
        for axis, seconds in trips.items():
            # the network seconds are this process's (same machine, model and volume): the server does not
            # report its own
            slices = sum(volume.shape) if axis == "all" else volume.shape[AXIS_SLICES[axis]]
            label = shown(axis, args.fuse)
            rows.append({"mode": f"medsynth-serve on 127.0.0.1, {label} (client round trip, model loaded once)",
                         "seconds": seconds, "slices": slices, "passes": 3 if axis == "all" else 1,
                         "network_seconds": splits[axis]["network_seconds"],
                         "network_pixels": splits[axis]["network_pixels"]})
        for axis, jobs in worker_jobs(src, ("axial", "all"), args.model, args.device, args.precision,
                                      args.repeats, args.fuse).items():
            # here the network seconds are the worker's own, for the same job
            slices = sum(volume.shape) if axis == "all" else volume.shape[AXIS_SLICES[axis]]
            label = shown(axis, args.fuse)
            rows.append({"mode": f"Slicer's worker (medsynth worker), {label} (per volume, model loaded once)",
                         "seconds": jobs["seconds"], "slices": slices, "passes": 3 if axis == "all" else 1,
                         "network_seconds": jobs["network_seconds"],
                         "network_pixels": splits[axis]["network_pixels"]})
    for row in rows:
        row["slices_per_s"] = row["slices"] / row["seconds"]
        # the same work as the naive loop's one pass over the volume, three passes for "all"
        row["vs_naive"] = naive * row.get("passes", 1) / row["seconds"]
        net_s = row.get("network_seconds")
        if net_s:
            # FLOPs scale with the pixels that went through the network (only the foreground box does)
            row["network_gflops"] = flops_per_pixel * row["network_pixels"] / net_s / 1e9
            row["share_of_peak"] = row["network_gflops"] / peaks[peak_key]
        if "network_seconds" in row and row is not rows[0]:
            # of the whole process: everything that is not the generators (start-up, imports, I/O, statistics)
            row["outside_share_of_process"] = 1 - row["network_seconds"] / row["seconds"]
    if args.big:
        big = big_volume_child(args.model, args.device)
        rows.append({"mode": "medsynth axial 512x512x400 (child process)", "seconds": big["seconds"], "slices": 400,
                     "slices_per_s": 400 / big["seconds"], "peak_rss_mb": big["peak_rss_mb"],
                     "peak_gpu_mb": big["gpu_peak_mb"]})
    sweep = batch_and_layout_sweep(translator, direction)
    tag = args.tag or host_kind()
    png = Path(tempfile.mkdtemp()) / "diff.png" if args.smoke else ROOT / "scripts" / "results" / f"bench_convert_bf16_diff_{tag}.png"
    diff = precision_difference(args.model, args.device, src, png)
    columns = ["mode", "seconds", "slices_per_s", "vs_naive", "network_seconds", "outside_share_of_process",
               "outside_share", "network_gflops", "share_of_peak", "peak_rss_mb"]
    cfg = translator.config.model
    print(f"{src.name} {volume.shape}, {cfg.generator} ngf {cfg.ngf}{' residual' if in_ch == 2 else ''}, "
          f"{flops_per_slice / 1e9:.2f} GFLOP per 240x240 slice; {info.get('gpu', info['cpu'])}, "
          f"{torch.get_num_threads()} threads, precision {translator.precision}, batch {translator.batch_size}")
    bf16_peak = peaks["bf16_matmul_gflops"]
    print(f"measured matmul peak: bf16 {f'{bf16_peak:.0f} GFLOP/s' if bf16_peak else 'not measured (no native bf16)'}, "
          f"fp32 {peaks['fp32_matmul_gflops']:.0f} GFLOP/s")
    print(table(rows, columns))
    print("generator alone, 240 x 240 slices:", ", ".join(f"{r['layout']} batch {r['batch']}: {r['slices_per_s']:.1f}/s"
                                                           for r in sweep))
    print(f"bf16 vs fp32 (axial, foreground): mean {diff['mean_share']:.3%}, 99.9th pct {diff['p99_9_share']:.3%}, "
          f"max {diff['max_share']:.2%} of the output range")
    if args.smoke:
        return
    path = write_json(named("bench_convert", args.fuse), {
        "machine": info, "volume": str(src.name), "shape": list(volume.shape), "model": str(args.model or default_model_path().name),
        "generator": cfg.generator, "ngf": cfg.ngf, "gflop_per_slice": flops_per_slice / 1e9, "peaks": peaks,
        "peak_used": peak_key, "bf16_vs_fp32": diff, "batch_and_layout": sweep, "args": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
