"""Translate an MRML volume node with medsynth, without the Slicer GUI.

The node is written to a temporary uncompressed file by an MRML storage node, converted by medsynth in a
child process (or by a medsynth inference server), and read back by a storage node into an output node
that gets the input's exact IJK-to-RAS matrix and parent transform. Works in Slicer and with the
``slicer-core`` package from PyPI; the GUI module (``MedSynth.py``) drives a :class:`ConversionJob` from a
Qt timer, tests and scripts call :func:`run_conversion_on_node`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from MedSynthLib.geometry import matrix_to_numpy
from MedSynthLib.process import (
    AXES,
    BIAS_FIELDS,
    DEVICES,
    FUSES,
    LineCallback,
    ProcessRunner,
    ProgressCallback,
    build_command,
    child_environment,
    target_domain,
)
from MedSynthLib.worker import Worker, WorkerRunner

FILE_FORMATS = {"nrrd": ".nrrd", "nii": ".nii"}


class ConversionError(RuntimeError):
    """A translation that failed; ``str()`` is one line for a person, ``details`` the full log."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass
class ConversionOptions:
    """What to translate with, and how.

    Attributes:
        model: a ``model.pt`` file; None for medsynth's packaged default (or the server's default model).
        direction: e.g. ``"t1-to-t2"``; None for the model's first direction.
        axis: ``axial``, ``coronal``, ``sagittal`` or ``all`` (the three fused).
        fuse: how ``all`` combines its passes: ``mean``, ``median`` or ``detail`` (the axial pass, with only the
            detail across slices from the other two); None for medsynth's default (or the server's).
        device: ``auto``, ``cuda`` or ``cpu`` (local runs only).
        batch_size: slices per forward pass; None for medsynth's default.
        file_format: ``nrrd`` or ``nii``: how the volume travels to the child (always uncompressed).
        python_exe: the Python with medsynth installed; None for this interpreter.
        server_url: a medsynth inference server; when set, the volume is sent there instead.
        token: the server's access token, if it needs one.
        temp_root: folder for the temporary files; None for the system's.
        environment: environment the child starts from; None for this process's (in Slicer, the Module
            passes Slicer's start-up environment, since ``PythonSlicer`` sets up its own paths).
        calibration: apply the model's output calibration curve (``medsynth-calibrate``) if it carries one;
            False: the network's output as it is.
        bias_field: for a model trained on bias-corrected volumes, ``restore`` puts the input's bias field back on
            the translation, ``remove`` leaves it flat; other models ignore it.
    """

    model: str | None = None
    direction: str | None = None
    axis: str = "axial"
    fuse: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    file_format: str = "nrrd"
    python_exe: str | None = None
    server_url: str | None = None
    token: str | None = None
    temp_root: str | None = None
    environment: Mapping[str, str] | None = None
    calibration: bool = True
    bias_field: str = "restore"

    def validate(self) -> None:
        """Raise ValueError for an option medsynth would reject anyway, before any file is written."""
        if self.axis not in AXES:
            raise ValueError(f"axis must be one of {', '.join(AXES)}, got {self.axis!r}")
        if self.fuse is not None and self.fuse not in FUSES:
            raise ValueError(f"fuse must be one of {', '.join(FUSES)}, got {self.fuse!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f"file format must be one of {', '.join(FILE_FORMATS)}, got {self.file_format!r}")
        if self.bias_field not in BIAS_FIELDS:
            raise ValueError(f"bias field must be one of {', '.join(BIAS_FIELDS)}, got {self.bias_field!r}")
        target_domain(self.direction)  # raises for a malformed direction


def output_name(input_name: str, direction: str | None) -> str:
    """Name for the translated node: ``"head_t1"`` + ``"t1-to-t2"`` -> ``"head_t1_t2"``."""
    return f"{input_name}_{target_domain(direction) or 'medsynth'}"


def _mrml() -> Any:
    import slicer  # Slicer itself, or the slicer-core package

    return slicer


def _storage_node_for(path: Path) -> Any:
    slicer = _mrml()
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        return slicer.vtkMRMLNRRDStorageNode()
    return slicer.vtkMRMLVolumeArchetypeStorageNode()


def write_volume_node(node: Any, path: str | Path) -> Path:
    """Write a scalar volume node to ``path`` (.nrrd or .nii), uncompressed, with an MRML storage node.

    The file holds the node's own IJK-to-RAS geometry; a parent transform is not applied.
    """
    path = Path(path)
    image = node.GetImageData()
    if image is None:
        raise ConversionError(f"volume '{node.GetName()}' has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise ConversionError(
            f"volume '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; "
            "medsynth needs a single-channel (grey-scale) volume"
        )
    storage = _storage_node_for(path)
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(node) or not path.is_file():
        raise ConversionError(f"could not write volume '{node.GetName()}' to {path}")
    return path


def read_volume_node(path: str | Path, scene: Any, node: Any = None, name: str | None = None) -> Any:
    """Read a volume file into ``node`` (or a new ``vtkMRMLScalarVolumeNode`` added to ``scene``).

    The temporary storage node is removed again so the node does not point at a file that will be
    deleted; Slicer then offers to save the node with the scene.
    """
    path = Path(path)
    created = node is None
    if created:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or path.stem)
    storage = _storage_node_for(path)
    scene.AddNode(storage)
    try:
        storage.SetFileName(str(path))
        ok = storage.ReadData(node)
    finally:
        node.SetAndObserveStorageNodeID(None)
        scene.RemoveNode(storage)
    if not ok or node.GetImageData() is None:
        if created:
            scene.RemoveNode(node)
        raise ConversionError(f"could not read the translated volume from {path}")
    return node


