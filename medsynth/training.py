"""The training loop: data, devices, bf16, schedule, checkpoints and exact resume, DDP, logging, progress.

Every training sample is a pure function of (seed, global sample number): the volume picked, the slice and
the augmentation are drawn from generators seeded by those two numbers. A resumed run therefore sees exactly
the data the uninterrupted run would have seen, without saving any data-loader state, and ranks under
``torchrun`` draw disjoint samples.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from medsynth.bias import BIAS_CORRECTIONS, describe_bias_correction
from medsynth.config import AXES, LESION_SITES, TARGET_NORMS, TRAIN_AXES, TrainConfig, describe_axes
from medsynth.errors import InputError
from medsynth.devices import autocast_enabled, describe, resolve_device, set_threads, usable_cores
from medsynth.files import atomic_path, atomic_save, write_atomic
from medsynth.pictures import save_grid
from medsynth.io import find_files, is_image2d, kind_of_inputs

CHECKPOINT_FORMAT = "medsynth-checkpoint"
#: What a resumed run may change: where and how fast it runs, not what it learns.
RUNTIME_OPTIONS = ("device", "workers", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                   "val_every", "compile", "cache_dir", "threads")


@dataclass
class Distributed:
    """Where this process stands under ``torchrun`` (world 1 when run directly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def find_inputs(sources: Sequence[str], option: str) -> list[Path]:
    """Files of one domain; refuses an empty list with the option's name."""
    if not sources:
        raise InputError(option, "no input given")
    return find_files(sources, what="any")


def unwrap_input_error(exc: BaseException) -> InputError | None:
    """MONAI wraps errors raised inside transforms; find ours in the chain."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, InputError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class DomainData:
    """One domain's volumes, decoded, reoriented and normalised once (MONAI ``CacheDataset``)."""

    def __init__(self, files: Sequence[Path], enhance: Sequence[str] = (), workers: int = 0,
                 cache_dir: str | None = None, progress: bool = True, bias_correction: str = "none") -> None:
        from monai.data import CacheDataset, PersistentDataset

        from medsynth.transforms import IntensityStats, prepare_transform

        self.files = list(files)
        items = [{"image": str(f), "expect": "any" if is_image2d(f) else "volume"} for f in files]
        volumes = [i for i in items if i["expect"] == "volume"]
        images = [i for i in items if i["expect"] == "any"]
        self.items: list[dict[str, Any]] = []
        for group, expect in ((volumes, "volume"), (images, "any")):
            if not group:
                continue
            # a 2D image has no bias field to speak of (and N4 wants a volume): only volumes are corrected
            transform = prepare_transform("image", expect=expect, enhance=enhance,
                                          bias_correction=bias_correction if expect == "volume" else "none")
            data = [{"image": i["image"]} for i in group]
            if cache_dir:
                # PersistentDataset hashes the item: a changed file or enhancement must not reuse old volumes
                for item in data:
                    info = Path(item["image"]).stat()
                    item["_key"] = f"{info.st_size}-{info.st_mtime_ns}-{','.join(enhance)}-{bias_correction}"
            try:
                ds = PersistentDataset(data, transform, cache_dir=cache_dir) if cache_dir else \
                    CacheDataset(data, transform, num_workers=max(workers, 1), progress=progress)
                cached = [ds[i] for i in range(len(ds))]
            except Exception as exc:
                err = unwrap_input_error(exc)
                if err is None:
                    raise
                raise err from None
            self.items.extend(cached)
        self.volumes = [item["image"].as_tensor() if hasattr(item["image"], "as_tensor") else item["image"]
                        for item in self.items]
        self.affines = [np.asarray(getattr(item["image"], "affine", np.eye(4)), np.float64) for item in self.items]
        # the order of the cached items: volumes first, then 2D images
        self.paths = [Path(i["image"]) for i in volumes + images]
        self.stats = IntensityStats.median([IntensityStats.from_dict(item["image_stats"]) for item in self.items])
        self.is_2d = all(v.shape[-1] == 1 for v in self.volumes)

    def add_base(self, target_quantiles: torch.Tensor, own_quantiles: torch.Tensor, context: int = 0,
                 axis: str = "axial", target_norm: str = "histogram") -> None:
        """Stack channels onto each volume for residual generators: the inverted-histogram base (see
        :class:`~medsynth.networks.ResidualGenerator`), computed on the whole volume as conversion does; for 2.5D
        (``context``) the base of the neighbouring slices along ``axis``; and last what the losses compare with
        (:attr:`~medsynth.config.TrainConfig.target_norm`): the volume standardised onto its own domain's pooled
        histogram (``histogram``: the training patients' tissues at the same levels, whatever their scanners made
        of them), or the volume as normalised alone (``percentile``: each head's own contrast)."""
        from medsynth.config import AXIS_INDEX
        from medsynth.networks import histogram_match, inverted_histogram_match, neighbour_indices, neighbour_offsets

        dim = 3 if self.is_2d else AXIS_INDEX[axis] + 1
        volumes = []
        for v in self.volumes:
            base = inverted_histogram_match(v[:1][None], target_quantiles)[0]
            index = torch.arange(base.shape[dim])
            neighbours = [base.index_select(dim, neighbour_indices(index, d, base.shape[dim]))
                          for d in neighbour_offsets(context)]
            target = histogram_match(v[:1][None], own_quantiles)[0] if target_norm == "histogram" else v[:1].clone()
            volumes.append(torch.cat([v, base, *neighbours, target]))
        self.volumes = volumes

    def quantiles(self) -> torch.Tensor:
        """The domain's pooled foreground quantiles (normalised units), for the inverted-histogram map and the
        fair baseline."""
        from medsynth.networks import domain_quantiles

        step = max(1, sum(v[:1].numel() for v in self.volumes) // 4_000_000)
        return domain_quantiles(torch.cat([v[:1].flatten()[::step] for v in self.volumes]))

    def __len__(self) -> int:
        return len(self.volumes)


def _finite_pair(values: tuple[Any, ...]) -> bool:
    """Whether a configured range is two finite numbers (its order is each caller's own bound)."""
    return len(values) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _shown(values: tuple[Any, ...]) -> str:
    """A configured range as an error names it: ``16 4``, with anything not a number as its repr."""
    return " ".join(f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in values)


def grid_axis(config: TrainConfig) -> str:
    """The axis of the sample grids' slices: the training axis, or for multi-planar training the validation
    axis (axial by default, as conversion; axial too when validation fuses all three)."""
    if config.axis != "all":
        return config.axis
    return config.val_axis if config.val_axis in AXES else "axial"


def pair_volumes(a: DomainData, b: DomainData) -> list[tuple[int, int]]:
    """Indices ``(i, j)`` of registered pairs, matched by case name; each pair must share shape and affine.

    Raises:
        InputError: a volume without its partner, or a pair whose grids differ (naming both files).
    """
    from medsynth.evaluation import pair_cases

    pairs = pair_cases(a.paths, b.paths)
    index_a = {p: i for i, p in enumerate(a.paths)}
    index_b = {p: j for j, p in enumerate(b.paths)}
    partnered = {pair.ref for pair in pairs}
    for path in b.paths:
        if path not in partnered:
            raise InputError(path, "--paired: no partner of this case among the first domain's files")
    out = []
    for pair in pairs:
        i, j = index_a[pair.pred], index_b[pair.ref]
        if a.volumes[i].shape != b.volumes[j].shape:
            raise InputError(pair.ref, f"--paired: shape {tuple(b.volumes[j].shape[1:])} differs from its partner "
                                       f"{pair.pred} {tuple(a.volumes[i].shape[1:])}")
        if not np.allclose(a.affines[i], b.affines[j], atol=1e-3):
            raise InputError(pair.ref, f"--paired: affine differs from its partner {pair.pred}: the pair is not "
                                       "on one grid (register or resample it first)")
        out.append((i, j))
    return out


def prepare_domains(a: DomainData, b: DomainData, config: TrainConfig,
                    quantiles: tuple[torch.Tensor, torch.Tensor] | None = None,
                    ) -> tuple[list[tuple[int, int]] | None, tuple[torch.Tensor, torch.Tensor]]:
    """What training needs beyond the cached volumes: the registered pairs (``--paired``), each domain's pooled
    quantiles (``quantiles``: given ones, e.g. those of an ``--init`` model), and for residual generators the base
    and target channels (added to the volumes; :attr:`TrainConfig.target_norm`)."""
    pairs = pair_volumes(a, b) if config.paired else None
    quantiles = quantiles if quantiles is not None else (a.quantiles(), b.quantiles())
    if config.model.residual == "invert":
        a.add_base(quantiles[1], quantiles[0], config.model.context, config.train_axes[0], config.target_norm)
        b.add_base(quantiles[0], quantiles[1], config.model.context, config.train_axes[0], config.target_norm)
    return pairs, quantiles


class SliceDataset(torch.utils.data.Dataset):
    """Training samples: sample ``k`` is drawn from generators seeded by ``(seed, k)``.

    Unpaired: one random slice of a random A volume and one of a random B volume. Paired: one random pair,
    its two volumes stacked as channels so that one slice, crop, flip and affine serve both; with
    ``intensity_augment`` each input gets its own random intensity changes and the clean images are the
    paired targets (``a_target``, ``b_target``). ``extra_a``/``extra_b`` (unpaired volumes beside the pairs) add
    one random slice of one of them to every sample (``extra_a``, ``extra_b``), augmented as its domain's inputs
    are, drawn from a random stream of their own so that the pairs' samples stay those of a run without them.
    With ``axis="all"`` each sample's slices (pairs, unpaired and extra alike) lie along one axis drawn from a
    third stream of its own."""

    def __init__(self, a: DomainData, b: DomainData, config: TrainConfig,
                 pairs: Sequence[tuple[int, int]] | None = None, extra_a: DomainData | None = None,
                 extra_b: DomainData | None = None) -> None:
        from medsynth.transforms import intensity_augment_transform, train_slice_transform

        from medsynth.config import AXIS_INDEX
        from medsynth.transforms import slice_coverage

        self.a, self.b, self.seed = a, b, config.seed
        self.pairs = list(pairs) if pairs else None
        self.intensity = intensity_augment_transform("image") if config.intensity_augment else None
        self.lesion_augment = float(config.lesion_augment)
        #: every paired sample carries ``lesion`` (where its synthetic lesion is, zeros without one) for the lesion term
        self.lesion_weight = config.lambda_lesion > 0 and self.lesion_augment > 0
        self.lesion_options = {"dark": tuple(config.lesion_dark), "core": float(config.lesion_core),
                               "radius": tuple(float(r) for r in config.lesion_radius),
                               "site": config.lesion_site}
        self.augment_base = bool(config.augment_base)
        # one transform and one coverage table per axis; a 2D domain has only its own plane
        self.axes = config.train_axes

        def plane(domain: DomainData, axis: str) -> str:
            return "axial" if domain.is_2d else axis

        def transforms(domain: DomainData) -> dict[str, Any]:
            return {axis: train_slice_transform("image", config.size, plane(domain, axis), config.min_foreground,
                                                config.augment, config.flip) for axis in self.axes}

        def coverage(domain: DomainData, volumes: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
            return {axis: [slice_coverage(v, AXIS_INDEX[plane(domain, axis)]) for v in volumes] for axis in self.axes}

        if self.pairs is not None:
            self.stacked = [torch.cat([a.volumes[i], b.volumes[j]]) for i, j in self.pairs]
            self.coverage_pairs = coverage(a, self.stacked)
            self.transform_pair = transforms(a)
        self.coverage = {"a": coverage(a, a.volumes), "b": coverage(b, b.volumes)}
        self.transform_a, self.transform_b = transforms(a), transforms(b)
        self.extras = {name: domain for name, domain in (("a", extra_a), ("b", extra_b)) if domain is not None}
        for name, domain in self.extras.items():
            self.coverage[f"extra_{name}"] = coverage(domain, domain.volumes)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        seeds = rng.integers(0, 2**31 - 1, size=4)
        # the axis from a stream of its own: a one-axis run draws exactly the samples it drew before
        axis = (self.axes[int(np.random.default_rng([self.seed, k, 3]).integers(len(self.axes)))]
                if len(self.axes) > 1 else self.axes[0])
        out = {}
        if self.pairs is not None:
            index = int(rng.integers(len(self.pairs)))
            transform = self.transform_pair[axis]
            transform.set_random_state(seed=int(seeds[0]))
            x = _plain(transform({"image": self.stacked[index],
                                  "image_coverage": self.coverage_pairs[axis][index]})["image"])
            split = self.a.volumes[self.pairs[index][0]].shape[0]
            out["a"], out["b"] = x[:split].contiguous(), x[split:].contiguous()
            if self.lesion_weight:
                out["lesion"] = torch.zeros((1, *out["a"].shape[1:]))
            if self.lesion_augment > 0 and rng.random() < self.lesion_augment:
                from medsynth.lesions import paste_lesions

                # into inputs and targets alike: the clean targets below are these images
                pasted = paste_lesions(out["a"], out["b"], np.random.default_rng([self.seed, k, 1]),
                                       return_weight=self.lesion_weight, **self.lesion_options)
                out["a"], out["b"] = pasted[0], pasted[1]
                if self.lesion_weight:
                    out["lesion"] = pasted[2]
            if self.intensity is not None:
                out["a_target"], out["b_target"] = out["a"], out["b"]
        else:
            for name, domain, transform, s in (("a", self.a, self.transform_a, seeds[0]),
                                               ("b", self.b, self.transform_b, seeds[1])):
                index = int(rng.integers(len(domain)))
                transform[axis].set_random_state(seed=int(s))
                out[name] = _plain(transform[axis]({"image": domain.volumes[index],
                                                    "image_coverage": self.coverage[name][axis][index]})["image"])
        augment = [("a", seeds[2]), ("b", seeds[3])]
        if self.extras:
            extra_rng = np.random.default_rng([self.seed, k, 2])
            extra_seeds = extra_rng.integers(0, 2**31 - 1, size=4)
            for name, domain in self.extras.items():
                key = f"extra_{name}"
                transform = (self.transform_a if name == "a" else self.transform_b)[axis]
                index = int(extra_rng.integers(len(domain)))
                transform.set_random_state(seed=int(extra_seeds[0 if name == "a" else 1]))
                out[key] = _plain(transform({"image": domain.volumes[index],
                                             "image_coverage": self.coverage[key][axis][index]})["image"])
                augment.append((key, extra_seeds[2 if name == "a" else 3]))
        if self.intensity is not None:
            for name, s in augment:
                # the image channel; the base is the clean volume's (as at conversion) unless --augment-base
                # hands it out again by the augmented image's rank
                self.intensity.set_random_state(seed=int(s))
                image = _plain(self.intensity({"image": out[name][:1]})["image"])
                rest = out[name][1:]
                if self.augment_base and out[name].shape[0] >= 3:
                    rest = rest.clone()
                    rest[0] = rank_base(image[0], out[name][1])
                out[name] = torch.cat([image, rest])
        return out


def rank_base(image: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The base of an intensity-augmented slice: the clean slice's base values handed out by the augmented image's
    rank (brightest image pixel, darkest base value: the map is inverted).

    Conversion computes the base by matching a whole volume's histogram, which undoes any global monotone change
    of contrast; what it cannot undo, and what the network must learn to live with, is what changes the order of
    the pixels: a smooth bias field, noise. Re-ranking keeps exactly that and drops the rest.

    Args:
        image: the augmented image channel, (H, W), background -1.
        base: the clean slice's base channel, (H, W).

    Returns:
        The new base, (H, W); background pixels keep ``base``'s values.
    """
    from medsynth.intensity import BACKGROUND_LEVEL

    fg = image > BACKGROUND_LEVEL
    if not bool(fg.any()):
        return base
    values = torch.sort(base[fg], descending=True).values
    order = torch.argsort(image[fg], stable=True)
    ranked = torch.empty_like(values)
    ranked[order] = values
    out = base.clone()
    out[fg] = ranked
    return out


def _plain(x: Any) -> torch.Tensor:
    # plain float32 tensors: MONAI metadata would ride along into the image pools and the checkpoints
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return x.to(torch.float32).contiguous()


class StepSampler(torch.utils.data.Sampler):
    """Global sample numbers for steps ``start .. total-1`` of this rank."""

    def __init__(self, start: int, total: int, batch_size: int, dist: Distributed) -> None:
        self.start, self.total, self.batch_size, self.dist = start, total, batch_size, dist

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.total):
            base = (step * self.dist.world + self.dist.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return max(self.total - self.start, 0) * self.batch_size


def fixed_slices(domain: DomainData, axis: str, count: int = 2) -> list[torch.Tensor]:
    """Whole middle slices of the first volumes: the same every time, so sample grids show how the translation
    of one slice changes during training."""
    from medsynth.config import AXIS_INDEX
    from medsynth.transforms import slice_coverage

    axis_index = 2 if domain.is_2d else AXIS_INDEX[axis]
    out = []
    for volume in domain.volumes[:count]:
        coverage = slice_coverage(volume, axis_index)
        nonzero = torch.nonzero(coverage > 0).flatten()
        middle = int(nonzero[len(nonzero) // 2]) if len(nonzero) else volume.shape[axis_index + 1] // 2
        out.append(volume.select(axis_index + 1, middle))
    return out


def fixed_samples(a: DomainData, b: DomainData, axis: str, stride: int, count: int = 2,
                  extra_a: DomainData | None = None, extra_b: DomainData | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fixed_slices` of both domains, padded with background to one common size that the generator
    takes (a multiple of its stride); whole slices, not training crops, so a person sees the anatomy. Unpaired
    volumes (``extra_a``, ``extra_b``) add the middle slice of their first volume after their domain's."""
    from monai.transforms import ResizeWithPadOrCrop

    slices_a = fixed_slices(a, axis, count) + (fixed_slices(extra_a, axis, 1) if extra_a is not None else [])
    slices_b = fixed_slices(b, axis, count) + (fixed_slices(extra_b, axis, 1) if extra_b is not None else [])
    dims = [max(s.shape[i] for s in slices_a + slices_b) for i in (1, 2)]
    size = [int(math.ceil(d / stride) * stride) for d in dims]
    pad = ResizeWithPadOrCrop(size, value=-1.0)

    def stack(slices: list[torch.Tensor]) -> torch.Tensor:
        tiles = [pad(s) for s in slices]
        return torch.stack([t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t) for t in tiles])

    return stack(slices_a), stack(slices_b)


class Interrupted(Exception):
    """Training stopped on request after writing a checkpoint."""

    def __init__(self, run_dir: Path, step: int) -> None:
        self.run_dir, self.step = run_dir, step
        super().__init__(f"stopped at step {step}; checkpoint written; continue with: "
                         f"medsynth-train --out {run_dir} --resume")


#: what a model must share with a run that ``--init`` starts from it: the generators' weights must fit
INIT_OPTIONS = ("generator", "ngf", "norm", "upsample", "residual", "residual_input", "gate_scale", "context",
                "base_smooth")


def init_source(config: TrainConfig) -> dict[str, Any] | None:
    """The model a run starts from (``config.init``), checked against the run: ``None`` without one.

    Returns:
        The model file's payload, its generators ``a_to_b``/``b_to_a`` and ``stats`` arranged in the run's domain
        order (the run may name its domains the other way round).

    Raises:
        InputError: unreadable model, domains other than the run's, or a network option that differs (the error
            names the option, e.g. ``--ngf``).
    """
    if not config.init:
        return None
    from medsynth.inference import default_model_path, read_model_file

    path = default_model_path() if config.init == "default" else Path(config.init)
    payload = read_model_file(path)
    theirs = TrainConfig.from_dict(payload.get("config", {}))
    for key in INIT_OPTIONS:
        mine, other = getattr(config.model, key), getattr(theirs.model, key)
        if mine != other:
            raise InputError(f"--{key.replace('_', '-')}", f"{mine} differs from the --init model's {other} "
                                                           f"({path}): leave it out to take the model's")
    names = tuple(config.names)
    generators = dict(payload["generators"])
    if tuple(theirs.names) == names[::-1]:
        generators = {"a_to_b": generators["b_to_a"], "b_to_a": generators["a_to_b"]}
    elif tuple(theirs.names) != names:
        raise InputError("--init", f"{path}: its domains {','.join(theirs.names)} are not this run's "
                                   f"{','.join(names)} (--names)")
    return {**payload, "path": str(path), "generators": generators}


class Trainer:
    """Runs :class:`~medsynth.config.TrainConfig` to a ``model.pt``.

    Args:
        config: the run's configuration (``config.out`` is the run folder).
        resume: continue the run in ``config.out`` from its latest checkpoint.
        progress: show a tqdm bar (rank 0 only).
    """

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True,
                 runtime: Sequence[str] = RUNTIME_OPTIONS) -> None:
        self.config = config
        self.resume = resume
        self.runtime = tuple(runtime)
        self.progress = progress
        self.dist = Distributed.from_env()
        self.run_dir = Path(config.out)
        self._stop: Any = None
        self._train_seconds = self._train_seconds_at_start = 0.0
        self._fair_scores: dict[str, dict[str, float]] = {}
        #: sample-grid rows (of domain A, of domain B) that show an unpaired volume: the last of each domain's
        self._unpaired_samples = (0, 0)

    # ---- set-up -------------------------------------------------------------------------------------------
    def _check_run_dir(self) -> TrainConfig:
        latest = self.run_dir / "checkpoints" / "latest.pt"
        if self.resume:
            if not latest.exists():
                raise InputError(self.run_dir, "nothing to resume: no checkpoints/latest.pt in this run folder")
            try:
                saved = TrainConfig.load(self.run_dir / "config.json")
            except (OSError, ValueError, TypeError) as exc:
                raise InputError(self.run_dir / "config.json", f"cannot read the run's configuration ({type(exc).__name__})") from None
            for key in self.runtime:
                setattr(saved, key, getattr(self.config, key))
            saved.out = str(self.run_dir)
            return saved
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise InputError(self.run_dir, "the run folder exists; use --resume to continue it, or choose a new --out")
        return self.config

    def _validate(self, config: TrainConfig) -> None:
        if config.size % 4 or config.size < 16:
            raise InputError("--size", f"{config.size} must be a multiple of 4 and at least 16")
        from medsynth.networks import generator_stride

        stride = generator_stride(config.model)
        if config.size % stride:
            raise InputError("--size", f"{config.size} must be a multiple of {stride} for the {config.model.generator} generator")
        if config.batch_size < 1:
            raise InputError("--batch-size", f"{config.batch_size} must be at least 1")
        if config.steps < 1:
            raise InputError("--steps", f"{config.steps}: at least one step is needed")
        if config.decay_steps is not None and not 0 <= config.decay_steps <= config.steps:
            raise InputError("--decay-steps", f"{config.decay_steps} must be between 0 and --steps ({config.steps})")
        if config.threads is not None and config.threads < 1:
            raise InputError("--threads", f"{config.threads} must be at least 1")
        for option in ("lambda_adv", "lambda_cycle", "lambda_identity", "lambda_paired", "lambda_ssim",
                       "lambda_histogram", "lambda_lesion"):
            value = getattr(config, option)
            if not math.isfinite(value) or value < 0:
                raise InputError(f"--{option.replace('_', '-')}", f"{value:g} must be a finite number, not negative")
        if config.lambda_adv <= 0 and config.lambda_cycle <= 0 and not (config.paired and config.lambda_paired > 0):
            raise InputError("--lambda-adv", "nothing to learn: no adversarial, cycle or paired term is left")
        for option in ("log_every", "sample_every", "checkpoint_every", "val_every", "keep_checkpoints"):
            if getattr(config, option) < 1:
                raise InputError(f"--{option.replace('_', '-')}", f"{getattr(config, option)} must be at least 1")
        if config.workers < -1:
            raise InputError("--workers", f"{config.workers} must be -1 (auto) or more")
        for option in ("pool_size",):
            if getattr(config, option) < 0:
                raise InputError(f"--{option.replace('_', '-')}", f"{getattr(config, option)} must not be negative")
        if config.model.context < 0:
            raise InputError("--context", f"{config.model.context} must not be negative")
        if not math.isfinite(config.model.base_smooth) or config.model.base_smooth < 0:
            raise InputError("--base-smooth", f"{config.model.base_smooth:g} must be a finite number, not negative")
        if config.model.base_smooth and config.model.residual != "invert":
            raise InputError("--base-smooth", "smoothing the base is for residual generators: add --residual invert")
        if not 0.0 <= config.lesion_augment <= 1.0:
            raise InputError("--lesion-augment", f"{config.lesion_augment:g} is not a probability (0 to 1)")
        if config.lambda_lesion > 0 and not (config.paired and config.lesion_augment > 0 and config.lambda_paired > 0):
            raise InputError("--lambda-lesion", "weighs the synthetic lesions of paired training: it needs --paired, "
                                                "--lesion-augment P and --lambda-paired above 0")
        if config.bias_correction not in BIAS_CORRECTIONS:
            raise InputError("--bias-correction", f"{config.bias_correction!r} is not one of "
                                                  f"{', '.join(BIAS_CORRECTIONS)}")
        radius = tuple(config.lesion_radius)
        if not _finite_pair(radius) or not 0 < radius[0] <= radius[1]:
            raise InputError("--lesion-radius", f"{_shown(radius)} is not two radii in pixels, 0 < MIN <= MAX")
        if config.lesion_site not in LESION_SITES:
            raise InputError("--lesion-site", f"{config.lesion_site!r} is not one of {', '.join(LESION_SITES)}")
        # set in Python or JSON only (no option): a quantile range and a probability, checked as the options are
        dark = tuple(config.lesion_dark)
        if not _finite_pair(dark) or not 0 <= dark[0] <= dark[1] <= 1:
            raise InputError("lesion_dark", f"{_shown(dark)} is not two T1 foreground quantiles, 0 <= LOW <= HIGH <= 1")
        if not (isinstance(config.lesion_core, (int, float)) and 0.0 <= config.lesion_core <= 1.0):
            raise InputError("lesion_core", f"{config.lesion_core!r} is not a probability (0 to 1)")
        if config.target_norm not in TARGET_NORMS:
            raise InputError("--target-norm", f"{config.target_norm!r} is not one of {', '.join(TARGET_NORMS)}")
        if config.target_norm != "histogram" and config.model.residual != "invert":
            # other generators compare with the images as normalised alone already
            raise InputError("--target-norm", "chooses the targets of residual generators: add --residual invert")
        if config.lesion_augment > 0 and not config.paired:
            raise InputError("--lesion-augment", "pastes lesions into registered pairs: it needs --paired")
        if config.lesion_augment == 0:
            # shaping lesions that are never pasted would be silently ignored
            for option, given, default in (("--lesion-radius", radius, TrainConfig.lesion_radius),
                                           ("--lesion-site", config.lesion_site, TrainConfig.lesion_site)):
                if given != default:
                    raise InputError(option, "shapes the synthetic lesions: it needs --lesion-augment P above 0")
        if config.model.context and (config.model.residual != "invert" or config.model.residual_input != "base"):
            raise InputError("--context", "2.5D context is for residual generators that see the base: add "
                                          "--residual invert --residual-input base")
        if config.axis not in TRAIN_AXES:
            raise InputError("--axis", f"{config.axis!r} is not one of {', '.join(TRAIN_AXES)}")
        if config.axis == "all" and config.model.context:
            # the neighbours' bases are stacked once per volume, along one axis
            raise InputError("--axis", "multi-planar training (all) takes no 2.5D context: drop --context or "
                                       "pick one axis")
        if config.val_axis not in TRAIN_AXES:
            # validation converts as medsynth-convert --axis does: one axis, or the three fused
            raise InputError("val_axis", f"{config.val_axis!r} is not one of {', '.join(TRAIN_AXES)}")
        if (config.extra_a or config.extra_b) and not config.paired:
            raise InputError("--unpaired-a" if config.extra_a else "--unpaired-b",
                             "unpaired volumes join --paired training; without --paired every volume is unpaired: "
                             "give them with --a/--b (--t1/--t2)")
        if (config.extra_a or config.extra_b) and config.lambda_adv <= 0 and config.lambda_cycle <= 0:
            raise InputError("--unpaired-a" if config.extra_a else "--unpaired-b",
                             "unpaired volumes teach only through the adversarial and cycle terms: give "
                             "--lambda-adv or --lambda-cycle above 0")
        if len(config.names) != 2 or config.names[0] == config.names[1] or not all(config.names):
            raise InputError("--names", f"{','.join(config.names)}: give two different domain names, e.g. t1,t2")

    def _init_distributed(self) -> torch.device:
        device = resolve_device(self.config.device, self.dist.local_rank)
        if device.type == "cpu":
            # every core this process may use, shared among the ranks on this machine
            set_threads(self.config.threads, int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world)))
        if self.dist.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend=backend)
        return device

    # ---- the run ------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train and return the path of ``model.pt``."""
        try:
            return self._run()
        finally:
            self._release_interrupt()

    def _run(self) -> Path:
        from medsynth.cyclegan import CycleGAN

        config = self._check_run_dir()
        self.config = config
        self._validate(config)
        files_a = find_inputs(config.a, "--a")
        files_b = find_inputs(config.b, "--b")
        extra_files = {"a": find_inputs(config.extra_a, "--unpaired-a") if config.extra_a else [],
                       "b": find_inputs(config.extra_b, "--unpaired-b") if config.extra_b else []}
        # one kind for both domains (a 2D/3D mix is refused before any work); conversion checks its inputs by it
        config.image_kind = kind_of_inputs(files_a + files_b + extra_files["a"] + extra_files["b"])
        val_pairs = self._validation_pairs(config)
        # the run keeps the files themselves, so a resume elsewhere, or after a folder gained files, is the same run
        config.a = [str(p.absolute()) for p in files_a]
        config.b = [str(p.absolute()) for p in files_b]
        config.extra_a = [str(p.absolute()) for p in extra_files["a"]]
        config.extra_b = [str(p.absolute()) for p in extra_files["b"]]
        config.val_a = [str(p.absolute()) for p, _ in val_pairs]
        config.val_b = [str(p.absolute()) for _, p in val_pairs]
        device = self._init_distributed()
        data_a, data_b = (DomainData(files, config.enhance, config.workers, config.cache_dir,
                                     self.progress and self.dist.main, config.bias_correction)
                          for files in (files_a, files_b))
        init = init_source(config) if not self.resume else None
        given = init is not None and all("quantiles" in init["stats"].get(n, {}) for n in config.names)
        pairs, quantiles = prepare_domains(data_a, data_b, config, tuple(  # type: ignore[arg-type]
            torch.tensor(init["stats"][name]["quantiles"], dtype=torch.float32) for name in config.names)
            if given else None)
        self.stats = {name: data.stats.to_dict() | {"quantiles": [float(v) for v in q]}
                      for name, data, q in zip(config.names, (data_a, data_b), quantiles)}
        # the unpaired volumes: translated as any source volume is (the base onto the other domain's pooled
        # histogram), their targets as the paired data's (target_norm); the model's statistics stay the paired data's
        extras: dict[str, DomainData] = {}
        for key, files, other, own in (("a", extra_files["a"], quantiles[1], quantiles[0]),
                                       ("b", extra_files["b"], quantiles[0], quantiles[1])):
            if files:
                extras[key] = DomainData(files, config.enhance, config.workers, config.cache_dir,
                                         self.progress and self.dist.main, config.bias_correction)
                if config.model.residual == "invert":
                    extras[key].add_base(other, own, config.model.context, config.train_axes[0], config.target_norm)
        if init is not None:
            # the source's statistics: a translator of the step-0 networks is the source model, exactly
            self.stats = {name: dict(init["stats"][name]) for name in config.names}

        # everything is valid: only now does the run folder appear
        if self.dist.main:
            for sub in ("checkpoints", "samples", "tensorboard"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            if not self.resume:
                config.save(self.run_dir / "config.json")

        torch.manual_seed(config.seed)
        model = CycleGAN(config)
        model.set_histogram_targets(*quantiles)
        if init is not None:
            for net, key in ((model.g_ab, "a_to_b"), (model.g_ba, "b_to_a")):
                net.load_state_dict({k: v.float() if v.is_floating_point() else v
                                     for k, v in init["generators"][key].items()})
        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt_g, opt_d = model.optimizers()
        schedulers = model.schedulers(opt_g, opt_d)
        start = 0
        history: list[dict[str, Any]] = []
        if self.resume:
            start, history = self._load_checkpoint(model, opt_g, opt_d, schedulers, device)

        generators: nn.Module = model.generators
        discriminators: nn.Module = model.discriminators
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            generators = DDP(generators, device_ids=ids)
            discriminators = DDP(discriminators, device_ids=ids)
        if config.compile:
            generators = torch.compile(generators)
            discriminators = torch.compile(discriminators)

        workers = config.workers if config.workers >= 0 else default_workers(device)
        loader = torch.utils.data.DataLoader(
            SliceDataset(data_a, data_b, config, pairs, extra_a=extras.get("a"), extra_b=extras.get("b")),
            batch_size=config.batch_size,
            sampler=StepSampler(start, config.total_steps, config.batch_size, self.dist),
            num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
        from medsynth.networks import generator_stride

        fixed = fixed_samples(data_a, data_b, grid_axis(config), generator_stride(config.model),
                              extra_a=extras.get("a"), extra_b=extras.get("b"))
        samples = tuple(s.to(device) for s in fixed)
        self._unpaired_samples = (int("a" in extras), int("b" in extras))
        writer = self._writer() if self.dist.main else None
        autocast = config.amp and autocast_enabled(device)
        self._plan = Plan(config, device, autocast, workers, pairs, start, val_pairs=len(val_pairs),
                          unpaired=(len(extra_files["a"]), len(extra_files["b"])))
        if self.dist.main:
            self._say(self._plan.line())
        # the fair baseline does not learn: scored once, then printed beside every validation round
        self._fair_scores = self._fair_baseline_scores(val_pairs, device) if self.dist.main else {}
        bar = self._bar(start, config.total_steps)
        step = start
        running: dict[str, torch.Tensor] = {}
        counted: dict[str, torch.Tensor] = {}
        tic = time.perf_counter()
        self._train_seconds = float(self._train_seconds_at_start)
        self._catch_interrupt()
        t_resume = time.perf_counter()
        for batch in loader:
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if config.channels_last:
                inputs = {k: v.contiguous(memory_format=torch.channels_last) for k, v in inputs.items()}
            targets = {}
            if pairs is not None:
                targets = {"target_a": inputs.get("a_target", inputs["a"]), "target_b": inputs.get("b_target", inputs["b"])}
            losses = model.train_step(inputs["a"], inputs["b"], opt_g, opt_d, generators, discriminators, autocast,
                                      **targets, extra_a=inputs.get("extra_a"), extra_b=inputs.get("extra_b"),
                                      lesion=inputs.get("lesion"))
            # without an adversarial term the discriminators never step; their schedule stays where it is
            for sched in schedulers if config.lambda_adv > 0 else schedulers[:1]:
                sched.step()
            step += 1
            # training time: data and step, not validation, samples or checkpoints
            self._train_seconds += time.perf_counter() - t_resume
            if self.dist.main and self._plan.observe(step):
                self._say(self._plan.estimate_line())
            accumulate(losses, running, counted)
            if step % config.log_every == 0 or step == config.total_steps:
                n = config.log_every if step % config.log_every == 0 else step % config.log_every
                # the only host-device sync of the loop, every log_every steps
                values = window_means(running, counted, n)
                running, counted = {}, {}
                elapsed = time.perf_counter() - tic
                tic = time.perf_counter()
                if writer is not None:
                    for key, value in values.items():
                        writer.add_scalar(f"loss/{key}", value, step)
                    writer.add_scalar("lr", schedulers[0].get_last_lr()[0], step)
                    writer.add_scalar("speed/images_per_s", n * config.batch_size * self.dist.world / elapsed, step)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()
                                     if k in ("g_ab", "g_ba", "cycle_a", "cycle_b", "paired_a", "paired_b", "d_a", "d_b")})
            if bar is not None:
                bar.update(1)
            if self.dist.main and (step % config.sample_every == 0 or step == config.total_steps):
                self._write_samples(model, samples, step)
            if config.val_a and step % config.val_every == 0 and step != config.total_steps:
                history = self._validate_round(model, val_pairs, step, history, writer, device)
            stopping = self._should_stop(step, device)
            if step % config.checkpoint_every == 0 or step == config.total_steps or stopping:
                self._save_checkpoint(model, opt_g, opt_d, schedulers, step, history)
            if stopping:
                break
            t_resume = time.perf_counter()
        if bar is not None:
            bar.close()
        if self._stop.is_set() and step < config.total_steps:
            if writer is not None:
                writer.close()
            raise Interrupted(self.run_dir, step)
        if config.val_a:
            history = self._validate_round(model, val_pairs, step, history, writer, device)
        model_path = self.run_dir / "model.pt"
        if self.dist.main:
            self._export(model, model_path, step, history)
        if writer is not None:
            writer.close()
        if self.dist.world > 1:
            torch.distributed.barrier()
        return model_path

    def _catch_interrupt(self) -> None:
        """Ctrl-C (SIGINT) or SIGTERM finish the step in flight, write a checkpoint and stop, so that
        ``--resume`` continues exactly there; a second Ctrl-C stops at once."""
        import signal
        import threading

        self._stop = threading.Event()
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                raise KeyboardInterrupt
            self._stop.set()

        self._previous_handlers = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _release_interrupt(self) -> None:
        import signal

        for sig, previous in getattr(self, "_previous_handlers", {}).items():
            signal.signal(sig, previous)
        self._previous_handlers = {}

    def _should_stop(self, step: int, device: torch.device) -> bool:
        """Whether to stop after this step; under torchrun all ranks agree, at logging steps only (one small
        all-reduce every ``log_every`` steps rather than a sync in every step)."""
        if self.dist.world == 1:
            return self._stop.is_set()
        if step % self.config.log_every:
            return False
        flag = torch.tensor([float(self._stop.is_set())], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            self._stop.set()
        return self._stop.is_set()

    def _say(self, text: str) -> None:
        """One line for the person at the terminal (above the progress bar)."""
        import sys

        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)

    def _bar(self, start: int, total: int) -> Any:
        if not (self.progress and self.dist.main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=start, desc="training", unit="step", dynamic_ncols=True)

    def _writer(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but a stripped environment should still train
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    @torch.no_grad()
    def _write_samples(self, model: Any, samples: tuple[torch.Tensor, torch.Tensor], step: int) -> None:
        from medsynth.cyclegan import generator_inputs

        real_a, real_b = samples
        model.eval()
        fake_b = model.g_ab(generator_inputs(real_a))
        fake_a = model.g_ba(generator_inputs(real_b))
        rec_a, rec_b = model.g_ba(fake_b), model.g_ab(fake_a)
        model.train()
        rows = [[real_a[i, :1], fake_b[i], rec_a[i]] for i in range(len(real_a))]
        rows += [[real_b[i, :1], fake_a[i], rec_b[i]] for i in range(len(real_b))]
        a, b = self.config.names
        extra_a, extra_b = self._unpaired_samples
        labels = [f"{a} -> {b} ({i + 1})" for i in range(len(real_a) - extra_a)] + [f"{a} -> {b} (unpaired)"] * extra_a
        labels += [f"{b} -> {a} ({i + 1})" for i in range(len(real_b) - extra_b)] + [f"{b} -> {a} (unpaired)"] * extra_b
        save_grid(self.run_dir / "samples" / f"step_{step:07d}.png", rows,
                  columns=["real", "translated", "reconstructed"], row_labels=labels,
                  title=f"step {step} of {self.config.total_steps} (the same slices every time)")

    def _checkpoint_state(self, model: Any, opt_g: Any, opt_d: Any, schedulers: list[Any], step: int,
                          history: list[dict[str, Any]]) -> dict[str, Any]:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "config": self.config.to_dict(),
            "stats": self.stats,
            "generators": model.generators.state_dict(),
            "discriminators": model.discriminators.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "schedulers": [s.state_dict() for s in schedulers],
            "pool_a": model.pool_a.state_dict(),
            "pool_b": model.pool_b.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "history": json.dumps(history),
            "train_seconds": float(self._train_seconds),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _save_checkpoint(self, model: Any, opt_g: Any, opt_d: Any, schedulers: list[Any], step: int,
                         history: list[dict[str, Any]]) -> None:
        if not self.dist.main:
            return
        folder = self.run_dir / "checkpoints"
        state = self._checkpoint_state(model, opt_g, opt_d, schedulers, step, history)
        path = atomic_save(state, folder / f"step_{step:07d}.pt")
        with atomic_path(folder / "latest.pt") as tmp:
            shutil.copyfile(path, tmp)
        old = sorted(folder.glob("step_*.pt"))[: -self.config.keep_checkpoints or None]
        for p in old:
            p.unlink(missing_ok=True)

    def _load_checkpoint(self, model: Any, opt_g: Any, opt_d: Any, schedulers: list[Any],
                         device: torch.device) -> tuple[int, list[dict[str, Any]]]:
        path = self.run_dir / "checkpoints" / "latest.pt"
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise InputError(path, f"cannot read the checkpoint ({exc.__class__.__name__})") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise InputError(path, "not a medsynth checkpoint")
        model.generators.load_state_dict(state["generators"])
        model.discriminators.load_state_dict(state["discriminators"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        for sched, s in zip(schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        model.pool_a.load_state_dict(state["pool_a"], device)
        model.pool_b.load_state_dict(state["pool_b"], device)
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.stats = state["stats"]
        self._train_seconds_at_start = float(state.get("train_seconds", 0.0))
        return int(state["step"]), json.loads(state["history"])

    # ---- validation -----------------------------------------------------------------------------------------
    def _validation_pairs(self, config: TrainConfig) -> list[tuple[Path, Path]]:
        if not config.val_a and not config.val_b:
            return []
        if not (config.val_a and config.val_b):
            raise InputError("--val-a" if not config.val_a else "--val-b", "paired validation needs both domains")
        from medsynth.evaluation import pair_cases

        a = find_files(config.val_a, what="any")
        b = find_files(config.val_b, what="any")
        from medsynth.io import load_image

        pairs = [(p.pred, p.ref) for p in pair_cases(a, b)]
        for src, ref in pairs:
            shape_a, shape_b = load_image(src).array.shape, load_image(ref).array.shape
            if shape_a != shape_b:
                raise InputError(ref, f"shape {shape_b} differs from its validation partner {src} {shape_a}")
        return pairs

    def _score_pairs(self, translator: Any, pairs: list[tuple[Path, Path]]) -> dict[str, dict[str, float]]:
        """Mean masked metrics of both directions over the validation pairs (mask: both images' foreground)."""
        from medsynth.evaluation import masked_metrics
        from medsynth.io import load_image

        scores: dict[str, list[dict[str, float]]] = {d: [] for d in translator.directions}
        for src, ref in pairs:
            images = (load_image(src), load_image(ref))
            mask = (images[0].array > 0) & (images[1].array > 0)
            for direction, (source, reference) in zip(translator.directions, (images, images[::-1])):
                pred = translator.translate(source, direction=direction, axis=self.config.val_axis)
                scores[direction].append(masked_metrics(pred.array, reference.array, mask))
        return {d: {k: float(np.mean([s[k] for s in v])) for k in v[0]} for d, v in scores.items()}

    def _fair_baseline_scores(self, pairs: list[tuple[Path, Path]],
                              device: torch.device) -> dict[str, dict[str, float]]:
        """The fair baseline's validation scores (the inverted source matched to the training histograms this
        run carries, :func:`medsynth.inference.fair_baseline`): what every validation round must beat."""
        if not pairs:
            return {}
        from medsynth.inference import fair_baseline

        return self._score_pairs(fair_baseline(self.config, self.stats, device, self.run_dir), pairs)

    def _validation_line(self, step: int, means: dict[str, dict[str, float]]) -> str:
        """``validation at step 500: t1-to-t2 PSNR 21.30 dB SSIM 0.712 (fair baseline 17.20 dB, 0.601); ...``"""
        parts = []
        for direction, mean in means.items():
            fair = self._fair_scores.get(direction)
            parts.append(f"{direction} PSNR {mean['psnr']:.2f} dB SSIM {mean['ssim']:.3f}"
                         + (f" (fair baseline {fair['psnr']:.2f} dB, {fair['ssim']:.3f})" if fair else ""))
        return f"validation at step {step}: " + "; ".join(parts)

    def _validate_round(self, model: Any, pairs: list[tuple[Path, Path]], step: int,
                        history: list[dict[str, Any]], writer: Any, device: torch.device) -> list[dict[str, Any]]:
        if not self.dist.main or not pairs:
            return history
        from medsynth.inference import Translator

        translator = Translator.from_networks(model.g_ab, model.g_ba, self.config, self.stats, device=device,
                                              channels_last=self.config.channels_last)
        model.eval()
        means = self._score_pairs(translator, pairs)
        model.train()
        self._say(self._validation_line(step, means))
        first = means[translator.directions[0]]
        # top-level figures are the first direction's (as before); each direction's are under its name
        entry = {"step": step, "train_minutes": self._train_seconds / 60, **first, **means}
        if self._fair_scores:
            entry["fair_baseline"] = self._fair_scores
        history = history + [entry]
        if writer is not None:
            for direction, mean in means.items():
                for k, v in mean.items():
                    writer.add_scalar(f"val/{direction}/{k}", v, step)
        write_atomic(self.run_dir / "metrics.json", json.dumps(history, indent=2) + "\n")
        best = max(history, key=lambda e: e.get("psnr", -math.inf))
        if best is entry:
            self._export(model, self.run_dir / "model_best.pt", step, history)
        return history

    def _export(self, model: Any, path: Path, step: int, history: list[dict[str, Any]]) -> None:
        from medsynth.cyclegan import export_model

        export_model(path, self.config, model.g_ab, model.g_ba, self.stats,
                     extra={"step": step, "validation": history})


def default_workers(device: torch.device) -> int:
    """Data-loader workers for ``--workers -1``: on a GPU machine a few (the step is fast, the CPU is free);
    on a CPU one, so that sampling overlaps the step while the step keeps the cores (a worker runs one
    thread)."""
    cores = usable_cores()
    if device.type == "cuda":
        return max(min(4, cores - 1), 0)
    return 1 if cores >= 2 else 0


class Plan:
    """What a run will do, said before its first step, and how long it will take, said after a few."""

    #: steps timed before the estimate (the first ones are slower: allocation, worker start-up)
    WARMUP, TIMED = 3, 10

    def __init__(self, config: TrainConfig, device: torch.device, autocast: bool, workers: int,
                 pairs: Sequence[Any] | None, start: int = 0, val_pairs: int = 0,
                 unpaired: tuple[int, int] = (0, 0)) -> None:
        self.config, self.device, self.autocast, self.workers, self.start = config, device, autocast, workers, start
        self.pairs = pairs
        self.unpaired = unpaired
        self.val_pairs = val_pairs
        self._t0: float | None = None
        self.seconds_per_step: float | None = None

    def line(self) -> str:
        """``plan: 20000 steps (...)`` with the recipe, data, device, threads and precision."""
        c, m = self.config, self.config.model
        objective = []
        if c.lambda_adv > 0:
            objective.append("adversarial")
        if c.lambda_cycle > 0:
            objective.append("cycle" + (" + identity" if c.lambda_identity > 0 else ""))
        if self.pairs is not None and c.lambda_paired > 0:
            objective.append(f"paired L1 x {c.lambda_paired:g}" + (f" + SSIM x {c.lambda_ssim:g}" if c.lambda_ssim > 0 else "")
                             + (f" + lesion L1 x {c.lambda_lesion:g}" if c.lambda_lesion > 0 else "")
                             + (f" + histogram x {c.lambda_histogram:g}" if c.lambda_histogram > 0 else "")
                             + f" ({len(self.pairs)} pair{'s' if len(self.pairs) != 1 else ''})")
        augmented = []
        if c.intensity_augment:
            reaches = c.augment_base and m.residual == "invert" and m.residual_input == "base"
            augmented.append("intensity augmentation" + (" (into the base)" if reaches else ""))
        if self.pairs is not None and c.lesion_augment > 0:
            where = ["in white matter"] if c.lesion_site == "white" else []
            if tuple(c.lesion_radius) != TrainConfig.lesion_radius:
                where.append(f"radii {c.lesion_radius[0]:g}-{c.lesion_radius[1]:g} px")
            augmented.append(f"synthetic lesions in {c.lesion_augment:.0%} of pairs"
                             + (f" ({', '.join(where)})" if where else ""))
        if augmented:
            objective[-1:] = [f"{objective[-1]}, {' and '.join(augmented)}"] if objective else [" and ".join(augmented)]
        if any(self.unpaired):
            counts = " and ".join(f"{n} {name}" for n, name in zip(self.unpaired, c.names) if n)
            terms = " and ".join(t for t, w in (("adversarial", c.lambda_adv), ("cycle", c.lambda_cycle)) if w > 0)
            objective.append(f"{counts} unpaired volume{'s' if sum(self.unpaired) != 1 else ''} "
                             f"({terms} term{'s' if ' and ' in terms else ''} only)")
        done = f", resuming at {self.start}" if self.start else ""
        smoothed = f" smoothed in-plane (Gaussian {m.base_smooth:g} px)" if m.residual == "invert" and m.base_smooth else ""
        targets = ", targets as normalised alone" if m.residual == "invert" and c.target_norm == "percentile" else ""
        every = f"{c.val_every} steps" if c.val_every > 1 else "step"
        validation = (f"; validation every {every} and at the end on {self.val_pairs} "
                      f"pair{'s' if self.val_pairs != 1 else ''}") if self.val_pairs else ""
        return (f"plan: {c.total_steps} steps{done} (learning rate constant to {c.decay_from}, then linear decay), "
                f"batch {c.batch_size}, {m.generator} ngf {m.ngf}"
                f"{' residual over the inverted histogram map' if m.residual == 'invert' else ''}"
                f"{smoothed}{targets}"
                f"{f' (2.5D: {m.context} neighbouring slices each side)' if m.context else ''}, {c.size} px "
                f"{describe_axes(c.axis)} slices"
                f"{describe_bias_correction(c.bias_correction, ' of N4-corrected volumes')}, "
                f"{' + '.join(objective)}; on {describe(self.device, self.autocast)}, "
                f"{self.workers} data worker{'s' if self.workers != 1 else ''}{validation}")

    def observe(self, step: int) -> bool:
        """Time the steps; True once, when the estimate is ready."""
        done = step - self.start
        if done == self.WARMUP:
            self._t0 = time.perf_counter()
        elif self._t0 is not None and self.seconds_per_step is None and done == self.WARMUP + self.TIMED:
            self.seconds_per_step = (time.perf_counter() - self._t0) / self.TIMED
            return True
        return False

    def estimate_line(self) -> str:
        """``estimate: 0.15 s/step, about 49 min for the 20000 steps`` (from the timed steps)."""
        remaining = self.config.total_steps - self.start
        seconds = (self.seconds_per_step or 0.0) * remaining
        return (f"estimate: {self.seconds_per_step:.3f} s/step, about {format_duration(seconds)} for the "
                f"{remaining} steps (validation, samples and checkpoints extra)")


def accumulate(losses: dict[str, torch.Tensor], sums: dict[str, Any], counts: dict[str, Any]) -> None:
    """Add one step's losses to a logging window's ``sums``, and its step counts (the keys under
    :data:`medsynth.cyclegan.COUNT_PREFIX`) to ``counts``; other keys starting with ``_`` are not logged. Tensors stay
    on their device: the window is read once, by :func:`window_means`."""
    from medsynth.cyclegan import COUNT_PREFIX

    for key, value in losses.items():
        if key.startswith(COUNT_PREFIX):
            name = key[len(COUNT_PREFIX):]
            counts[name] = counts.get(name, 0) + value
        elif not key.startswith("_"):
            sums[key] = sums.get(key, 0) + value


def window_means(sums: dict[str, Any], counts: dict[str, Any], steps: int) -> dict[str, float]:
    """Each loss term's mean over a logging window of ``steps`` steps.

    A term that only some steps have (the lesion L1: the batches with a lesion; its step counts come with the
    losses under :data:`medsynth.cyclegan.COUNT_PREFIX`) is averaged over those steps, not diluted by the others,
    and left out of a window that had none of them.

    Args:
        sums: each term summed over the window's steps.
        counts: for the terms that count their steps, how many of the window's steps had them.
        steps: the window's steps.
    """
    means = {}
    for key, total in sums.items():
        n = float(counts[key]) if key in counts else steps
        if n > 0:
            means[key] = float(total) / n
    return means


def format_duration(seconds: float) -> str:
    """``"3 h 20 min"``, ``"14 min"``, ``"40 s"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {minutes % 60:.0f} min"


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          runtime: Sequence[str] = RUNTIME_OPTIONS) -> Path:
    """Train a CycleGAN as configured and return the path of the run's ``model.pt``.

    On ``resume`` the run's saved configuration holds, except the ``runtime`` options taken from ``config``
    (by default all of :data:`RUNTIME_OPTIONS`).
    """
    return Trainer(config, resume=resume, progress=progress, runtime=runtime).run()
