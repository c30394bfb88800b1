"""The Slicer module's logic with real MRML (the ``slicer-core`` package): node -> file -> medsynth -> file -> node.

An oblique volume node with a parent transform is written by a storage node, translated by a real
``python -m medsynth convert`` child process (or a real medsynth server on 127.0.0.1), and read back by a storage
node; the new node must have the input's IJK-to-RAS, dimensions and transform, and the voxels that
``medsynth-convert`` gives for the same file. The Slicer GUI is not involved (see ``slicer_extension/README.md``).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (pip install '.[slicer-test]')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("this 'slicer' module has no MRML (install slicer-core)", allow_module_level=True)
import vtk  # noqa: E402  (installed with slicer-core)

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSynth"
sys.path.insert(0, str(MODULE_DIR))

from MedSynthLib.geometry import ijk_to_kji, kji_to_ijk, matrix_to_numpy, numpy_to_vtk_matrix  # noqa: E402
from MedSynthLib.logic import (  # noqa: E402
    ConversionError,
    ConversionJob,
    ConversionOptions,
    list_server_models,
    run_conversion_on_node,
    worker_for,
    write_volume_node,
)
from MedSynthLib.worker import Worker  # noqa: E402

SHAPE = (20, 24, 16)  # I, J, K


def oblique_ijk_to_ras() -> np.ndarray:
    a, b = np.deg2rad(30.0), np.deg2rad(12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ np.diag([1.25, 0.8, 3.0])
    matrix[:3, 3] = [-17.3, 22.9, -5.5]
    return matrix


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


@pytest.fixture
def scene_and_node(make_volume, tmp_path: Path):
    """A scene holding "head_t1": the conftest phantom, oblique IJK-to-RAS, under a linear transform."""
    import nibabel as nib

    voxels = np.asarray(nib.load(make_volume(tmp_path, "phantom.nii.gz", shape=SHAPE)).dataobj, dtype=np.float32)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head_t1")
    image = vtk.vtkImageData()
    image.SetDimensions(*SHAPE)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    node.SetAndObserveImageData(image)
    slicer.util.updateVolumeFromArray(node, ijk_to_kji(voxels))
    node.SetIJKToRASMatrix(numpy_to_vtk_matrix(oblique_ijk_to_ras()))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 7.0)
    shift.SetElement(1, 2, 0.1)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_array_equal(kji_to_ijk(slicer.util.arrayFromVolume(node)), voxels)  # orders as documented
    return scene, node


def reference_translation(node, folder: Path, model: Path, suffix: str, **options: str) -> tuple[np.ndarray, np.ndarray]:
    """What ``medsynth-convert`` makes of the node's file: (voxels in IJK order, its voxel -> RAS affine)."""
    from medsynth.cli import convert_main
    from medsynth.io import load_image

    source = write_volume_node(node, folder / f"reference_in{suffix}")
    target = folder / f"reference_out{suffix}"
    argv = [str(source), str(target), "--model", str(model), "--device", "cpu", "--progress", "none"]
    for key, value in options.items():
        argv += [f"--{key}", value]
    assert convert_main(argv) == 0
    # the storage node's file and medsynth's reader agree on the geometry (RAS/LPS, voxel order)
    np.testing.assert_allclose(load_image(source).affine, ijk_to_ras(node), atol=1e-4)
    result = load_image(target)
    return result.array, result.affine


def check_output(out, node, scene) -> None:
    assert out.GetScene() is scene
    assert out.GetImageData().GetDimensions() == node.GetImageData().GetDimensions() == SHAPE
    # copied from the node, not taken from the file (a NIfTI file holds it in single precision only)
    np.testing.assert_allclose(ijk_to_ras(out), ijk_to_ras(node), rtol=0, atol=1e-12)
    assert out.GetTransformNodeID() == node.GetTransformNodeID() is not None
    assert out.GetStorageNode() is None  # no pointer to the deleted temporary file
    assert out.GetDisplayNode() is not None


