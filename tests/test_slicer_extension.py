"""The 3D Slicer extension outside Slicer: MedSynthLib helpers, and static checks of the module's files.

The MRML round trip (real ``slicer-core`` nodes through medsynth) is in ``test_slicer_mrml.py``; the Slicer GUI
itself only runs in Slicer (the module's own self-test, see ``slicer_extension/README.md``).
"""

from __future__ import annotations

import ast
import os
import re
import signal
import socket
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension"
MODULE_DIR = EXTENSION / "MedSynth"
sys.path.insert(0, str(MODULE_DIR))

from MedSynthLib import dependencies  # noqa: E402
from MedSynthLib.geometry import (  # noqa: E402
    ijk_to_kji,
    ijk_to_ras_to_nifti_affine,
    kji_to_ijk,
    lps_to_ras,
    matrix_to_numpy,
    nifti_affine_to_ijk_to_ras,
    numpy_to_vtk_matrix,
    ras_to_lps,
    spacing_origin_directions,
)
from MedSynthLib.process import (  # noqa: E402
    DEVICE_CHOICES,
    FUSES,
    ProcessRunner,
    build_command,
    child_environment,
    error_message,
    target_domain,
)

POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="process groups and /proc are POSIX")


def oblique_affine() -> np.ndarray:
    """Voxel -> RAS with anisotropic spacing, a rotation about two axes and an off-centre origin."""
    a, b = np.deg2rad(25.0), np.deg2rad(-10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [-31.5, 12.25, 40.0]
    return affine


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (ended, not yet reaped) counts as ended."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# -- geometry ----------------------------------------------------------------------------------------


def test_ijk_to_ras_is_the_nifti_affine_both_ways_and_through_vtk() -> None:
    vtk = pytest.importorskip("vtk")
    affine = oblique_affine()
    matrix = numpy_to_vtk_matrix(affine)
    assert isinstance(matrix, vtk.vtkMatrix4x4)
    np.testing.assert_array_equal(ijk_to_ras_to_nifti_affine(matrix), affine)
    np.testing.assert_array_equal(nifti_affine_to_ijk_to_ras(affine), affine)
    # a vtkMatrix4x4 maps voxel (i, j, k) to RAS like the NIfTI affine does
    point = matrix.MultiplyPoint((3.0, 4.0, 5.0, 1.0))
    np.testing.assert_allclose(point, affine @ [3.0, 4.0, 5.0, 1.0])
    with pytest.raises(ValueError, match="4x4"):
        matrix_to_numpy(np.eye(3))
    with pytest.raises(ValueError, match="singular"):
        ijk_to_ras_to_nifti_affine(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="last row"):
        nifti_affine_to_ijk_to_ras(np.ones((4, 4)))


def test_ras_lps_and_kji_order_agree_with_nibabel_and_simpleitk(tmp_path: Path) -> None:
    """One file, two readers: nibabel (RAS, IJK arrays) and SimpleITK (LPS, KJI arrays)."""
    import nibabel as nib
    import SimpleITK as sitk

    affine = oblique_affine()
    data = np.random.default_rng(0).random((7, 5, 3)).astype(np.float32)  # I, J, K all different
    path = tmp_path / "oblique.nii"
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)

    itk_image = sitk.ReadImage(str(path))
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(itk_image.GetDirection(), (3, 3)) @ np.diag(itk_image.GetSpacing())
    lps[:3, 3] = itk_image.GetOrigin()
    np.testing.assert_allclose(lps_to_ras(lps), nib.load(path).affine, atol=1e-4)  # qform is single precision
    np.testing.assert_allclose(ras_to_lps(affine), lps, atol=1e-4)
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras(lps)), lps)

    kji = sitk.GetArrayFromImage(itk_image)
    assert kji.shape == (3, 5, 7)
    np.testing.assert_array_equal(kji_to_ijk(kji), data)
    np.testing.assert_array_equal(ijk_to_kji(data), kji)
    with pytest.raises(ValueError, match="3D"):
        kji_to_ijk(np.zeros((4, 4)))

    spacing, origin, directions = spacing_origin_directions(affine)
    np.testing.assert_allclose(spacing, [0.9, 1.1, 2.5])
    np.testing.assert_allclose(origin, affine[:3, 3])
    np.testing.assert_allclose(directions.T @ directions, np.eye(3), atol=1e-12)


