"""A medsynth model as a MONAI bundle: ``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``,
``docs/README.md`` and ``LICENSE``, runnable with MONAI's own runner::

    python -m monai.bundle run --config_file BUNDLE/configs/inference.json \\
        --input_path IN.nii.gz --output_path OUT.nii.gz

The inference config holds no program: it instantiates a :class:`medsynth.inference.Translator` from the
bundle's ``models/model.pt`` (the medsynth model file itself, read with ``weights_only=True``) and its ``run``
entry calls :meth:`~medsynth.inference.Translator.translate_file`, so the bundle gives exactly the voxels that
``medsynth-convert IN OUT --model MODEL`` gives.

Example:
    >>> from medsynth.bundle import export_bundle              # doctest: +SKIP
    >>> export_bundle("t1t2_bundle", direction="t1-to-t2")     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from medsynth.errors import InputError
from medsynth.files import create_folder
from medsynth.fusion import DEFAULT_FUSION

__all__ = ["REQUIRED_METADATA", "SCHEMA_URL", "bundle_root", "export_bundle", "inference_config",
           "missing_metadata", "bundle_metadata"]

#: the metadata schema of MONAI's current model-zoo bundles (validated by ``monai.bundle.verify_metadata``)
SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20240725.json")
#: the keys that schema requires
REQUIRED_METADATA = ("schema", "version", "monai_version", "pytorch_version", "numpy_version",
                     "required_packages_version", "task", "description", "authors", "copyright",
                     "network_data_format")
#: the keys the schema requires of every tensor in ``network_data_format``
REQUIRED_TENSOR = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")

CYCLEGAN = ("Zhu J.-Y., Park T., Isola P., Efros A. A. Unpaired Image-to-Image Translation using Cycle-Consistent "
            "Adversarial Networks. ICCV 2017. https://arxiv.org/abs/1703.10593")

LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

LICENSE_TEXT = """Copyright (c) {authors}

Licensed under the Apache License, Version 2.0 (the "License"); you may not use the files of this bundle except
in compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is distributed
on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the License for
the specific language governing permissions and limitations under the License.

The model in models/model.pt is for research and demonstration only, not for diagnostic use.
"""


def bundle_root(default: str = ".") -> str:
    """The folder of the bundle that MONAI's runner is running: ``inference.json``'s ``bundle_root``.

    MONAI does not put the config file's path into the config, but its ``ConfigWorkflow`` keeps the config folder
    (``config_root_path``) and adds the bundle folder (its parent, when it is named ``configs``) to ``sys.path``
    before ``run``. This finds that workflow among the callers and applies the same rule, so that
    ``python -m monai.bundle run --config_file ANYWHERE/configs/inference.json`` works from any directory and a
    moved bundle keeps working. ``--bundle_root PATH`` on MONAI's command line replaces this entry altogether.

    Args:
        default: the answer outside a MONAI workflow (a ``ConfigParser`` used directly): the model zoo's ``"."``.
    """
    workflows = sys.modules.get("monai.bundle.workflows")
    kind = getattr(workflows, "ConfigWorkflow", None)
    frame = sys._getframe(1)
    try:
        while frame is not None and kind is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, kind):
                root = Path(owner.config_root_path)
                return os.path.abspath(root.parent if root.name == "configs" else root)
            frame = frame.f_back
    finally:
        del frame  # a frame kept in a local keeps every caller's locals alive
    return default


def _input_channels(config: Any) -> int:
    """Channels of the generator's input: the image, then for a residual model its base and the neighbouring
    slices' bases (2.5D)."""
    if config.model.residual == "invert" or config.model.generator == "map":
        return 2 + 2 * config.model.context
    return 1


