"""Calibrating a model's output (``medsynth-calibrate``): fit a :class:`medsynth.curves.OutputCurve` from volumes
whose real target is known and write the model with it.

The curve itself (what it is, how it is fitted and applied) is :mod:`medsynth.curves`;
:class:`medsynth.inference.Translator` applies the curves a model file carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from medsynth.curves import LEVELS, OutputCurve, fit_curve, foreground, normalised_range, quantile_function
from medsynth.errors import InputError

__all__ = ["LEVELS", "OutputCurve", "calibrate_model", "fit_curve", "foreground", "normalised_range",
           "quantile_function"]


def calibrate_model(model: str | Path | None, sources: Sequence[str | Path], targets: Sequence[str | Path],
                    out: str | Path, direction: str | None = None, device: str = "auto", overwrite: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Fit a direction's curve and write the model with it to ``out`` (the input model is never changed).

    Args:
        model: a ``model.pt``, a run folder, or None (the packaged model).
        sources: volumes of the direction's source domain; the model translates them (axial).
        targets: real volumes of the direction's target domain (registered to the sources or not).
        out: the new model file (written atomically; must not be the input model).
        direction: e.g. ``t1-to-t2`` (default: the model's first).
        progress: called with (volumes done, volumes in all).

    Raises:
        InputError: a missing or unreadable volume, a volume without tissue, an output that exists (without
            ``overwrite``) or that is the input model, an unknown direction.
    """
    from medsynth.files import atomic_save
    from medsynth.inference import Translator, default_model_path, read_model_file
    from medsynth.io import load_image
    from medsynth.report import case_label

    source_path = Path(model) if model is not None else default_model_path()
    if source_path.is_dir():
        source_path = source_path / "model.pt"
    out = Path(out)
    if out.suffix != ".pt":
        raise InputError(out, "the calibrated model needs a .pt name")
    if out.is_dir():
        raise InputError(out, "is a folder: give the new model's file name")
    if source_path.exists() and out.exists() and out.samefile(source_path):
        raise InputError(out, "is the input model: write the calibrated model under a new name")
    if out.exists() and not overwrite:
        raise InputError(out, "exists (use --overwrite to replace it)")
    if not sources or not targets:
        raise InputError("--source" if not sources else "--target", "give at least one volume")
    payload = read_model_file(source_path)
    translator = Translator.from_file(source_path, device=device, calibrate=False)
    key, _, _ = translator._resolve_direction(direction)
    if translator.image_kind == "image2d":
        raise InputError(source_path, "a 2D image model: output calibration is for volume models")
    total, done = len(sources) + len(targets), 0
    outputs, output_masks, reals, real_masks = [], [], [], []
    for path in sources:
        image = load_image(path)
        mask = foreground(image.array)
        translated = translator.translate(image, direction=key, axis="axial").array
        if normalised_range(translated, mask) is None:
            raise InputError(path, "no tissue with a spread of intensities to calibrate with")
        outputs.append(translated)
        output_masks.append(mask)
        done += 1
        if progress is not None:
            progress(done, total)
    for path in targets:
        image = load_image(path)
        mask = foreground(image.array)
        if normalised_range(image.array, mask) is None:
            raise InputError(path, "no tissue with a spread of intensities to calibrate with")
        reals.append(image.array)
        real_masks.append(mask)
        done += 1
        if progress is not None:
            progress(done, total)
    curve = fit_curve(outputs, output_masks, reals, real_masks, [case_label(p) for p in sources],
                      [case_label(p) for p in targets])
    payload["calibration"] = {**payload.get("calibration", {}), key: curve.to_dict()}
    # the weights are saved as they were read (fp16 stays fp16)
    return atomic_save(payload, out)