# -- command and environment -------------------------------------------------------------------------


def test_build_command_full_and_minimal() -> None:
    full = build_command("/opt/slicer/bin/PythonSlicer", Path("/t/in.nrrd"), "/t/out.nrrd", model="/m/model.pt",
                         direction="t1-to-t2", axis="coronal", device="cuda", batch_size=16)
    assert full == ["/opt/slicer/bin/PythonSlicer", "-m", "medsynth", "convert", "/t/in.nrrd", "/t/out.nrrd",
                    "--model", "/m/model.pt", "--direction", "t1-to-t2", "--axis", "coronal", "--device", "cuda",
                    "--batch-size", "16", "--progress", "lines", "--overwrite"]
    minimal = build_command("python", "in.nii", "out.nii")
    assert minimal == ["python", "-m", "medsynth", "convert", "in.nii", "out.nii", "--axis", "axial",
                       "--device", "auto", "--progress", "lines", "--overwrite"]
    assert build_command("python", "in.nii", "out.nii", calibration=False) == [
        "python", "-m", "medsynth", "convert", "in.nii", "out.nii", "--axis", "axial", "--device", "auto",
        "--no-calibration", "--progress", "lines", "--overwrite"]
    assert build_command("python", "in.nii", "out.nii", bias_field="remove")[-5:] == [
        "--bias-field", "remove", "--progress", "lines", "--overwrite"]
    assert build_command("python", "in.nii", "out.nii", axis="all", fuse="detail")[6:12] == [
        "--axis", "all", "--device", "auto", "--fuse", "detail"]
    with pytest.raises(ValueError, match="fuse"):
        build_command("python", "a", "b", axis="all", fuse="max")
    with pytest.raises(ValueError, match="bias_field"):
        build_command("python", "a", "b", bias_field="keep")
    with pytest.raises(ValueError, match="axis"):
        build_command("python", "a", "b", axis="oblique")
    with pytest.raises(ValueError, match="device"):
        build_command("python", "a", "b", device="GPU")  # the menu label, not the command-line value
    with pytest.raises(ValueError, match="batch"):
        build_command("python", "a", "b", batch_size=0)
    assert [DEVICE_CHOICES[k] for k in ("auto", "GPU", "CPU")] == ["auto", "cuda", "cpu"]


def test_build_command_is_accepted_by_medsynth_convert() -> None:
    """The arguments parse with the real ``medsynth-convert`` parser into what was asked for."""
    from medsynth.cli import convert_parser

    command = build_command(sys.executable, "in.nrrd", "out.nrrd", model="m.pt", direction="t2-to-t1",
                            axis="all", device="cpu", batch_size=4)
    assert command[1:4] == ["-m", "medsynth", "convert"]
    args = convert_parser().parse_args(command[4:])
    assert (args.input, args.output, args.model, args.direction) == ("in.nrrd", "out.nrrd", "m.pt", "t2-to-t1")
    assert (args.axis, args.device, args.batch_size, args.progress, args.overwrite) == ("all", "cpu", 4, "lines", True)
    assert args.calibration is True
    from medsynth.fusion import DEFAULT_FUSION, FUSIONS

    assert args.fuse == DEFAULT_FUSION  # none named
    assert FUSES == FUSIONS  # the module offers what medsynth takes
    for fuse in FUSES:
        assert convert_parser().parse_args(build_command(sys.executable, "a.nrrd", "b.nrrd", axis="all",
                                                         fuse=fuse)[4:]).fuse == fuse
    assert convert_parser().parse_args(build_command(sys.executable, "a.nrrd", "b.nrrd",
                                                     calibration=False)[4:]).calibration is False
    assert args.bias_field == "restore"
    assert convert_parser().parse_args(build_command(sys.executable, "a.nrrd", "b.nrrd",
                                                     bias_field="remove")[4:]).bias_field == "remove"


