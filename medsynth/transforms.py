"""MONAI transform chains: volume preparation, random training slices, intensity augmentation.

The intensity normalisation itself (:mod:`medsynth.intensity`, re-exported here) has no MONAI in it, so that
conversion, which needs only that, starts fast.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    MapTransform,
    Orientationd,
    RandAffined,
    RandFlipd,
    Randomizable,
    RandSpatialCropd,
    SpatialPadd,
    Transform,
)

from medsynth.config import AXIS_INDEX
from medsynth.intensity import (
    BACKGROUND_LEVEL,
    FOREGROUND_FLOOR,
    FOREGROUND_FRACTION,
    LOWER_PERCENTILE,
    UPPER_PERCENTILE,
    IntensityStats,
    background_level,
    denormalise,
    foreground_threshold,
    intensity_stats,
    normalise,
)

__all__ = ["BACKGROUND_LEVEL", "FOREGROUND_FLOOR", "FOREGROUND_FRACTION", "LOWER_PERCENTILE", "UPPER_PERCENTILE", "IntensityStats", "background_level",
           "denormalise", "foreground_threshold", "intensity_stats", "normalise", "RAS_LABELS", "RobustNormalised",
           "LoadImaged", "BiasCorrectd", "prepare_transform", "slice_coverage", "RandSliced", "RandIntensityAugmentd",
           "intensity_augment_transform", "train_slice_transform"]

#: Axis labels of RAS space, given explicitly to MONAI's Orientation.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

class RobustNormalised(MapTransform):
    """Dictionary transform: per-image robust normalisation to [-1, 1].

    The statistics used are stored under ``"<key>_stats"`` (an :class:`IntensityStats` as a dict) so that the
    domain's typical range can be stored with the model.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            stats = intensity_stats(d[key])
            d[key] = normalise(torch.as_tensor(d[key]), stats) if isinstance(d[key], torch.Tensor) else \
                normalise(torch.as_tensor(np.asarray(d[key])), stats)
            d[f"{key}_stats"] = stats.to_dict()
        return d


class LoadImaged(MapTransform):
    """Dictionary transform: read a file with :func:`medsynth.io.load_image` into a MONAI ``MetaTensor``.

    medsynth's reader rather than MONAI's: it validates (NaN, all-zero, multi-frame, 2D) with clear errors
    and reads 2D images (PNG/JPEG/DICOM) as one-slice volumes.
    """

    def __init__(self, keys: KeysCollection, expect: str = "any") -> None:
        super().__init__(keys)
        self.expect = expect

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        from medsynth.io import load_image

        d = dict(data)
        for key in self.key_iterator(d):
            image = load_image(d[key], expect=self.expect)
            d[key] = MetaTensor(torch.from_numpy(image.array), affine=torch.as_tensor(image.affine),
                                meta={"filename_or_obj": str(image.path)})
        return d


class BiasCorrectd(MapTransform):
    """Dictionary transform: each (1, X, Y, Z) ``MetaTensor`` divided by its bias field
    (:func:`medsynth.bias.correct_bias`, with the voxel size its affine gives); a one-slice image passes as it is."""

    def __init__(self, keys: KeysCollection, method: str = "n4") -> None:
        super().__init__(keys)
        self.method = method

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medsynth.bias import correct_bias, ras_spacing

        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            corrected = correct_bias(x[0].numpy(), ras_spacing(np.asarray(x.affine, dtype=np.float64)), self.method)
            # a copy of the MetaTensor keeps its affine and metadata
            d[key] = x.clone()
            d[key][0] = torch.from_numpy(corrected).to(x.dtype)
        return d


def prepare_transform(keys: KeysCollection = "image", expect: str = "any", enhance: Sequence[str] = (),
                      bias_correction: str = "none") -> Compose:
    """Deterministic part shared by training and conversion: load, channel first, RAS, (bias-field correction of a
    volume), normalise.

    Its output is what training caches (``CacheDataset``): each volume is decoded (and corrected) once.
    """
    chain: list[Transform] = [
        LoadImaged(keys, expect=expect),
        EnsureChannelFirstd(keys, channel_dim="no_channel"),
        Orientationd(keys, axcodes="RAS", labels=RAS_LABELS),
    ]
    if bias_correction != "none":
        chain.append(BiasCorrectd(keys, bias_correction))
    if enhance:
        from medsynth.enhance import Enhanced

        chain.append(Enhanced(keys, list(enhance)))
    chain.append(RobustNormalised(keys))
    return Compose(chain)