def bundle_metadata(payload: dict[str, Any], direction: str, version: str = "0.1.0",
                    authors: str = "medsynth contributors", model_name: str = "model.pt") -> dict[str, Any]:
    """``configs/metadata.json`` for a medsynth model file's content (see :data:`REQUIRED_METADATA`).

    Args:
        payload: the model file's content (:func:`medsynth.inference.read_model_file`).
        direction: the bundle's direction (``"t1-to-t2"``).
        version: the bundle's version.
        authors: who made the model (also its copyright holder).
        model_name: the model file's name, for the change log.
    """
    import monai
    import nibabel
    import numpy
    import torch

    import medsynth
    from medsynth.bias import describe_bias_correction
    from medsynth.config import TrainConfig, describe_axes
    from medsynth.modelfiles import direction_config
    from medsynth.networks import build_generator, generator_stride

    # a model file may hold each direction from its own run (scripts/package_model.py --b-to-a)
    config = TrainConfig.from_dict(direction_config(payload, direction))
    src, dst = direction.split("-to-")
    stride = generator_stride(config.model)
    channels = _input_channels(config)
    names = ["image", "base"] + [f"base of slice {d:+d}" for d in range(-config.model.context, config.model.context + 1)
                                 if d]
    params = sum(p.numel() for p in build_generator(config.model).parameters())
    smoothed = (f" (smoothed in-plane by a Gaussian of {config.model.base_smooth:g} px)"
                if config.model.residual == "invert" and config.model.base_smooth else "")
    tensor = {"type": "image", "format": "magnitude", "modality": "MR", "dtype": "float32",
              "value_range": [-1, 1], "is_patch_data": False,
              # one slice at a time, padded to a multiple of the generator's stride
              "spatial_shape": [f"{stride}*n", f"{stride}*n"]}
    meta: dict[str, Any] = {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: f"exported by medsynth {medsynth.__version__} from {model_name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"medsynth": medsynth.__version__, "nibabel": nibabel.__version__},
        "name": f"medsynth {src.upper()} to {dst.upper()} translation",
        "task": (f"{'Paired' if config.paired else 'Unpaired'} image-to-image translation of brain MRI, "
                 f"{src.upper()} to {dst.upper()}, slice by slice"),
        "description": (
            f"A medsynth {'generator trained on registered pairs' if config.paired else 'CycleGAN generator'} "
            f"({config.model.generator}, ngf {config.model.ngf}, {params:,} parameters"
            f"{', a gated residual correction of the inverted histogram match' if config.model.residual == 'invert' else ''}"
            f"{smoothed}"
            f") that translates a {src.upper()} volume into a synthetic {dst.upper()} volume axial slice by slice "
            f"(trained on {describe_axes(config.axis)} slices). The volume is reoriented to RAS without resampling, "
            f"{describe_bias_correction(config.bias_correction, 'divided by its N4 bias field', ', ')}"
            f"normalised by its own 0.5/99.5 foreground "
            f"percentiles, cropped to the box around its foreground, translated, mapped onto the {dst.upper()} "
            f"training intensities and written with the input's geometry (shape, affine, qform and sform)."),
        "authors": authors,
        "copyright": f"Copyright (c) {authors}",
        "data_source": (f"{'registered' if config.paired else 'unpaired'} {src.upper()} and {dst.upper()} volumes "
                        f"given to medsynth-train ({len(config.a)} and {len(config.b)} files"
                        f"{', used paired' if config.paired else ''})"),
        "data_type": "nibabel",
        "image_classes": (f"one {src.upper()}-weighted MRI volume (NIfTI, MHA, NRRD), any size, voxel size and "
                          f"orientation; the network sees it normalised to [-1, 1]"),
        "pred_classes": (f"one synthetic {dst.upper()}-weighted volume in the input's geometry, float32, on the "
                         f"{dst.upper()} training intensity range"),
        "intended_use": "Research and demonstration, not for diagnostic use",
        "references": [CYCLEGAN],
        "network_data_format": {
            "inputs": {"image": {**tensor, "num_channels": channels,
                                 "channel_def": {str(i): n for i, n in enumerate(names[:channels])}}},
            "outputs": {"pred": {**tensor, "num_channels": 1, "channel_def": {"0": f"synthetic {dst}"}}},
        },
        # medsynth's own: what inference.json's translator needs to know, for people and programs
        "medsynth": {"direction": direction, "directions": [f"{a}-to-{b}" for a, b in
                                                            ((config.names[0], config.names[1]),
                                                             (config.names[1], config.names[0]))],
                     "model_format_version": payload.get("version"), "generator": config.model.generator,
                     "size": config.size, "axis": config.axis, "bias_correction": config.bias_correction},
    }
    scores = _last_validation(payload, direction)
    if scores:
        meta["eval_metrics"] = scores
    return meta