def test_local_nrrd_round_trip_matches_medsynth_convert(scene_and_node, tiny_model: Path, tmp_path: Path) -> None:
    scene, node = scene_and_node
    temp_root = tmp_path / "work"
    progress: list[int] = []
    out = run_conversion_on_node(
        scene, node,
        ConversionOptions(model=str(tiny_model), direction="t1-to-t2", axis="axial", device="cpu",
                          temp_root=str(temp_root)),
        on_progress=progress.append, timeout=120,
    )
    assert out.GetName() == "head_t1_t2"
    check_output(out, node, scene)
    assert progress and progress[-1] == 100 and progress == sorted(progress)
    assert list(temp_root.iterdir()) == []  # temporary files removed

    expected, expected_affine = reference_translation(node, tmp_path, tiny_model, ".nrrd", direction="t1-to-t2")
    np.testing.assert_allclose(expected_affine, ijk_to_ras(node), atol=1e-4)
    got = kji_to_ijk(slicer.util.arrayFromVolume(out))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert not np.allclose(got, kji_to_ijk(slicer.util.arrayFromVolume(node)))  # it did translate

    # the fusion of the three axes reaches the child's command line
    fused = run_conversion_on_node(scene, node, ConversionOptions(model=str(tiny_model), direction="t1-to-t2",
                                                                  axis="all", fuse="detail", device="cpu",
                                                                  temp_root=str(temp_root)), timeout=120)
    folder = tmp_path / "reference_detail"
    folder.mkdir()
    expected, _ = reference_translation(node, folder, tiny_model, ".nrrd", direction="t1-to-t2", axis="all",
                                        fuse="detail")
    np.testing.assert_allclose(kji_to_ijk(slicer.util.arrayFromVolume(fused)), expected, rtol=1e-5, atol=1e-4)


def test_bad_model_is_one_line_and_leaves_nothing_behind(scene_and_node, tmp_path: Path) -> None:
    scene, node = scene_and_node
    fake = tmp_path / "not_a_model.pt"
    fake.write_bytes(b"this is not a model")
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(ConversionError) as caught:
        run_conversion_on_node(scene, node, ConversionOptions(model=str(fake), device="cpu",
                                                              temp_root=str(tmp_path / "work")), timeout=120)
    message = str(caught.value)
    assert "not_a_model.pt" in message and "\n" not in message and "Traceback" not in message
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
    assert list((tmp_path / "work").iterdir()) == []


def test_cancel_ends_the_child_and_adds_no_node(scene_and_node, tiny_model: Path, tmp_path: Path) -> None:
    scene, node = scene_and_node
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    job = ConversionJob(scene, node, ConversionOptions(model=str(tiny_model), device="cpu",
                                                       temp_root=str(tmp_path / "work")))
    job.start()
    process = job.runner.process
    time.sleep(0.1)
    assert not job.poll() and process.poll() is None  # still starting up (importing torch)
    job.cancel()
    assert process.poll() is not None
    assert job.state == "cancelled" and job.poll()
    with pytest.raises(ConversionError, match="cancelled"):
        job.finish()
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
    assert list((tmp_path / "work").iterdir()) == []


