"""Shared fixtures: tiny synthetic volumes written to ``tmp_path`` and tiny models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package; while it loads, ``scripts/`` is importable,
    as the studies import ``study_cpu`` beside them)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module

# one thread: two threads fighting over two shared cores (or a test's subprocesses) run 10x slower, and
# subprocesses inherit the variable
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def phantom(shape: tuple[int, int, int] = (20, 24, 16), seed: int = 0, contrast: str = "t1") -> np.ndarray:
    """A head-like volume: zero background, an ellipsoid "brain" with a brighter off-centre blob and a dark
    "ventricle", so that flips, transposes and shifts of the array are visible in any comparison."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, (0.85, 0.8, 0.75))))
    brain = r < 1
    blob = np.sqrt((grids[0] - 0.35) ** 2 + (grids[1] + 0.2) ** 2 + (grids[2] - 0.1) ** 2) < 0.3
    ventricle = np.sqrt((grids[0] + 0.2) ** 2 + (grids[1] - 0.15) ** 2 + grids[2] ** 2) < 0.22
    wm, gm, csf = (800.0, 500.0, 150.0) if contrast == "t1" else (300.0, 600.0, 1200.0)
    vol = np.where(brain, gm, 0.0)
    vol = np.where(blob & brain, wm, vol)
    vol = np.where(ventricle & brain, csf, vol)
    vol = vol + brain * rng.normal(0, 15, shape) + brain * 40 * grids[0]
    return np.clip(vol, 0, None).astype(np.float32)


@pytest.fixture
def head_phantom() -> Callable[..., np.ndarray]:
    """The phantom function: ``head_phantom(shape=(20, 24, 16), seed=0, contrast="t1") -> np.ndarray``."""
    return phantom


@pytest.fixture
def make_volume() -> Callable[..., Path]:
    """Factory: ``make_volume(tmp_path, name="vol.nii.gz", shape=(20, 24, 16), affine=None, dtype=np.float32,
    seed=0, contrast="t1")`` writes a head phantom with nibabel and returns its path."""

    def make(folder: Path, name: str = "vol.nii.gz", shape: tuple[int, int, int] = (20, 24, 16),
             affine: np.ndarray | None = None, dtype: type = np.float32, seed: int = 0,
             contrast: str = "t1") -> Path:
        import nibabel as nib

        data = phantom(shape, seed, contrast)
        affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
        img = nib.Nifti1Image(data.astype(dtype), affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))
        return path

    return make


def _write_model(path: Path, generator: str, ngf: int = 4, names: tuple[str, str] = ("t1", "t2"),
                 stats: dict | None = None, bias_correction: str = "none") -> Path:
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.cyclegan import export_model
    from medsynth.networks import build_generator, init_weights

    torch.manual_seed(0)
    config = TrainConfig(names=names, model=ModelConfig(generator=generator, ngf=ngf, ndf=4), size=32,
                         bias_correction=bias_correction)
    nets = [build_generator(config.model) for _ in range(2)]
    for net in nets:
        init_weights(net)
    stats = stats or {names[0]: {"lo": 100.0, "hi": 900.0, "background": 0.0, "threshold": 10.0},
                      names[1]: {"lo": 200.0, "hi": 1400.0, "background": 0.0, "threshold": 10.0}}
    return export_model(path, config, nets[0], nets[1], stats)


def write_residual_model(path: Path, gate: float = 0.0, **config_values: Any) -> Path:
    """A tiny untrained residual model whose domains carry training histograms (as a trained one does);
    ``gate`` opens its correction (zero, as at the start of training, leaves the baseline alone);
    ``config_values``: more of its TrainConfig (the training files ``b``, ``target_norm``...)."""
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.cyclegan import CycleGAN, export_model
    from medsynth.networks import domain_quantiles

    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig(generator="resnet6", ngf=8, residual="invert"), size=32, **config_values)
    model = CycleGAN(config)
    q1 = domain_quantiles(torch.linspace(-0.9, 0.9, 1000))
    q2 = domain_quantiles(torch.linspace(-0.9, 0.9, 1000) ** 3)
    model.set_histogram_targets(q1, q2)
    with torch.no_grad():
        for net in (model.g_ab, model.g_ba):
            net.gate.fill_(gate)
    stats = {"t1": {"lo": 100.0, "hi": 900.0, "background": 0.0, "threshold": 10.0, "quantiles": q1.tolist()},
             "t2": {"lo": 200.0, "hi": 1400.0, "background": 0.0, "threshold": 10.0, "quantiles": q2.tolist()}}
    return export_model(path, config, model.g_ab, model.g_ba, stats)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model.pt with tiny untrained ResNet-6 generators (ngf 4), domains ("t1", "t2")."""
    return _write_model(tmp_path_factory.mktemp("tiny_model") / "model.pt", "resnet6")


@pytest.fixture(scope="session")
def n4_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's networks, recorded as trained on N4-corrected volumes (``bias_correction: n4``)."""
    return _write_model(tmp_path_factory.mktemp("n4_model") / "model.pt", "resnet6", bias_correction="n4")


@pytest.fixture(scope="session")
def identity_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model.pt whose generators return their input: a translation is the normalisation round trip alone."""
    return _write_model(tmp_path_factory.mktemp("identity_model") / "model.pt", "identity")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