def slice_coverage(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Fraction of foreground (above -1 after normalisation) in each slice of a (C, X, Y, Z) volume along
    ``axis`` (0, 1, 2 for x, y, z)."""
    other = tuple(i + 1 for i in range(3) if i != axis)
    return (x > -1).float().mean(dim=(0, *other))


class RandSliced(Randomizable, MapTransform):
    """Dictionary transform: take one random 2D slice along ``axis`` from a (C, X, Y, Z) volume.

    Slices whose foreground (values above -1 after normalisation) covers less than ``min_foreground`` of the
    volume's best slice are skipped, so training sees anatomy, not empty background. The per-slice coverage may
    be given under ``"<key>_coverage"`` (see :func:`slice_coverage`).
    """

    def __init__(self, keys: KeysCollection, axis: str = "axial", min_foreground: float = 0.1) -> None:
        MapTransform.__init__(self, keys)
        self.axis = AXIS_INDEX[axis]
        self.min_foreground = min_foreground

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            # training passes the coverage computed once per volume; recomputing it costs a pass over the volume
            coverage = d.pop(f"{key}_coverage", None)
            if coverage is None:
                coverage = slice_coverage(x, self.axis)
            ok = torch.nonzero(coverage >= self.min_foreground * float(coverage.max())).flatten()
            index = int(ok[self.R.randint(len(ok))]) if len(ok) else int(coverage.argmax())
            d[key] = x.select(self.axis + 1, index)
        return d


class RandIntensityAugmentd(Randomizable, MapTransform):
    """Dictionary transform: random intensity changes of a normalised slice, as scanners and protocols vary.

    A smooth multiplicative bias field, a gamma (contrast) change, a monotone histogram shift and a little
    Gaussian noise (MONAI's ``RandBiasField``, ``RandAdjustContrast``, ``RandHistogramShift``,
    ``RandGaussianNoise``), applied to the foreground on a [0, 2] scale; the background stays -1.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.8) -> None:
        from monai.transforms import RandAdjustContrast, RandBiasField, RandGaussianNoise, RandHistogramShift

        MapTransform.__init__(self, keys)
        self.prob = prob
        self.chain = [RandBiasField(degree=3, coeff_range=(0.0, 0.15), prob=0.5),
                      RandAdjustContrast(gamma=(0.7, 1.5), prob=0.5),
                      RandHistogramShift(num_control_points=(10, 12), prob=0.3),
                      RandGaussianNoise(mean=0.0, std=0.03, prob=0.3)]

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandIntensityAugmentd:
        super().set_random_state(seed, state)
        for t in self.chain:
            t.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.rand() < self.prob

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do:
            return d
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()
            foreground = x > BACKGROUND_LEVEL
            y = x + 1.0
            for t in self.chain:
                y = torch.as_tensor(t(y)).float()
            # foreground stays just above the background level, so no tissue turns into background
            d[key] = torch.where(foreground, (y - 1.0).clamp(FOREGROUND_FLOOR, 1.0), torch.full_like(x, -1.0))
        return d


def intensity_augment_transform(keys: KeysCollection = "image") -> Compose:
    """The random intensity part of training (``--intensity-augment``), applied to each input separately."""
    return Compose([RandIntensityAugmentd(keys)])


def train_slice_transform(keys: KeysCollection, size: int, axis: str = "axial", min_foreground: float = 0.1,
                          augment: bool = True, flip: bool = True) -> Compose:
    """Random part of the training chain: slice, pad or crop to ``size`` (no resizing), augment."""
    chain: list[Transform] = [
        RandSliced(keys, axis=axis, min_foreground=min_foreground),
        # -1 is the normalised background, so padding adds background rather than a grey frame
        SpatialPadd(keys, spatial_size=(size, size), value=-1.0),
        RandSpatialCropd(keys, roi_size=(size, size), random_size=False),
    ]
    if flip and axis != "sagittal":
        # the first in-plane axis is left-right for axial and coronal slices: anatomy mirrors plausibly (a
        # sagittal slice has no left-right axis, and front-back mirrored anatomy does not exist)
        chain.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    if augment:
        chain.append(RandAffined(keys, prob=0.5, rotate_range=(0.1,), scale_range=(0.05, 0.05),
                                 translate_range=(size * 0.03, size * 0.03), padding_mode="border",
                                 mode="bilinear"))
    return Compose(chain)