def test_child_environment_hides_gpu_for_cpu_only() -> None:
    base = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}
    cpu = child_environment("cpu", base)
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["PATH"] == "/bin"
    assert cpu["PYTHONUNBUFFERED"] == "1" and cpu["PYTHONIOENCODING"] == "utf-8"
    assert child_environment("cuda", base)["CUDA_VISIBLE_DEVICES"] == "1"  # the person's own choice stays
    assert "CUDA_VISIBLE_DEVICES" not in child_environment("auto", {"CUDA_VISIBLE_DEVICES": ""})
    assert base == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}  # not modified
    with pytest.raises(ValueError):
        child_environment("GPU", base)


def test_child_environment_reaches_a_real_child() -> None:
    import subprocess

    code = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['PYTHONUNBUFFERED'])"
    out = subprocess.run([sys.executable, "-c", code], env=child_environment("cpu"), capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["''", "1"]


def test_cpu_environment_hides_a_real_gpu_from_torch() -> None:
    """Where a GPU exists: the CPU choice really hides it from the child, the GPU choice does not."""
    import subprocess

    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    code = "import torch; print(torch.cuda.device_count())"
    counts = {device: int(subprocess.run([sys.executable, "-c", code], env=child_environment(device),
                                         capture_output=True, text=True, timeout=120, check=True).stdout)
              for device in ("cpu", "cuda")}
    assert counts["cpu"] == 0 and counts["cuda"] >= 1


def test_error_message_and_target_domain() -> None:
    stderr = "loading\nerror: /tmp/a.nrrd: first\nwarning: x\nerror: /m/model.pt: not a medsynth model\n\n"
    assert error_message(stderr, 2) == "/m/model.pt: not a medsynth model"
    traceback = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    assert error_message(traceback, 1) == "RuntimeError: CUDA out of memory"
    assert error_message("", -9) == "medsynth stopped with exit status -9"
    assert target_domain("t1-to-t2") == "t2" and target_domain("mr-to-ct") == "ct" and target_domain(None) is None
    with pytest.raises(ValueError):
        target_domain("t1t2")


def test_missing_packages_sees_this_environment() -> None:
    assert dependencies.missing_packages() == []  # torch and medsynth are installed for the tests
    assert dependencies.installed_version("torch") is not None
    assert dependencies.installed_version("surely-not-a-package-name-xyz") is None


# -- process runner ----------------------------------------------------------------------------------


def python_child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_runner_reports_progress_done_lines_and_the_error_line() -> None:
    progress: list[int] = []
    lines: list[str] = []
    runner = ProcessRunner(python_child("""
        import sys
        print("PROGRESS 10", flush=True)
        print("loading model", flush=True)
        print("PROGRESS 55.6", flush=True)
        print("PROGRESS oops", flush=True)
        print("DONE /tmp/out put.nrrd", flush=True)
        print("Traceback (most recent call last):", file=sys.stderr)
        print("error: /tmp/in.nrrd: not a volume", file=sys.stderr)
        print("some later noise", file=sys.stderr)
        sys.exit(2)
    """), on_progress=progress.append, on_line=lines.append)
    runner.start()
    assert runner.running
    assert runner.wait(timeout=30) == 2
    assert progress == [10, 56]
    assert lines == ["loading model", "PROGRESS oops"]
    assert runner.done_path == "/tmp/out put.nrrd"
    assert runner.returncode == 2 and not runner.running
    assert runner.error_message == "/tmp/in.nrrd: not a volume"
    assert "Traceback" in runner.stderr


def test_runner_reports_the_expected_duration_before_progress() -> None:
    estimates: list[float] = []
    events: list[str] = []
    runner = ProcessRunner(python_child("""
        print("ESTIMATE 6.250 /tmp/input.nrrd", flush=True)
        print("PROGRESS 50", flush=True)
        print("ESTIMATE soon", flush=True)
    """), on_progress=lambda p: events.append(f"progress {p}"),
        on_estimate=lambda s: (estimates.append(s), events.append("estimate")), on_line=events.append)
    runner.start()
    assert runner.wait(timeout=30) == 0
    assert estimates == [6.25] and runner.expected_seconds == 6.25
    assert events == ["estimate", "progress 50", "ESTIMATE soon"]


def test_runner_poll_does_not_block() -> None:
    runner = ProcessRunner(python_child("import time; time.sleep(20)"))
    runner.start()
    try:
        start = time.monotonic()
        for _ in range(5):
            assert runner.poll() is None
        assert time.monotonic() - start < 0.5
        with pytest.raises(TimeoutError):
            runner.wait(timeout=0.2)
    finally:
        runner.cancel(grace=0.5)
    assert runner.returncode is not None and runner.error_message == "cancelled"


@POSIX_ONLY
def test_cancel_kills_the_whole_process_tree(tmp_path: Path) -> None:
    """A child that started a grandchild which ignores SIGTERM: both are gone after cancel()."""
    pid_file = tmp_path / "grandchild.pid"
    runner = ProcessRunner(python_child(f"""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(grandchild.pid))
        print("PROGRESS 1", flush=True)
        time.sleep(120)
    """))
    runner.start()
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    time.sleep(0.3)  # let the grandchild install its SIGTERM handler
    assert process_alive(runner.pid) and process_alive(grandchild)
    assert os.getpgid(grandchild) == runner.pid  # same group: that is what cancel() relies on
    start = time.monotonic()
    runner.cancel(grace=0.5)
    deadline = time.monotonic() + 5
    while process_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(runner.pid)
    assert not process_alive(grandchild), "grandchild survived cancel()"
    assert time.monotonic() - start < 5
    assert runner.returncode == -signal.SIGTERM and runner.cancelled
    runner.cancel()  # a second cancel is harmless


@POSIX_ONLY
def test_runner_finishes_when_a_grandchild_keeps_the_pipe_open() -> None:
    """The child is done but a leftover grandchild holds stdout: poll() must still report the end."""
    runner = ProcessRunner(python_child("""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("DONE /x.nrrd", flush=True)
    """))
    runner.PIPE_GRACE_S = 0.5
    runner.start()
    try:
        assert runner.wait(timeout=20) == 0
        assert runner.done_path == "/x.nrrd"
    finally:
        runner.cancel(grace=0.2)  # ends the leftover grandchild


def test_list_server_models_reports_an_unreachable_server_in_one_line() -> None:
    from MedSynthLib.logic import ConversionError, list_server_models

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConversionError, match="cannot reach the server") as caught:
        list_server_models(f"http://127.0.0.1:{port}", timeout=5)
    assert "\n" not in str(caught.value)