def copy_geometry(source: Any, target: Any, tolerance: float = 1e-3) -> None:
    """Give ``target`` the exact IJK-to-RAS matrix and parent transform of ``source``.

    The file round trip keeps the geometry only to single precision (NIfTI) or to printed decimals
    (NRRD); copying restores it to double precision (MRML ignores changes below about 1e-15). A file whose geometry differs by more than ``tolerance`` (mm,
    or direction cosines) means the voxels are in another order, so copying would mislabel them: that
    raises instead.
    """
    source_matrix = _ijk_to_ras(source)
    target_matrix = _ijk_to_ras(target)
    source_dims = source.GetImageData().GetDimensions()
    target_dims = target.GetImageData().GetDimensions()
    if tuple(source_dims) != tuple(target_dims):
        raise ConversionError(f"translated volume has dimensions {target_dims}, the input {source_dims}")
    if not np.allclose(source_matrix, target_matrix, rtol=0.0, atol=tolerance * max(1.0, np.abs(source_matrix).max())):
        raise ConversionError(
            "translated volume came back with a different geometry than the input "
            f"(IJK-to-RAS\n{np.array2string(target_matrix, precision=4)}\ninstead of\n"
            f"{np.array2string(source_matrix, precision=4)})"
        )
    # Spacing, origin and directions are what a volume node stores: copy them rather than the composed matrix,
    # which the node would decompose again.
    import vtk

    directions = vtk.vtkMatrix4x4()
    source.GetIJKToRASDirectionMatrix(directions)
    target.SetIJKToRASDirectionMatrix(directions)
    target.SetSpacing(source.GetSpacing())
    target.SetOrigin(source.GetOrigin())
    target.SetAndObserveTransformNodeID(source.GetTransformNodeID())


def _ijk_to_ras(node: Any) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


