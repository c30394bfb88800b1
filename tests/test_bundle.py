"""``python -m medsynth bundle``: a MONAI bundle that MONAI's own runner translates files with, giving exactly
``medsynth-convert``'s voxels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.bundle import REQUIRED_METADATA, REQUIRED_TENSOR, missing_metadata
from medsynth.cli.bundle import main as bundle_main
from medsynth.inference import default_model_path

pytest.importorskip("fire", reason="MONAI's bundle runner needs fire (pip install -e '.[dev]')")

BUNDLE_FILES = ["LICENSE", "configs/inference.json", "configs/logging.conf", "configs/metadata.json",
                "docs/README.md", "models/model.pt"]


def _oblique_volume(folder: Path, make_volume) -> Path:
    """A volume whose geometry would show any mix-up: oblique, anisotropic, shifted, LPS-like axes."""
    affine = np.array([[-1.1, 0.05, 0.0, 40.0], [0.0, 0.95, 0.1, -12.0], [0.02, 0.0, 1.3, 7.5], [0, 0, 0, 1]])
    return make_volume(folder, "in.nii.gz", shape=(40, 44, 28), affine=affine, seed=3)


def _same_image(a: Path, b: Path) -> None:
    x, y = nib.load(a), nib.load(b)
    assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
    np.testing.assert_array_equal(x.affine, y.affine)
    for form in ("qform", "sform"):
        (mx, cx), (my, cy) = getattr(x.header, f"get_{form}")(coded=True), getattr(y.header, f"get_{form}")(coded=True)
        assert int(cx) == int(cy)
        np.testing.assert_array_equal(mx, my)
    assert x.header.get_zooms() == y.header.get_zooms() and x.get_data_dtype() == y.get_data_dtype()


def test_monai_runner_gives_the_voxels_of_medsynth_convert(tmp_path: Path, make_volume) -> None:
    """The exact command of the docs, from another folder, after the bundle was moved, with the packaged model."""
    src = _oblique_volume(tmp_path, make_volume)
    assert bundle_main([str(tmp_path / "made")]) == 0
    # a bundle is shared by copying its folder: bundle_root follows the config file, not the export
    bundle = tmp_path / "moved" / "t1t2"
    bundle.parent.mkdir()
    shutil.move(tmp_path / "made", bundle)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          str(bundle / "configs" / "inference.json"), "--input_path", str(src),
                          "--output_path", "out_bundle.nii.gz"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    convert = subprocess.run([sys.executable, "-m", "medsynth", "convert", str(src), str(tmp_path / "out_convert.nii.gz"),
                              "--model", str(default_model_path()), "--progress", "none"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert convert.returncode == 0, convert.stderr[-3000:]
    _same_image(elsewhere / "out_bundle.nii.gz", tmp_path / "out_convert.nii.gz")
    # a translation, not a copy of the input
    assert not np.allclose(nib.load(elsewhere / "out_bundle.nii.gz").get_fdata(), nib.load(src).get_fdata())
    # the packaged model was trained on registered pairs, and its metadata says so
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["task"].startswith("Paired") and meta["data_source"].startswith("registered")
    assert "trained on registered pairs" in meta["description"]


def test_bundle_layout_model_file_and_metadata(tmp_path: Path, tiny_model: Path) -> None:
    bundle = tmp_path / "b"
    assert bundle_main(["--model", str(tiny_model), "--direction", "t2-to-t1", str(bundle)]) == 0
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == BUNDLE_FILES
    # models/model.pt is the medsynth model file itself, readable without running any pickled code
    assert (bundle / "models" / "model.pt").read_bytes() == tiny_model.read_bytes()
    payload = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert payload["domains"] == ["t1", "t2"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert missing_metadata(meta) == []
    import monai
    import medsynth

    assert meta["monai_version"] == monai.__version__ and meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    assert meta["required_packages_version"]["medsynth"] == medsynth.__version__
    assert meta["medsynth"]["direction"] == "t2-to-t1" and "T2 to T1" in meta["task"]
    paired = json.loads(json.dumps(torch.load(tiny_model, weights_only=True)["config"]))["paired"]
    assert meta["task"].startswith("Paired" if paired else "Unpaired")
    assert ("CycleGAN" in meta["description"]) != paired
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    # no program in the config: a medsynth object and one call
    assert config["translator"]["_target_"] == "medsynth.inference.Translator.from_file"
    assert config["direction"] == "t2-to-t1" and config["run"][0].startswith("$@translator.translate_file(")
    assert "input_path" not in config and "output_path" not in config  # both from the command line


def test_verify_metadata_offline_against_the_schema_fields(tmp_path: Path, tiny_model: Path) -> None:
    """MONAI's ``verify_metadata`` downloads the schema its ``schema`` URL names, which this machine cannot reach:
    it is given a local file instead (MONAI skips the download when the file exists) holding the schema's required
    fields (:data:`REQUIRED_METADATA`, :data:`REQUIRED_TENSOR`, as in ``meta_schema_20240725.json``)."""
    from monai.bundle import verify_metadata

    bundle = tmp_path / "b"
    assert bundle_main(["--model", str(tiny_model), str(bundle)]) == 0
    tensor = {"type": "object", "required": list(REQUIRED_TENSOR),
              "properties": {"num_channels": {"type": "integer"}, "spatial_shape": {"type": "array"},
                             "value_range": {"type": "array", "items": {"type": "number"}}}}
    side = {"type": "object", "patternProperties": {"^.+$": tensor}}
    schema = {"$schema": "https://json-schema.org/draft/2019-09/schema", "type": "object",
              "required": list(REQUIRED_METADATA),
              "properties": {"network_data_format": {"type": "object", "required": ["inputs", "outputs"],
                                                     "properties": {"inputs": side, "outputs": side}},
                             **{k: {"type": "string"} for k in ("version", "monai_version", "pytorch_version",
                                                                "numpy_version", "task", "description", "authors",
                                                                "copyright", "data_source", "data_type")},
                             "required_packages_version": {"type": "object"}, "changelog": {"type": "object"}}}
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    meta_file = bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(schema_file))
    # and the check can fail: a required field missing
    broken = json.loads(meta_file.read_text())
    del broken["network_data_format"]["outputs"]["pred"]["value_range"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="value_range"):
        verify_metadata(meta_file=str(bad), filepath=str(schema_file))


def test_in_process_workflow_other_direction_and_network_shape(tmp_path: Path, make_volume, tiny_model: Path) -> None:
    """``monai.bundle.run`` in this process, with an override (``axis``), against the Translator directly; and
    MONAI's ``verify_net_in_out`` on the network the metadata describes."""
    from monai.bundle import run, verify_net_in_out

    from medsynth.inference import Translator

    src = make_volume(tmp_path, "t2.nii.gz", shape=(20, 24, 16), contrast="t2")
    bundle = tmp_path / "b"
    assert bundle_main(["--model", str(tiny_model), "--direction", "t2-to-t1", str(bundle)]) == 0
    config = str(bundle / "configs" / "inference.json")
    # logging_file=False: the bundle's logging.conf would reconfigure this test process's loggers
    run(config_file=config, input_path=str(src), output_path=str(tmp_path / "bundle.nii.gz"), axis="coronal",
        logging_file=False)
    Translator.from_file(tiny_model).translate_file(src, tmp_path / "direct.nii.gz", "t2-to-t1", axis="coronal")
    _same_image(tmp_path / "bundle.nii.gz", tmp_path / "direct.nii.gz")
    # outside a MONAI workflow bundle_root is the model zoo's ".": given here, as MONAI's docs do
    verify_net_in_out(net_id="network", config_file=config, meta_file=str(bundle / "configs" / "metadata.json"),
                      bundle_root=str(bundle), precision="fp32", n=4, device="cpu")


