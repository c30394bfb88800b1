"""``medsynth.modelfiles``: one model file whose two directions come from two runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _payload(path: Path, **changes: Any) -> dict[str, Any]:
    from medsynth.inference import read_model_file

    payload = read_model_file(path)
    payload["extra"] = {"step": 10, "validation": [{"step": s, "t1-to-t2": {"psnr": 10.0 + s},
                                                    "t2-to-t1": {"psnr": 20.0 + s}} for s in (5, 10)]}
    payload.update(changes)
    return payload


def test_join_directions_takes_each_direction_from_its_own_run(tmp_path: Path) -> None:
    from conftest import write_residual_model

    from medsynth.modelfiles import direction_config, join_directions

    first = _payload(write_residual_model(tmp_path / "a.pt", gate=0.0), calibration={"t1-to-t2": {"x": [1]},
                                                                                      "t2-to-t1": {"x": [2]}})
    second = _payload(write_residual_model(tmp_path / "b.pt", gate=0.5, batch_size=4, seed=3),
                      calibration={"t2-to-t1": {"x": [3]}})
    second["extra"]["validation"] = [{"step": 10, "t1-to-t2": {"psnr": 0.0}, "t2-to-t1": {"psnr": 99.0}}]
    joined = join_directions(first, second, "run_b4")
    assert joined["generators"]["a_to_b"] is first["generators"]["a_to_b"]
    assert joined["generators"]["b_to_a"] is second["generators"]["b_to_a"]
    assert joined["config"] == first["config"] and joined["stats"] == first["stats"]
    assert joined["config"] is not first["config"] and joined["stats"] is not first["stats"], "copies, not shared"
    assert joined["extra"]["b_to_a_from"] == {"source": "run_b4", "config": {"batch_size": 4, "seed": 3},
                                              "validation": [{"step": 10, "t2-to-t1": {"psnr": 99.0}}]}
    # the backward figures are the second run's where it has that step, and absent where it has none
    assert joined["extra"]["validation"] == [{"step": 5, "t1-to-t2": {"psnr": 15.0}},
                                             {"step": 10, "t1-to-t2": {"psnr": 20.0}, "t2-to-t1": {"psnr": 99.0}}]
    assert joined["calibration"] == {"t1-to-t2": {"x": [1]}, "t2-to-t1": {"x": [3]}}
    assert first["extra"]["validation"][0]["t2-to-t1"] == {"psnr": 25.0}, "the inputs are left as they were"
    joined["extra"]["validation"][1]["t2-to-t1"]["psnr"] = 0.0
    joined["extra"]["b_to_a_from"]["validation"][0]["t2-to-t1"]["psnr"] = 1.0
    assert second["extra"]["validation"][0]["t2-to-t1"] == {"psnr": 99.0}, "nor do they share the second's rounds"
    assert direction_config(joined, "t2-to-t1")["batch_size"] == 4 and direction_config(joined, "t1-to-t2")["seed"] == 0
    assert direction_config(first, "t2-to-t1") == first["config"]
    # a model file from before these fields has none of them: it reads as their defaults
    older = dict(first, config={k: v for k, v in first["config"].items() if k not in ("image_kind", "bias_correction")})
    assert join_directions(older, second, "b")["extra"]["b_to_a_from"]["config"] == {"batch_size": 4, "seed": 3}
    # how a run was run (threads, checkpoints, validation rounds) is not how it trained: not recorded
    second["config"].update(threads=1, checkpoint_every=7, val_every=5)
    assert join_directions(first, second, "b")["extra"]["b_to_a_from"]["config"] == {"batch_size": 4, "seed": 3}
    second["config"]["model"]["ndf"] = 8  # the discriminator's width: how it trained, not how it converts
    assert join_directions(first, second, "b")["extra"]["b_to_a_from"]["config"]["model"]["ndf"] == 8
    again = join_directions(first, joined, "joined")  # a joined file's second direction is its second run's
    assert again["extra"]["b_to_a_from"]["config"] == {"batch_size": 4, "seed": 3}
    assert again["generators"]["b_to_a"] is second["generators"]["b_to_a"]
    del second["calibration"]
    assert join_directions(first, second, "b")["calibration"] == {"t1-to-t2": {"x": [1]}}


@pytest.mark.parametrize("what, message", [
    ("base_smooth", "its model.base_smooth is 0.7 where the first model's is 0.0"),
    ("bias_correction", "its bias_correction is 'n4' where the first model's is 'none'"),
    ("names", "its names is ('t1', 'flair')"),
    ("stats", "its intensity statistics differ from the first model's (trained on other data)")])
def test_join_directions_refuses_runs_that_convert_differently(tmp_path: Path, what: str, message: str) -> None:
    from conftest import write_residual_model

    from medsynth.modelfiles import join_directions

    first = _payload(write_residual_model(tmp_path / "a.pt"))
    second = _payload(write_residual_model(tmp_path / "b.pt"))
    if what == "base_smooth":
        second["config"]["model"]["base_smooth"] = 0.7
    elif what == "stats":
        second["stats"]["t2"]["hi"] += 1.0
    elif what == "names":
        second["config"]["names"] = ["t1", "flair"]
    else:
        second["config"][what] = "n4"
    with pytest.raises(ValueError) as caught:
        join_directions(first, second, "b")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
