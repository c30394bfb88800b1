"""Command-line entry points: instant help, dispatch through python -m medsynth, option defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest

from medsynth.cli import convert_parser, train_parser


def test_train_defaults_are_the_reference_cyclegan() -> None:
    args = train_parser().parse_args(["--t1", "a", "--t2", "b", "--out", "r"])
    assert (args.generator, args.ngf, args.ndf, args.n_layers_d, args.norm) == ("resnet9", 64, 64, 3, "instance")
    assert (args.lr, args.beta1, args.beta2, args.lambda_cycle, args.lambda_identity, args.pool_size) == \
        (2e-4, 0.5, 0.999, 10.0, 0.5, 50)
    assert (args.size, args.axis, args.batch_size, args.init_gain) == (256, "axial", 1, 0.02)


def test_convert_defaults() -> None:
    args = convert_parser().parse_args(["in.nii.gz", "out.nii.gz"])
    assert (args.model, args.axis, args.fuse, args.dtype, args.overwrite) == (None, "axial", "mean", "float32", False)


def test_help_does_not_import_torch() -> None:
    """--help stays instant because the parsers import no heavy module."""
    code = ("import sys, medsynth.cli as c\ntry:\n    c.train_parser().parse_args(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


@pytest.mark.parametrize("command", ["train", "convert", "eval", "enhance", "serve", "demo", "worker"])
def test_help_imports_no_heavy_module(command: str) -> None:
    """Every command's --help stays instant: torch, MONAI, FastAPI, matplotlib and SciPy load only to do the work."""
    code = (f"import sys\nfrom medsynth.cli import COMMANDS\ntry:\n    COMMANDS[{command!r}](['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'monai', 'fastapi', 'matplotlib', 'scipy', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["train", "convert", "eval", "enhance", "serve", "demo", "worker"])
def test_python_m_medsynth_dispatches(command: str) -> None:
    out = subprocess.run([sys.executable, "-m", "medsynth", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_unknown_command() -> None:
    out = subprocess.run([sys.executable, "-m", "medsynth", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "error: frobnicate: unknown command" in out.stderr


def test_worker_jobs_choose_the_bias_field(make_volume, n4_model: Path, tmp_path: Path) -> None:
    """A bias-corrected model in the worker: ``bias_field`` per job, as ``medsynth-convert --bias-field`` gives it;
    a value other than restore or remove fails that job alone."""
    import nibabel as nib

    from medsynth.cli import convert_main

    source = make_volume(tmp_path, "t1.nii.gz", shape=(18, 20, 12))
    jobs = [{"input": str(source), "output": str(tmp_path / f"{b}.nii.gz"), "model": str(n4_model), "bias_field": b}
            for b in ("remove", "restore", "keep")]
    stdin = "".join(json.dumps(job) + "\n" for job in jobs)
    out = subprocess.run([sys.executable, "-m", "medsynth", "worker", "--device", "cpu"], input=stdin,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ends = [line for line in out.stdout.splitlines() if line.split(" ", 1)[0] in ("DONE", "FAILED")]
    assert ends == [f"DONE {tmp_path / 'remove.nii.gz'}", f"DONE {tmp_path / 'restore.nii.gz'}",
                    "FAILED <stdin>: bias_field 'keep' must be \"restore\" or \"remove\""]
    got = {}
    for b in ("remove", "restore"):
        ref = tmp_path / f"ref_{b}.nii.gz"
        assert convert_main([str(source), str(ref), "--model", str(n4_model), "--device", "cpu", "--progress", "none",
                             "--bias-field", b]) == 0
        got[b] = np.asarray(nib.load(tmp_path / f"{b}.nii.gz").dataobj)
        # N4's multithreaded fit may sum in another order from one process to the next
        np.testing.assert_allclose(got[b], np.asarray(nib.load(ref).dataobj), rtol=1e-4, atol=1e-2)
    assert np.abs(got["remove"] - got["restore"]).max() > 1.0


def test_worker_translates_job_after_job_and_survives_bad_ones(make_volume, tiny_model: Path, tmp_path: Path) -> None:
    """One ``python -m medsynth worker`` process: the protocol lines in order, outputs equal to medsynth-convert's,
    a bad job failing alone in one line, and end of input ending the worker with status 0."""
    import nibabel as nib

    from medsynth.cli import convert_main

    source = make_volume(tmp_path, "t1.nii.gz", shape=(18, 20, 12))
    existing = tmp_path / "again.nii.gz"
    existing.write_bytes(b"old")  # the worker replaces outputs, as convert --overwrite does
    jobs = [
        {"input": str(source), "output": str(tmp_path / "a.nii.gz"), "model": str(tiny_model)},
        {"input": str(tmp_path / "missing.nii.gz"), "output": str(tmp_path / "b.nii.gz"), "model": str(tiny_model)},
        "not json",
        {"input": str(source), "output": str(tmp_path / "c.nii.gz"), "axes": "all"},
        {"input": str(source), "output": str(existing), "model": str(tiny_model), "direction": "t2-to-t1",
         "axis": "all", "batch_size": 3, "calibration": False},
        {"input": str(source), "output": str(tmp_path / "d.nii.gz"), "calibration": "no"},
    ]
    stdin = "\n".join(job if isinstance(job, str) else json.dumps(job) for job in jobs) + "\n"
    out = subprocess.run([sys.executable, "-m", "medsynth", "worker", "--device", "cpu"], input=stdin,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "READY"
    ends = [line for line in lines if line.split(" ", 1)[0] in ("DONE", "FAILED")]
    assert ends[0] == f"DONE {tmp_path / 'a.nii.gz'}"
    assert ends[1] == f"FAILED {tmp_path / 'missing.nii.gz'}: no such file"
    assert ends[2].startswith("FAILED <stdin>: job is not JSON")
    assert ends[3] == "FAILED <stdin>: unknown job field(s): axes"
    assert ends[4] == f"DONE {existing}"
    assert ends[5] == "FAILED <stdin>: calibration 'no' must be true or false"
    assert len(ends) == 6 and "Traceback" not in out.stderr
    first = lines[1:lines.index(ends[0])]
    assert first[0].startswith("ESTIMATE ") and first[0].endswith(str(source))
    percents = [int(line.split()[1]) for line in first[1:-1]]
    assert all(line.startswith("PROGRESS ") for line in first[1:-1])
    assert percents and percents == sorted(percents) and percents[-1] == 100
    word, total, network = first[-1].split()
    assert word == "TIMING" and float(total) > float(network) > 0

    for job, name in ((jobs[0], "ref_a.nii.gz"), (jobs[4], "ref_e.nii.gz")):
        argv = [job["input"], str(tmp_path / name), "--model", job["model"], "--device", "cpu", "--progress", "none"]
        for key in ("direction", "axis", "batch_size"):
            if key in job:
                argv += [f"--{key.replace('_', '-')}", str(job[key])]
        assert convert_main(argv) == 0
        got, want = nib.load(job["output"]), nib.load(str(tmp_path / name))
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
        np.testing.assert_array_equal(got.affine, want.affine)


# ---- inputs that do not fit the model: refused before any work, one line, status 2, nothing written ----------


def _model(path: Path, kind: str, sources: list[str] | None = None) -> Path:
    """A tiny untrained model written by the real exporter, trained (says its configuration) on ``kind``."""
    import torch

    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.cyclegan import export_model
    from medsynth.networks import build_generator

    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig(generator="resnet6", ngf=4, ndf=4), size=32, image_kind=kind,
                         a=sources or [], b=sources or [])
    stats = {n: {"lo": 10.0, "hi": 200.0, "background": 0.0, "threshold": 1.0} for n in config.names}
    return export_model(path, config, build_generator(config.model), build_generator(config.model), stats)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("kind_models")
    return {"image2d": _model(folder / "slices.pt", "image2d"), "volume": _model(folder / "volumes.pt", "volume")}


def _png(path: Path, mode: str = "L", seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    grey = np.zeros((24, 20), np.uint8)
    grey[4:20, 3:17] = rng.integers(60, 250, (16, 14))
    pixels = {"L": grey, "greyRGB": np.stack([grey] * 3, -1),
              "RGB": np.stack([grey, grey[::-1], np.full_like(grey, 90)], -1)}[mode]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _refused(capsys: pytest.CaptureFixture, main, argv: list[str], folder: Path, names: str) -> str:
    """Run a command's main in-process: status 2, one ``error:`` line that names ``names``, no traceback, and
    nothing new under ``folder`` (no output, no folder, no temporary file)."""
    before = _tree(folder)
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2, err
    assert len(errors) == 1 and names in errors[0], err
    assert "Traceback" not in err
    assert _tree(folder) == before
    return errors[0]


def test_a_2d_image_is_refused_by_the_packaged_volume_model(tmp_path: Path, capsys) -> None:
    """The packaged model records no kind (it is older than the field): its file list says volumes."""
    from medsynth.cli import convert_main

    png = _png(tmp_path / "slice.png")
    line = _refused(capsys, convert_main, [str(png), str(tmp_path / "out.png"), "--device", "cpu", "--progress",
                                           "none"], tmp_path, str(png))
    assert line == (f"error: {png}: a 2D image, but the model default_t1t2.pt was trained on 3D volumes and "
                    "translates only those")


def test_a_volume_is_refused_by_a_2d_image_model(tmp_path: Path, make_volume, models, capsys) -> None:
    from medsynth.cli import convert_main

    vol = make_volume(tmp_path, "t1.nii.gz", shape=(12, 14, 8))
    line = _refused(capsys, convert_main, [str(vol), str(tmp_path / "new" / "t2.nii.gz"), "--model",
                                           str(models["image2d"]), "--device", "cpu", "--progress", "none"],
                    tmp_path, str(vol))
    assert "a 3D volume (shape 12x14x8), but the model slices.pt was trained on 2D images" in line


def test_a_2d_image_is_refused_by_a_volume_model_also_in_a_glob(tmp_path: Path, make_volume, models, capsys) -> None:
    from medsynth.cli import convert_main

    make_volume(tmp_path / "in", "a.nii.gz", shape=(12, 14, 8))
    png = _png(tmp_path / "in" / "a_preview.png")
    _refused(capsys, convert_main, [str(tmp_path / "in" / "a*"), str(tmp_path / "out"), "--model",
                                    str(models["volume"]), "--device", "cpu", "--progress", "none"], tmp_path, str(png))


def test_a_folder_search_takes_the_model_s_kind_only(tmp_path: Path, make_volume, models, capsys) -> None:
    """A volume model converting a folder skips the pictures beside the volumes; a folder with none is refused."""
    from medsynth.cli import convert_main

    make_volume(tmp_path / "in", "a.nii.gz", shape=(12, 14, 8))
    _png(tmp_path / "in" / "a_preview.png")
    assert convert_main([str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(models["volume"]), "--device",
                         "cpu", "--progress", "none"]) == 0
    assert _tree(tmp_path / "out") == {"a.nii.gz"}
    _png(tmp_path / "pictures" / "b.png")
    line = _refused(capsys, convert_main, [str(tmp_path / "pictures"), str(tmp_path / "out2"), "--model",
                                           str(models["volume"]), "--device", "cpu", "--progress", "none"],
                    tmp_path, str(tmp_path / "pictures"))
    assert "no 3D volumes in this folder" in line


def test_colour_needs_luminance_grey_stored_as_rgb_does_not(tmp_path: Path, models, capsys) -> None:
    from PIL import Image

    from medsynth.cli import convert_main

    colour = _png(tmp_path / "colour.png", "RGB")
    argv = ["--model", str(models["image2d"]), "--device", "cpu", "--progress", "none"]
    line = _refused(capsys, convert_main, [str(colour), str(tmp_path / "out.png"), *argv], tmp_path, str(colour))
    assert "a colour picture" in line and "--luminance" in line
    assert convert_main([str(colour), str(tmp_path / "out.png"), *argv, "--luminance"]) == 0
    grey_rgb = _png(tmp_path / "grey_rgb.png", "greyRGB")
    assert convert_main([str(grey_rgb), str(tmp_path / "out2.png"), *argv]) == 0
    for name in ("out.png", "out2.png"):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "L" and im.size == (20, 24)


def test_bad_output_names_are_refused_before_the_model_loads(tmp_path: Path, make_volume, models, capsys) -> None:
    from medsynth.cli import convert_main

    vol = make_volume(tmp_path, "t1.nii.gz", shape=(12, 14, 8))
    argv = ["--model", str(models["volume"]), "--device", "cpu", "--progress", "none"]
    line = _refused(capsys, convert_main, [str(vol), str(tmp_path / "new" / "result"), *argv], tmp_path, "result")
    assert line.endswith("the output name has no file extension (use one of .nii, .nii.gz, .mha, .mhd, .nrrd, "
                         ".nhdr, .png, .jpg, .jpeg, .tif, .tiff, .dcm)")
    _refused(capsys, convert_main, [str(vol), str(tmp_path / "t2.png"), *argv], tmp_path, "t2.png")
    (tmp_path / "existing").mkdir()
    lines = {_refused(capsys, convert_main, [str(vol), str(tmp_path / "existing"), *argv, *extra], tmp_path,
                      "existing") for extra in ([], ["--overwrite"])}
    assert lines == {f"error: {tmp_path / 'existing'}: the output is a folder; give a file name, e.g. "
                     f"{tmp_path / 'existing' / 't1.nii.gz'}"}


def test_training_on_a_2d_and_3d_mix_is_refused_before_any_work(tmp_path: Path, make_volume, capsys) -> None:
    from medsynth.cli import train_main

    png = _png(tmp_path / "x.png")
    for i in range(2):
        make_volume(tmp_path / "vols", f"t2_{i}.nii.gz", shape=(12, 14, 8), seed=i, contrast="t2")
    line = _refused(capsys, train_main, ["--t1", str(png), "--t2", str(tmp_path / "vols"), "--out",
                                         str(tmp_path / "run"), "--device", "cpu", "--quiet"], tmp_path, str(png))
    assert "a 2D image, and 2 other inputs are 3D volumes" in line and "not a mix" in line
    # a process of its own: the torch import never happens for it
    code = ("import sys\nfrom medsynth.cli import train_main\n"
            f"status = train_main(['--t1', {str(png)!r}, '--t2', {str(tmp_path / 'vols')!r}, '--out', "
            f"{str(tmp_path / 'run')!r}])\nprint(status, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False"] and out.stderr.count("error:") == 1
    assert not (tmp_path / "run").exists()


def test_the_kind_of_models_older_than_the_field_comes_from_their_file_lists() -> None:
    from medsynth.config import TrainConfig
    from medsynth.inference import model_image_kind

    assert model_image_kind(TrainConfig(a=["/d/a_t1.nii.gz"], b=["/d/b_t2.mha"])) == "volume"
    assert model_image_kind(TrainConfig(a=["/d/CT (1).png"], b=["/d/MR (1).dcm"])) == "image2d"
    assert model_image_kind(TrainConfig(a=["/d/ct/"], b=["/d/mr/"])) == ""  # folders say nothing: no check
    assert model_image_kind(TrainConfig(a=["/d/x.png"], b=["/d/y.nii.gz"], image_kind="image2d")) == "image2d"
