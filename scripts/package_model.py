"""Package a trained model as medsynth's default: fp16 weights in medsynth/models/, checked on load.

usage: python scripts/package_model.py RUN/model.pt [--b-to-a RUN2/model.pt] [--out medsynth/models/default_t1t2.pt]

``--b-to-a`` takes the second direction's generator (T2 -> T1 for a T1/T2 model) from another run of the same data
and preprocessing (:func:`medsynth.modelfiles.join_directions`): each direction from the recipe that does it best.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from medsynth.config import TrainConfig
from medsynth.cyclegan import export_model
from medsynth.errors import InputError, exit_on_error
from medsynth.files import atomic_path
from medsynth.inference import Translator, read_model_file
from medsynth.modelfiles import join_directions
from medsynth.networks import build_generator
from medsynth.report import case_label

ROOT = Path(__file__).resolve().parents[1]
#: the packaged file stays small enough for the repository and the wheel
SIZE_LIMIT_MB = 30.0


def run_name(path: Path) -> str:
    """What a model is called in a joined file's record: its run folder's name for ``RUN/model.pt`` (or ``RUN``),
    else the file's own name."""
    if path.is_dir():
        return path.absolute().name
    return path.absolute().parent.name if path.name in ("model.pt", "model_best.pt") else path.name


def _labels(paths: list[str]) -> list[str]:
    # the training inputs are the builder's paths; they mean nothing on a user's machine, but the case says what
    # the model was trained on: the folder is kept only where the file name alone names no case (t1.nii.gz)
    return [case_label(p) for p in paths]


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--fallback", type=Path, help="used when MODEL does not exist (no validation was run)")
    p.add_argument("--b-to-a", type=Path, metavar="MODEL",
                   help="take the second direction's generator (T2 -> T1) from this run's model instead")
    p.add_argument("--out", type=Path, default=ROOT / "medsynth" / "models" / "default_t1t2.pt")
    args = p.parse_args(argv)
    source = args.model if args.model.exists() or not args.fallback else args.fallback
    payload = read_model_file(source)
    if args.b_to_a is not None:
        second = read_model_file(args.b_to_a)  # its own one-line error when missing or not a model
        try:
            payload = join_directions(payload, second, run_name(args.b_to_a))
        except ValueError as exc:
            raise InputError(args.b_to_a, f"cannot give {source} its second direction: {exc}") from None
    config = TrainConfig.from_dict(payload["config"])
    nets = []
    for key in ("a_to_b", "b_to_a"):
        net = build_generator(config.model)
        net.load_state_dict(payload["generators"][key])
        nets.append(net)
    config.a, config.b = _labels(config.a), _labels(config.b)
    config.val_a, config.val_b = _labels(config.val_a), _labels(config.val_b)
    config.out = ""
    extra = dict(payload.get("extra", {}))
    # a packaged file packaged again (given its other direction) still names the run file it came from
    extra.setdefault("packaged_from", source.name)
    # checked under a temporary name and only then moved onto --out (by default the packaged model itself)
    with atomic_path(args.out) as tmp:
        export_model(tmp, config, nets[0], nets[1], payload["stats"], extra=extra, half=True,
                     calibration=payload.get("calibration"))
        size = tmp.stat().st_size / 2**20
        if size >= SIZE_LIMIT_MB:
            raise InputError(args.out, f"{size:.1f} MiB: the packaged weights must stay under {SIZE_LIMIT_MB:g} MiB")
        translator = Translator.from_file(tmp, device="cpu")  # reads it with weights_only=True, as users will
    joined = f", {translator.directions[1]} from {args.b_to_a}" if args.b_to_a is not None else ""
    print(f"packaged {source}{joined} -> {args.out} ({size:.1f} MiB, directions {translator.directions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