def test_worker_translates_one_volume_after_another_in_one_process(scene_and_node, tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    """The module's long-lived worker: the same voxels as medsynth-convert, job after job, in one child process;
    a bad model fails its job in one line and the worker goes on."""
    scene, node = scene_and_node
    temp_root = tmp_path / "work"
    options = dict(model=str(tiny_model), device="cpu", temp_root=str(temp_root))
    worker = worker_for(ConversionOptions(**options))
    try:
        progress: list[int] = []
        first = run_conversion_on_node(scene, node, ConversionOptions(direction="t1-to-t2", **options),
                                       on_progress=progress.append, timeout=120, worker=worker)
        pid = worker.process.pid
        assert worker.ready and progress and progress[-1] == 100 and progress == sorted(progress)
        check_output(first, node, scene)

        fake = tmp_path / "not_a_model.pt"
        fake.write_bytes(b"this is not a model")
        with pytest.raises(ConversionError) as caught:
            run_conversion_on_node(scene, node, ConversionOptions(**{**options, "model": str(fake)}), timeout=120,
                                   worker=worker)
        assert "not_a_model.pt" in str(caught.value) and "\n" not in str(caught.value)

        second = run_conversion_on_node(scene, node, ConversionOptions(direction="t2-to-t1", axis="all",
                                                                       fuse="detail", **options),
                                        timeout=120, worker=worker)
        assert worker.process.pid == pid and worker.alive  # the same child did all three
        assert worker_for(ConversionOptions(**options), worker) is worker
        check_output(second, node, scene)
        assert list(temp_root.iterdir()) == []
        for out, direction, axis, fuse in ((first, "t1-to-t2", "axial", "mean"), (second, "t2-to-t1", "all", "detail")):
            folder = tmp_path / f"reference_{direction}"
            folder.mkdir()
            expected, _ = reference_translation(node, folder, tiny_model, ".nrrd", direction=direction, axis=axis,
                                                fuse=fuse)
            np.testing.assert_allclose(kji_to_ijk(slicer.util.arrayFromVolume(out)), expected, rtol=1e-5, atol=1e-4)
    finally:
        worker.stop()
    assert not worker.alive


def test_cancel_ends_the_worker_and_the_next_job_starts_another(scene_and_node, tiny_model: Path,
                                                                tmp_path: Path) -> None:
    scene, node = scene_and_node
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    options = ConversionOptions(model=str(tiny_model), device="cpu", temp_root=str(tmp_path / "work"))
    worker = worker_for(options)
    try:
        job = ConversionJob(scene, node, options, worker=worker)
        job.start()
        process = worker.process
        time.sleep(0.1)
        assert not job.poll() and process.poll() is None
        job.cancel()
        assert process.poll() is not None and not worker.alive
        with pytest.raises(ConversionError, match="cancelled"):
            job.finish()
        assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
        assert list((tmp_path / "work").iterdir()) == []
        out = run_conversion_on_node(scene, node, options, timeout=120, worker=worker)
        assert worker.process.pid != process.pid
        check_output(out, node, scene)
    finally:
        worker.stop()


def test_a_worker_that_dies_fails_its_job_in_one_line(scene_and_node, tmp_path: Path) -> None:
    """A broken install (here: a Python without medsynth's worker) ends the job with the child's last line."""
    scene, node = scene_and_node
    options = ConversionOptions(device="cpu", temp_root=str(tmp_path / "work"))
    worker = Worker(sys.executable, "cpu", cwd=tmp_path)
    worker.command = [sys.executable, "-c", "import sys; sys.stdin.readline(); sys.exit('error: torch: not installed')"]
    with pytest.raises(ConversionError, match="^torch: not installed$"):
        run_conversion_on_node(scene, node, options, timeout=60, worker=worker)
    assert not worker.alive


def test_worker_for_replaces_a_worker_started_for_another_device(tmp_path: Path) -> None:
    cpu = worker_for(ConversionOptions(device="cpu"))
    assert cpu.command[-2:] == ["--device", "cpu"] and cpu.env["CUDA_VISIBLE_DEVICES"] == ""
    cpu.start()
    try:
        auto = worker_for(ConversionOptions(device="auto"), cpu)
        assert auto is not cpu and auto.command[-2:] == ["--device", "auto"]
        assert not cpu.alive  # the old one was ended, not left running
    finally:
        cpu.stop()


def test_rejects_multicomponent_volumes_and_output_equal_to_input(scene_and_node, tmp_path: Path) -> None:
    scene, node = scene_and_node
    with pytest.raises(ConversionError, match="other than the input"):
        ConversionJob(scene, node, ConversionOptions(), output_node=node).start()
    rgb = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "photo")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(image)
    with pytest.raises(ConversionError, match="3 components"):
        run_conversion_on_node(scene, rgb, ConversionOptions(temp_root=str(tmp_path / "work")))
    assert list((tmp_path / "work").iterdir()) == []
    with pytest.raises(ValueError, match="axis"):
        ConversionJob(scene, node, ConversionOptions(axis="oblique"))
    with pytest.raises(ValueError, match="fuse"):
        ConversionJob(scene, node, ConversionOptions(axis="all", fuse="max"))


@pytest.fixture
def medsynth_server(tiny_model: Path):
    """A real medsynth server (uvicorn) on a free 127.0.0.1 port with the tiny model as "tiny", token "s3cret"."""
    import socket

    uvicorn = pytest.importorskip("uvicorn")
    server_module = pytest.importorskip("medsynth.server")

    app = server_module.create_app({"tiny": tiny_model}, device="cpu", token="s3cret")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_remote_server_nifti_round_trip_matches_medsynth_convert(scene_and_node, tiny_model: Path, tmp_path: Path,
                                                           medsynth_server: str) -> None:
    scene, node = scene_and_node
    with pytest.raises(ConversionError, match="401"):
        list_server_models(medsynth_server)  # no token
    models = list_server_models(medsynth_server, token="s3cret")
    assert [(m["name"], m["directions"]) for m in models] == [("tiny", ["t1-to-t2", "t2-to-t1"])]

    # NIfTI this time, all three axes, into a node that exists already
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my result")
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    progress: list[int] = []
    out = run_conversion_on_node(
        scene, node,
        ConversionOptions(server_url=medsynth_server, token="s3cret", model="tiny", direction="t2-to-t1",
                          axis="all", fuse="median", file_format="nii", temp_root=str(tmp_path / "work")),
        output_node=target, on_progress=progress.append, timeout=120,
    )
    assert out is target and out.GetName() == "my result"
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
    check_output(out, node, scene)
    assert progress == [100]
    expected, _ = reference_translation(node, tmp_path, tiny_model, ".nii", direction="t2-to-t1", axis="all",
                                        fuse="median")
    np.testing.assert_allclose(kji_to_ijk(slicer.util.arrayFromVolume(out)), expected, rtol=1e-5, atol=1e-4)

    with pytest.raises(ConversionError, match="401"):
        run_conversion_on_node(scene, node, ConversionOptions(server_url=medsynth_server, token="wrong",
                                                              temp_root=str(tmp_path / "work")), timeout=60)
    assert list((tmp_path / "work").iterdir()) == []


