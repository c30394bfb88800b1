"""Package a trained model as medsynth's default: fp16 weights in medsynth/models/, checked on load.

usage: python scripts/package_model.py RUN/model.pt [--out medsynth/models/default_t1t2.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from medsynth.config import TrainConfig
from medsynth.cyclegan import export_model
from medsynth.inference import Translator, read_model_file
from medsynth.networks import build_generator
from medsynth.report import case_label

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", type=Path)
    p.add_argument("--fallback", type=Path, help="used when MODEL does not exist (no validation was run)")
    p.add_argument("--out", type=Path, default=ROOT / "medsynth" / "models" / "default_t1t2.pt")
    args = p.parse_args()
    source = args.model if args.model.exists() or not args.fallback else args.fallback
    payload = read_model_file(source)
    config = TrainConfig.from_dict(payload["config"])
    nets = []
    for key in ("a_to_b", "b_to_a"):
        net = build_generator(config.model)
        net.load_state_dict(payload["generators"][key])
        nets.append(net)
    # the training inputs are the builder's paths; they mean nothing on a user's machine, but the case says what
    # the model was trained on: the folder is kept only where the file name alone names no case (t1.nii.gz)
    config.a, config.b = [case_label(p) for p in config.a], [case_label(p) for p in config.b]
    config.val_a, config.val_b = [case_label(p) for p in config.val_a], [case_label(p) for p in config.val_b]
    config.out = ""
    extra = dict(payload.get("extra", {}), packaged_from=source.name)
    export_model(args.out, config, nets[0], nets[1], payload["stats"], extra=extra, half=True,
                 calibration=payload.get("calibration"))
    translator = Translator.from_file(args.out, device="cpu")
    size = args.out.stat().st_size / 2**20
    print(f"packaged {source} -> {args.out} ({size:.1f} MiB, directions {translator.directions})")
    assert size < 30, "the packaged weights must stay under 30 MB"
    torch.load(args.out, weights_only=True)


if __name__ == "__main__":
    main()