# -- static checks of the Slicer module --------------------------------------------------------------


def module_tree() -> ast.Module:
    return ast.parse((MODULE_DIR / "MedSynth.py").read_text(encoding="utf-8"))


def test_module_defines_the_four_slicer_classes() -> None:
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in module_tree().body
               if isinstance(node, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["MedSynth"]
    assert "ScriptedLoadableModuleWidget" in classes["MedSynthWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["MedSynthLogic"]
    assert "ScriptedLoadableModuleTest" in classes["MedSynthTest"]
    test_methods = {n.name for c in module_tree().body if isinstance(c, ast.ClassDef) and c.name == "MedSynthTest"
                    for n in c.body if isinstance(n, ast.FunctionDef)}
    assert {"runTest", "test_translate_button", "test_cancel_button"} <= test_methods


def test_the_axis_menu_names_what_medsynth_takes() -> None:
    """Each entry of the module's slicing-axis menu is ``AXIS`` or ``AXIS:FUSE`` with values medsynth accepts (the
    widget splits them at the colon); for ``all`` it offers medsynth's default fusion and ``detail``."""
    from MedSynthLib.process import AXES

    choices = next(ast.literal_eval(n.value) for n in module_tree().body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "AXIS_CHOICES" for t in n.targets))
    values = [value.partition(":") for _, value in choices]
    assert all(axis in AXES and (fuse == "" or fuse in FUSES) for axis, _, fuse in values), values
    assert {axis for axis, _, _ in values} == set(AXES)
    assert {fuse for axis, _, fuse in values if axis == "all"} == {"", "detail"}  # "": medsynth's default
    assert len({label for label, _ in choices}) == len(choices)


def top_level_imports(path: Path) -> set[str]:
    """Top-level package names imported when the file is imported (imports inside functions excluded)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_heavy_or_missing_is_imported_when_slicer_loads_the_module() -> None:
    """torch and medsynth are installed on first use, after asking: never imported at module import."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    slicer_env = {"qt", "ctk", "vtk", "slicer", "numpy", "MedSynthLib"}
    files = [MODULE_DIR / "MedSynth.py", *sorted((MODULE_DIR / "MedSynthLib").glob("*.py"))]
    for path in files:
        extra = top_level_imports(path) - stdlib - slicer_env
        assert not extra, f"{path.name} imports {extra} at import time"
    assert "slicer" not in top_level_imports(MODULE_DIR / "MedSynthLib" / "process.py")
    assert "slicer" not in top_level_imports(MODULE_DIR / "MedSynthLib" / "geometry.py")


def ui_widgets() -> tuple[ET.Element, dict[str, str]]:
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "MedSynth.ui").getroot()
    return root, {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_file_holds_every_widget_the_code_uses() -> None:
    root, widgets = ui_widgets()
    assert root.find("widget").get("class") == "qMRMLWidget"
    source = (MODULE_DIR / "MedSynth.py").read_text(encoding="utf-8")
    used = set(re.findall(r"\.ui\.(\w+)", source))
    used |= {s.value for s in ast.walk(module_tree()) if isinstance(s, ast.Constant) and isinstance(s.value, str)
             and re.fullmatch(r"\w+(CollapsibleButton|Selector|ComboBox|Button|LineEdit|SpinBox)", s.value)}
    assert len(used) >= 15
    missing = sorted(used - set(widgets))
    assert not missing, f"MedSynth.py uses widgets the .ui file lacks: {missing}"
    for name in ("inputVolumeSelector", "outputVolumeSelector"):
        assert widgets[name] == "qMRMLNodeComboBox"
        node_types = [s.text for w in root.iter("widget") if w.get("name") == name
                      for p in w.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        assert node_types == ["vtkMRMLScalarVolumeNode"]
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert scene_receivers == {n for n, cls in widgets.items() if cls == "qMRMLNodeComboBox"}
    expected_classes = {"applyButton": "QPushButton", "progressBar": "QProgressBar", "statusLabel": "QLabel",
                        "directionComboBox": "QComboBox", "axisComboBox": "QComboBox", "deviceComboBox": "QComboBox",
                        "modelComboBox": "QComboBox", "remoteCheckBox": "QCheckBox"}
    assert {name: widgets.get(name) for name in expected_classes} == expected_classes
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    assert {cls for cls in widgets.values() if not cls.startswith("Q")} <= custom


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return [item.replace("${MODULE_NAME}", "MedSynth") for item in match.group(1).split()]


def test_cmake_lists_every_script_and_resource() -> None:
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    scripts = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    resources = set(cmake_list(text, "MODULE_PYTHON_RESOURCES"))
    on_disk_scripts = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                       if "__pycache__" not in p.parts}
    on_disk_resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                         if p.is_file()}
    assert scripts == on_disk_scripts
    assert resources == on_disk_resources
    top = (EXTENSION / "CMakeLists.txt").read_text()
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', top)
    assert "add_subdirectory(MedSynth)" in top
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert re.search(rf"set\({name}\s+\S", top), name
    for path in re.findall(r'resourcePath\("([^"]+)"\)', (MODULE_DIR / "MedSynth.py").read_text()):
        assert (MODULE_DIR / "Resources" / path).is_file(), path


def test_icon_is_a_real_128_pixel_png() -> None:
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "MedSynth.png") as image:
        assert image.format == "PNG" and image.size == (128, 128)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 30  # a picture, not a blank tile
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_readme_says_how_to_run_the_self_test_and_that_ci_skips_the_gui() -> None:
    readme = (EXTENSION / "README.md").read_text()
    assert "MedSynthTest" in readme and "Reload and Test" in readme
    assert "not run in CI" in readme
