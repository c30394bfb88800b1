"""Output calibration curves: a fixed monotone curve that reshapes a model's output histogram toward its target domain's.

A model trained on two heads learns their target contrast; on a head from another scanner its output histogram
can come out compressed (for the packaged T1 -> T2 model: CSF not bright enough, white matter too bright, so a
lesion at the right level reads faint). The curve is fitted once, from volumes whose real target is known (a
model's training pairs, or a site's own volumes of each contrast: they need not be registered or even of the same
people), and stored in the model file; :class:`medsynth.inference.Translator` applies it after the network.

Both sides are compared as distributions over the foreground, each volume normalised to [0, 1] by its own
0.5-99.5 % range (the range evaluation normalises by): the curve maps the mean of the outputs' quantile functions
to the mean of the real targets' at :data:`LEVELS` levels. Applied to a new output normalised the same way, the
result is mapped back to that output's own range, so intensities keep the domain's scale. It is the same map for
every patient (it does not re-match each patient's histogram, which would move with lesion volume). A monotone
map cannot separate tissues the network renders at one level: on the shared patients a T1 -> T2 curve lifts the whole
brain and darkens the lesions with the white matter (``scripts/results/study_calibrate.md``), so the packaged model
carries none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["LEVELS", "OutputCurve", "fit_curve", "foreground", "normalised_range", "parse_curves",
           "quantile_function"]

#: quantile levels of a curve (0, 0.001, ..., 1)
LEVELS = 1001
#: the percentiles each volume is normalised by (as :func:`medsynth.evaluation.normalise_in_mask`)
LOW, HIGH = 0.5, 99.5


@dataclass
class OutputCurve:
    """A monotone map of normalised output intensities (``x``) to normalised target intensities (``y``).

    Attributes:
        x: non-decreasing knots on the output side.
        y: non-decreasing knots on the target side, as many as ``x``.
        sources: the volumes whose translations made ``x`` (file names, for the model card).
        targets: the real target volumes that made ``y``.
    """

    x: list[float]
    y: list[float]
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x, np.float64), np.asarray(self.y, np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
            raise ValueError(f"a curve needs two equally long lists of at least 2 knots (got {x.shape}, {y.shape})")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("a curve's knots must be finite")
        if (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
            raise ValueError("a curve's knots must be non-decreasing")

    def to_dict(self) -> dict[str, Any]:
        """Plain lists for the model file (``torch.load(weights_only=True)`` reads them)."""
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y], "sources": list(self.sources),
                "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputCurve:
        """Inverse of :meth:`to_dict`."""
        return cls(list(data["x"]), list(data["y"]), list(data.get("sources", [])), list(data.get("targets", [])))

    def apply(self, array: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The calibrated array: inside ``mask`` through the curve (in the array's own normalised range), outside
        unchanged. A mask with no spread (empty, or one value) leaves the array as it is."""
        out = np.array(array, dtype=np.float32, copy=True)
        span = normalised_range(out, mask)
        if span is None:
            return out
        lo, hi = span
        values = (out[mask].astype(np.float64) - lo) / (hi - lo)
        mapped = np.interp(values, self.x, self.y)
        # beyond the knots (darker or brighter than anything the curve was fitted on) the curve goes on with
        # slope 1 from its ends instead of flattening: rank order holds to the last voxel
        mapped = np.where(values < self.x[0], self.y[0] + values - self.x[0], mapped)
        mapped = np.where(values > self.x[-1], self.y[-1] + values - self.x[-1], mapped)
        out[mask] = (mapped * (hi - lo) + lo).astype(np.float32)
        return out


def parse_curves(calibration: dict[str, Any], directions: Sequence[str]) -> dict[str, OutputCurve]:
    """A model's curves by direction (:meth:`OutputCurve.to_dict` dicts, or curves), each checked.

    Raises:
        ValueError: a damaged curve, or one for a direction not in ``directions``.
    """
    unknown = sorted(set(calibration) - set(directions))
    if unknown:
        raise ValueError(f"calibration for unknown directions {unknown} (the model's: {list(directions)})")
    return {str(k): v if isinstance(v, OutputCurve) else OutputCurve.from_dict(v) for k, v in calibration.items()}


def foreground(array: np.ndarray) -> np.ndarray:
    """Where a volume has tissue, as conversion decides it (:func:`medsynth.intensity.foreground_threshold`)."""
    from medsynth.intensity import foreground_threshold

    return np.asarray(array) > foreground_threshold(np.asarray(array))


def normalised_range(array: np.ndarray, mask: np.ndarray) -> tuple[float, float] | None:
    """The 0.5 and 99.5 percentiles of ``array`` inside ``mask``; None where they coincide (nothing to scale)."""
    values = np.asarray(array)[mask]
    if values.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(values, [LOW, HIGH]))
    return (lo, hi) if hi > lo else None


def quantile_function(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:data:`LEVELS` quantiles of ``array`` inside ``mask``, normalised by its own 0.5-99.5 % range.

    Raises:
        ValueError: the mask holds no spread of values.
    """
    span = normalised_range(array, mask)
    if span is None:
        raise ValueError("no tissue with a spread of intensities")
    lo, hi = span
    return (np.quantile(np.asarray(array)[mask].astype(np.float64), np.linspace(0, 1, LEVELS)) - lo) / (hi - lo)


def fit_curve(outputs: Sequence[np.ndarray], output_masks: Sequence[np.ndarray], targets: Sequence[np.ndarray],
              target_masks: Sequence[np.ndarray], sources: Sequence[str] = (),
              target_names: Sequence[str] = ()) -> OutputCurve:
    """The curve from a model's outputs to real volumes of its target domain (not necessarily the same heads):
    the mean output quantile function to the mean target quantile function, made non-decreasing."""
    if not outputs or not targets:
        raise ValueError("a curve needs at least one output and one target")
    x = np.mean([quantile_function(a, m) for a, m in zip(outputs, output_masks)], axis=0)
    y = np.mean([quantile_function(a, m) for a, m in zip(targets, target_masks)], axis=0)
    return OutputCurve(np.maximum.accumulate(x).tolist(), np.maximum.accumulate(y).tolist(), list(sources),
                       list(target_names))