def _last_validation(payload: dict[str, Any], direction: str) -> dict[str, float]:
    """The last validation round's PSNR / SSIM / MAE for ``direction``, if the model carries any."""
    rounds = (payload.get("extra") or {}).get("validation") or []
    if not rounds or not isinstance(rounds[-1], dict):
        return {}
    last = rounds[-1].get(direction) or {}
    return {f"val_{k}": round(float(v), 4) for k, v in last.items() if isinstance(v, (int, float))}


def inference_config(direction: str) -> dict[str, Any]:
    """``configs/inference.json``: a :class:`~medsynth.inference.Translator` and a ``run`` that translates
    ``input_path`` into ``output_path`` (both given on MONAI's command line). The other entries are
    ``medsynth-convert``'s defaults, and each can be overridden there too (``--axis all``, ``--device cpu``)."""
    return {
        "imports": ["$import medsynth.bundle as medsynth_bundle"],
        "bundle_root": "$medsynth_bundle.bundle_root()",
        "model_path": "$@bundle_root + '/models/model.pt'",
        # input_path and output_path are not here: they come from the command line, and MONAI names the one
        # that is missing ("the referring item `@input_path` is not defined in the config content")
        "direction": direction,
        "axis": "axial",
        "fuse": DEFAULT_FUSION,
        "dtype": "float32",
        "overwrite": False,
        "device": "auto",
        "precision": "auto",
        "batch_size": None,
        "threads": None,
        "crop": True,
        "translator": {
            "_target_": "medsynth.inference.Translator.from_file",
            "model_path": "@model_path",
            "device": "@device",
            "precision": "@precision",
            "batch_size": "@batch_size",
            "threads": "@threads",
            "crop": "@crop",
        },
        # the network alone (for MONAI's verify_net_in_out): one direction's generator
        "network": "$@translator.networks[@direction]",
        "run": ["$@translator.translate_file(@input_path, @output_path, @direction, @axis, @fuse, @dtype, "
                "@overwrite)"],
    }


def readme(meta: dict[str, Any], direction: str, card: str | None) -> str:
    """``docs/README.md``: what the bundle does and how to run it."""
    other = "-to-".join(reversed(direction.split("-to-")))
    lines = [
        f"# {meta['name']}", "",
        meta["description"], "",
        "## Run it", "",
        "With medsynth installed (`pip install medsynth`, or `pip install -e .` in its checkout), from any folder:",
        "", "```bash",
        "python -m monai.bundle run --config_file BUNDLE/configs/inference.json \\",
        "    --input_path IN.nii.gz --output_path OUT.nii.gz",
        "```", "",
        "This gives the same voxels as `medsynth-convert IN.nii.gz OUT.nii.gz --model BUNDLE/models/model.pt"
        f" --direction {direction}`. Other entries of `configs/inference.json` can be overridden the same way: "
        "`--axis all` (the three axes fused; `--fuse detail` keeps the axial pass and takes only the detail "
        f"across slices from the other two), `--direction {other}` (the model holds both generators), "
        "`--device cpu`, `--overwrite True`. The bundle finds its own folder (`bundle_root`) from the config "
        "file's path, so it can be moved; `--bundle_root PATH` overrides that.", "",
        "## Files", "",
        "- `configs/metadata.json`: versions, task, inputs and outputs of the network (MONAI's metadata schema)",
        "- `configs/inference.json`: a `medsynth.inference.Translator` and the `run` entry",
        "- `models/model.pt`: the medsynth model file (both generators, the configuration and each domain's "
        "intensity statistics), readable with `torch.load(..., weights_only=True)`",
        "- `docs/model_card.md`: how the model was trained and what it scores, when the model came with one", "",
        "## Intended use", "",
        meta["intended_use"] + ".", "",
    ]
    if card is None:
        lines = [line for line in lines if "model_card" not in line]
    return "\n".join(lines)


