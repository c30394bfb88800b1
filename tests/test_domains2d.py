"""2-D domains end to end: train on folders of PNGs, then translate PNG, 16-bit PNG and DICOM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsynth.cli import convert_main, train_main
from medsynth.image2d import read_image2d

ROWS, COLS = 40, 36  # not square and not the training size: outputs must keep the input's own shape


def head(rows: int = ROWS, cols: int = COLS, seed: int = 0) -> np.ndarray:
    """A head-like slice in [0, 1]: bright skull ring, grey brain, darker ventricles, a little noise."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    r = np.sqrt(((yy - rows / 2) / (rows * 0.42)) ** 2 + ((xx - cols / 2) / (cols * 0.42)) ** 2)
    img = np.where(r < 1, 0.5, 0.0) + np.where((r > 0.85) & (r < 1), 0.45, 0.0)
    img[(np.abs(yy - rows / 2) < 3) & (np.abs(xx - cols / 2) < 6)] = 0.25
    return np.clip(img + np.random.default_rng(seed).normal(0, 0.02, img.shape) * (r < 1), 0, 1)


def save_png(path: Path, grey: np.ndarray, mode: str) -> Path:
    """8-bit PNG of ``grey`` (0..1) stored as L, RGB or RGBA, the way slice exports come."""
    g = np.round(255 * grey).astype(np.uint8)
    if mode == "L":
        Image.fromarray(g).save(path)
    elif mode == "RGB":
        Image.fromarray(np.stack([g] * 3, -1)).save(path)
    else:
        Image.fromarray(np.stack([g, g, g, np.full_like(g, 250)], -1), "RGBA").save(path)
    return path


def make_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               spacing: tuple[float, float] = (0.7, 0.6)) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName = "CT", "Test^Phantom"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelSpacing = list(spacing)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> tuple[Path, Path]:
    """Folder A ('ct': bright skull) and folder B ('mr': inverted contrast), mixed modes, numbered names."""
    root = tmp_path_factory.mktemp("domains")
    a, b = root / "ct", root / "mr"
    a.mkdir()
    b.mkdir()
    for i, mode in zip((1, 2, 10), ("L", "RGB", "RGBA")):
        save_png(a / f"CT_PNG ({i}).png", head(seed=i), mode)
        mr = 1.0 - head(seed=100 + i)
        mr[head(seed=100 + i) == 0] = 0.0  # background stays dark in the other domain too
        save_png(b / f"MR_PNG ({i}).png", mr, mode)
    return a, b


@pytest.fixture(scope="module")
def model(domains, tmp_path_factory) -> Path:
    """One tiny training run for the whole module (training is the slow part), with CLAHE in its pipeline."""
    a, b = domains
    run = tmp_path_factory.mktemp("run")
    status = train_main(["--a", str(a), "--b", str(b), "--names", "ct,mr", "--out", str(run), "--size", "32",
                         "--ngf", "4", "--ndf", "4", "--steps", "4", "--decay-steps", "1", "--generator", "resnet6",
                         "--device", "cpu", "--batch-size", "2", "--workers", "0", "--quiet", "--enhance", "clahe",
                         "--sample-every", "1000", "--checkpoint-every", "1000", "--val-every", "1000"])
    assert status == 0
    assert (run / "model.pt").is_file()
    return run / "model.pt"


def test_2d_folders_are_listed_naturally_and_read_as_one_slice_volumes(domains):
    from medsynth.io import find_files, load_image

    a, _ = domains
    files = find_files([a], what="image2d")
    assert [f.name for f in files] == ["CT_PNG (1).png", "CT_PNG (2).png", "CT_PNG (10).png"]
    for f in files:  # L, RGB and RGBA all become the same kind of grey one-slice volume
        image = load_image(f)
        assert image.array.shape == (ROWS, COLS, 1) and image.format == "image2d"


def test_trained_model_has_the_2d_domain_names_and_its_enhancement(model):
    from medsynth.inference import Translator

    translator = Translator.from_file(model, device="cpu")
    assert translator.domains == ("ct", "mr")
    assert "ct-to-mr" in translator.directions
    assert list(translator.config.enhance) == ["clahe"]  # applied again to every input it translates


def test_convert_png_keeps_size_and_8_bits(model, domains, tmp_path):
    a, _ = domains
    out = tmp_path / "fake_mr.png"
    assert convert_main([str(a / "CT_PNG (10).png"), str(out), "--model", str(model), "--direction", "ct-to-mr",
                         "--device", "cpu", "--progress", "none"]) == 0
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (COLS, ROWS)
        pixels = np.asarray(im)
    assert pixels.std() > 0  # a real picture, not a constant


def test_convert_16bit_png_gives_16bit_png(model, tmp_path):
    src = tmp_path / "ct16.png"
    Image.fromarray(np.round(65535 * head(seed=7)).astype(np.uint16)).save(src)
    out = tmp_path / "mr16.png"
    assert convert_main([str(src), str(out), "--model", str(model), "--direction", "ct-to-mr",
                         "--device", "cpu", "--progress", "none"]) == 0
    array, meta = read_image2d(out)
    assert meta.format == "png" and meta.bit_depth == 16 and array.shape == (ROWS, COLS)
    with Image.open(out) as im:
        assert im.mode.startswith("I;16")


def test_convert_dicom_gives_dicom_with_the_same_geometry(model, tmp_path):
    src = make_dicom(tmp_path / "ct.dcm", np.round(4095 * head(seed=8)).astype(np.int64), "MONOCHROME1")
    out = tmp_path / "mr.dcm"
    assert convert_main([str(src), str(out), "--model", str(model), "--direction", "ct-to-mr",
                         "--device", "cpu", "--progress", "none"]) == 0
    original, result = pydicom.dcmread(src), pydicom.dcmread(out)
    assert (result.Rows, result.Columns) == (original.Rows, original.Columns)
    assert [float(v) for v in result.PixelSpacing] == [float(v) for v in original.PixelSpacing]
    assert result.PhotometricInterpretation == "MONOCHROME2" and "MONOCHROME1" in result.DerivationDescription
    assert result.BitsStored == 12 and result.SOPInstanceUID != original.SOPInstanceUID
    assert result.pixel_array.shape == (ROWS, COLS)


def test_convert_folder_of_pngs_writes_the_same_names(model, domains, tmp_path):
    a, _ = domains
    out = tmp_path / "out"
    assert convert_main([str(a), str(out), "--model", str(model), "--direction", "ct-to-mr", "--device", "cpu",
                         "--progress", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in a.iterdir())


def test_bad_2d_training_input_is_a_clear_error(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "broken.png").write_text("not a png")
    save_png(b / "ok.png", head(), "L")
    status = train_main(["--a", str(a), "--b", str(b), "--names", "ct,mr", "--out", str(tmp_path / "run"),
                         "--size", "32", "--ngf", "4", "--ndf", "4", "--steps", "1", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "broken.png" in err and "Traceback" not in err


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mr_ct_png"


@pytest.mark.skipif(not (DATA / "Patient_01" / "ct").is_dir(), reason="shared mr_ct_png data not available")
def test_real_ct_png_folder_is_sorted_naturally_and_read_as_grey():
    from medsynth.io import find_files, load_image

    files = find_files([DATA / "Patient_01" / "ct"], what="image2d")
    numbers = [int(f.stem.split("(")[1].rstrip(")")) for f in files]
    assert numbers == sorted(numbers) and numbers[:3] == [1, 2, 3]
    for f in files[:2]:
        image = load_image(f)
        assert image.array.shape == (512, 512, 1) and 0 <= image.array.min() < image.array.max() <= 255
