"""Training speed: medsynth's step against a plain loop of the same networks, side by side in one run.

Rows (each on random [-1, 1] slices, so that the model step alone is timed; the data pipeline has its own rows):
- ``reference``: fp32, eager, batch 1, one thread, contiguous memory (how the reference CycleGAN runs on a CPU);
- ``medsynth``: batch ``--batch-size``, every usable core, bf16 autocast where the device has native bf16 (CUDA,
  or a CPU with ``avx512_bf16``/AMX), channels_last on CUDA, ``--compile`` optional;
- ``loop``: whole training iterations through the real data pipeline (cached 240 x 240 x 155 volumes, the
  MONAI slice sampler in ``--workers`` processes, or in the main process for the reference), with the time per
  step spent waiting for data beside the time computing, and medsynth's steps/s over the reference loop's.
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
from medsynth.devices import autocast_enabled, describe, set_threads  # noqa: E402


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
    amp = fast and autocast_enabled(device)
    targets = {"target_a": a, "target_b": b} if config.paired else {}

    def step() -> None:
        model.train_step(a, b, opt_g, opt_d, gens, discs, autocast=amp, **targets)

    threads = torch.get_num_threads()
    if not fast:
        torch.set_num_threads(1)
    try:
        flops = count_flops(step)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        per_step, calls = timed(step, device, seconds, warmup=3 if compile else 1)
    finally:
        torch.set_num_threads(threads)
    row = {"images_per_s": batch / per_step, "s_per_step": per_step, "steps_timed": calls,
           "precision": "bf16 autocast" if amp else "fp32", "threads": threads if fast else 1,
           "tflops": flops / per_step / 1e12, "gflop_per_step": flops / 1e9}
    if device.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def bench_loop(config: TrainConfig, device: torch.device, workers: int, fast: bool, steps: int) -> dict:
    """Whole iterations through the real pipeline: seconds per step waiting for data and computing."""
    import tempfile

    import nibabel as nib
    import numpy as np

    from medsynth.training import DomainData, SliceDataset, prepare_domains

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(2):
            vol = np.zeros((240, 240, 155), np.float32)
            vol[40:200, 30:210, 10:140] = rng.random((160, 180, 130), dtype=np.float32) * 1000 + 100
            for name, data in (("t1", vol), ("t2", 2000 - vol * (vol > 0))):
                (Path(tmp) / name).mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image(np.where(vol > 0, data, 0).astype(np.float32), np.eye(4)),
                         Path(tmp) / name / f"case{i}_{name}.nii.gz")
        a = DomainData(sorted((Path(tmp) / "t1").glob("*.nii.gz")), progress=False)
        b = DomainData(sorted((Path(tmp) / "t2").glob("*.nii.gz")), progress=False)
        pairs, _ = prepare_domains(a, b, config)
        threads = torch.get_num_threads()
        if not fast:
            torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            model = CycleGAN(config).to(device)
            opt_g, opt_d = model.optimizers()
            amp = fast and autocast_enabled(device)
            loader = torch.utils.data.DataLoader(SliceDataset(a, b, config, pairs), batch_size=config.batch_size,
                                                 sampler=range(10**9), num_workers=workers,
                                                 persistent_workers=workers > 0)
            it = iter(loader)
            for _ in range(3):  # warm-up: worker start, first allocations
                batch = next(it)
            wait = compute = 0.0
            for _ in range(steps):
                t0 = time.perf_counter()
                batch = {k: v.to(device) for k, v in next(it).items()}
                t1 = time.perf_counter()
                targets = ({"target_a": batch.get("a_target", batch["a"]), "target_b": batch.get("b_target", batch["b"])}
                           if pairs is not None else {})
                model.train_step(batch["a"], batch["b"], opt_g, opt_d, autocast=amp, **targets)
                sync(device)
                t2 = time.perf_counter()
                wait, compute = wait + t1 - t0, compute + t2 - t1
        finally:
            torch.set_num_threads(threads)
        return {"s_per_step": (wait + compute) / steps, "data_wait_s_per_step": wait / steps,
                "compute_s_per_step": compute / steps, "images_per_s": config.batch_size * steps / (wait + compute),
                "workers": workers, "precision": "bf16 autocast" if amp else "fp32", "threads": threads if fast else 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--generator", default="resnet9")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="medsynth row's batch (default 8 GPU, 1 CPU)")
    p.add_argument("--seconds", type=float, default=20.0, help="timing per row")
    p.add_argument("--compile", action="store_true", help="add a torch.compile row")
    p.add_argument("--small", action="store_true", help="also the CPU recipe (resnet6, ngf 16, 128 px), unpaired and paired")
    p.add_argument("--only-small", action="store_true", help="only the CPU recipe's rows")
    p.add_argument("--workers", type=int, default=1, help="data workers of the medsynth loop rows")
    p.add_argument("--loop-steps", type=int, default=60, help="steps per loop row (0: no loop rows)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    set_threads(None)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch = args.batch_size or (8 if device.type == "cuda" else 1)
    configs = [] if args.only_small else [("paper", TrainConfig(size=args.size, model=ModelConfig(args.generator, args.ngf, args.ngf)))]
    if args.small or args.only_small:
        cpu = ModelConfig("resnet6", 16, 32, upsample="nearest")
        configs.append(("cpu recipe, unpaired", TrainConfig(size=128, model=cpu)))
        # the CPU recipe with --paired as medsynth-train applies it (its augmentation and smoothing cost time too)
        from dataclasses import fields

        from medsynth.config import CPU_PAIRED_RECIPE

        model_keys = {f.name for f in fields(ModelConfig)}
        paired_model = ModelConfig("resnet6", 16, 32, upsample="nearest",
                                   **{k: v for k, v in CPU_PAIRED_RECIPE.items() if k in model_keys})
        configs.append(("cpu recipe, paired residual",
                        TrainConfig(size=128, paired=True, model=paired_model,
                                    **{k: v for k, v in CPU_PAIRED_RECIPE.items() if k not in model_keys})))
    info = machine()
    peak = info.get("gpu_bf16_peak_tflops")
    rows = []
    for name, config in configs:
        label = f"{name}: {config.model.generator} ngf{config.model.ngf} {config.size}px"
        if config.paired:
            # the step alone cannot show a residual's base channel: the loop rows below carry it
            a_ref = None
        else:
            a_ref = bench_step(config, device, 1, fast=False, compile=False, seconds=args.seconds)
            rows.append({"config": label, "variant": "reference step: fp32 eager batch 1, 1 thread", **a_ref})
            variants = [("medsynth", False)] + ([("medsynth + compile", True)] if args.compile else [])
            for vname, comp in variants:
                r = bench_step(config, device, batch, fast=True, compile=comp, seconds=args.seconds)
                r["speedup"] = r["images_per_s"] / a_ref["images_per_s"]
                rows.append({"config": label, "variant": f"{vname} step: {describe(device, r['precision'] != 'fp32')}, "
                                                         f"batch {batch}", **r})
        if args.loop_steps and not (name == "paper" and device.type == "cpu"):  # 35 s a step there
            config.batch_size = 1
            ref = bench_loop(config, device, 0, fast=False, steps=args.loop_steps)
            rows.append({"config": label, "variant": "reference loop: fp32, 1 thread, data in the main process", **ref})
            config.batch_size = batch
            fast = bench_loop(config, device, args.workers, fast=True, steps=args.loop_steps)
            fast["speedup"] = fast["images_per_s"] / ref["images_per_s"]
            rows.append({"config": label, "variant": f"medsynth loop: {describe(device, fast['precision'] != 'fp32')}, "
                                                     f"{args.workers} data worker(s)", **fast})
    for r in rows:
        r["peak_fraction"] = r["tflops"] / peak if peak and "tflops" in r else None
    columns = ["config", "variant", "images_per_s", "s_per_step", "data_wait_s_per_step", "compute_s_per_step",
               "speedup", "tflops", "peak_fraction", "peak_gpu_mb", "peak_rss_mb"]
    print(f"device: {info.get('gpu', info['cpu'])}, torch {info['torch']}, threads {torch.get_num_threads()}")
    print(table(rows, columns))
    path = write_json("bench_train", {"machine": info, "device": str(device), "args": vars(args), "rows": rows})
    print(f"wrote {path}")
    sync(device)


if __name__ == "__main__":
    main()
