"""Translator: load a model once, translate many volumes slice by slice with the input's geometry intact.

Pipeline: reorient to RAS (nibabel's orientation codes, no resampling) -> robust statistics of the input ->
the box around its foreground normalised (with a residual model, its inverted-histogram base beside it) ->
batches of slices (padded to what the generator needs, cropped back) along one axis, or all three fused -> map to
the target domain's intensities with the statistics stored in the model, background outside the input's
foreground -> undo the reorientation. No MONAI on this path (its import alone costs seconds). Shape, affine and
header of the output are the input's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from medsynth.config import AXES, AXIS_CHOICES, AXIS_INDEX, TrainConfig
from medsynth.devices import autocast_enabled, resolve_device, set_threads
from medsynth.networks import (ResidualGenerator, build_generator, generator_stride, histogram_targets,
                               neighbour_indices, neighbour_offsets, residual_of)
from medsynth.errors import InputError
from medsynth.fusion import DEFAULT_FUSION, FUSIONS, fuse_passes
from medsynth.io import (IMAGE2D_SUFFIXES, KIND_NAMES, VOLUME_SUFFIXES, Image, check_output, kind_of, load_image,
                         save_like, suffix_of)

Progress = Callable[[int, int], None]
MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = MODELS_DIR / "default_t1t2.pt"
#: slices per forward pass on a CPU: large enough to keep both cores busy, small enough for the caches
CPU_BATCH = 4


def default_model_path() -> Path:
    """The model packaged with medsynth (T1 <-> T2 brain MRI)."""
    return DEFAULT_MODEL


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Load and check a ``model.pt`` (or a run folder holding one) with ``weights_only=True``.

    Raises:
        InputError: missing, unreadable, or not a medsynth model.
    """
    from medsynth.cyclegan import MODEL_FORMAT

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise InputError(path, "no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # weights_only refuses pickled code too: a stranger's file cannot run anything here
        raise InputError(path, f"not a medsynth model (cannot be read: {type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise InputError(path, "not a medsynth model (no medsynth model header)")
    return payload


class Translator:
    """Translates volumes and 2D images between a model's two domains.

    Build it once (``Translator.from_file``) and call :meth:`translate` or :meth:`translate_file` many times;
    the networks stay on the device.

    Args:
        g_ab: generator from the first domain to the second.
        g_ba: generator from the second domain to the first.
        config: the model's training configuration (domain names, generator, enhancement).
        stats: each domain's intensity statistics (``IntensityStats`` dicts by domain name).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        batch_size: slices per forward pass (default: :data:`CPU_BATCH` on CPU, 64 on CUDA).
        amp: bf16 autocast where it pays (CUDA, or a CPU with native bf16); False is ``precision="fp32"``.
        source: where the model came from (for messages).
        channels_last: channels-last activations (default: on CUDA; on a CPU they measure no faster).
        compile: ``torch.compile`` the generators.
        precision: ``auto`` (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), ``bf16`` or
            ``fp32``.
        threads: CPU threads (default: every core this process may use).
        crop: translate only the box around the foreground (with :attr:`margin` voxels of background); outside
            it the output is background anyway.
        calibration: output curves by direction (:class:`~medsynth.curves.OutputCurve` objects or their dicts),
            as a model file carries them after ``medsynth-calibrate``.
        calibrate: apply them (False: the network's output as it is).

    Example:
        >>> t = Translator.from_file("run/model.pt")            # doctest: +SKIP
        >>> t.translate_file("sub01_t1.nii.gz", "sub01_t2.nii.gz", direction="t1-to-t2")  # doctest: +SKIP
    """

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module, config: TrainConfig, stats: dict[str, dict[str, float]],
                 device: str | torch.device = "auto", batch_size: int | None = None, amp: bool = True,
                 source: str | Path = "<memory>", channels_last: bool | None = None, compile: bool = False,
                 precision: str = "auto", threads: int | None = None, crop: bool = True,
                 calibration: dict[str, Any] | None = None, calibrate: bool = True,
                 bias_field: str = "restore") -> None:
        from medsynth.curves import parse_curves

        bias_field = self._bias_output(bias_field or "restore")

        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if self.device.type == "cpu":
            set_threads(threads)
        self.config = config
        self.source = str(source)
        self.domains: tuple[str, str] = (config.names[0], config.names[1])
        self.stats = stats
        self.stride = generator_stride(config.model)
        on_cuda = self.device.type == "cuda"
        self.batch_size = batch_size or (64 if on_cuda else CPU_BATCH)
        self.amp = amp and autocast_enabled(self.device, precision)
        self.channels_last = on_cuda if channels_last is None else channels_last
        self._pixels_per_second: float | None = None
        self.crop = crop
        #: background voxels kept around the foreground box (the generator's reflection padding and its
        #: normalisation then see background at the slice edges, as they did in training)
        self.margin = 16
        #: seconds spent in the generators so far (benchmarks; on CUDA exact only with ``time_network``)
        self.network_seconds = 0.0
        self.network_pixels = 0
        self.time_network = False
        # on a CPU, bf16 weights and activations throughout: autocast would convert every activation to fp32
        # and back around each normalisation, which costs more there than the convolutions gain
        self.cast = torch.bfloat16 if self.amp and not on_cuda else None
        self.networks: dict[str, nn.Module] = {}
        for name, net in ((f"{self.domains[0]}-to-{self.domains[1]}", g_ab),
                          (f"{self.domains[1]}-to-{self.domains[0]}", g_ba)):
            net = net.to(self.device).eval()
            if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
                # nothing to speed up (identity, the baseline map alone): keep full precision
                self.cast, self.amp = None, False
            if self.cast is not None:
                net = bf16_copy(net)
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
            self.networks[name] = torch.compile(net) if compile else net
        self.precision = "bf16" if self.amp else "fp32"
        #: output curves by direction (every one the model carries, applied or not)
        self.curves = parse_curves(calibration or {}, list(self.networks))
        self.calibrate = calibrate
        #: for a model trained on bias-corrected volumes (``config.bias_correction``): ``restore`` multiplies the
        #: input's own field (scaled to median 1) back onto the translation, so that it carries the session's coil
        #: shading as a real image of that session does; ``remove`` leaves the translation free of it
        self.bias_field = bias_field

    # ---- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, model_path: str | Path | None = None, device: str | torch.device = "auto",
                  **kwargs: Any) -> Translator:
        """Load a ``model.pt`` (or a run folder); ``None`` loads the packaged default model."""
        path = Path(model_path) if model_path is not None else default_model_path()
        payload = read_model_file(path)
        try:
            config = TrainConfig.from_dict(payload["config"])
            nets = []
            for key in ("a_to_b", "b_to_a"):
                net = build_generator(config.model)
                state = {k: v.float() if v.is_floating_point() else v for k, v in payload["generators"][key].items()}
                net.load_state_dict(state)
                nets.append(net)
            stats = payload["stats"]
            for name in config.names:
                if name not in stats:
                    raise KeyError(name)
            from medsynth.curves import parse_curves

            # checked here, so that a damaged curve is a damaged model file (the constructor checks it again for
            # curves given in Python)
            a, b = config.names
            calibration = parse_curves(dict(payload.get("calibration") or {}), [f"{a}-to-{b}", f"{b}-to-{a}"])
        except InputError:
            raise
        except Exception as exc:
            raise InputError(path, f"a damaged medsynth model ({type(exc).__name__}: {exc})") from None
        return cls(nets[0], nets[1], config, stats, device=device, source=path, calibration=calibration, **kwargs)

    @classmethod
    def from_networks(cls, g_ab: nn.Module, g_ba: nn.Module, config: TrainConfig,
                      stats: dict[str, dict[str, float]], device: str | torch.device = "auto",
                      **kwargs: Any) -> Translator:
        """Wrap networks in memory (validation during training). The networks are used, not copied."""
        translator = cls.__new__(cls)
        cls.__init__(translator, g_ab, g_ba, config, stats, device=device, source="<training>", **kwargs)
        return translator

    # ---- information ---------------------------------------------------------------------------------------
    @property
    def directions(self) -> list[str]:
        """``["<a>-to-<b>", "<b>-to-<a>"]``."""
        return list(self.networks)

    def info(self) -> dict[str, Any]:
        """What a client needs to know: domains, directions, axes, generator."""
        return {"source": self.source, "domains": list(self.domains), "directions": self.directions,
                "axes": list(AXIS_CHOICES), "generator": self.config.model.generator, "ngf": self.config.model.ngf,
                "size": self.config.size, "enhance": list(self.config.enhance),
                "bias_correction": self.config.bias_correction, "bias_field": self.bias_field,
                "device": str(self.device),
                "precision": self.precision, "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
                "calibrated": self.calibrated}

    @property
    def calibrated(self) -> list[str]:
        """The directions whose output goes through a calibration curve."""
        return sorted(self.curves) if self.calibrate else []

    def pixels_per_second(self) -> float:
        """Slice pixels per second through a generator here, measured once on a small batch (a fraction of a
        second) and remembered."""
        if self._pixels_per_second is None:
            import time

            network = next(iter(self.networks.values()))
            # one slice of a brain's size: smaller ones fit the caches better and run faster per pixel than the
            # volumes do (96 px slices measured half the real time on a 2-core AVX2 CPU)
            side = max(self.stride, int(math.ceil(192 / self.stride) * self.stride))
            # the channels the network gets in a translation (a residual model's base and its neighbours' ride along)
            residual = residual_of(network)
            channels = 2 + 2 * residual.context if residual is not None else 1
            batch = torch.zeros(1, channels, side, side, device=self.device)
            self._run_network(network, batch)  # warm-up: allocation, kernel choice
            best = math.inf
            for _ in range(2):
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                tic = time.perf_counter()
                self._run_network(network, batch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                best = min(best, time.perf_counter() - tic)
            self._pixels_per_second = side * side / max(best, 1e-6)  # one slice; channels are not pixels
        return self._pixels_per_second

    def estimate_seconds(self, shape: Sequence[int], axis: str = "axial") -> float:
        """Expected seconds to translate a volume of ``shape`` (I, J, K) along ``axis`` (``all``: three
        passes), from :meth:`pixels_per_second`; the pipeline around the network adds about a tenth."""
        dims = [int(n) for n in shape[:3]] + [1] * (3 - len(shape[:3]))
        axes = ["axial"] if dims[2] == 1 else list(AXES if axis == "all" else (axis,))
        pixels = 0
        for a in axes:
            k = AXIS_INDEX[a]
            plane = [int(math.ceil(n / self.stride) * self.stride) for i, n in enumerate(dims) if i != k]
            pixels += dims[k] * plane[0] * plane[1]
        return 1.1 * pixels / self.pixels_per_second()

    def _forward(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        import time

        tic = time.perf_counter()
        out = self._run_network(network, batch)
        if self.time_network and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.network_seconds += time.perf_counter() - tic
        self.network_pixels += batch.shape[0] * batch.shape[-2] * batch.shape[-1]
        return out

    def _run_network(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        if self.cast is not None:
            batch = batch.to(self.cast)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.cast is None):
            out = network(batch)
        return out.float()

    def _bias_output(self, bias_field: str | None) -> str:
        """``bias_field`` checked (``None``: the translator's own).

        Raises:
            InputError: neither ``restore`` nor ``remove``.
        """
        from medsynth.bias import BIAS_OUTPUTS

        if bias_field is None:
            return self.bias_field
        if bias_field not in BIAS_OUTPUTS:
            raise InputError(bias_field, f"unknown bias-field handling: use {' or '.join(BIAS_OUTPUTS)}")
        return bias_field

    def _resolve_direction(self, direction: str | None) -> tuple[str, str, str]:
        direction = direction or self.directions[0]
        key = direction.lower()
        if key not in self.networks:
            raise InputError(self.source, f"direction {direction!r} is not one of this model's: {', '.join(self.directions)}")
        src, dst = key.split("-to-")
        return key, src, dst

    # ---- input checks --------------------------------------------------------------------------------------
    @property
    def image_kind(self) -> str:
        """What the model was trained on: ``"volume"``, ``"image2d"``, or ``""`` when that is not known."""
        return model_image_kind(self.config)

    def check_input_path(self, path: str | Path) -> None:
        """Refuse, from its name alone, a file this model was not trained for (a 2D image for a volume model).

        Raises:
            InputError: naming the file, the model and what it takes.
        """
        kind = kind_of(path)
        if self.image_kind == "volume" and kind == "image2d":
            raise InputError(path, self._misfit(kind))

    def check_input(self, image: Image, luminance: bool = False) -> None:
        """Refuse an image this model was not trained for: 2D for a volume model, 3D for a 2D-image model, a
        colour picture (the model is single-channel) unless its ``luminance`` is asked for.

        Raises:
            InputError: naming the file, the model and what it takes.
        """
        extent = sum(n > 1 for n in image.array.shape)
        if self.image_kind == "volume" and (image.format == "image2d" or extent < 3):
            raise InputError(image.path, self._misfit("image2d", image.array.shape if extent < 3 else None))
        if self.image_kind == "image2d" and extent == 3:
            raise InputError(image.path, self._misfit("volume", image.array.shape))
        if image.format == "image2d" and getattr(image.native, "colour", False) and not luminance:
            raise InputError(image.path, "a colour picture, and the model translates single-channel images: add "
                                         "--luminance to translate its luminance (grey)")

    def _misfit(self, kind: str, shape: Sequence[int] | None = None) -> str:
        own = "volume" if kind == "image2d" else "image2d"
        what = KIND_NAMES[kind] + (f" (shape {'x'.join(str(int(n)) for n in shape)})" if shape is not None else "")
        return (f"{what}, but the model {Path(self.source).name} was trained on {KIND_NAMES[own][2:]}s and "
                f"translates only those")

    # ---- translation ---------------------------------------------------------------------------------------
    def translate(self, volume: Any, direction: str | None = None, axis: str = "axial", fuse: str = DEFAULT_FUSION,
                  progress: Progress | None = None, expect: Callable[[float], None] | None = None,
                  calibrate: bool | None = None, bias_field: str | None = None) -> Any:
        """Translate one volume (or 2D image).

        Args:
            volume: a path, a ``medsynth.io.Image``, a nibabel image or a MONAI ``MetaTensor`` ((X, Y, Z) or
                (1, X, Y, Z) with its affine).
            direction: e.g. ``"t1-to-t2"``; default: the model's first.
            axis: ``axial``, ``coronal``, ``sagittal`` or ``all`` (the three fused).
            fuse: how ``axis="all"`` combines the three passes: ``mean``, ``median`` or ``detail``
                (:mod:`medsynth.fusion`).
            progress: called with (slices done, slices in all).
            expect: called with the expected seconds (:meth:`estimate_seconds` of the part that goes through the
                network: the box around the foreground) before the network starts.
            calibrate: apply the model's output curve for this direction, if it carries one (``None``: as the
                translator was made, :attr:`calibrate`); for one call, e.g. a server request.
            bias_field: ``restore`` or ``remove`` the input's bias field on the translation, for a model trained on
                bias-corrected volumes (``None``: as the translator was made, :attr:`bias_field`).

        Returns:
            The same kind of object as given (a path gives an ``Image``), with the input's geometry.
        """
        self._resolve_direction(direction)
        if isinstance(volume, (str, os.PathLike)):
            volume = load_image(volume)
        if isinstance(volume, Image):
            out = self.translate_array(volume.array, volume.affine, direction, axis, fuse, progress, volume.path,
                                       expect, calibrate, bias_field)
            return Image(array=out, affine=volume.affine, path=volume.path, format=volume.format, native=volume.native)
        from monai.data import MetaTensor

        if isinstance(volume, MetaTensor):
            array = volume.as_tensor().detach().cpu().numpy().astype(np.float32)
            channel = array.ndim == 4
            arr3 = array[0] if channel else array
            out = self.translate_array(arr3, np.asarray(volume.affine, np.float64), direction, axis, fuse, progress,
                                       expect=expect, calibrate=calibrate, bias_field=bias_field)
            out = out[None] if channel else out
            meta = {k: v for k, v in volume.meta.items() if k != "affine"}
            return MetaTensor(torch.from_numpy(out), affine=volume.affine.clone(), meta=meta)
        import nibabel as nib

        if isinstance(volume, nib.spatialimages.SpatialImage):
            array = np.asarray(volume.get_fdata(dtype=np.float32))
            shape = array.shape
            arr3 = array.reshape(shape[:3]) if array.ndim > 3 and all(n == 1 for n in shape[3:]) else array
            if arr3.ndim != 3:
                raise InputError("<nibabel image>", f"shape {shape}: give one 3D volume")
            from medsynth.io import validate_array

            validate_array(arr3, "<nibabel image>")
            out = self.translate_array(arr3, np.asarray(volume.affine), direction, axis, fuse, progress,
                                       expect=expect, calibrate=calibrate, bias_field=bias_field)
            header = volume.header.copy()
            header.set_data_dtype(np.float32)
            result = type(volume)(out.reshape(shape).astype(np.float32), volume.affine, header=header)
            # the affine argument would rewrite the sform; keep both forms and their codes as they were
            for form in ("qform", "sform"):
                matrix, code = getattr(volume.header, f"get_{form}")(coded=True)
                getattr(result.header, f"set_{form}")(matrix, code=int(code))
            result.header.set_slope_inter(None, None)
            return result
        raise TypeError(f"cannot translate a {type(volume).__name__}: give a path, nibabel image or MetaTensor")

    def translate_file(self, input_path: str | Path, output_path: str | Path, direction: str | None = None,
                       axis: str = "axial", fuse: str = DEFAULT_FUSION, dtype: str | None = None,
                       overwrite: bool = False, progress: Progress | None = None,
                       on_start: Callable[[Path, float], None] | None = None,
                       luminance: bool = False, calibrate: bool | None = None,
                       bias_field: str | None = None) -> Path:
        """Translate a file and write the result with the input's format and geometry (atomically).

        Args:
            on_start: called with the input and the expected seconds (:meth:`estimate_seconds` of the box around
                its foreground) once the input is read, before the network starts.
            luminance: translate the luminance of a colour RGB/RGBA picture (else it is refused: the model is
                single-channel).
            calibrate, bias_field: as for :meth:`translate`.

        Raises:
            InputError: bad input (one the model was not trained for: a 2D image for a volume model or the
                reverse, a colour picture without ``luminance``), an output that exists (without ``overwrite``),
                is a folder, has no known extension or would replace the input. Nothing is written then.
        """
        self._resolve_direction(direction)
        check_output(output_path, [input_path], overwrite)
        self.check_input_path(input_path)
        image = load_image(input_path)
        self.check_input(image, luminance)
        expect = None if on_start is None else (lambda seconds: on_start(Path(input_path), seconds))
        out = self.translate(image, direction, axis, fuse, progress, expect, calibrate, bias_field)
        return save_like(image, out.array, output_path, dtype=dtype, overwrite=overwrite)

    @torch.no_grad()
    def translate_array(self, array: np.ndarray, affine: np.ndarray, direction: str | None = None,
                        axis: str = "axial", fuse: str = DEFAULT_FUSION, progress: Progress | None = None,
                        source: str | Path = "<array>", expect: Callable[[float], None] | None = None,
                        calibrate: bool | None = None, bias_field: str | None = None) -> np.ndarray:
        """Core of :meth:`translate` on an (I, J, K) array and its voxel-to-RAS affine."""
        from medsynth.intensity import IntensityStats, denormalise, intensity_stats

        key, _, dst = self._resolve_direction(direction)
        bias_field = self._bias_output(bias_field)
        if axis not in AXIS_CHOICES:
            raise InputError(axis, f"unknown axis: use one of {', '.join(AXIS_CHOICES)}")
        if fuse not in FUSIONS:
            raise InputError(fuse, f"unknown fusion: use one of {', '.join(FUSIONS)}")
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 3:
            raise InputError(source, f"shape {array.shape}: expected a 3D volume")
        ras, ornt = to_ras(array, affine)
        field = None
        if self.config.bias_correction != "none" and ras.shape[-1] > 1:
            from medsynth.bias import estimate_field, ras_spacing

            # the networks were trained on corrected volumes: they see this one corrected too
            field = estimate_field(ras, ras_spacing(affine, ornt), self.config.bias_correction)
            ras = ras / field
        x = torch.from_numpy(np.ascontiguousarray(ras))[None]
        if self.config.enhance:
            from medsynth.enhance import Enhance

            x = torch.as_tensor(Enhance(list(self.config.enhance))(x))
        stats = intensity_stats(x)
        foreground = x > stats.threshold
        # a one-slice image (a 2D domain) can only be translated in its own plane
        axes = ["axial"] if x.shape[-1] == 1 else list(AXES if axis == "all" else (axis,))
        network = self.networks[key]
        # only the box around the foreground is normalised and goes through the network (with a margin of
        # background, so that every slice keeps background around the anatomy, as in training): outside it the
        # output is background whatever the network would say
        box = foreground_box(foreground[0], self.margin, self.stride) if self.crop else None
        index = (slice(None), *box) if box is not None else (slice(None),) * 4
        if expect is not None:
            expect(self.estimate_seconds(x[index].shape[1:], axis))
        inner = network_input(x[index], stats, residual_of(network))
        total = sum(inner.shape[AXIS_INDEX[a] + 1] for a in axes)
        counter = _Counter(total, progress)
        y = fuse_passes({a: self._infer_axis(network, inner, a, counter) for a in axes}, fuse)
        del inner
        target = IntensityStats.from_dict(self.stats[dst])
        # on a GPU the fusion and intensity mapping stay there; only the result comes back
        y = denormalise(y, target, foreground[index].to(y.device)).cpu()[0].numpy()
        if (self.calibrate if calibrate is None else calibrate) and key in self.curves:
            y = self.curves[key].apply(y, foreground[index][0].numpy())
        if field is not None and bias_field == "restore":
            from medsynth.bias import restore_field

            y = restore_field(y, field[index[1:]], foreground[index][0].numpy())
        if box is not None:
            # in Fortran order, NIfTI's voxel order: a writer then copies it as it is instead of transposing
            full = np.full(x.shape[1:][::-1], target.background, np.float32).T
            full[box] = y
            y = full
        return from_ras(y, ornt).astype(np.float32, copy=False)

    def _infer_axis(self, network: nn.Module, x: torch.Tensor, axis: str, counter: _Counter) -> torch.Tensor:
        """Every slice of a (C, X, Y, Z) volume along ``axis`` through ``network``, ``batch_size`` at a time,
        padded with background to what the generator needs and cropped back; returns (1, X, Y, Z)."""
        import torch.nn.functional as F

        dim = AXIS_INDEX[axis]
        slices = x.movedim(dim + 1, 0)  # (N, C, H, W), a view
        n, _, h, w = slices.shape
        hp, wp = (int(math.ceil(v / self.stride) * self.stride) for v in (h, w))
        out = torch.empty((n, 1, h, w), device=self.device if self.device.type == "cuda" else "cpu")
        residual = residual_of(network)
        offsets = neighbour_offsets(residual.context) if residual is not None and slices.shape[1] > 1 else []
        for start in range(0, n, self.batch_size):
            batch = slices[start:start + self.batch_size]
            if offsets:
                # 2.5D: the bases of the neighbouring slices along this axis as extra channels (gathered per batch:
                # whole shifted copies of a large volume would cost memory for nothing)
                index = torch.arange(start, start + len(batch))
                batch = torch.cat([batch, *(slices[neighbour_indices(index, d, n), 1:2] for d in offsets)], dim=1)
            batch = batch.to(self.device, non_blocking=True)
            if (hp, wp) != (h, w):
                batch = F.pad(batch, (0, wp - w, 0, hp - h), value=-1.0)
            out[start:start + len(batch)] = self._forward(network, batch.contiguous())[:, :1, :h, :w]
            counter.add(len(batch))
        return out.movedim(0, dim + 1)

    def translate_files(self, inputs: Sequence[Path], output_dir: str | Path, direction: str | None = None,
                        axis: str = "axial", fuse: str = DEFAULT_FUSION, dtype: str | None = None,
                        overwrite: bool = False, progress: Progress | None = None,
                        on_done: Callable[[Path, Path | None, str | None], None] | None = None,
                        on_start: Callable[[Path, float], None] | None = None,
                        luminance: bool = False, outputs: Sequence[Path] | None = None,
                        calibrate: bool | None = None, bias_field: str | None = None) -> list[tuple[Path, str]]:
        """Translate many files into ``output_dir`` (same file names); a bad file does not stop the others.

        Args:
            luminance: as for :meth:`translate_file`.
            calibrate, bias_field: as for :meth:`translate`.
            outputs: each input's output (default: :func:`output_paths` of ``inputs`` under ``output_dir``; a share
                of a larger list, as under torchrun, needs the paths computed from the whole list).

        Returns:
            ``(input, problem)`` for every file that failed.

        Raises:
            InputError: before any work, a file the model cannot take, told by its name (a 2D image for a
                volume model), or an output folder that is a file.
        """
        from concurrent.futures import Future, ThreadPoolExecutor

        self._resolve_direction(direction)
        self._bias_output(bias_field)
        for path in inputs:
            self.check_input_path(path)
        if Path(output_dir).exists() and not Path(output_dir).is_dir():
            raise InputError(output_dir, "several inputs need an output folder, and this is a file")
        failures: list[tuple[Path, str]] = []
        jobs = list(zip(inputs, output_paths(inputs, Path(output_dir)) if outputs is None else outputs))

        def read(index: int) -> Image:
            path, out = jobs[index]
            check_output(out, [path], overwrite)
            image = load_image(path)
            self.check_input(image, luminance)
            return image

        def finish(path: Path, out: Path, future: Future | None, problem: str | None = None) -> None:
            if future is not None:
                try:
                    future.result()
                except InputError as exc:
                    problem = str(exc)
            if problem is not None:
                failures.append((Path(path), problem))
            if on_done:
                on_done(Path(path), None if problem else out, problem)

        # reading the next file and writing the last one (decompression and compression release the GIL)
        # overlap the network's work on this one
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="medsynth-io") as pool:
            reading = pool.submit(read, 0) if jobs else None
            writing: tuple[Path, Path, Future] | None = None
            for index, (path, out) in enumerate(jobs):
                try:
                    image = reading.result()  # type: ignore[union-attr]
                except InputError as exc:
                    image, problem = None, str(exc)
                reading = pool.submit(read, index + 1) if index + 1 < len(jobs) else None
                if image is not None:
                    try:
                        expect = None if on_start is None else (lambda seconds, p=Path(path): on_start(p, seconds))
                        result = self.translate(image, direction, axis, fuse, progress, expect, calibrate,
                                                bias_field)
                        problem = None
                    except InputError as exc:
                        image, problem = None, str(exc)
                if writing is not None:
                    finish(*writing)
                    writing = None
                if image is None:
                    finish(path, out, None, problem)
                    continue
                writing = (path, out, pool.submit(save_like, image, result.array, out, dtype=dtype,
                                                  overwrite=overwrite))
            if writing is not None:
                finish(*writing)
        return failures


#: voxels per chunk of the level-table maps (their int64 indices are 8 bytes a voxel)
_CHUNK = 1 << 22
#: the most levels an integer-valued volume may span to be mapped through a table
_MAX_LEVELS = 1 << 20


def network_input(raw: torch.Tensor, stats: Any, residual: ResidualGenerator | None,
                  tables: bool = True) -> torch.Tensor:
    """The generator's input for a raw (1, X, Y, Z) volume (or box of one): the normalised image, and for a
    residual model the inverted-histogram base of the whole of it as a second channel (all the foreground is
    inside the box, so the box's histogram is the volume's).

    An integer-valued volume (most MRI and CT on disk) has both maps computed once per intensity level and
    looked up per voxel (``tables``): the same float operations on the same values, so the same result, for a
    fraction of the time the base's interpolation takes voxel by voxel.
    """
    from medsynth.intensity import normalise
    from medsynth.networks import domain_quantiles

    levels = _levels(raw) if tables else None
    if levels is None:
        inner = normalise(raw, stats)
        return inner if residual is None else torch.cat([inner, residual.volume_base(inner)])
    first, count = levels
    table = normalise(torch.arange(count, dtype=torch.float64).add_(first).float(), stats)
    out = torch.empty((1 if residual is None else 2, *raw.shape[1:]))
    if not _take_levels(raw, first, table, out[0]):
        return network_input(raw, stats, residual, tables=False)
    if residual is not None:
        base = residual.volume_base(table.view(1, 1, 1, -1), own=domain_quantiles(out[0])).flatten()
        _take_levels(raw, first, base, out[1], check=False)
    return out


def _levels(raw: torch.Tensor) -> tuple[int, int] | None:
    """``(first, count)`` of the integer range a float volume's values span, if small enough for a table (the
    values still have to be checked to be integers)."""
    if raw.dtype != torch.float32 or raw.numel() == 0:
        return None
    lo, hi = (float(v) for v in torch.aminmax(raw))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo >= _MAX_LEVELS:
        return None
    first = math.floor(lo)
    return first, math.floor(hi) - first + 1


def _take_levels(raw: torch.Tensor, first: int, table: torch.Tensor, out: torch.Tensor, check: bool = True) -> bool:
    """``out = table[raw - first]`` chunk by chunk along the first axis; False (out half-written) as soon as a
    value is not an integer (``check``)."""
    vol = raw[0]
    step = max(1, _CHUNK // max(1, vol[0].numel()))
    for start in range(0, vol.shape[0], step):
        chunk = vol[start:start + step]
        index = chunk.sub(first).to(torch.int64)
        if check and not torch.equal(index.to(torch.float32).add_(first), chunk):
            return False
        out[start:start + step] = torch.take(table, index)
    return True


def bf16_copy(net: nn.Module) -> nn.Module:
    """A bf16 copy of a network for CPU inference; histogram targets keep float32 quantiles (bf16 would move them)."""
    import copy

    out = copy.deepcopy(net).to(torch.bfloat16)
    for m in histogram_targets(out):
        m.float()
    return out


def fair_baseline_translator(model_path: str | Path | None = None, device: str | torch.device = "cpu") -> Translator:
    """The classical baseline a model must beat, from nothing but what the model carries: invert the source and
    match its histogram to the target domain's pooled training histogram (each domain's foreground quantiles,
    stored in ``stats[name]["quantiles"]`` at training).

    It runs through the same pipeline as the model (reorientation, normalisation, background), so the two
    differ only in the network. A model trained with ``residual="invert"`` starts from exactly this.

    Raises:
        InputError: the model carries no quantiles (trained before they were stored).
    """
    path = Path(model_path) if model_path is not None else default_model_path()
    payload = read_model_file(path)
    return fair_baseline(TrainConfig.from_dict(payload["config"]), payload["stats"], device, path)


def fair_baseline(config: TrainConfig, stats: dict[str, Any], device: str | torch.device = "cpu",
                  origin: str | Path = "<training>") -> Translator:
    """:func:`fair_baseline_translator` from a configuration and the statistics a model carries (validation during
    training builds it from the run's own before any model file exists); ``origin`` names them in errors."""
    import dataclasses

    maps = []
    for target in (config.names[1], config.names[0]):
        if "quantiles" not in stats.get(target, {}):
            raise InputError(origin, "this model carries no training histograms (retrain it with this version)")
        m = ResidualGenerator(None)
        m.target.set(torch.tensor(stats[target]["quantiles"], dtype=torch.float32))
        maps.append(m)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, generator="map", residual="invert"))
    return Translator(maps[0], maps[1], config, stats, device=device, source=f"fair baseline of {origin}",
                      precision="fp32")


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array with its axes permuted and flipped to the closest RAS orientation (no resampling, a view),
    and the nibabel orientation that :func:`from_ras` undoes (as MONAI's ``Orientation("RAS")`` does; nibabel's
    ``io_orientation`` is what MONAI uses too, without MONAI's import time)."""
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    return apply_orientation(array, ornt), ornt


def from_ras(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo :func:`to_ras`: back to the input's own axes."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    return apply_orientation(array, ornt_transform(axcodes2ornt("RAS"), ornt))


def foreground_box(foreground: torch.Tensor, margin: int, stride: int = 1) -> tuple[slice, slice, slice] | None:
    """The bounding box of a (X, Y, Z) foreground mask grown by ``margin`` voxels on each side (within the volume),
    or None when there is no foreground or the box is (nearly) the whole volume."""
    # two passes over the volume: its projection onto the first two axes, and its profile along the third
    plane = foreground.any(dim=2)
    if not bool(plane.any()):
        return None
    profiles = (plane.any(dim=1), plane.any(dim=0), foreground.any(dim=1).any(dim=0))
    box = []
    for axis in range(3):
        hits = torch.nonzero(profiles[axis]).flatten()
        size = foreground.shape[axis]
        lo, hi = max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, size)
        box.append(slice(lo, hi))
    if all((b.stop - b.start) >= n - stride for b, n in zip(box, foreground.shape)):
        return None
    return tuple(box)  # type: ignore[return-value]


def model_image_kind(config: TrainConfig) -> str:
    """What a model was trained on: ``"volume"`` or ``"image2d"`` (:attr:`TrainConfig.image_kind`); for models
    saved before that field, derived from the suffixes of the training files the configuration lists (training
    stores them one by one). ``""`` when that says nothing (folders only) or both kinds.
    """
    if config.image_kind:
        return config.image_kind
    kinds = set()
    for source in [*config.a, *config.b, *config.extra_a, *config.extra_b]:
        suffix = suffix_of(source)
        if suffix in VOLUME_SUFFIXES:
            kinds.add("volume")
        elif suffix in IMAGE2D_SUFFIXES:
            kinds.add("image2d")
    return kinds.pop() if len(kinds) == 1 else ""


def output_paths(inputs: Sequence[Path], output_dir: Path) -> list[Path]:
    """Where each input's translation goes: its path relative to the inputs' common folder, under
    ``output_dir`` (``case1/t1.nii.gz`` and ``case2/t1.nii.gz`` stay apart)."""
    inputs = [Path(p).absolute() for p in inputs]
    if not inputs:
        return []
    root = Path(os.path.commonpath([p.parent for p in inputs]))
    return [Path(output_dir) / p.relative_to(root) for p in inputs]


class _Counter:
    """Counts slices through the network and reports (done, total)."""

    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def add(self, n: int) -> None:
        self.done = min(self.done + n, self.total)
        if self.callback is not None:
            self.callback(self.done, self.total)
