"""The packaged default model, the packaged sample and the one-command demo."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medsynth.cli import demo_main
from medsynth.demo import SAMPLE_T1, SAMPLE_T2
from medsynth.evaluation import masked_metrics
from medsynth.inference import DEFAULT_MODEL, Translator


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert demo_main([str(out), "--device", "cpu"]) == 0
    # what the command printed, beside its folder
    (out.parent / "stdout.txt").write_text(printed.getvalue())
    return out


def test_packaged_model_loads_weights_only_and_is_small() -> None:
    assert DEFAULT_MODEL.stat().st_size < 30 * 2**20
    payload = torch.load(DEFAULT_MODEL, weights_only=True)
    assert payload["format"] == "medsynth-model" and payload["domains"] == ["t1", "t2"]
    translator = Translator.from_file(None, device="cpu")
    assert translator.directions == ["t1-to-t2", "t2-to-t1"]
    assert SAMPLE_T1.stat().st_size <= 3 * 10**6


def test_demo_writes_the_volume_with_the_inputs_geometry_and_a_preview(demo_dir: Path) -> None:
    out = nib.load(demo_dir / "sample_t1_to_t2.nii.gz")
    src = nib.load(SAMPLE_T1)
    assert out.shape == src.shape
    np.testing.assert_array_equal(out.affine, src.affine)
    for form in ("qform", "sform"):
        assert int(getattr(out.header, f"get_{form}")(coded=True)[1]) == int(getattr(src.header, f"get_{form}")(coded=True)[1])
    assert (demo_dir / "sample_t1.nii.gz").read_bytes() == SAMPLE_T1.read_bytes()
    preview = np.asarray(PILImage.open(demo_dir / "preview.png").convert("L"))
    assert preview.shape[0] > 300 and preview.shape[1] > 500 and preview.std() > 10
    # the brain fills its panels: the crop (152 x 202 x 149 voxels of 240 x 240 x 155) makes the axial row's middle
    # panel mostly brain
    height, width = preview.shape
    axial = preview[int(height * 0.1):int(height * 0.4), width // 3 + 20:2 * width // 3 - 20]
    assert (axial > 20).mean() > 0.6
    printed = (demo_dir.parent / "stdout.txt").read_text()
    assert "\nnote: input T1 looks thick-slice (through-plane blur x" in printed


def test_preview_notes_say_the_sample_is_thick_slice_and_what_all_axes_means() -> None:
    from medsynth.demo import preview_notes

    t1 = nib.load(SAMPLE_T1)
    notes = preview_notes(t1.get_fdata(dtype=np.float32), t1.affine, "all")
    assert notes[0].startswith("input T1 looks thick-slice (through-plane blur x")
    assert notes[0].endswith("along S-I): coronal and sagittal rows striped")
    assert notes[1].startswith("three axes fused: the T1 translated slice by slice along axial, coronal and sagittal")
    assert preview_notes(t1.get_fdata(dtype=np.float32), t1.affine, "axial") == notes[:1]
    assert notes[1].endswith("the three results averaged")
    detail = preview_notes(t1.get_fdata(dtype=np.float32), t1.affine, "all", "detail")
    assert detail[1].endswith("the axial result kept, with the detail across slices from the other two")


def _scores(demo_dir: Path) -> tuple[dict, dict]:
    """Masked metrics of the demo's synthetic T2 and of the fair baseline on the packaged sample: a patient the
    packaged model never saw."""
    from medsynth.inference import fair_baseline_translator

    t1 = nib.load(SAMPLE_T1).get_fdata(dtype=np.float32)
    t2 = nib.load(SAMPLE_T2).get_fdata(dtype=np.float32)
    pred = nib.load(demo_dir / "sample_t1_to_t2.nii.gz").get_fdata(dtype=np.float32)
    mask = (t1 > 0) & (t2 > 0)
    fair = fair_baseline_translator(None).translate(SAMPLE_T1, direction="t1-to-t2").array
    return masked_metrics(pred, t2, mask), masked_metrics(fair, t2, mask)


def test_default_model_on_the_unseen_sample_against_the_fair_baseline(demo_dir: Path) -> None:
    """T1 -> T2, axial, as the demo runs it. The packaged model was chosen on leave-one-out means, not on this
    patient: on it the model is above the fair baseline in SSIM but brightens the whole brain (+0.12 of the range),
    0.1 dB below it in PSNR (medsynth/models/default_t1t2.md). What is checked is that, not a hoped-for margin: a
    broken or swapped model file falls far below both."""
    model, fair = _scores(demo_dir)
    assert model["ssim"] > fair["ssim"] and model["psnr"] > fair["psnr"] - 1.0, (model, fair)


def test_default_model_beats_the_fair_baseline_back_from_t2_on_the_unseen_sample() -> None:
    """T2 -> T1 on the same unseen patient. (The oracle baseline, matched to the patient's own real target, is
    beaten on the leave-one-out means in both metrics, on this patient only in SSIM: see
    medsynth/models/default_t1t2.md.)"""
    from medsynth import Translator
    from medsynth.inference import fair_baseline_translator

    t1 = nib.load(SAMPLE_T1).get_fdata(dtype=np.float32)
    t2 = nib.load(SAMPLE_T2).get_fdata(dtype=np.float32)
    mask = (t1 > 0) & (t2 > 0)
    pred = Translator.from_file(None, device="cpu").translate(SAMPLE_T2, direction="t2-to-t1").array
    fair = fair_baseline_translator(None).translate(SAMPLE_T2, direction="t2-to-t1").array
    model, baseline = masked_metrics(pred, t1, mask), masked_metrics(fair, t1, mask)
    assert model["psnr"] > baseline["psnr"] + 0.5 and model["ssim"] > baseline["ssim"] + 0.02, (model, baseline)


def test_demo_refuses_to_overwrite(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main([str(demo_dir), "--device", "cpu"]) == 2
    assert "use --overwrite" in capsys.readouterr().err
