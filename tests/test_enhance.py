"""X-ray enhancement chain: each step moves images the expected way; MONAI transforms; medsynth-enhance CLI."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medsynth.cli.enhance import main
from medsynth.enhance import STEPS, EnhanceConfig, enhance, image_stats, noise_sigma, parse_steps
from medsynth.errors import InputError
from medsynth.image2d import read_image2d

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def phantom(n: int = 64) -> np.ndarray:
    """Chest-like test object in [0, 1]: a dark background, a bright 'body', two darker 'lungs', thin ribs."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    img = np.full((n, n), 0.1)
    img[((yy - 0.5) / 0.45) ** 2 + ((xx - 0.5) / 0.4) ** 2 < 1] = 0.7
    for cx in (0.33, 0.67):
        img[((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.12) ** 2 < 1] = 0.45
    for ry in (0.3, 0.45, 0.6):
        img[np.abs(yy - ry) < 1.5 / n] += 0.15
    return img


def blurred(img: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma)


def noisy(img: np.ndarray, sigma: float = 0.05, seed: int = 0) -> np.ndarray:
    return img + np.random.default_rng(seed).normal(0, sigma, img.shape)


# ------------------------------------------------------------------------------------------- steps


def test_clahe_raises_local_contrast_of_faint_detail():
    # a dark and a bright half, each with faint texture: the global range is used, the detail is not
    n = 64
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.where(xx < n // 2, 60.0, 200.0) + np.round(4 * np.sin(2 * np.pi * yy / 8) * np.sin(2 * np.pi * xx / 8))
    out = enhance(img, EnhanceConfig(steps="clahe"))
    assert out.dtype == np.float32 and out.shape == img.shape
    assert img.min() <= out.min() and out.max() <= img.max()  # stays on the input's range
    inner = (slice(8, -8), slice(8, n // 2 - 8))  # inside the dark half
    assert out[inner].std() > 2 * img[inner].std()
    assert image_stats(out, (0, 255))["local_contrast"] > 1.1 * image_stats(img, (0, 255))["local_contrast"]


def test_histeq_spreads_the_histogram():
    low = 100 + np.round(30 * blurred(phantom()))
    out = enhance(low, "histeq", value_range=(0, 255))
    before, after = image_stats(low, (0, 255)), image_stats(out, (0, 255))
    assert after["contrast"] > 2 * before["contrast"]
    assert out.max() == pytest.approx(255) and out.max() - out.min() > 150  # spread over the given range


@pytest.mark.parametrize("method", ["nlmeans", "bilateral", "curvature"])
def test_denoising_lowers_noise_on_a_noisy_phantom(method):
    clean = blurred(phantom(), 0.7)
    dirty = noisy(clean)
    out = enhance(dirty, EnhanceConfig(steps="denoise", denoise_method=method), value_range=(dirty.min(), dirty.max()))
    assert noise_sigma(out) < 0.6 * noise_sigma(dirty)
    assert np.sqrt(((out - clean) ** 2).mean()) < 0.8 * np.sqrt(((dirty - clean) ** 2).mean())


def test_noise_estimate_is_calibrated():
    flat = np.full((128, 128), 0.5)
    assert noise_sigma(noisy(flat, 0.05)) == pytest.approx(0.05, rel=0.1)
    assert noise_sigma(noisy(phantom(128), 0.05)) == pytest.approx(0.05, rel=0.2)  # edges barely matter


@pytest.mark.parametrize("method", ["unsharp", "laplacian"])
def test_sharpening_raises_edge_strength(method):
    soft = 0.2 + 0.6 * blurred(phantom(), 2.0)
    out = enhance(soft, EnhanceConfig(steps="sharpen", sharpen_method=method), value_range=(0.0, 1.0))
    assert image_stats(out, (0, 1))["edge_strength"] > 1.2 * image_stats(soft, (0, 1))["edge_strength"]
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_gamma_below_one_brightens_and_steps_run_in_the_given_order():
    img = phantom()
    assert enhance(img, EnhanceConfig(steps="gamma", gamma=0.5)).mean() > img.mean()
    assert enhance(img, EnhanceConfig(steps="gamma", gamma=2.0)).mean() < img.mean()
    a = enhance(img, EnhanceConfig(steps="gamma,histeq", gamma=0.5))
    b = enhance(img, EnhanceConfig(steps="histeq,gamma", gamma=0.5))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(enhance(np.full((8, 8), 7.0), "clahe,sharpen"), 7.0)  # constant: unchanged
    np.testing.assert_array_equal(enhance(img, EnhanceConfig(steps=[])), img.astype(np.float32))


def test_16bit_data_is_not_quantised_to_8_bits():
    img16 = np.round(20000 + 20000 * noisy(blurred(phantom(128)), 0.01))
    for steps in ("clahe", "histeq", "denoise,sharpen", "clahe,denoise,sharpen,gamma"):
        out = enhance(img16, steps, value_range=(0, 65535))
        assert len(np.unique(out)) > 1024, steps


def test_config_checks_its_values():
    assert parse_steps(" CLAHE, denoise ,") == ("clahe", "denoise")
    assert EnhanceConfig(steps=["sharpen"]).steps == ("sharpen",)
    assert EnhanceConfig().to_dict()["steps"] == ["clahe"]
    with pytest.raises(InputError, match=r"--steps: unknown step 'blur'; choose from histeq"):
        EnhanceConfig(steps="clahe,blur")
    with pytest.raises(InputError, match="--denoise-method: unknown value 'median'"):
        EnhanceConfig(denoise_method="median")
    with pytest.raises(InputError, match="--gamma: must be a number > 0"):
        EnhanceConfig(gamma=0)
    with pytest.raises(InputError, match="--clahe-tile: must be a whole number >= 2"):
        EnhanceConfig(clahe_tile=1)
    assert set(STEPS) == {"histeq", "clahe", "denoise", "sharpen", "gamma"}


# ------------------------------------------------------------------------------------------- MONAI


def test_monai_transforms_on_tensors_and_dictionaries():
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, EnsureChannelFirstd

    from medsynth.enhance import Enhance, Enhanced

    img = phantom(32).astype(np.float32)
    expected = enhance(img, "clahe")
    chw = Enhance("clahe")(torch.from_numpy(img)[None])
    assert isinstance(chw, torch.Tensor) and chw.shape == (1, 32, 32)
    np.testing.assert_allclose(chw[0].numpy(), expected)

    volume = MetaTensor(torch.from_numpy(np.stack([img, img[::-1]], axis=-1))[None], meta={"filename_or_obj": "v"})
    out = Enhance("clahe")(volume)  # (C, H, W, D): slice by slice along the last axis
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "v" and out.shape == (1, 32, 32, 2)
    np.testing.assert_allclose(out[0, ..., 1].numpy(), enhance(img[::-1], "clahe"))

    chain = Compose([EnsureChannelFirstd("image", channel_dim="no_channel"), Enhanced("image", "clahe")])
    result = chain({"image": img, "label": 1})
    assert result["label"] == 1 and result["image"].shape == (1, 32, 32)
    np.testing.assert_allclose(np.asarray(result["image"][0]), expected)
    assert isinstance(pickle.loads(pickle.dumps(Enhanced("image", "sharpen"))), Enhanced)  # DataLoader workers
    with pytest.raises(ValueError, match="got shape"):
        Enhance("clahe")(np.zeros(4))


# ------------------------------------------------------------------------------------------- CLI


def xray_png(path: Path, n: int = 48, bits: int = 8) -> Path:
    top = 2**bits - 1
    img = np.clip(np.round(top * (0.3 + 0.3 * noisy(blurred(phantom(n)), 0.02))), 0, top)
    Image.fromarray(img.astype(np.uint8 if bits == 8 else np.uint16)).save(path)
    return path


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_cli_file_with_preview_reports_stats(tmp_path, capsys):
    src = xray_png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert main([str(src), str(out), "--steps", "clahe,denoise,sharpen", "--preview"]) == 0
    (record,) = json_lines(capsys.readouterr().out)
    assert record["steps"] == ["clahe", "denoise", "sharpen"] and record["output"] == str(out)
    assert record["after"]["local_contrast"] > record["before"]["local_contrast"]
    assert set(record["before"]) >= {"contrast", "entropy", "edge_strength"}
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (48, 48)
    with Image.open(tmp_path / "out_preview.png") as im:
        assert im.mode == "L" and im.size == (48 * 2 + 8, 48)  # before | gap | after
        preview = np.asarray(im)
    original = np.asarray(Image.open(src))
    np.testing.assert_array_equal(preview[20:, :48], original[20:])  # left half is the input (below the label)


def test_cli_16bit_png_stays_16bit(tmp_path, capsys):
    src = xray_png(tmp_path / "in16.png", bits=16)
    assert main([str(src), str(tmp_path / "out.png"), "--steps", "clahe,denoise,sharpen"]) == 0
    array, meta = read_image2d(tmp_path / "out.png")
    assert meta.bit_depth == 16 and len(np.unique(array)) > 256
    assert main([str(src), str(tmp_path / "out8.png"), "--bit-depth", "8"]) == 0
    assert read_image2d(tmp_path / "out8.png")[1].bit_depth == 8


def test_cli_folder_keeps_names_and_writes_nifti_with_spacing(tmp_path, capsys):
    from test_image2d import make_dicom

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    xray_png(folder / "CT (10).png")
    xray_png(folder / "CT (2).png")
    make_dicom(folder / "sub" / "x.dcm", np.round(4095 * phantom(40)).astype(np.int64), "MONOCHROME1",
               spacing=(0.5, 0.25))
    (folder / "notes.txt").write_text("ignored")
    assert main([str(folder), str(tmp_path / "out"), "--steps", "clahe", "--format", "nii.gz"]) == 0
    records = json_lines(capsys.readouterr().out)
    assert [Path(r["input"]).name for r in records] == ["CT (2).png", "CT (10).png", "x.dcm"]  # natural order
    nii = nib.load(tmp_path / "out" / "sub" / "x.nii.gz")
    assert nii.shape == (40, 40, 1)
    np.testing.assert_allclose(np.diag(nii.affine)[:3], [0.5, 0.25, 1.0])  # rows along I, columns along J
    assert (tmp_path / "out" / "CT (2).nii.gz").exists()

    assert main([str(folder), str(tmp_path / "same"), "--steps", "gamma"]) == 0  # --format same
    ds = pydicom.dcmread(tmp_path / "same" / "sub" / "x.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME2" and [float(v) for v in ds.PixelSpacing] == [0.5, 0.25]


def test_cli_errors(tmp_path, capsys):
    src = xray_png(tmp_path / "in.png")
    (tmp_path / "out.png").write_bytes(b"existing")
    cases = [
        ([str(tmp_path / "missing.png"), str(tmp_path / "o.png")], "missing.png: no such file"),
        ([str(src), str(tmp_path / "out.png")], "use --overwrite"),
        ([str(src), str(tmp_path / "o.png"), "--steps", "clahe,blur"], "--steps: unknown step 'blur'"),
        ([str(src), str(tmp_path / "o.jpg"), "--bit-depth", "16"], "JPEG stores 8 bits"),
        ([str(src), str(tmp_path / "o.bmp")], "unsupported output type"),
        ([str(src), str(src), "--overwrite"], "would overwrite the input"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert (tmp_path / "out.png").read_bytes() == b"existing"
    (tmp_path / "bad.png").write_text("text")
    assert main([str(tmp_path / "bad.png"), str(tmp_path / "o.png")]) == 2
    assert "bad.png: not a readable PNG image" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_cli_runs_as_a_module(tmp_path):
    src = xray_png(tmp_path / "in.png")
    done = subprocess.run([sys.executable, "-m", "medsynth", "enhance", str(src), str(tmp_path / "o.dcm"),
                           "--steps", "histeq"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json_lines(done.stdout)[0]["output"] == str(tmp_path / "o.dcm")
    assert pydicom.dcmread(tmp_path / "o.dcm").Rows == 48
    done = subprocess.run([sys.executable, "-m", "medsynth", "enhance", str(tmp_path / "nope.png"),
                           str(tmp_path / "o2.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().endswith("nope.png: no such file or folder")


@pytest.mark.skipif(not (DATA / "chest_xray" / "00000001_000.png").exists(), reason="shared data not available")
def test_cli_on_a_real_chest_xray(tmp_path, capsys):
    src = DATA / "chest_xray" / "00000001_000.png"
    assert main([str(src), str(tmp_path / "o.png"), "--steps", "clahe,sharpen"]) == 0
    (record,) = json_lines(capsys.readouterr().out)
    assert record["after"]["local_contrast"] > record["before"]["local_contrast"]
    assert record["after"]["edge_strength"] > record["before"]["edge_strength"]
