"""Conversion speed: medsynth's Translator against a one-slice-at-a-time fp32 loop, side by side in one run.

The volume is the packaged 240 x 240 x 155 sample T1 (or a synthetic one of that size). Rows:
- ``naive``: the same generator, one axial slice per forward pass, fp32, eager (model already loaded);
- ``medsynth <axis>``: ``Translator.translate_array`` end to end without model loading (reorientation,
  normalisation, batched SliceInferer, intensity mapping, inverse reorientation), per axis and fused;
- ``--big``: a 512 x 512 x 400 float volume, axial, in a child process, for its peak memory (target < 4 GB on CPU).
Figures: seconds per volume, slices/s, speed-up over naive, achieved TFLOP/s and fraction of the GPU's bf16 peak
(generator FLOPs per slice from torch's FLOP counter), peak memory. Prints a table, writes JSON to scripts/results/.

usage: python scripts/bench_convert.py [--model M | --generator resnet9 --ngf 64] [--repeats 3] [--big]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsynth.benchmark import count_flops, machine, peak_rss_mb, sync, table, write_json  # noqa: E402
from medsynth.inference import Translator  # noqa: E402


def make_translator(args: argparse.Namespace, device: str) -> Translator:
    """The packaged (or given) model, or an untrained generator of the requested size."""
    if args.model or args.generator is None:
        return Translator.from_file(args.model, device=device, batch_size=args.batch_size, compile=args.compile)
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.networks import build_generator, init_weights

    config = TrainConfig(model=ModelConfig(args.generator, args.ngf, args.ngf))
    nets = [build_generator(config.model) for _ in range(2)]
    for net in nets:
        init_weights(net)
    stats = {n: {"lo": 0.0, "hi": 1000.0, "background": 0.0, "threshold": 10.0} for n in config.names}
    return Translator(nets[0], nets[1], config, stats, device=device, batch_size=args.batch_size,
                      compile=args.compile)


def load_volume() -> tuple[np.ndarray, np.ndarray, str]:
    from medsynth.demo import SAMPLE_T1

    if SAMPLE_T1.exists():
        import nibabel as nib

        img = nib.load(SAMPLE_T1)
        return img.get_fdata(dtype=np.float32), img.affine, "packaged sample T1"
    from tests.conftest import phantom  # pragma: no cover - only without the packaged sample

    return phantom((240, 240, 155)), np.eye(4), "synthetic phantom"


def naive_loop(translator: Translator, volume: np.ndarray, direction: str) -> float:
    """One slice per forward pass, fp32, eager, contiguous; the volume already normalised (generous to it)."""
    from medsynth.transforms import intensity_stats, normalise

    net = translator.networks[direction]
    net = getattr(net, "_orig_mod", net).to(memory_format=torch.contiguous_format)
    x = normalise(torch.from_numpy(volume), intensity_stats(volume))
    s = translator.stride
    h, w = (int(math.ceil(n / s) * s) for n in x.shape[:2])
    sync(translator.device)
    tic = time.perf_counter()
    with torch.no_grad():
        for k in range(x.shape[2]):
            sl = torch.full((1, 1, h, w), -1.0)
            sl[0, 0, : x.shape[0], : x.shape[1]] = x[:, :, k]
            out = net(sl.to(translator.device))
            _ = out[0, 0, : x.shape[0], : x.shape[1]].cpu()
    sync(translator.device)
    if translator.channels_last:
        net.to(memory_format=torch.channels_last)
    return time.perf_counter() - tic


def big_volume_child(args: argparse.Namespace) -> dict:
    """Peak memory of a 512 x 512 x 400 axial conversion, measured in a fresh process."""
    code = (
        "import json, time, numpy as np, torch, sys; sys.path.insert(0, '.');"
        "from medsynth.benchmark import peak_rss_mb; from scripts.bench_convert import make_translator;"
        "import argparse; a = argparse.Namespace(**json.loads(sys.argv[1]));"
        "t = make_translator(a, a.device); rng = np.random.default_rng(0);"
        "v = np.zeros((512, 512, 400), np.float32); v[60:450, 50:460, 20:380] = 100 + 900 * rng.random((390, 410, 360), dtype=np.float32);"
        "r0 = peak_rss_mb(); tic = time.perf_counter(); out = t.translate_array(v, np.eye(4), axis='axial');"
        "print(json.dumps({'seconds': time.perf_counter() - tic, 'peak_rss_mb': peak_rss_mb(), 'rss_before_mb': r0,"
        "'gpu_peak_mb': torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, json.dumps(vars(args))], cwd=root, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model.pt (default: the packaged one, or --generator)")
    p.add_argument("--generator", default=None, help="time an untrained generator instead, e.g. resnet9")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per row (best is kept)")
    p.add_argument("--axes", default="axial,coronal,sagittal,all")
    p.add_argument("--big", action="store_true", help="also the 512 x 512 x 400 peak-memory run")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    translator = make_translator(args, args.device)
    device = translator.device
    volume, affine, what = load_volume()
    direction = translator.directions[0]
    info = machine()
    peak = info.get("gpu_bf16_peak_tflops")
    s = translator.stride
    example = torch.zeros(1, 1, int(math.ceil(240 / s) * s), int(math.ceil(240 / s) * s), device=device)
    net = translator.networks[direction]
    with torch.no_grad():
        flops_per_slice = count_flops(lambda: getattr(net, "_orig_mod", net)(example))
    translator.translate_array(volume[:, :, :8], affine, direction)  # warm-up (and compilation)
    rows = []
    naive = min(naive_loop(translator, volume, direction) for _ in range(args.repeats))
    rows.append({"mode": "naive: 1 slice/pass fp32, axial", "seconds": naive, "slices": volume.shape[2]})
    for axis in args.axes.split(","):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        best = math.inf
        for _ in range(args.repeats):
            sync(device)
            tic = time.perf_counter()
            translator.translate_array(volume, affine, direction, axis=axis)
            sync(device)
            best = min(best, time.perf_counter() - tic)
        slices = sum(volume.shape[i] for i in (0, 1, 2)) if axis == "all" else volume.shape[{"sagittal": 0, "coronal": 1, "axial": 2}[axis]]
        row = {"mode": f"medsynth {axis}" + (" (3 axes fused)" if axis == "all" else ""), "seconds": best,
               "slices": slices}
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
    for row in rows:
        row["slices_per_s"] = row["slices"] / row["seconds"]
        row["speedup_vs_naive"] = (naive / volume.shape[2]) / (row["seconds"] / row["slices"])
        row["tflops"] = flops_per_slice * row["slices"] / row["seconds"] / 1e12
        row["peak_fraction"] = row["tflops"] / peak if peak else None
    rows[0]["peak_rss_mb"] = peak_rss_mb()
    if args.big:
        big = big_volume_child(args)
        rows.append({"mode": "medsynth axial 512x512x400 (child process)", "seconds": big["seconds"], "slices": 400,
                     "slices_per_s": 400 / big["seconds"], "peak_rss_mb": big["peak_rss_mb"],
                     "peak_gpu_mb": big["gpu_peak_mb"]})
    columns = ["mode", "seconds", "slices_per_s", "speedup_vs_naive", "tflops", "peak_fraction", "peak_gpu_mb",
               "peak_rss_mb"]
    cfg = translator.config.model
    print(f"{what} {volume.shape}, {cfg.generator} ngf {cfg.ngf}, {flops_per_slice / 1e9:.1f} GFLOP per 240x240 "
          f"slice, device {info.get('gpu', info['cpu'])}, batch {translator.batch_size}, threads {info['torch_threads']}")
    print(table(rows, columns))
    path = write_json("bench_convert", {"machine": info, "volume": what, "shape": list(volume.shape),
                                        "generator": cfg.generator, "ngf": cfg.ngf,
                                        "gflop_per_slice": flops_per_slice / 1e9, "args": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
