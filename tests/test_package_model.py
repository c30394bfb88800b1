"""``scripts/package_model.py``: a run's model as the packaged default, optionally each direction from its own run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script, phantom, write_residual_model


@pytest.fixture(scope="module")
def pm():
    return load_script("package_model")


def _convert(model: Path, volume: np.ndarray, direction: str) -> np.ndarray:
    from medsynth.inference import Translator

    translator = Translator.from_file(model, device="cpu", precision="fp32")
    return translator.translate_array(volume, np.eye(4), direction)


def test_b_to_a_takes_the_second_direction_from_another_run(pm, tmp_path: Path, capsys) -> None:
    first = write_residual_model(tmp_path / "run" / "model.pt", gate=0.0)
    second = write_residual_model(tmp_path / "run_b4" / "model.pt", gate=0.3, batch_size=4)
    alone = {name: tmp_path / f"{name}.pt" for name in ("first", "second")}
    assert pm.main([str(first), "--out", str(alone["first"])]) == 0
    assert pm.main([str(second), "--out", str(alone["second"])]) == 0
    out = tmp_path / "joined.pt"
    assert pm.main([str(first), "--b-to-a", str(second), "--out", str(out)]) == 0
    assert "t2-to-t1 from" in capsys.readouterr().out
    volume = phantom((24, 28, 6), contrast="t1") * 800
    got = {d: _convert(out, volume, d) for d in ("t1-to-t2", "t2-to-t1")}
    np.testing.assert_array_equal(got["t1-to-t2"], _convert(alone["first"], volume, "t1-to-t2"))
    np.testing.assert_array_equal(got["t2-to-t1"], _convert(alone["second"], volume, "t2-to-t1"))
    assert not np.array_equal(got["t2-to-t1"], _convert(alone["first"], volume, "t2-to-t1")), \
        "the two runs' second directions differ, so the test can tell which one the file holds"
    payload = torch.load(out, weights_only=True)
    assert payload["extra"]["b_to_a_from"] == {"source": "run_b4", "config": {"batch_size": 4}, "validation": []}
    assert payload["config"]["batch_size"] == 1, "the configuration is the first run's"
    assert payload["extra"]["packaged_from"] == "model.pt"
    # a packaged model given a new second direction keeps its first one bit for bit, and its origin
    again = tmp_path / "again.pt"
    assert pm.main([str(alone["first"]), "--b-to-a", str(second), "--out", str(again)]) == 0
    repacked = torch.load(again, weights_only=True)
    first_alone = torch.load(alone["first"], weights_only=True)
    for key, value in first_alone["generators"]["a_to_b"].items():
        assert torch.equal(repacked["generators"]["a_to_b"][key], value)
    assert repacked["extra"]["packaged_from"] == "model.pt"


def test_runs_that_convert_differently_are_refused_in_one_line(pm, tmp_path: Path, capsys) -> None:
    first = write_residual_model(tmp_path / "run" / "model.pt")
    second = write_residual_model(tmp_path / "other" / "model.pt", bias_correction="n4")
    out = tmp_path / "joined.pt"
    assert pm.main([str(first), "--b-to-a", str(second), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {second}: cannot give {first} its second direction: its bias_correction is 'n4'")
    assert "\n" not in err and not out.exists()
    assert pm.main([str(first), "--b-to-a", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.pt'}: no such model file"
    assert not out.exists()


def test_a_model_file_is_named_by_its_run_folder_or_its_own_name(pm, tmp_path: Path) -> None:
    assert pm.run_name(tmp_path / "run_b4" / "model.pt") == "run_b4"
    assert pm.run_name(tmp_path / "models" / "default_t1t2.pt") == "default_t1t2.pt"
    (tmp_path / "run_b4").mkdir()
    assert pm.run_name(tmp_path / "run_b4") == "run_b4"


def test_an_output_that_fails_its_checks_is_not_left_behind(pm, tmp_path: Path, monkeypatch, capsys) -> None:
    """The size check runs on the temporary file: a failing one leaves --out as it was (here: absent)."""
    first = write_residual_model(tmp_path / "run" / "model.pt")
    out = tmp_path / "packaged.pt"
    out.write_bytes(b"the model before")
    monkeypatch.setattr(pm, "SIZE_LIMIT_MB", 0.0)
    assert pm.main([str(first), "--out", str(out)]) == 2
    assert "the packaged weights must stay under" in capsys.readouterr().err
    assert out.read_bytes() == b"the model before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packaged.pt", "run"], "no temporary file left"
