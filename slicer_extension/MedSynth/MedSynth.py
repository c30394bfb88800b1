"""MedSynth: translate a volume to another contrast (e.g. T1 -> T2 MRI, MR -> CT) with medsynth, in 3D Slicer.

The panel picks a volume, a model and a direction; Translate writes the volume to a temporary file, hands
it to a long-lived ``python -m medsynth worker`` process (or sends the file to a medsynth server) and loads the
result as a new volume with the input's geometry and parent transform. Everything that does not need the
Slicer GUI lives in ``MedSynthLib`` and is tested outside Slicer.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedSynthLib import dependencies
from MedSynthLib.logic import (
    ConversionError,
    ConversionJob,
    ConversionOptions,
    list_server_models,
    output_name,
    read_model_directions,
    run_conversion_on_node,
    worker_for,
)
from MedSynthLib.process import DEVICE_CHOICES, target_domain
from MedSynthLib.worker import Worker

#: (label shown, value for ``--axis``, with ``:FUSE`` for a fusion other than medsynth's default)
AXIS_CHOICES = (
    ("Axial", "axial"),
    ("Coronal", "coronal"),
    ("Sagittal", "sagittal"),
    ("All three, fused (mean)", "all"),
    ("All three, fused (axial kept, for lesions)", "all:detail"),
)
DEFAULT_MODEL_LABEL = "Packaged default model"
SETTINGS_MODELS = "MedSynth/ModelFiles"
SETTINGS_SERVER = "MedSynth/ServerUrl"
SETTINGS_PIP = "MedSynth/PipRequirement"
POLL_INTERVAL_MS = 200


#
# Module
#


class MedSynth(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSynth"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["medsynth developers"]
        self.parent.helpText = (
            "Translate a volume to another image contrast (for example T1 to T2 MRI, or MR to CT) with a "
            "medsynth CycleGAN model. Choose the input volume, the model and the direction, then press "
            "Translate. The first use installs PyTorch and medsynth into Slicer's Python, after asking.<br>"
            "The result is synthetic: useful for registration, segmentation and research, not for diagnosis."
        )
        self.parent.acknowledgementText = (
            "Built on MONAI, PyTorch and the CycleGAN method of Zhu et al. (ICCV 2017). Extension layout "
            "after SlicerTotalSegmentator and SlicerMONAIAuto3DSeg."
        )


#
# Widget
#


class MedSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: selectors, options, a Translate button that turns into Cancel, progress and status."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: MedSynthLogic | None = None
        self.job: ConversionJob | None = None
        self.lastError: str | None = None
        self.lastOutputNode = None
        self._directionsKey: object = None  # what the direction menu was filled from
        self._directionModels: list[str | None] = []  # per direction item: the server's model name, if remote

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSynthLogic()

        self.ui.modelComboBox.addItem(DEFAULT_MODEL_LABEL, "")
        for path in _settingsList(SETTINGS_MODELS):
            if os.path.isfile(path):
                self.ui.modelComboBox.addItem(os.path.basename(path), path)
        for label, value in AXIS_CHOICES:
            self.ui.axisComboBox.addItem(label, value)
        for label, value in DEVICE_CHOICES.items():
            self.ui.deviceComboBox.addItem(label, value)
        self.ui.serverUrlLineEdit.text = qt.QSettings().value(SETTINGS_SERVER, "")

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelBrowseButton.connect("clicked()", self.onBrowseModel)
        self.ui.remoteCheckBox.connect("toggled(bool)", self.onRemoteToggled)
        self.ui.serverUrlLineEdit.connect("editingFinished()", self.onServerChanged)
        self.ui.serverTokenLineEdit.connect("editingFinished()", self.onServerChanged)
        self.ui.applyButton.connect("clicked()", self.onApplyButton)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.updateButtons()
        if dependencies.missing_packages():
            self.setStatus("The first Translate installs PyTorch and medsynth into Slicer's Python (after asking).")

    def enter(self) -> None:
        # Reading a model's directions imports torch: done when the panel is shown, not at Slicer start-up.
        if self.ui.directionComboBox.count == 0:
            self.updateDirections()
        if not self.ui.remoteCheckBox.checked:
            try:
                self.logic.warmUp(device=self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex))
            except Exception as exc:  # the first Translate starts it, and reports any problem then
                logging.info(f"MedSynth: worker not started in advance ({exc})")

    def cleanup(self) -> None:
        self.cancelJob("Cancelled: module closed.")
        if self.logic is not None:
            self.logic.stopWorker()
        self.removeObservers()

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob("Cancelled: scene closed.")

    # -- reading the panel --------------------------------------------------------------------------

    def currentModel(self) -> str | None:
        """The chosen model file, or None for medsynth's packaged default."""
        index = self.ui.modelComboBox.currentIndex
        path = self.ui.modelComboBox.itemData(index) if index >= 0 else ""
        return path or None

    def currentDirection(self) -> str | None:
        index = self.ui.directionComboBox.currentIndex
        return self.ui.directionComboBox.itemData(index) if index >= 0 else None

    def currentServerModel(self) -> str | None:
        """The server's name for the model behind the chosen direction (None: the server's only model)."""
        index = self.ui.directionComboBox.currentIndex
        return self._directionModels[index] if 0 <= index < len(self._directionModels) else None

    def currentOptions(self) -> ConversionOptions:
        """The options the panel shows, as the logic takes them."""
        remote = bool(self.ui.remoteCheckBox.checked)
        url = self.ui.serverUrlLineEdit.text.strip()
        if remote and not url:
            raise ValueError("Enter the address of the medsynth server (Advanced section).")
        if remote:
            qt.QSettings().setValue(SETTINGS_SERVER, url)
        batchSize = int(self.ui.batchSizeSpinBox.value)
        axis, _, fuse = str(self.ui.axisComboBox.itemData(self.ui.axisComboBox.currentIndex)).partition(":")
        return ConversionOptions(
            model=self.currentServerModel() if remote else self.currentModel(),
            direction=self.currentDirection(),
            axis=axis,
            fuse=fuse or None,
            device=self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex),
            batch_size=batchSize if batchSize > 0 else None,
            python_exe=self.logic.pythonExecutable(),
            environment=self.logic.childEnvironmentBase(),
            temp_root=slicer.app.temporaryPath,
            server_url=url if remote else None,
            token=self.ui.serverTokenLineEdit.text.strip() or None,
            calibration=bool(self.ui.calibrationCheckBox.checked),
            bias_field="restore" if self.ui.biasFieldCheckBox.checked else "remove",
        )

    # -- reacting to the panel ----------------------------------------------------------------------

    def updateButtons(self, *unused) -> None:
        running = self.job is not None
        self.ui.applyButton.text = "Cancel" if running else "Translate"
        self.ui.applyButton.enabled = running or self.ui.inputVolumeSelector.currentNode() is not None
        for name in ("inputsCollapsibleButton", "outputsCollapsibleButton", "advancedCollapsibleButton"):
            getattr(self.ui, name).enabled = not running
        remote = bool(self.ui.remoteCheckBox.checked)
        self.ui.serverUrlLineEdit.enabled = remote
        self.ui.serverTokenLineEdit.enabled = remote
        self.ui.deviceComboBox.enabled = not remote
        self.ui.modelComboBox.enabled = not remote
        self.ui.modelBrowseButton.enabled = not remote
        self.ui.progressBar.visible = running

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text
        if text:
            logging.info(f"MedSynth: {text}")

    def onBrowseModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Choose a medsynth model", "", "medsynth models (*.pt);;All files (*)"
        )
        if not path:
            return
        index = self.ui.modelComboBox.findData(path)
        if index < 0:
            self.ui.modelComboBox.addItem(os.path.basename(path), path)
            index = self.ui.modelComboBox.count - 1
            recent = [path] + [p for p in _settingsList(SETTINGS_MODELS) if p != path]
            qt.QSettings().setValue(SETTINGS_MODELS, recent[:10])
        self.ui.modelComboBox.currentIndex = index

    def onModelChanged(self, index: int) -> None:
        self.updateDirections()

    def onRemoteToggled(self, checked: bool) -> None:
        self.updateButtons()
        self.updateDirections()

    def onServerChanged(self) -> None:
        if self.ui.remoteCheckBox.checked:
            self.updateDirections()

    def updateDirections(self) -> bool:
        """Fill the direction menu from the chosen model (or the server's models); False if not possible yet."""
        remote = bool(self.ui.remoteCheckBox.checked)
        url = self.ui.serverUrlLineEdit.text.strip()
        token = self.ui.serverTokenLineEdit.text.strip() or None
        key = ("remote", url, token) if remote else ("local", self.currentModel())
        if self.ui.directionComboBox.count > 0 and self._directionsKey == key:
            return True
        previous = self.currentDirection()
        self.ui.directionComboBox.clear()
        self._directionModels = []
        self._directionsKey = None
        if remote and not url:
            self.setStatus("Enter the address of the medsynth server (Advanced section).")
            return False
        if not remote and dependencies.missing_packages():
            return False
        entries: list[tuple[str, str | None]] = []  # (direction, server model name)
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            if remote:
                models = list_server_models(url, token)
                for model in models:
                    name = model["name"] if len(models) > 1 else None
                    entries += [(direction, name) for direction in model["directions"]]
            else:
                entries = [(direction, None) for direction in self.logic.modelDirections(key[1])]
        except Exception as exc:  # unreadable model or unreachable server: a line in the panel, no traceback
            self.setStatus(f"Cannot read the {'server' if remote else 'model'}: {exc}")
            return False
        finally:
            slicer.app.restoreOverrideCursor()
        for direction, name in entries:
            source, _, target = direction.partition("-to-")
            label = f"{source.upper()} \u2192 {target.upper()}" + (f"  ({name})" if name else "")
            self.ui.directionComboBox.addItem(label, direction)
            self._directionModels.append(name)
        directions = [direction for direction, _ in entries]
        if previous in directions:
            self.ui.directionComboBox.currentIndex = directions.index(previous)
        self._directionsKey = key
        self.setStatus("" if entries else "The model offers no direction.")
        return bool(entries)

    def onApplyButton(self) -> None:
        if self.job is not None:
            self.cancelJob("Cancelled.")
            return
        self.lastError = None
        try:
            if not self.logic.setupPythonRequirements(askConfirmation=True):
                self.setStatus("Translation needs PyTorch and medsynth in Slicer's Python; nothing was installed.")
                return
            if self.ui.remoteCheckBox.checked:
                self.currentOptions()  # says so if the server address is missing
            hadDirections = self.ui.directionComboBox.count > 0
            if not self.updateDirections():
                return
            if not hadDirections and not slicer.app.testingEnabled():
                # The directions were only now known: let the person pick one before anything runs.
                self.setStatus("Ready: check the direction, then press Translate.")
                return
            inputNode = self.ui.inputVolumeSelector.currentNode()
            outputNode = self.ui.outputVolumeSelector.currentNode()
            options = self.currentOptions()
            self.job = self.logic.startJob(
                inputNode, options, outputNode, onProgress=self.onProgress, onLine=self.onProcessLine,
                onEstimate=self.onEstimate,
            )
        except Exception as exc:
            self.job = None
            self.showError(str(exc), getattr(exc, "details", ""))
            self.updateButtons()
            return
        where = f"on {options.server_url}" if options.server_url else f"here ({self.ui.deviceComboBox.currentText})"
        self.setStatus(f"Translating {inputNode.GetName()} {where}...")
        self.ui.progressBar.setRange(0, 0 if options.server_url else 100)  # a server reports no progress
        self.ui.progressBar.value = 0
        self.updateButtons()
        self.timer.start()

    def onEstimate(self, seconds: float) -> None:
        """medsynth said how long this volume should take (from its shape and a measured rate)."""
        if self.job is not None:
            self.setStatus(f"Translating {self.job.input_node.GetName()}: expected about {seconds:.0f} s...")

    def onProgress(self, percent: int) -> None:
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.value = percent

    def onProcessLine(self, line: str) -> None:
        logging.info(f"medsynth: {line}")

    def onTimer(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        if not job.poll():
            return
        self.timer.stop()
        self.job = None
        try:
            outputNode = job.finish()
        except ConversionError as exc:
            self.showError(str(exc), exc.details)
        except Exception as exc:
            self.showError(str(exc), "")
        else:
            self.lastOutputNode = outputNode
            self.ui.outputVolumeSelector.setCurrentNode(outputNode)
            # Translated volume in the background, the input over it at zero opacity: drag the fader to compare.
            slicer.util.setSliceViewerLayers(
                background=outputNode, foreground=job.input_node, foregroundOpacity=0.0, fit=True
            )
            self.setStatus(f"Done in {job.elapsed:.1f} s: {outputNode.GetName()}.")
        finally:
            self.updateButtons()

    def cancelJob(self, message: str) -> None:
        """End a running translation and its whole process tree."""
        if self.job is None:
            return
        self.timer.stop()
        job, self.job = self.job, None
        job.cancel()
        self.setStatus(message)
        self.updateButtons()

    def showError(self, message: str, details: str = "") -> None:
        """One line in the panel and a message box; the full log only behind 'Show Details'."""
        self.lastError = message
        self.setStatus(f"Failed: {message}")
        if slicer.app.testingEnabled():
            logging.error(f"MedSynth failed: {message}\n{details}")
        else:
            extra = {"detailedText": details} if details else {}
            slicer.util.errorDisplay(f"MedSynth could not translate the volume:\n\n{message}", **extra)


def _settingsList(key: str) -> list[str]:
    value = qt.QSettings().value(key, [])
    if isinstance(value, str):  # QSettings returns a lone string for a one-item list
        return [value] if value else []
    return [str(v) for v in value or []]


#
# Logic
#


class MedSynthLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from Slicer's Python console without the panel.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("MedSynth")
        t2 = logic.process(getNode("MRHead"), direction="t1-to-t2", axis="all")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._directions: dict[str | None, list[str]] = {}
        #: Local translations run in one long-lived medsynth worker (torch imported and the model loaded once);
        #: False starts a fresh ``medsynth convert`` process for every volume instead.
        self.keepWorker = True
        self._worker: Worker | None = None

    def localWorker(self, options: ConversionOptions) -> Worker | None:
        """The long-lived worker for local jobs with these options (None when ``keepWorker`` is off)."""
        if not self.keepWorker or options.server_url:
            return None
        self._worker = worker_for(options, self._worker)
        return self._worker

    def warmUp(self, **options) -> None:
        """Start the local worker now, so that the first Translate does not wait for Python and torch to start."""
        if dependencies.missing_packages():
            return
        worker = self.localWorker(self.defaultOptions(**options))
        if worker is not None:
            worker.start()

    def stopWorker(self) -> None:
        """End the local worker (the next local job starts a new one)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python launcher; the child needs the paths it sets up."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def childEnvironmentBase() -> dict | None:
        """Environment for ``PythonSlicer``: Slicer's start-up one, to which the launcher adds its own paths."""
        if shutil.which("PythonSlicer"):
            return dict(slicer.util.startupEnvironment())
        return None

    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool:
        """Install what is missing (PyTorch through the PyTorch extension, then medsynth); False if declined.

        Raises:
            RuntimeError: the PyTorch extension is missing, or an installation failed.
        """
        missing = dependencies.missing_packages()
        if not missing:
            return True
        if askConfirmation and not slicer.app.testingEnabled():
            sizeNote = " PyTorch is a download of up to a few GB;" if "torch" in missing else ""
            if not slicer.util.confirmOkCancelDisplay(
                f"MedSynth needs {' and '.join(missing)} in Slicer's Python.{sizeNote} installing may take "
                "several minutes. Install now?",
                "MedSynth: install Python packages",
            ):
                return False
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            if "torch" in missing:
                try:
                    import PyTorchUtils
                except ModuleNotFoundError as exc:
                    raise RuntimeError(
                        "MedSynth needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                        "restart Slicer, and press Translate again."
                    ) from exc
                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled():
                    # Its installer picks the build that matches the NVIDIA driver (or the CPU build).
                    torch = torchLogic.installTorch(
                        askConfirmation=False, torchVersionRequirement=dependencies.TORCH_REQUIREMENT
                    )
                    if torch is None:
                        raise RuntimeError("PyTorch was not installed.")
            if "medsynth" in missing:
                requirement = qt.QSettings().value(SETTINGS_PIP, dependencies.MEDSYNTH_REQUIREMENT)
                slicer.util.pip_install(requirement)
        finally:
            slicer.app.restoreOverrideCursor()
        importlib.invalidate_caches()
        stillMissing = dependencies.missing_packages()
        if stillMissing:
            raise RuntimeError(f"Installing {', '.join(stillMissing)} failed; see the Python console for pip's messages.")
        return True

    def modelDirections(self, model: str | None = None) -> list[str]:
        """Directions of a model file (None: the packaged default), e.g. ``["t1-to-t2", "t2-to-t1"]``; cached."""
        if model not in self._directions:
            self._directions[model] = read_model_directions(model)
        return list(self._directions[model])

    def defaultOptions(self, **overrides) -> ConversionOptions:
        """Options for a local run with Slicer's Python, changed by ``overrides`` (field=value)."""
        options = ConversionOptions(
            python_exe=self.pythonExecutable(),
            environment=self.childEnvironmentBase(),
            temp_root=slicer.app.temporaryPath,
        )
        for name, value in overrides.items():
            if not hasattr(options, name):
                raise TypeError(f"unknown option {name!r}")
            setattr(options, name, value)
        return options

    def startJob(self, inputNode, options: ConversionOptions, outputNode=None, onProgress=None, onLine=None,
                 onEstimate=None) -> ConversionJob:
        """Start translating ``inputNode``; the caller polls the returned job (the panel does, on a timer).
        ``onEstimate`` gets medsynth's expected duration in seconds before the translation starts."""
        job = ConversionJob(slicer.mrmlScene, inputNode, options, outputNode, onProgress, onLine, onEstimate,
                            worker=self.localWorker(options))
        job.start()
        return job

    def process(self, inputNode, outputNode=None, timeout: float | None = None, **options):
        """Translate ``inputNode`` and return the output node, blocking until done (for scripts and tests).

        ``options`` are :class:`MedSynthLib.logic.ConversionOptions` fields (model, direction, axis, device, ...).
        """
        if not self.setupPythonRequirements(askConfirmation=True):
            raise RuntimeError("PyTorch and medsynth are not installed")
        start = time.time()
        conversionOptions = self.defaultOptions(**options)
        node = run_conversion_on_node(
            slicer.mrmlScene,
            inputNode,
            conversionOptions,
            outputNode,
            worker=self.localWorker(conversionOptions),
            on_progress=lambda percent: slicer.app.processEvents(),
            on_line=lambda line: logging.info(f"medsynth: {line}"),
            timeout=timeout,
        )
        logging.info(f"MedSynth: translated {inputNode.GetName()} in {time.time() - start:.1f} s")
        return node


#
# Test
#


class MedSynthTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: the whole Translate-button path on a synthetic volume.

    Uses the packaged default model, or the model file named by the environment variable
    ``MEDSYNTH_TEST_MODEL``. Run it from the Reload & Test button (developer mode) or with
    ``Slicer --testing --python-code "slicer.util.selectModule('MedSynth'); ..."`` (see README).
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_logic_keeps_geometry()
        self.setUp()
        self.test_translate_button()
        self.setUp()
        self.test_cancel_button()
        self.setUp()
        self.test_bad_model_shows_message()

    # -- helpers --------------------------------------------------------------------------------------

    def _model(self) -> str | None:
        return os.environ.get("MEDSYNTH_TEST_MODEL") or None

    def _syntheticVolume(self, name: str = "synthetic_t1"):
        """A 40x48x32 head-like volume with an oblique IJK-to-RAS and a parent transform."""
        import numpy as np

        k, j, i = np.mgrid[0:32, 0:48, 0:40].astype(np.float32)
        radius = ((i - 20) / 16) ** 2 + ((j - 24) / 20) ** 2 + ((k - 16) / 13) ** 2
        voxels = np.where(radius < 1.0, 600.0 + 300.0 * np.sin(i / 3.0) * np.cos(j / 4.0), 0.0).astype(np.float32)
        angle = np.deg2rad(20.0)
        rotation = np.array(
            [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
        )
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = rotation @ np.diag([1.2, 1.0, 2.5])
        ijkToRas[:3, 3] = [-20.0, 15.0, 7.5]
        node = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRas, name=name)
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 12.0)
        transform.SetMatrixTransformToParent(matrix)
        node.SetAndObserveTransformNodeID(transform.GetID())
        return node

    @staticmethod
    def _ijkToRas(node):
        import numpy as np

        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def _widget(self) -> MedSynthWidget:
        slicer.util.selectModule("MedSynth")
        return slicer.modules.medsynth.widgetRepresentation().self()

    def _waitForJob(self, widget: MedSynthWidget, timeout: float = 600.0) -> None:
        deadline = time.time() + timeout
        while widget.job is not None:
            self.assertLess(time.time(), deadline, "translation did not finish in time")
            slicer.app.processEvents()
            time.sleep(0.05)

    # -- tests ----------------------------------------------------------------------------------------

    def test_logic_keeps_geometry(self) -> None:
        import numpy as np

        self.delayDisplay("Logic: node -> medsynth -> node keeps geometry and transform")
        logic = MedSynthLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        inputNode = self._syntheticVolume()
        direction = logic.modelDirections(self._model())[0]
        outputNode = logic.process(inputNode, model=self._model(), direction=direction, device="cpu", timeout=600)
        self.assertEqual(outputNode.GetName(), output_name(inputNode.GetName(), direction))
        self.assertEqual(outputNode.GetImageData().GetDimensions(), inputNode.GetImageData().GetDimensions())
        np.testing.assert_allclose(self._ijkToRas(outputNode), self._ijkToRas(inputNode), atol=1e-9)
        self.assertEqual(outputNode.GetTransformNodeID(), inputNode.GetTransformNodeID())
        voxels = slicer.util.arrayFromVolume(outputNode)
        self.assertTrue(np.isfinite(voxels).all())
        self.assertGreater(float(voxels.std()), 0.0)
        self.delayDisplay("Logic test passed")

    def test_translate_button(self) -> None:
        import numpy as np

        self.delayDisplay("Translate button on a synthetic volume")
        widget = self._widget()
        inputNode = self._syntheticVolume()
        widget.ui.inputVolumeSelector.setCurrentNode(inputNode)
        widget.ui.outputVolumeSelector.setCurrentNode(None)
        model = self._model()
        if model:
            widget.ui.modelComboBox.addItem(os.path.basename(model), model)
            widget.ui.modelComboBox.currentIndex = widget.ui.modelComboBox.count - 1
        widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findData("cpu")
        widget.ui.axisComboBox.currentIndex = widget.ui.axisComboBox.findData("all:detail")
        widget.ui.remoteCheckBox.checked = False
        widget.ui.applyButton.click()
        self.assertIsNone(widget.lastError, widget.lastError)
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        self._waitForJob(widget)
        self.assertIsNone(widget.lastError, widget.lastError)
        self.assertEqual(widget.ui.applyButton.text, "Translate")
        outputNode = widget.ui.outputVolumeSelector.currentNode()
        self.assertIsNotNone(outputNode)
        direction = widget.currentDirection()
        self.assertEqual(outputNode.GetName(), f"{inputNode.GetName()}_{target_domain(direction)}")
        np.testing.assert_allclose(self._ijkToRas(outputNode), self._ijkToRas(inputNode), atol=1e-9)
        self.assertEqual(outputNode.GetTransformNodeID(), inputNode.GetTransformNodeID())
        self.assertEqual(
            slicer.util.arrayFromVolume(outputNode).shape, slicer.util.arrayFromVolume(inputNode).shape
        )
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetBackgroundVolumeID(), outputNode.GetID())
        self.delayDisplay("Translate button test passed")

    def test_cancel_button(self) -> None:
        self.delayDisplay("Cancel ends the process tree and adds no volume")
        widget = self._widget()
        inputNode = self._syntheticVolume()
        widget.ui.inputVolumeSelector.setCurrentNode(inputNode)
        widget.ui.outputVolumeSelector.setCurrentNode(None)
        widget.ui.remoteCheckBox.checked = False
        volumesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        widget.ui.applyButton.click()
        self.assertIsNotNone(widget.job, widget.lastError)
        process = widget.job.runner.process
        widget.ui.applyButton.click()  # now the Cancel button
        self.assertIsNone(widget.job)
        self.assertIsNotNone(process.poll(), "the medsynth process is still running after Cancel")
        self.assertEqual(widget.ui.applyButton.text, "Translate")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), volumesBefore)
        self.delayDisplay("Cancel test passed")

    def test_bad_model_shows_message(self) -> None:
        import tempfile

        self.delayDisplay("A file that is not a model gives a one-line message")
        inputNode = self._syntheticVolume()
        with tempfile.TemporaryDirectory() as folder:
            fake = os.path.join(folder, "not_a_model.pt")
            with open(fake, "w") as stream:
                stream.write("not a model")
            with self.assertRaises(ConversionError) as caught:
                MedSynthLogic().process(inputNode, model=fake, direction="t1-to-t2", device="cpu", timeout=600)
        message = str(caught.exception)
        self.assertNotIn("Traceback", message)
        self.assertIn("not_a_model.pt", message)
        self.delayDisplay("Bad model test passed")
