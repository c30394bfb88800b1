"""Translator and medsynth-convert: geometry exactly the input's, identity round trip, bad inputs."""

from __future__ import annotations

from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsynth.cli import convert_main
from medsynth.errors import InputError
from medsynth.fusion import FUSIONS
from medsynth.inference import Translator
from medsynth.transforms import IntensityStats, intensity_stats

OBLIQUE = np.array([[0.96, -0.28, 0.0, -40.0], [0.27, 0.93, 0.25, 12.5], [-0.07, -0.24, 0.97, 31.0], [0, 0, 0, 1]])
LPS_FLIPPED = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.diag([1.0, 1.0, 1.0, 1.0])
PERMUTED = np.array([[0, 0, -1.2, 60], [-0.9, 0, 0, 80], [0, 2.0, 0, -20], [0, 0, 0, 1.0]])
ANISOTROPIC = np.diag([0.5, 0.8, 3.0, 1.0])

GEOMETRIES = {"oblique": OBLIQUE, "lps": LPS_FLIPPED, "permuted": PERMUTED, "anisotropic": ANISOTROPIC}


def expected_identity(data: np.ndarray, model: Path) -> np.ndarray:
    """What the normalisation round trip alone gives: input statistics in, target statistics out."""
    payload = torch.load(model, weights_only=True)
    target = IntensityStats.from_dict(payload["stats"]["t2"])
    stats = intensity_stats(data)
    y = np.clip((data - stats.lo) / (stats.hi - stats.lo), 1e-3, 1)  # the foreground floor, -1 + 2e-3 on [-1, 1]
    out = y * (target.hi - target.lo) + target.lo
    return np.where(data > stats.threshold, out, target.background).astype(np.float32)


