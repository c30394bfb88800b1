"""medsynth.lesions: synthetic oedema-like blobs, dark in T1 and bright in T2, pasted into paired training slices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.lesions import paste_lesions

if TYPE_CHECKING:
    from medsynth.config import ModelConfig
    from medsynth.training import DomainData


def residual_pair(size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A T1-like and a T2-like slice in the residual layout [image, base, standardised]; each base is a known
    decreasing map of its image, as the inverted histogram match is."""
    yy, xx = np.mgrid[:size, :size]
    head = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    rng = np.random.default_rng(0)
    t1 = np.where(head, 0.2 + 0.4 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.05 * rng.normal(size=head.shape), -1.0)
    t2 = np.where(head, -0.8 * t1 + 0.1, -1.0)

    def layout(x: np.ndarray) -> torch.Tensor:
        base = np.where(head, -0.7 * x - 0.05, -1.0)  # monotone decreasing in x
        return torch.from_numpy(np.stack([x, base, 0.9 * x]).astype(np.float32))

    return layout(t1), layout(t2)


def test_blobs_are_dark_in_t1_bright_in_t2_and_the_base_follows() -> None:
    a, b = residual_pair()
    before = (a.clone(), b.clone())
    # CSF-dark blobs (the first version's levels), so that every changed T1 pixel gets darker
    a2, b2 = paste_lesions(a, b, np.random.default_rng(3), count=(2, 2), dark=(0.03, 0.25))
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])  # inputs are not modified
    changed = (a2[0] - a[0]).abs() > 0.05
    assert changed.sum() > 20
    # both images change at the same place, T1 darker and T2 brighter there
    assert ((b2[0] - b[0]).abs() > 0.05)[changed].float().mean() > 0.8
    assert (a2[0] - a[0])[changed].mean() < -0.1 and (b2[0] - b[0])[changed].mean() > 0.1
    # the standardised channel gets the blob too, and the base is the same decreasing map of the new image
    assert (a2[2] - a[2])[changed].mean() < -0.1
    head = a[0] > -1
    np.testing.assert_allclose(a2[1][head].numpy(), (-0.7 * a2[0][head] - 0.05).numpy(), atol=0.02)
    np.testing.assert_allclose(b2[1][head].numpy(), (-0.7 * b2[0][head] - 0.05).numpy(), atol=0.02)
    # background stays background; the same seed gives the same blobs
    assert torch.all(a2[:, ~head] == a[:, ~head]) and torch.all(b2[:, ~head] == b[:, ~head])
    again = paste_lesions(a, b, np.random.default_rng(3), count=(2, 2), dark=(0.03, 0.25))
    assert torch.equal(again[0], a2) and torch.equal(again[1], b2)


def _paired_domains(folder: Path, shape: tuple[int, int, int], size: int
                    ) -> tuple[DomainData, DomainData, ModelConfig, list[tuple[int, int]]]:
    """Two registered phantom pairs (T2 the T1 inverted) written to ``folder``: their domains, a tiny residual
    model configuration and the pairs, as training prepares them for ``size`` px crops."""
    from conftest import phantom

    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.training import DomainData, prepare_domains

    for i in range(2):
        t1 = phantom(shape, i, "t1")
        for name, data in (("t1", t1), ("t2", np.where(t1 > 0, 2000.0 - t1, 0).astype(np.float32))):
            path = folder / name / f"case{i}_{name}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    a = DomainData(sorted((folder / "t1").glob("*.nii.gz")), progress=False)
    b = DomainData(sorted((folder / "t2").glob("*.nii.gz")), progress=False)
    model = ModelConfig(generator="resnet6", ngf=4, residual="invert", residual_input="base")
    pairs, _ = prepare_domains(a, b, TrainConfig(size=size, paired=True, model=model))
    return a, b, model, pairs


def test_training_samples_get_blobs_only_when_asked(tmp_path: Path) -> None:
    from medsynth.config import TrainConfig
    from medsynth.training import SliceDataset

    a, b, model, pairs = _paired_domains(tmp_path, (30, 34, 12), 24)
    plain = SliceDataset(a, b, TrainConfig(size=24, paired=True, model=model), pairs)
    # the darkest T1 levels and no cores, so that the T1 gets darker wherever a blob lands
    blobs = SliceDataset(a, b, TrainConfig(size=24, paired=True, model=model, lesion_augment=1.0,
                                           lesion_dark=(0.0, 0.05), lesion_core=0.0), pairs)
    differs = 0
    for k in range(6):
        p, q = plain[k], blobs[k]
        assert p["a"].shape == q["a"].shape == (3, 24, 24)
        # the same slice and crop (the blobs draw from their own generator), darker T1 and brighter T2 where changed
        changed = (q["a"][0] - p["a"][0]).abs() > 0.05
        if changed.any():
            differs += 1
            assert (q["a"][0] - p["a"][0])[changed].mean() < 0 < (q["b"][0] - p["b"][0])[changed].mean()
    assert differs >= 4


