"""medsynth-train --init: a run starts from an existing model's generators and statistics, or refuses it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.cli import train_main

TINY = ["--size", "32", "--generator", "resnet6", "--ngf", "4", "--ndf", "4", "--quiet", "--log-every", "1",
        "--sample-every", "100", "--workers", "0"]
#: the CPU recipe's paired objective on a residual generator, as the packaged model
PAIRED = ["--paired", "--residual", "invert", "--residual-input", "base", "--gate-scale", "10", "--lambda-adv", "0",
          "--lambda-cycle", "0", "--lambda-identity", "0"]


def pairs(folder: Path, seeds: tuple[int, ...]) -> tuple[Path, Path]:
    """Registered T1/T2 phantom pairs, one case per seed, in ``folder/t1`` and ``folder/t2``."""
    from conftest import phantom

    for seed in seeds:
        t1 = phantom((28, 30, 10), seed, "t1")
        t2 = np.where(t1 > 0, 1500.0 - t1 + 50 * phantom((28, 30, 10), seed + 100, "t2") / 1000, 0).astype(np.float32)
        for name, data in (("t1", t1), ("t2", t2)):
            path = folder / name / f"case{seed}_{name}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return folder / "t1", folder / "t2"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny residual model trained 2 steps on two pairs."""
    root = tmp_path_factory.mktemp("source")
    t1, t2 = pairs(root / "data", (0, 1))
    run = root / "run"
    assert train_main(["--t1", str(t1), "--t2", str(t2), "--out", str(run), *TINY, *PAIRED, "--steps", "2"]) == 0
    return run


def weights(model_path: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(model_path, weights_only=True)
    return {f"{g}.{k}": v.float() for g, net in payload["generators"].items() for k, v in net.items()}


def test_step_0_is_the_source_model(tmp_path: Path, source: Path) -> None:
    t1, t2 = pairs(tmp_path / "site", (7, 8))  # another site's pairs
    # learning rate 0: the exported weights are the step-0 weights
    frozen = ["--t1", str(t1), "--t2", str(t2), *TINY, "--paired", "--steps", "1", "--lr", "0"]
    assert train_main([*frozen, "--out", str(tmp_path / "init"), "--init", str(source)]) == 0
    mine, theirs = weights(tmp_path / "init" / "model.pt"), weights(source / "model.pt")
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key
    new = torch.load(tmp_path / "init" / "model.pt", weights_only=True)
    old = torch.load(source / "model.pt", weights_only=True)
    # the source's statistics and histograms (those of its training data, not of the new site's)
    assert new["stats"] == old["stats"]
    # network options not given are the source's; the run records where it started
    assert new["config"]["model"]["residual"] == "invert" and new["config"]["model"]["gate_scale"] == 10.0
    assert new["config"]["init"] == str(source)
    # control: the same run without --init starts elsewhere (so this test can fail)
    assert train_main([*frozen, *PAIRED, "--out", str(tmp_path / "scratch")]) == 0
    scratch = weights(tmp_path / "scratch" / "model.pt")
    assert not all(torch.equal(scratch[k], theirs[k]) for k in theirs)
    # and with a learning rate, training moves on from the source
    assert train_main([*frozen[:-2], "--steps", "2", "--out", str(tmp_path / "adapt"), "--init", str(source)]) == 0
    adapted = weights(tmp_path / "adapt" / "model.pt")
    assert not all(torch.equal(adapted[k], theirs[k]) for k in theirs)


def test_init_default_is_the_packaged_model(tmp_path: Path) -> None:
    from medsynth.inference import default_model_path

    t1, t2 = pairs(tmp_path / "site", (3,))
    run = tmp_path / "run"
    assert train_main(["--t1", str(t1), "--t2", str(t2), "--out", str(run), "--size", "32", "--quiet", "--paired",
                       "--steps", "1", "--lr", "0", "--workers", "0", "--init", "default"]) == 0
    mine, theirs = weights(run / "model.pt"), weights(default_model_path())
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_a_different_generator_is_refused(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t1, t2 = pairs(tmp_path / "site", (7,))
    for option, value, theirs in (("--ngf", "8", "4"), ("--generator", "unet", "resnet6"),
                                  ("--residual", "none", "invert")):
        run = tmp_path / f"run{option}"
        tiny = [a for i, a in enumerate(TINY) if option not in TINY[max(i - 1, 0):i + 1]]  # without its value
        code = train_main(["--t1", str(t1), "--t2", str(t2), "--out", str(run), *tiny, option, value, "--paired",
                           "--steps", "1", "--init", str(source)])
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {option}: {value} differs from the --init model's "
                                                   f"{theirs}"), err
        assert not run.exists()


def test_the_library_refuses_it_too(tmp_path: Path, source: Path) -> None:
    from medsynth.config import ModelConfig, TrainConfig
    from medsynth.errors import InputError
    from medsynth.training import train

    t1, t2 = pairs(tmp_path / "site", (7,))
    config = TrainConfig(a=[str(t1)], b=[str(t2)], out=str(tmp_path / "run"), size=32, steps=1, paired=True,
                         model=ModelConfig(generator="resnet6", ngf=6, residual="invert", residual_input="base",
                                           gate_scale=10.0), init=str(source), workers=0)
    with pytest.raises(InputError, match=r"--ngf: 6 differs from the --init model's 4"):
        train(config, progress=False)
    with pytest.raises(InputError, match="not a medsynth model|no such model file"):
        config.model.ngf = 4
        config.init = str(tmp_path / "nowhere.pt")
        train(config, progress=False)


def test_the_targets_are_normalised_as_the_model_was_taught_unless_given(tmp_path: Path) -> None:
    """``--init`` keeps the source model's ``--target-norm`` (an old model without one was taught ``histogram``);
    a run may give another, since it has no weights of its own."""
    from medsynth.config import TrainConfig

    t1, t2 = pairs(tmp_path / "data", (0, 1))
    first = tmp_path / "first"
    assert train_main(["--t1", str(t1), "--t2", str(t2), "--out", str(first), *TINY, *PAIRED, "--steps", "1",
                       "--target-norm", "percentile"]) == 0
    for name, extra, expected in (("kept", [], "percentile"), ("given", ["--target-norm", "histogram"], "histogram")):
        run = tmp_path / name
        assert train_main(["--t1", str(t1), "--t2", str(t2), "--out", str(run), *TINY, "--paired", "--steps", "1",
                           "--init", str(first / "model.pt"), *extra]) == 0
        assert TrainConfig.load(run / "config.json").target_norm == expected
    assert TrainConfig.from_dict({}).target_norm == "histogram"