def assert_same_geometry(out_path: Path, in_path: Path) -> None:
    """nibabel, SimpleITK and ITK all read the output with the input's geometry."""
    a, b = nib.load(in_path), nib.load(out_path)
    assert b.shape == a.shape
    np.testing.assert_array_equal(b.affine, a.affine)
    np.testing.assert_array_equal(b.header.get_zooms(), a.header.get_zooms())
    for form in ("qform", "sform"):
        matrix_a, code_a = getattr(a.header, f"get_{form}")(coded=True)
        matrix_b, code_b = getattr(b.header, f"get_{form}")(coded=True)
        assert int(code_a) == int(code_b)
        if matrix_a is not None:
            np.testing.assert_array_equal(matrix_b, matrix_a)
    assert a.header.get_xyzt_units() == b.header.get_xyzt_units()
    sa, sb = sitk.ReadImage(str(in_path)), sitk.ReadImage(str(out_path))
    np.testing.assert_allclose(sb.GetOrigin(), sa.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(sb.GetSpacing(), sa.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(sb.GetDirection(), sa.GetDirection(), atol=1e-6)
    ia, ib = itk.imread(str(in_path)), itk.imread(str(out_path))
    np.testing.assert_allclose(np.asarray(ib.GetOrigin()), np.asarray(ia.GetOrigin()), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ib.GetSpacing()), np.asarray(ia.GetSpacing()), atol=1e-6)
    np.testing.assert_allclose(itk.array_from_matrix(ib.GetDirection()), itk.array_from_matrix(ia.GetDirection()),
                               atol=1e-6)
    # and the three readers agree with each other about the output
    np.testing.assert_allclose(np.asarray(ib.GetOrigin()), sb.GetOrigin(), atol=1e-5)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_identity_generator_keeps_geometry_and_intensities(tmp_path: Path, make_volume, identity_model: Path,
                                                           geometry: str) -> None:
    src = make_volume(tmp_path, "in.nii.gz", shape=(15, 18, 11), affine=GEOMETRIES[geometry])
    out = tmp_path / "out.nii.gz"
    assert convert_main([str(src), str(out), "--model", str(identity_model), "--progress", "none"]) == 0
    assert_same_geometry(out, src)
    data = nib.load(src).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(nib.load(out).get_fdata(), expected_identity(data, identity_model), rtol=1e-5,
                               atol=1e-2)


def test_each_axis_and_fusion_give_the_same_geometry_and_values(tmp_path: Path, make_volume,
                                                                identity_model: Path) -> None:
    src = make_volume(tmp_path, "in.nii.gz", shape=(13, 17, 9), affine=OBLIQUE)
    translator = Translator.from_file(identity_model, device="cpu")
    expected = expected_identity(nib.load(src).get_fdata(dtype=np.float32), identity_model)
    for axis in ("axial", "coronal", "sagittal", "all"):
        for fuse in FUSIONS if axis == "all" else ("mean",):
            out = tmp_path / f"{axis}_{fuse}.nii.gz"
            translator.translate_file(src, out, direction="t1-to-t2", axis=axis, fuse=fuse)
            assert_same_geometry(out, src)
            np.testing.assert_allclose(nib.load(out).get_fdata(), expected, rtol=1e-5, atol=1e-2)


def test_real_generator_output_is_not_flipped_between_axes(tmp_path: Path, make_volume, tiny_model: Path) -> None:
    """With a real (untrained) network the three axes differ in values but must agree in where things are."""
    src = make_volume(tmp_path, "in.nii.gz", shape=(16, 20, 12), affine=PERMUTED)
    translator = Translator.from_file(tiny_model, device="cpu")
    outs = {a: translator.translate(src, axis=a).array for a in ("axial", "coronal", "sagittal")}
    data = nib.load(src).get_fdata()
    fg = data > intensity_stats(data).threshold
    for axis, out in outs.items():
        assert out.shape == data.shape
        # background outside the input's foreground is the target's background everywhere
        assert np.all(out[~fg] == 0.0), axis
        assert np.isfinite(out).all()


def test_qform_only_odd_sizes_and_scaled_int16(tmp_path: Path, identity_model: Path, head_phantom) -> None:
    data = head_phantom((11, 13, 7))
    img = nib.Nifti1Image(np.round(data / 0.25).astype(np.int16), None)
    img.header.set_qform(OBLIQUE, code=1)
    img.header.set_sform(None, code=0)
    img.header.set_slope_inter(0.25, -3.0)
    src = tmp_path / "qform_only.nii"
    nib.save(img, src)
    out = tmp_path / "res.nii"
    assert convert_main([str(src), str(out), "--model", str(identity_model), "--progress", "none"]) == 0
    assert_same_geometry(out, src)
    assert nib.load(out).header["sform_code"] == 0
    assert nib.load(out).get_data_dtype() == np.float32
    typed = tmp_path / "typed.nii"
    assert convert_main([str(src), str(typed), "--model", str(identity_model), "--dtype", "input",
                         "--progress", "none"]) == 0
    assert nib.load(typed).get_data_dtype() == np.int16
    expected = expected_identity(nib.load(src).get_fdata(dtype=np.float32), identity_model)
    np.testing.assert_allclose(nib.load(typed).get_fdata(), expected, atol=1.0 * abs(nib.load(typed).dataobj.slope) + 1)


def test_simpleitk_written_inputs_nifti_nrrd_mha(tmp_path: Path, identity_model: Path, head_phantom) -> None:
    img = sitk.GetImageFromArray(head_phantom((9, 14, 12)).transpose(2, 1, 0).copy())
    img.SetSpacing((0.7, 1.1, 2.3))
    img.SetOrigin((12.0, -30.0, 4.5))
    img.SetDirection(tuple(np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]]).flatten()))
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        src = tmp_path / f"sitk{suffix}"
        sitk.WriteImage(img, str(src))
        out = tmp_path / f"out{suffix}"
        assert convert_main([str(src), str(out), "--model", str(identity_model), "--progress", "none"]) == 0
        a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
        assert a.GetSize() == b.GetSize()
        np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-6)
        data = sitk.GetArrayFromImage(a).astype(np.float32)
        np.testing.assert_allclose(sitk.GetArrayFromImage(b), expected_identity(data, identity_model), atol=1e-2)
        if suffix == ".nii.gz":
            assert_same_geometry(out, src)