def test_bad_destinations_and_directions_are_one_line_errors(tmp_path: Path, tiny_model: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert bundle_main(["--model", str(tiny_model), str(other)]) == 2
    assert "holds no bundle" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"
    assert bundle_main(["--model", str(tiny_model), "--direction", "ct-to-mr", str(tmp_path / "b")]) == 2
    assert "not one of this model's directions: t1-to-t2, t2-to-t1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert bundle_main(["--model", str(tmp_path / "missing.pt"), str(tmp_path / "b")]) == 2
    assert "no such model file" in capsys.readouterr().err
    bundle = tmp_path / "b"
    assert bundle_main(["--model", str(tiny_model), str(bundle)]) == 0
    assert bundle_main(["--model", str(tiny_model), str(bundle)]) == 2
    assert "use --overwrite" in capsys.readouterr().err
    assert bundle_main(["--model", str(tiny_model), "--direction", "t2-to-t1", "--overwrite", str(bundle)]) == 0
    assert json.loads((bundle / "configs" / "inference.json").read_text())["direction"] == "t2-to-t1"
    # nothing left beside it: no staging or old folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "notes"]


def test_a_direction_from_another_run_is_described_by_that_run(tmp_path: Path) -> None:
    """A model file whose T2 -> T1 generator came from a multi-planar run (``package_model.py --b-to-a``): that
    direction's bundle says so, the other direction's does not."""
    from conftest import write_residual_model

    from medsynth.bundle import bundle_metadata
    from medsynth.modelfiles import join_directions
    from medsynth.inference import read_model_file

    first = read_model_file(write_residual_model(tmp_path / "a.pt"))
    second = read_model_file(write_residual_model(tmp_path / "b.pt", axis="all"))
    joined = join_directions(first, second, "planes")
    assert "axial slices" in bundle_metadata(joined, "t1-to-t2")["description"]
    backward = bundle_metadata(joined, "t2-to-t1")
    assert "axial slices" not in backward["description"] and backward["medsynth"]["axis"] == "all"