def missing_metadata(meta: dict[str, Any]) -> list[str]:
    """The keys of MONAI's metadata schema (:data:`REQUIRED_METADATA`, and each tensor's) that ``meta`` lacks."""
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    for side in ("inputs", "outputs"):
        for name, tensor in meta.get("network_data_format", {}).get(side, {}).items():
            missing += [f"network_data_format.{side}.{name}.{k}" for k in REQUIRED_TENSOR if k not in tensor]
    return missing


def export_bundle(out_dir: str | Path, model: str | Path | None = None, direction: str | None = None,
                  version: str = "0.1.0", authors: str = "medsynth contributors", overwrite: bool = False) -> Path:
    """Write a MONAI bundle for a medsynth model into ``out_dir`` (atomically: a whole bundle or none).

    Args:
        out_dir: the bundle's folder (absent, empty, or an earlier bundle with ``overwrite``).
        model: a ``model.pt`` or a run folder (default: the packaged T1 <-> T2 model).
        direction: the bundle's direction (default: the model's first).
        version: the bundle's version.
        authors: the model's authors (metadata and LICENSE).
        overwrite: replace an earlier bundle in ``out_dir``.

    Raises:
        InputError: a bad model, an unknown direction, or an ``out_dir`` that is not free.
    """
    from medsynth.inference import default_model_path, read_model_file

    path = Path(model) if model is not None else default_model_path()
    if path.is_dir():
        path = path / "model.pt"
    payload = read_model_file(path)
    names = payload.get("domains") or payload["config"]["names"]
    directions = [f"{names[0]}-to-{names[1]}", f"{names[1]}-to-{names[0]}"]
    direction = (direction or directions[0]).lower()
    if direction not in directions:
        raise InputError(direction, f"not one of this model's directions: {', '.join(directions)}")
    out = Path(out_dir)
    _check_destination(out, overwrite)
    meta = bundle_metadata(payload, direction, version, authors, path.name)
    card = path.with_suffix(".md")
    card_text = card.read_text(encoding="utf-8") if card.is_file() else None

    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = create_folder(out.absolute().parent, prefix=f".{out.name}.partial-")
    try:
        for sub in ("configs", "models", "docs"):
            (staging / sub).mkdir()
        _write_json(staging / "configs" / "metadata.json", meta)
        _write_json(staging / "configs" / "inference.json", inference_config(direction))
        (staging / "configs" / "logging.conf").write_text(LOGGING_CONF, encoding="utf-8")
        # the model file as it is: its bytes are what medsynth-convert reads
        shutil.copyfile(path, staging / "models" / "model.pt")
        (staging / "docs" / "README.md").write_text(readme(meta, direction, card_text), encoding="utf-8")
        if card_text is not None:
            (staging / "docs" / "model_card.md").write_text(card_text, encoding="utf-8")
        (staging / "LICENSE").write_text(LICENSE_TEXT.format(authors=authors), encoding="utf-8")
        _move_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that holds anything but an earlier bundle (and that one without ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "the bundle needs a folder, and this is a file")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "configs" / "metadata.json").is_file():
            raise InputError(out, "the folder is not empty and holds no bundle; give a new folder")
        if not overwrite:
            raise InputError(out, "a bundle exists here; use --overwrite to replace it")


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished bundle onto ``out``; an earlier one is moved aside first and removed after."""
    old = None
    if out.is_dir():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=4) + "\n", encoding="utf-8")