def test_translate_accepts_nibabel_images_and_metatensors(tmp_path: Path, make_volume, tiny_model: Path) -> None:
    from monai.data import MetaTensor

    src = make_volume(tmp_path, "in.nii.gz", shape=(12, 12, 8), affine=OBLIQUE)
    translator = Translator.from_file(tiny_model, device="cpu")
    assert translator.domains == ("t1", "t2") and translator.directions == ["t1-to-t2", "t2-to-t1"]
    from_path = translator.translate(src).array
    img = nib.load(src)
    from_nib = translator.translate(img)
    assert isinstance(from_nib, nib.Nifti1Image)
    np.testing.assert_array_equal(from_nib.affine, img.affine)
    np.testing.assert_allclose(from_nib.get_fdata(), from_path, atol=1e-5)
    mt = MetaTensor(torch.from_numpy(img.get_fdata(dtype=np.float32))[None], affine=torch.as_tensor(img.affine))
    from_mt = translator.translate(mt)
    assert isinstance(from_mt, MetaTensor) and from_mt.shape == mt.shape
    np.testing.assert_allclose(from_mt.affine.numpy(), img.affine)
    np.testing.assert_allclose(from_mt[0].numpy(), from_path, atol=1e-5)
    done = []
    translator.translate(src, axis="all", progress=lambda d, t: done.append((d, t)))
    assert done[-1] == (12 + 12 + 8, 12 + 12 + 8)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = convert_main(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, make_volume, tiny_model: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    good = make_volume(tmp_path, "good.nii.gz")
    cases = {}
    (tmp_path / "text.nii.gz").write_text("not a volume")
    cases["text.nii.gz"] = "cannot read as NIfTI"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "zero.nii.gz")
    cases["zero.nii.gz"] = "all voxels are zero"
    nan = np.ones((8, 8, 8), np.float32)
    nan[2, 2, 2] = np.inf
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "inf.nii.gz")
    cases["inf.nii.gz"] = "NaN or Inf"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8, 2)).astype(np.float32), np.eye(4)),
             tmp_path / "frames.nii.gz")
    cases["frames.nii.gz"] = "2 frames"
    for name, problem in cases.items():
        code, err = _run([str(tmp_path / name), str(tmp_path / f"out_{name}"), "--model", str(tiny_model),
                          "--progress", "none"], capsys)
        assert code == 2, name
        assert err.strip().splitlines()[-1] .startswith(f"error: {tmp_path / name}: ") and problem in err, err
        assert "Traceback" not in err and not (tmp_path / f"out_{name}").exists()
    code, err = _run([str(good), str(tmp_path / "o.nii.gz"), "--model", str(tiny_model), "--direction", "ct-to-mr"],
                     capsys)
    assert code == 2 and "direction 'ct-to-mr' is not one of" in err and str(tiny_model) in err
    fake = tmp_path / "fake_model.pt"
    torch.save({"weights": torch.zeros(3)}, fake)
    code, err = _run([str(good), str(tmp_path / "o.nii.gz"), "--model", str(fake)], capsys)
    assert code == 2 and f"error: {fake}: not a medsynth model" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    code, err = _run([str(good), str(tmp_path / "o.nii.gz"), "--model", str(junk)], capsys)
    assert code == 2 and f"error: {junk}: not a medsynth model" in err
    code, err = _run([str(good), str(good), "--model", str(tiny_model), "--overwrite"], capsys)
    assert code == 2 and "overwrite the input" in err
    assert not list(tmp_path.glob(".*partial*"))


