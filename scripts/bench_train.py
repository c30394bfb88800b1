"""Training speed: medsynth's step against the reference implementation's way, side by side in one run.

Rows (each on random [-1, 1] slices, so that the model step alone is timed; the data pipeline has its own row):
- ``reference``: fp32, eager, batch 1, contiguous memory (what the reference CycleGAN does);
- ``medsynth``: batch ``--batch-size``, bf16 autocast and channels_last on CUDA, ``--compile`` optional;
- ``data``: training samples/s of the slice sampler (``SliceDataset``) with ``--workers``.
Figures: images/s, seconds per step, achieved TFLOP/s and the fraction of the GPU's bf16 peak (FLOPs counted by
torch's FLOP counter over one whole step), peak memory. Prints a table and writes JSON to scripts/results/.

usage: python scripts/bench_train.py [--size 256 --generator resnet9 --ngf 64] [--seconds 20] [--small]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsynth.benchmark import count_flops, machine, peak_rss_mb, sync, table, timed, write_json  # noqa: E402
from medsynth.config import ModelConfig, TrainConfig  # noqa: E402
from medsynth.cyclegan import CycleGAN  # noqa: E402


def bench_step(config: TrainConfig, device: torch.device, batch: int, fast: bool, compile: bool,
               seconds: float) -> dict:
    """Time CycleGAN steps of one configuration."""
    torch.manual_seed(0)
    model = CycleGAN(config).to(device)
    channels_last = fast and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt_g, opt_d = model.optimizers()
    gens, discs = model.generators, model.discriminators
    if compile:
        gens, discs = torch.compile(gens), torch.compile(discs)
    shape = (batch, 1, config.size, config.size)
    a = torch.rand(shape, device=device) * 2 - 1
    b = torch.rand(shape, device=device) * 2 - 1
    if channels_last:
        a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    amp = fast and device.type == "cuda"

    def step() -> None:
        model.train_step(a, b, opt_g, opt_d, gens, discs, autocast=amp)

    flops = count_flops(step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step, calls = timed(step, device, seconds, warmup=3 if compile else 1)
    row = {"images_per_s": batch / per_step, "s_per_step": per_step, "steps_timed": calls,
           "tflops": flops / per_step / 1e12, "gflop_per_step": flops / 1e9}
    if device.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def bench_data(config: TrainConfig, workers: int, seconds: float) -> dict:
    """Samples/s of the training slice sampler on synthetic volumes of 240 x 240 x 155."""
    import tempfile

    import nibabel as nib
    import numpy as np

    from medsynth.training import DomainData, SliceDataset

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(2):
            vol = np.zeros((240, 240, 155), np.float32)
            vol[40:200, 30:210, 10:140] = rng.random((160, 180, 130), dtype=np.float32) * 1000 + 100
            paths.append(Path(tmp) / f"v{i}.nii.gz")
            nib.save(nib.Nifti1Image(vol, np.eye(4)), paths[-1])
        a = DomainData(paths[:1], progress=False)
        b = DomainData(paths[1:], progress=False)
        loader = torch.utils.data.DataLoader(SliceDataset(a, b, config), batch_size=config.batch_size,
                                             sampler=range(10**9), num_workers=workers)
        it = iter(loader)
        next(it)
        n, tic = 0, time.perf_counter()
        while time.perf_counter() - tic < seconds:
            next(it)
            n += config.batch_size
        return {"images_per_s": n / (time.perf_counter() - tic), "workers": workers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--generator", default="resnet9")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="medsynth row's batch (default 8 GPU, 1 CPU)")
    p.add_argument("--seconds", type=float, default=20.0, help="timing per row")
    p.add_argument("--compile", action="store_true", help="add a torch.compile row")
    p.add_argument("--small", action="store_true", help="also the packaged model's size (resnet6, ngf 16, 96 px)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch = args.batch_size or (8 if device.type == "cuda" else 1)
    configs = [("paper", TrainConfig(size=args.size, model=ModelConfig(args.generator, args.ngf, args.ngf)))]
    if args.small:
        configs.append(("small", TrainConfig(size=96, model=ModelConfig("resnet6", 16, 16))))
    info = machine()
    peak = info.get("gpu_bf16_peak_tflops")
    rows = []
    for name, config in configs:
        label = f"{config.model.generator} ngf{config.model.ngf} {config.size}px"
        ref = bench_step(config, device, 1, fast=False, compile=False, seconds=args.seconds)
        rows.append({"config": label, "variant": "reference: fp32 eager batch 1", **ref})
        variants = [("medsynth", False)] + ([("medsynth + compile", True)] if args.compile else [])
        for vname, comp in variants:
            extra = "bf16 channels_last " if device.type == "cuda" else ""
            r = bench_step(config, device, batch, fast=True, compile=comp, seconds=args.seconds)
            r["speedup"] = r["images_per_s"] / ref["images_per_s"]
            rows.append({"config": label, "variant": f"{vname}: {extra}batch {batch}", **r})
    for r in rows:
        r["peak_fraction"] = r["tflops"] / peak if peak else None
    data = bench_data(TrainConfig(size=args.size, batch_size=batch), args.workers, min(args.seconds, 10))
    rows.append({"config": "slice sampler", "variant": f"data, {args.workers} workers", **data})
    columns = ["config", "variant", "images_per_s", "s_per_step", "speedup", "tflops", "peak_fraction",
               "peak_gpu_mb", "peak_rss_mb"]
    print(f"device: {info.get('gpu', info['cpu'])}, torch {info['torch']}, threads {info['torch_threads']}")
    print(table(rows, columns))
    path = write_json("bench_train", {"machine": info, "device": str(device), "args": vars(args), "rows": rows})
    print(f"wrote {path}")
    sync(device)


if __name__ == "__main__":
    main()
