"""Model files whose two directions come from different runs: each direction from the recipe that does it best.

A model file (:func:`medsynth.cyclegan.export_model`) holds a generator per direction, and conversion runs one of
them with the file's intensity statistics, base and preprocessing. Two runs on the same data that differ only in how
they trained (batch size, steps, losses) can therefore give one file a direction each (:func:`join_directions`;
``scripts/package_model.py --b-to-a``); :func:`direction_config` says how a direction's generator was trained.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from medsynth.config import TrainConfig
from medsynth.inference import model_image_kind

__all__ = ["CONVERSION_FIELDS", "DISCRIMINATOR_FIELDS", "RUN_FIELDS", "direction_config", "join_directions"]

#: the configuration fields that decide what conversion does around a generator (with the intensity statistics);
#: two runs that differ only elsewhere (batch size, steps, seed, losses) can give a model file one direction each
CONVERSION_FIELDS = ("names", "model", "enhance", "bias_correction", "image_kind")
#: of ``model``, the discriminator's options: training only
DISCRIMINATOR_FIELDS = ("ndf", "n_layers_d")
#: where a run lay and how it was run (threads, logging, checkpoints), not how it trained: left out of the record
RUN_FIELDS = ("out", "a", "b", "val_a", "val_b", "extra_a", "extra_b", "device", "threads", "workers", "cache_dir",
              "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "val_every", "channels_last",
              "compile")


def join_directions(first: dict[str, Any], second: dict[str, Any], second_name: str) -> dict[str, Any]:
    """One model file's contents from two: ``first``'s generator from domain A to B, ``second``'s from B to A.

    Each direction keeps its own calibration curve. ``extra["b_to_a_from"]`` says where the second generator came
    from, how its training differed and how it validated (``{"source", "config", "validation"}``: the training
    fields of its configuration that are not ``first``'s, and its B -> A figures of every validation round); the
    validation rounds of ``extra`` keep ``first``'s steps, with the B -> A figures of the second run at the same
    step where it has one. The configuration is ``first``'s. Nothing is shared with the inputs but the weights.

    Args:
        first, second: model file contents (:func:`medsynth.inference.read_model_file`).
        second_name: what ``second`` is called in the record (a file or run name).

    Raises:
        ValueError: the two would convert differently in anything but the network: other domains, network
            options, base, preprocessing or intensity statistics (one line, naming the field).
    """
    # compared as read back (an older file's missing or null field means its default), so that a packaged model
    # can be given a new second direction
    first_config = TrainConfig.from_dict(first["config"])
    a, b = first_config.names
    forward, backward = f"{a}-to-{b}", f"{b}-to-{a}"
    second_config = TrainConfig.from_dict(direction_config(second, backward))  # second may itself be joined
    first_config.image_kind, second_config.image_kind = model_image_kind(first_config), model_image_kind(second_config)
    a_cfg, b_cfg = first_config.to_dict(), second_config.to_dict()
    for field in CONVERSION_FIELDS:
        mine, theirs = a_cfg.get(field), b_cfg.get(field)
        if field == "model":
            pairs = [(f"model.{k}", mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs))
                     if k not in DISCRIMINATOR_FIELDS]
        else:
            pairs = [(field, mine, theirs)]
        for name, x, y in pairs:
            if json.dumps(x) != json.dumps(y):
                raise ValueError(f"its {name} is {y!r} where the first model's is {x!r}")
    if json.dumps(first["stats"], sort_keys=True) != json.dumps(second["stats"], sort_keys=True):
        raise ValueError("its intensity statistics differ from the first model's (trained on other data)")
    # the rounds keep the first run's steps; each round's backward figures are the second run's at that step
    # copied once here, so that neither the rounds nor the record below share anything with the inputs
    their_rounds = copy.deepcopy([r for r in (second.get("extra") or {}).get("validation") or [] if isinstance(r, dict)])
    theirs = {r.get("step"): r.get(backward) for r in their_rounds}
    rounds = []
    for r in copy.deepcopy((first.get("extra") or {}).get("validation") or []):
        r = {k: v for k, v in r.items() if k != backward}
        if theirs.get(r.get("step")):
            r[backward] = theirs[r.get("step")]
        rounds.append(r)
    differs = {k: v for k, v in b_cfg.items() if k not in RUN_FIELDS and json.dumps(v) != json.dumps(a_cfg.get(k))}
    validation = [{"step": r.get("step"), backward: r[backward]} for r in their_rounds if r.get(backward)]
    extra = dict(copy.deepcopy(first.get("extra") or {}),
                 b_to_a_from={"source": second_name, "config": differs, "validation": validation})
    if "validation" in extra:
        extra["validation"] = rounds
    generators = {"a_to_b": first["generators"]["a_to_b"], "b_to_a": second["generators"]["b_to_a"]}
    joined = {**{k: copy.deepcopy(v) for k, v in first.items() if k not in ("generators", "extra", "calibration")},
              "generators": generators, "extra": extra}
    curves = copy.deepcopy({**{k: v for k, v in (first.get("calibration") or {}).items() if k == forward},
                            **{k: v for k, v in (second.get("calibration") or {}).items() if k == backward}})
    if curves:
        joined["calibration"] = curves
    return joined


def direction_config(payload: dict[str, Any], direction: str) -> dict[str, Any]:
    """The training configuration (as a dict) of the generator a model file uses for ``direction``: the file's
    own, with the second run's differences for a second direction taken from another run (:func:`join_directions`).
    """
    config = copy.deepcopy(payload["config"])
    a, b = TrainConfig.from_dict(config).names
    joined = (payload.get("extra") or {}).get("b_to_a_from")
    if direction == f"{b}-to-{a}" and isinstance(joined, dict):
        config.update(joined.get("config") or {})
    return config