def test_existing_output_needs_overwrite(tmp_path: Path, make_volume, tiny_model: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = make_volume(tmp_path, "in.nii.gz")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    code, err = _run([str(src), str(out), "--model", str(tiny_model)], capsys)
    assert code == 2 and "use --overwrite" in err and out.read_bytes() == b"keep me"
    code, _ = _run([str(src), str(out), "--model", str(tiny_model), "--overwrite", "--progress", "none"], capsys)
    assert code == 0 and nib.load(out).shape == nib.load(src).shape


def test_folder_mode_converts_the_good_files_and_lists_failures(tmp_path: Path, make_volume, tiny_model: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_volume(tmp_path / "in", "a.nii.gz", seed=1)
    make_volume(tmp_path / "in" / "sub", "b.nii.gz", seed=2)
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.float32), np.eye(4)), tmp_path / "in" / "c.nii.gz")
    code = convert_main([str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model), "--progress",
                         "lines"])
    captured = capsys.readouterr()
    assert code == 2
    # the folder structure under the input is kept, so same-named files of different cases stay apart
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.nii.gz")) == \
        ["a.nii.gz", "sub/b.nii.gz"]
    assert "converted 2 of 3 files" in captured.err and "c.nii.gz: all voxels are zero" in captured.err
    assert "PROGRESS 100" not in captured.out.splitlines()[:1] and "PROGRESS" in captured.out