def _plateau(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The pixels of ``where`` holding the most frequent value of ``x`` there (a texture-free blob's flat inside)."""
    values, counts = torch.unique(torch.round(x[where] * 1e5), return_counts=True)
    return where & (torch.round(x * 1e5) == values[counts.argmax()])


def test_oedema_sits_at_grey_matter_level_in_t1_and_cores_are_t1_bright_t2_grey() -> None:
    a, b = residual_pair(64)
    head = a[0] > -1

    def q(x: torch.Tensor, p: float) -> float:
        return float(np.quantile(x[0][head].numpy(), p))

    # sharp borders, so that a blob's inside is flat at its level; no core: inside a blob T1 sits between the 0.12
    # and 0.40 quantiles (not CSF-dark), T2 near the top
    a2, b2 = paste_lesions(a, b, np.random.default_rng(5), count=(1, 1), radius=(10, 10), texture=0.0,
                           softness=(60, 60))
    flat = _plateau(a2[0], ((a2[0] - a[0]).abs() > 1e-3) & head)
    assert flat.sum() > 20
    assert q(a, 0.12) - 1e-3 <= float(a2[0][flat].mean()) <= q(a, 0.40) + 1e-3
    assert float(b2[0][flat].min()) >= q(b, 0.85) - 1e-3
    # with a core: its flat inside is T1-bright (above the 0.85 quantile) and T2 intermediate (0.35-0.65)
    found = 0
    for seed in range(10):
        a3, b3 = paste_lesions(a, b, np.random.default_rng(seed), count=(1, 1), radius=(14, 14), texture=0.0,
                               softness=(60, 60), core=1.0)
        bright = head & (a3[0] >= q(a, 0.85) - 1e-3) & ((a3[0] - a[0]).abs() > 1e-3)
        if bright.sum() < 5:
            continue
        core = _plateau(a3[0], bright)
        found += 1
        assert q(b, 0.35) - 1e-3 <= float(b3[0][core].min()) <= float(b3[0][core].max()) <= q(b, 0.65) + 1e-3
        # and the base follows the new T1 through the slice's own decreasing map
        np.testing.assert_allclose(a3[1][head].numpy(), (-0.7 * a3[0][head] - 0.05).numpy(), atol=0.02)
    assert found >= 5
    # the first, CSF-dark blobs on request; without a core the draws are those of the same seed before
    old, old_b = paste_lesions(a, b, np.random.default_rng(5), count=(1, 1), radius=(10, 10), texture=0.0,
                               softness=(60, 60), dark=(0.03, 0.25))
    assert torch.equal(old_b, b2)  # the same blob, the same T2 level: only the T1 level differs
    assert float(old[0][flat].mean()) <= q(a, 0.25) + 1e-3


def brain_slice(size: int = 64) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A T1/T2-like pair with anatomy (single channel): bright white matter inside, a grey-matter ring outside it,
    a dark ventricle in the middle; and the mask of the ring away from the white matter (the cortex)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    noise = 0.02 * np.random.default_rng(1).normal(size=r.shape)
    t1 = np.where(r < 4, -0.8, np.where(r < 18, 0.6, np.where(r < 28, 0.0, -1.0))) + np.where(r < 28, noise, 0)
    t2 = np.where(r < 28, -0.9 * t1, -1.0)
    cortex = (r > 22) & (r < 28)
    return torch.from_numpy(t1[None].astype(np.float32)), torch.from_numpy(t2[None].astype(np.float32)), cortex


def test_white_site_puts_oedema_in_white_matter_and_spares_the_cortex() -> None:
    a, b, cortex = brain_slice()
    white = (a[0] > 0.3).numpy()
    hits = {"anywhere": [0, 0], "white": [0, 0]}  # changed pixels in the cortex, in the white matter
    for site in hits:
        for seed in range(12):
            a2, b2 = paste_lesions(a, b, np.random.default_rng(seed), radius=(4, 8), site=site)
            changed = ((a2[0] - a[0]).abs() > 0.05).numpy()
            hits[site][0] += int((changed & cortex).sum())
            hits[site][1] += int((changed & white).sum())
            # T1 darker and T2 brighter inside an oedema wherever it lands in white matter (no core asked)
            inside = changed & white
            if inside.any():
                assert (a2[0] - a[0]).numpy()[inside].mean() < 0 < (b2[0] - b[0]).numpy()[inside].mean()
    # anywhere: the cortex gets its share of blobs; white: the white matter gets them and the cortex none
    assert hits["anywhere"][0] > 200
    assert hits["white"][1] > 400 and hits["white"][0] == 0
    # a slice with no white matter to speak of (a flat T1) falls back to anywhere: the T2 still gets its oedema
    flat = torch.where(a > -1, torch.zeros_like(a), a)
    out = paste_lesions(flat, b, np.random.default_rng(0), site="white")
    assert ((out[1] - b).abs() > 0.05).sum() > 20
    # and a bad site is refused
    with pytest.raises(ValueError, match="unknown lesion site 'grey'"):
        paste_lesions(a, b, np.random.default_rng(0), site="grey")


def test_lesion_radius_reaches_the_training_blobs_and_the_saved_config(tmp_path: Path) -> None:
    """``--lesion-radius`` sizes the blobs a training sample gets, and survives the config's JSON."""
    from medsynth.config import TrainConfig
    from medsynth.training import SliceDataset

    a, b, model, pairs = _paired_domains(tmp_path, (64, 64, 10), 48)
    plain = SliceDataset(a, b, TrainConfig(size=48, paired=True, model=model), pairs)

    def changed_area(radius: tuple[float, float]) -> float:
        config = TrainConfig(size=48, paired=True, model=model, lesion_augment=1.0, lesion_core=0.0,
                             lesion_dark=(0.0, 0.05), lesion_radius=radius)
        blobs = SliceDataset(a, b, config, pairs)
        return float(np.mean([((blobs[k]["a"][0] - plain[k]["a"][0]).abs() > 0.05).sum() for k in range(8)]))

    small, large = changed_area((2.0, 3.0)), changed_area((10.0, 14.0))
    # the area grows as r^2 (about 16x here; less where the crop's foreground ends, and the soft borders add a rim)
    assert 0 < small and large > 4 * small, (small, large)
    config = TrainConfig(lesion_radius=(6.0, 24.0))
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_the_lesion_weight_is_where_the_images_changed() -> None:
    """``return_weight``: a (1, H, W) map in [0, 1], zero wherever neither image changed and positive wherever one
    did, for the lesion term of training; zeros when nothing could be pasted."""
    a, b = residual_pair(64)
    for seed in range(4):
        na, nb, weight = paste_lesions(a, b, np.random.default_rng(seed), core=1.0, return_weight=True)
        assert weight.shape == (1, 64, 64) and float(weight.min()) >= 0.0 and float(weight.max()) <= 1.0
        changed = ((na[0] - a[0]).abs() > 1e-6) | ((nb[0] - b[0]).abs() > 1e-6)
        assert changed.any() and bool((weight[0][changed] > 0).all()) and bool((weight[0][~changed] < 1e-3).all())
        # the same draw with and without the weight: the same images
        same = paste_lesions(a, b, np.random.default_rng(seed), core=1.0)
        assert torch.equal(same[0], na) and torch.equal(same[1], nb)
    empty = torch.full_like(a, -1.0)
    assert float(paste_lesions(empty, empty, np.random.default_rng(0), return_weight=True)[2].abs().sum()) == 0.0


def test_training_samples_carry_where_their_lesion_is_through_flips_and_batches(tmp_path: Path) -> None:
    """With ``lambda_lesion``, every paired sample carries ``lesion``: zeros without a lesion, positive wherever the
    lesion changed the images (after the crop, flip and affine, which come first), and the batches collate."""
    from medsynth.config import TrainConfig
    from medsynth.training import SliceDataset

    a, b, model, pairs = _paired_domains(tmp_path, (30, 34, 12), 24)
    options = {"size": 24, "paired": True, "model": model, "flip": True, "augment": True}
    plain = SliceDataset(a, b, TrainConfig(**options), pairs)
    weighed = SliceDataset(a, b, TrainConfig(**options, lesion_augment=0.5, lambda_lesion=10.0), pairs)
    with_lesion = without = 0
    for k in range(12):
        p, q = plain[k], weighed[k]
        assert q["lesion"].shape == (1, 24, 24) and q["lesion"].dtype == torch.float32
        changed = ((q["a"][0] - p["a"][0]).abs() > 1e-6) | ((q["b"][0] - p["b"][0]).abs() > 1e-6)
        if changed.any():
            with_lesion += 1
            assert bool((q["lesion"][0][changed] > 0).all())
        else:
            without += 1
            assert float(q["lesion"].abs().sum()) == 0.0
    assert with_lesion and without
    # without the lesion term the samples carry no weight
    assert "lesion" not in SliceDataset(a, b, TrainConfig(**options, lesion_augment=0.5), pairs)[0]
    batch = next(iter(torch.utils.data.DataLoader(weighed, batch_size=4)))
    assert batch["lesion"].shape == (4, 1, 24, 24) and batch["a"].shape[0] == 4