class RemoteRunner:
    """Sends a file to a medsynth inference server on a thread; polled like :class:`ProcessRunner`.

    The server does the work, so there is no progress to report until it answers, and cancelling only
    stops waiting for the answer (the request itself cannot be withdrawn).
    """

    def __init__(
        self,
        url: str,
        input_path: Path,
        output_path: Path,
        options: ConversionOptions,
        on_progress: ProgressCallback | None = None,
        on_estimate: Callable[[float], None] | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        self.url = url
        self.on_estimate = on_estimate
        self.shape = shape
        self.input_path = input_path
        self.output_path = output_path
        self.options = options
        self.on_progress = on_progress
        self.progress = 0
        self.done_path: str | None = None
        self.cancelled = False
        self.stderr = ""
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._returncode: int | None = None

    def start(self) -> None:
        """Start the request on a background thread."""
        self._thread = threading.Thread(target=self._run, name="medsynth-remote", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            from medsynth.client import remote_estimate, remote_translate

            if self.on_estimate is not None and self.shape is not None:
                try:
                    self.on_estimate(remote_estimate(self.url, self.shape, model=self.options.model,
                                                     axis=self.options.axis, token=self.options.token))
                except Exception:  # an older server without /estimate: translate all the same
                    pass
            remote_translate(
                self.url,
                self.input_path,
                self.output_path,
                model=self.options.model,
                direction=self.options.direction,
                axis=self.options.axis,
                fuse=self.options.fuse,
                token=self.options.token,
                calibration=self.options.calibration,
                bias_field=self.options.bias_field,
            )
        except Exception as exc:  # shown to the person as one line, whatever went wrong
            self._error = str(exc) or type(exc).__name__
            self.stderr = f"error: {self._error}\n"
        else:
            self.done_path = str(self.output_path)

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`poll` reports the end."""
        return self._thread is not None and self._returncode is None

    @property
    def returncode(self) -> int | None:
        """0 on success, 1 on failure, once finished; else None."""
        return self._returncode

    @property
    def error_message(self) -> str:
        """One line saying why the request failed."""
        return "cancelled" if self.cancelled else (self._error or "")

    def poll(self) -> int | None:
        """Return 0 or 1 once the server has answered (or the request failed), else None."""
        if self._thread is None:
            raise RuntimeError("start() the runner first")
        if self._returncode is None and (self.cancelled or not self._thread.is_alive()):
            self._returncode = 1 if (self._error or self.cancelled) else 0
            if self._returncode == 0:
                self.progress = 100
                if self.on_progress is not None:
                    self.on_progress(100)
        return self._returncode

    def cancel(self) -> None:
        """Stop waiting for the server; its answer, if it comes, is thrown away."""
        self.cancelled = True
        self.poll()


class ConversionJob:
    """One translation of one volume node, in steps a UI timer can drive.

    The work runs in a fresh ``medsynth convert`` child, in ``worker`` (a long-lived child that keeps the model
    loaded, see :mod:`MedSynthLib.worker`) when one is given, or on a server when the options name one.
    ``start()`` writes the input and starts the work, ``poll()`` returns True once it has ended,
    ``finish()`` reads the result into the output node (or raises :class:`ConversionError`), ``cancel()``
    ends the work early; ``cleanup()`` (called by ``finish`` and ``cancel``) removes the temporary files.

    Example:
        >>> job = ConversionJob(scene, node, ConversionOptions(direction="t1-to-t2"))  # doctest: +SKIP
        >>> job.start()
        >>> while not job.poll(): time.sleep(0.1)
        >>> translated = job.finish()
    """

    def __init__(
        self,
        scene: Any,
        input_node: Any,
        options: ConversionOptions | None = None,
        output_node: Any = None,
        on_progress: ProgressCallback | None = None,
        on_line: LineCallback | None = None,
        on_estimate: Callable[[float], None] | None = None,
        worker: Worker | None = None,
    ) -> None:
        self.scene = scene
        self.on_estimate = on_estimate
        self.worker = worker
        self.input_node = input_node
        self.options = options or ConversionOptions()
        self.options.validate()
        self.output_node = output_node
        self.on_progress = on_progress
        self.on_line = on_line
        self.temp_dir: Path | None = None
        self.output_path: Path | None = None
        self.runner: ProcessRunner | RemoteRunner | WorkerRunner | None = None
        self.state = "new"  # new -> running -> ended -> finished | failed; or cancelled
        self.started_at: float | None = None

    @property
    def remote(self) -> bool:
        """True when the volume goes to a server rather than a local child process."""
        return bool(self.options.server_url)

    def start(self) -> None:
        """Write the input volume to a temporary file and start the translation; returns at once."""
        if self.state != "new":
            raise RuntimeError(f"job already {self.state}")
        if self.input_node is None or self.input_node.GetImageData() is None:
            raise ConversionError("select an input volume that holds voxels")
        if self.output_node is not None and self.output_node is self.input_node:
            raise ConversionError("choose an output volume other than the input")
        self.started_at = time.monotonic()
        root = self.options.temp_root
        if root:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="medsynth-", dir=root))
        try:
            suffix = FILE_FORMATS[self.options.file_format]
            input_path = write_volume_node(self.input_node, self.temp_dir / f"input{suffix}")
            output_path = self.output_path = self.temp_dir / f"output{suffix}"
            if self.remote:
                dims = self.input_node.GetImageData().GetDimensions()
                self.runner = RemoteRunner(
                    str(self.options.server_url), input_path, output_path, self.options, self.on_progress,
                    on_estimate=self.on_estimate, shape=tuple(int(n) for n in dims),
                )
            elif self.worker is not None:
                job = {"input": str(input_path), "output": str(output_path), "model": self.options.model or None,
                       "direction": self.options.direction, "axis": self.options.axis,
                       "batch_size": self.options.batch_size}
                if not self.options.calibration:
                    # only when off: the job stays one that a worker from before the switch takes
                    job["calibration"] = False
                if self.options.bias_field != "restore":
                    job["bias_field"] = self.options.bias_field
                if self.options.fuse is not None:
                    job["fuse"] = self.options.fuse
                self.runner = WorkerRunner(self.worker, job, self.on_progress, self.on_line, self.on_estimate)
            else:
                command = build_command(
                    self.options.python_exe or sys.executable,
                    input_path,
                    output_path,
                    model=self.options.model,
                    direction=self.options.direction,
                    axis=self.options.axis,
                    fuse=self.options.fuse,
                    device=self.options.device,
                    batch_size=self.options.batch_size,
                    calibration=self.options.calibration,
                    bias_field=self.options.bias_field,
                )
                self.runner = ProcessRunner(
                    command,
                    env=child_environment(self.options.device, base=self.options.environment),
                    on_progress=self.on_progress,
                    on_line=self.on_line,
                    cwd=self.temp_dir,
                    on_estimate=self.on_estimate,
                )
            self.runner.start()
        except BaseException:
            self.cleanup()
            self.state = "failed"
            raise
        self.state = "running"

    def poll(self) -> bool:
        """Pass on progress; True once the translation has ended (successfully or not)."""
        if self.state == "running" and self.runner is not None and self.runner.poll() is not None:
            self.state = "ended"
        return self.state != "running"

    def finish(self) -> Any:
        """Read the result into the output node and return it; clean up either way.

        Raises:
            ConversionError: the translation failed or was cancelled; ``str()`` says why in one line.
        """
        try:
            if self.state == "cancelled":
                raise ConversionError("cancelled")
            if self.state != "ended" or self.runner is None:
                raise RuntimeError(f"finish() called while the job is {self.state}")
            if self.runner.returncode != 0 or self.output_path is None or not self.output_path.is_file():
                raise ConversionError(self.runner.error_message or "medsynth wrote no output", self.runner.stderr)
            node = read_volume_node(
                self.output_path,
                self.scene,
                node=self.output_node,
                name=output_name(self.input_node.GetName(), self.options.direction),
            )
            try:
                copy_geometry(self.input_node, node)
            except ConversionError:
                if self.output_node is None:
                    self.scene.RemoveNode(node)
                raise
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            self.output_node = node
            self.state = "finished"
            if self.on_progress is not None and self.runner.progress < 100:
                self.on_progress(100)
            return node
        except BaseException:
            if self.state != "cancelled":
                self.state = "failed"
            raise
        finally:
            self.cleanup()

    def cancel(self) -> None:
        """End the translation (the whole child process tree) and remove the temporary files."""
        if self.runner is not None:
            self.runner.cancel()
        if self.state in ("new", "running", "ended"):
            self.state = "cancelled"
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the temporary folder; safe to call more than once."""
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at


def worker_for(options: ConversionOptions, current: Worker | None = None) -> Worker:
    """The worker for local jobs with ``options``: ``current`` when it was started with the same Python, device
    and environment, else a new one (not yet started; ``current`` is then stopped)."""
    candidate = Worker(
        options.python_exe or sys.executable,
        options.device,
        env=child_environment(options.device, base=options.environment),
        cwd=options.temp_root,
    )
    if current is not None and current.key == candidate.key:
        return current
    if current is not None:
        current.stop()
    return candidate


def run_conversion_on_node(
    scene: Any,
    input_node: Any,
    options: ConversionOptions | None = None,
    output_node: Any = None,
    on_progress: ProgressCallback | None = None,
    on_line: LineCallback | None = None,
    timeout: float | None = None,
    interval: float = 0.05,
    worker: Worker | None = None,
) -> Any:
    """Translate ``input_node`` and return the output node, blocking until done.

    Args:
        scene: the ``vtkMRMLScene`` holding ``input_node`` (``slicer.mrmlScene`` in Slicer).
        input_node: a ``vtkMRMLScalarVolumeNode``.
        options: model, direction, axis, device, ... (:class:`ConversionOptions`).
        output_node: node to overwrite; None adds a new node named ``<input>_<target domain>``.
        on_progress: called with the percentage done.
        on_line: called with other lines the child prints.
        timeout: seconds before giving up (the child is then ended); None waits for ever.
        interval: seconds between polls.
        worker: a :class:`Worker` to run the translation in (see :func:`worker_for`); None starts a fresh child.

    Raises:
        ConversionError: medsynth failed; ``str()`` is its one-line error message.
        TimeoutError: ``timeout`` passed.
    """
    job = ConversionJob(scene, input_node, options, output_node, on_progress, on_line, worker=worker)
    job.start()
    try:
        while not job.poll():
            if timeout is not None and job.elapsed > timeout:
                job.cancel()
                raise TimeoutError(f"medsynth did not finish within {timeout} s")
            time.sleep(interval)
        return job.finish()
    finally:
        job.cleanup()


def list_server_models(url: str, token: str | None = None, timeout: float = 10.0) -> list[dict]:
    """What a medsynth inference server offers: ``GET {url}/models`` (name, domains, directions per model).

    Standard library only, like :func:`medsynth.client.remote_translate`, so it works in Slicer's Python.

    Raises:
        ConversionError: the server cannot be reached or refuses (e.g. a wrong token); one line.
    """
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url.rstrip("/") + "/models", headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise ConversionError(f"{url}: server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConversionError(f"{url}: cannot reach the server: {reason}") from None
    except ValueError:
        raise ConversionError(f"{url}: this is not a medsynth server (no JSON model list)") from None
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise ConversionError(f"{url}: this is not a medsynth server (no model list)")
    return [m for m in models if isinstance(m, dict) and "name" in m and "directions" in m]


def read_model_directions(model: str | os.PathLike | None = None) -> list[str]:
    """Translation directions a model offers, e.g. ``["t1-to-t2", "t2-to-t1"]``.

    Loads the model on the CPU in this process (in Slicer: Slicer's Python, which then needs torch and
    medsynth installed). None means medsynth's packaged default model.
    """
    from medsynth.inference import Translator

    return list(Translator.from_file(model, device="cpu").directions)


__all__ = [
    "ConversionError",
    "ConversionJob",
    "ConversionOptions",
    "RemoteRunner",
    "copy_geometry",
    "list_server_models",
    "output_name",
    "read_model_directions",
    "read_volume_node",
    "run_conversion_on_node",
    "write_volume_node",
]