def test_progress_lines_end_with_done(tmp_path: Path, make_volume, tiny_model: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = make_volume(tmp_path, "in.nii.gz")
    out = tmp_path / "out.nii.gz"
    assert convert_main([str(src), str(out), "--model", str(tiny_model), "--progress", "lines"]) == 0
    lines = capsys.readouterr().out.splitlines()
    percents = [int(l.split()[1]) for l in lines if l.startswith("PROGRESS")]
    assert percents == sorted(percents) and percents[-1] == 100
    assert lines[-1] == f"DONE {out}"


def test_unknown_direction_in_the_api(tiny_model: Path) -> None:
    translator = Translator.from_file(tiny_model, device="cpu")
    with pytest.raises(InputError, match="direction"):
        translator.translate(np.zeros(3), direction="t2-to-ct")


def test_glob_of_same_named_files_keeps_cases_apart(tmp_path: Path, make_volume, identity_model: Path) -> None:
    for case in ("c1", "c2"):
        make_volume(tmp_path / "data" / case, "t1.nii.gz", seed=int(case[1]))
    code = convert_main([str(tmp_path / "data" / "*" / "t1.nii.gz"), str(tmp_path / "out"), "--model",
                         str(identity_model), "--progress", "none"])
    assert code == 0
    for case in ("c1", "c2"):
        src = tmp_path / "data" / case / "t1.nii.gz"
        expected = expected_identity(nib.load(src).get_fdata(dtype=np.float32), identity_model)
        np.testing.assert_allclose(nib.load(tmp_path / "out" / case / "t1.nii.gz").get_fdata(), expected, atol=1e-2)


def test_mhd_output_has_its_data_file(tmp_path: Path, identity_model: Path, head_phantom) -> None:
    img = sitk.GetImageFromArray(head_phantom((9, 10, 8)).transpose(2, 1, 0).copy())
    sitk.WriteImage(img, str(tmp_path / "in.mhd"))
    out = tmp_path / "out" / "res.mhd"
    assert convert_main([str(tmp_path / "in.mhd"), str(out), "--model", str(identity_model), "--progress", "none"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["res.mhd", "res.raw"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).shape == (8, 10, 9)


def test_unwritable_output_format_is_refused_before_translating(tmp_path: Path, make_volume, tiny_model: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = make_volume(tmp_path, "in.nii.gz")
    assert convert_main([str(src), str(tmp_path / "out.nii.bz2"), "--model", str(tiny_model)]) == 2
    assert "cannot write this format" in capsys.readouterr().err


# ------------------------------------------------------------------- precision, threads, estimate, baseline


def test_bf16_conversion_equals_fp32_within_tolerance(tmp_path: Path, make_volume, tiny_model: Path) -> None:
    src = make_volume(tmp_path, "in.nii.gz", shape=(40, 36, 12), contrast="t1")
    outs = {}
    for precision in ("fp32", "bf16"):
        translator = Translator.from_file(tiny_model, device="cpu", precision=precision)
        assert translator.precision == precision and translator.info()["precision"] == precision
        outs[precision] = translator.translate(src).array
    diff = np.abs(outs["fp32"] - outs["bf16"])
    span = float(outs["fp32"].max() - outs["fp32"].min())
    # the tolerance the README states: on average under 0.5 % of the output range, 99.9 % of voxels within 3 %
    assert diff.mean() < 0.005 * span and np.percentile(diff, 99.9) < 0.03 * span
    assert diff.max() > 0  # two precisions really ran


def test_auto_precision_and_threads(tiny_model: Path) -> None:
    from medsynth.devices import cpu_has_native_bf16

    before = torch.get_num_threads()
    try:
        translator = Translator.from_file(tiny_model, device="cpu", threads=1)
        assert torch.get_num_threads() == 1 and translator.info()["threads"] == 1
        assert translator.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
        with pytest.raises(InputError, match="--threads"):
            Translator.from_file(tiny_model, device="cpu", threads=0)
        with pytest.raises(InputError, match="--precision"):
            Translator.from_file(tiny_model, device="cpu", precision="fp8")
    finally:
        torch.set_num_threads(before)


def test_estimate_grows_with_the_volume(tiny_model: Path) -> None:
    translator = Translator.from_file(tiny_model, device="cpu")
    one = translator.estimate_seconds((64, 64, 20))
    assert one > 0
    assert translator.estimate_seconds((64, 64, 40)) == pytest.approx(2 * one, rel=1e-6)
    assert translator.estimate_seconds((64, 64, 20), "all") > 2.5 * one


def test_convert_says_the_expected_duration_first(tmp_path: Path, make_volume, tiny_model: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = make_volume(tmp_path, "in.nii.gz")
    out = tmp_path / "out.nii.gz"
    assert convert_main([str(src), str(out), "--model", str(tiny_model), "--progress", "lines", "--threads", "1",
                         "--precision", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ESTIMATE ") and float(lines[0].split()[1]) > 0 and lines[0].endswith(str(src))
    assert lines[1].startswith("PROGRESS")


def test_residual_model_and_its_fair_baseline(tmp_path: Path, make_volume) -> None:
    from conftest import write_residual_model

    from medsynth.inference import fair_baseline_translator

    model = write_residual_model(tmp_path / "model.pt")
    src = make_volume(tmp_path, "in.nii.gz", shape=(30, 28, 10), contrast="t1")
    baseline = fair_baseline_translator(model).translate(src).array
    data = nib.load(src).get_fdata(dtype=np.float32)
    inside = data > 50
    # the inverted histogram match: bright in T1 is dark in T2 (the order of the voxels reverses)
    rho = np.corrcoef(np.argsort(np.argsort(data[inside])), np.argsort(np.argsort(baseline[inside])))[0, 1]
    assert rho < -0.95
    # the residual model starts from exactly it; an opened correction moves it
    out = Translator.from_file(model, device="cpu", precision="fp32").translate(src).array
    np.testing.assert_allclose(out, baseline, rtol=0, atol=1e-3)
    opened = write_residual_model(tmp_path / "opened.pt", gate=0.2)
    out = Translator.from_file(opened, device="cpu", precision="fp32").translate(src).array
    span = baseline[inside].max() - baseline[inside].min()
    assert 0.001 * span < np.abs(out - baseline)[inside].mean() < 0.2 * span
    with pytest.raises(InputError, match="training histograms"):
        from conftest import _write_model

        fair_baseline_translator(_write_model(tmp_path / "old.pt", "resnet6"))


@pytest.mark.parametrize("residual", [True, False])
def test_level_tables_give_exactly_the_voxelwise_maps(head_phantom, residual: bool) -> None:
    """An integer-valued volume's normalisation and base come from tables of its levels: bitwise the same as
    computing them voxel by voxel; a volume with fractional values takes the voxelwise path."""
    from medsynth.inference import network_input
    from medsynth.networks import ResidualGenerator, domain_quantiles

    rng = np.random.default_rng(1)
    raw = torch.from_numpy(np.rint(head_phantom((30, 34, 22), 2) * 7).astype(np.float32))[None]
    stats = intensity_stats(raw)
    generator = None
    if residual:
        generator = ResidualGenerator(None)
        generator.target.set(domain_quantiles(torch.from_numpy(rng.beta(2, 3, 5000).astype(np.float32) * 2 - 1)))
    tables = network_input(raw, stats, generator)
    voxelwise = network_input(raw, stats, generator, tables=False)
    assert tables.shape == (2 if residual else 1, 30, 34, 22)
    assert torch.equal(tables, voxelwise)
    assert (tables[-1] > -1).sum() > 1000  # a real image, not all background
    # fractional values: the table path notices and gives the voxelwise result
    frac = raw + 0.25 * (raw > 0)
    assert torch.equal(network_input(frac, stats, generator), network_input(frac, stats, generator, tables=False))


class _PreviousSlice(torch.nn.Module):
    """A 2.5D "network" that returns the base of the previous slice minus the slice's own: with the gate at 1 a
    residual generator built on it outputs exactly the previous slice's base."""

    stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:2] - x[:, :1]


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_context_channels_are_the_neighbouring_slices_of_each_axis(tmp_path: Path, make_volume, axis: str) -> None:
    from medsynth.config import AXIS_INDEX, ModelConfig, TrainConfig
    from medsynth.networks import ResidualGenerator, domain_quantiles

    q = domain_quantiles(torch.linspace(-0.9, 0.9, 1000))
    nets = []
    for gate in (0.0, 1.0):
        g = ResidualGenerator(_PreviousSlice(), net_input="base", context=1)
        g.target.set(q)
        with torch.no_grad():
            g.gate.fill_(gate)
        nets.append(g)
    config = TrainConfig(model=ModelConfig(generator="resnet6", residual="invert", residual_input="base", context=1))
    stats = {n: {"lo": 100.0, "hi": 900.0, "background": 0.0, "threshold": 10.0} for n in ("t1", "t2")}
    src = make_volume(tmp_path, "in.nii.gz", shape=(30, 28, 12), contrast="t1")
    # the same networks in both directions: gate 0 gives the base itself, gate 1 the previous slice's base
    base = Translator.from_networks(nets[0], nets[0], config, stats, device="cpu", precision="fp32", crop=False)
    shifted = Translator.from_networks(nets[1], nets[1], config, stats, device="cpu", precision="fp32", crop=False)
    b = base.translate(src, axis=axis).array
    s = shifted.translate(src, axis=axis).array
    k = AXIS_INDEX[axis]  # the phantom's affine is RAS already
    previous = np.take(b, np.clip(np.arange(b.shape[k]) - 1, 0, b.shape[k] - 1), axis=k)
    fg = nib.load(src).get_fdata() > 0
    # where the previous slice is background its base is the background level, which the output keeps only
    # inside this slice's foreground: compare where both are foreground
    inside = fg & np.take(fg, np.clip(np.arange(fg.shape[k]) - 1, 0, fg.shape[k] - 1), axis=k)
    np.testing.assert_allclose(s[inside], previous[inside], atol=1e-4)
    assert not np.allclose(s[inside], b[inside], atol=1e-2)