def check_child_and_worker(scene, node, options: dict[str, Any], choices: dict[str, dict[str, Any]],
                           want: dict[str, np.ndarray], rtol: float, atol: float) -> None:
    """Each of ``choices`` (name -> ConversionOptions fields beside ``options``), converted in a child process and
    then in one worker, gives the voxels ``want[name]``."""
    worker = worker_for(ConversionOptions(**options))
    try:
        for runner in (None, worker):
            for name, fields in choices.items():
                out = run_conversion_on_node(scene, node, ConversionOptions(**fields, **options), timeout=120,
                                             worker=runner)
                np.testing.assert_allclose(kji_to_ijk(slicer.util.arrayFromVolume(out)), want[name], rtol=rtol,
                                           atol=atol)
    finally:
        worker.stop()


def test_the_calibration_switch_reaches_the_child_and_the_worker(scene_and_node, identity_model: Path, make_volume,
                                                                 tmp_path: Path) -> None:
    """A calibrated model: with the box ticked (the default) the curve is applied, unticked the network's output
    comes back as it is, in a child process and in the worker alike."""
    from medsynth.calibration import calibrate_model

    scene, node = scene_and_node
    t1 = [make_volume(tmp_path / "site", f"s{i}_t1.nii.gz", seed=i, contrast="t1") for i in (1, 2)]
    t2 = [make_volume(tmp_path / "site", f"s{i}_t2.nii.gz", seed=i, contrast="t2") for i in (1, 2)]
    calibrated = calibrate_model(identity_model, t1, t2, tmp_path / "cal.pt", "t1-to-t2", device="cpu")
    want = {}
    for name, model in (("on", calibrated), ("off", identity_model)):
        folder = tmp_path / f"reference_{name}"
        folder.mkdir()
        want[name] = reference_translation(node, folder, model, ".nrrd", direction="t1-to-t2")[0]
    assert np.abs(want["on"] - want["off"]).max() > 1.0  # the curve shows, so the cases can be told apart
    options = dict(model=str(calibrated), direction="t1-to-t2", device="cpu", temp_root=str(tmp_path / "work"))
    check_child_and_worker(scene, node, options, {"off": {"calibration": False}, "on": {"calibration": True}}, want,
                           rtol=1e-5, atol=1e-4)


def test_the_bias_field_switch_reaches_the_child_and_the_worker(scene_and_node, n4_model: Path,
                                                               tmp_path: Path) -> None:
    """A model trained on N4-corrected volumes: ticked (the default) the input's field is put back on the result,
    unticked it is not, in a child process and in the worker alike, as ``medsynth-convert --bias-field`` gives."""
    scene, node = scene_and_node
    want = {}
    for choice in ("restore", "remove"):
        folder = tmp_path / f"reference_{choice}"
        folder.mkdir()
        want[choice] = reference_translation(node, folder, n4_model, ".nrrd", direction="t1-to-t2",
                                             **{"bias-field": choice})[0]
    assert np.abs(want["restore"] - want["remove"]).max() > 1.0
    options = dict(model=str(n4_model), direction="t1-to-t2", device="cpu", temp_root=str(tmp_path / "work"))
    with pytest.raises(ValueError, match="bias field"):
        ConversionOptions(bias_field="keep", **options).validate()
    # N4's multithreaded fit may sum in another order from one process to the next
    check_child_and_worker(scene, node, options, {c: {"bias_field": c} for c in ("remove", "restore")}, want,
                           rtol=1e-4, atol=1e-2)
