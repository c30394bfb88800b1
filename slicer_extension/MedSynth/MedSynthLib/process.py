"""Running ``python -m medsynth convert`` in a child process that the UI can watch and cancel.

The child runs in its own process group (POSIX session / Windows process group) so that Cancel can end
it together with anything it started (data-loader workers, CUDA helpers). Output is read by two
threads into a queue; :meth:`ProcessRunner.poll` hands lines to callbacks on the caller's thread, which
in Slicer is the Qt main thread, so callbacks may touch widgets.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

AXES = ("axial", "coronal", "sagittal", "all")
#: what ``medsynth-convert --fuse`` takes: how ``--axis all`` combines its three passes
FUSES = ("mean", "median", "detail")
DEVICES = ("auto", "cuda", "cpu")
#: what ``medsynth-convert --bias-field`` takes (a bias-corrected model: the input's field put back or not)
BIAS_FIELDS = ("restore", "remove")
#: Names people see in the device menu -> values the medsynth command line takes.
DEVICE_CHOICES = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}

ProgressCallback = Callable[[int], None]
LineCallback = Callable[[str], None]


def build_command(
    python_exe: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    model: str | Path | None = None,
    direction: str | None = None,
    axis: str = "axial",
    device: str = "auto",
    batch_size: int | None = None,
    calibration: bool = True,
    bias_field: str = "restore",
    fuse: str | None = None,
) -> list[str]:
    """Command line that converts one file with medsynth, printing progress one line at a time.

    Args:
        python_exe: the Python that has medsynth installed (in Slicer: ``PythonSlicer``).
        input_path: volume to translate.
        output_path: where the translated volume goes (overwritten).
        model: a ``model.pt`` file, or None for medsynth's packaged default model.
        direction: e.g. ``"t1-to-t2"``; None lets medsynth use the model's first direction.
        axis: ``axial``, ``coronal``, ``sagittal`` or ``all`` (all three fused).
        device: ``auto``, ``cuda`` or ``cpu``.
        batch_size: slices per forward pass; None keeps medsynth's default.
        calibration: False adds ``--no-calibration`` (the network's output without a calibrated model's curve).
        bias_field: ``remove`` adds ``--bias-field remove`` (a bias-corrected model's translation without the
            input's field put back).
        fuse: how ``axis="all"`` combines its passes (``mean``, ``median``, ``detail``); None keeps medsynth's
            default.

    Returns:
        The argument list for :class:`subprocess.Popen` (no shell).

    Example:
        >>> build_command("python", "in.nrrd", "out.nrrd", axis="all")[:4]
        ['python', '-m', 'medsynth', 'convert']
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    command = [str(python_exe), "-m", "medsynth", "convert", str(input_path), str(output_path)]
    if model is not None and str(model) != "":
        command += ["--model", str(model)]
    if direction:
        command += ["--direction", direction]
    command += ["--axis", axis, "--device", device]
    if fuse is not None:
        if fuse not in FUSES:
            raise ValueError(f"fuse must be one of {', '.join(FUSES)}, got {fuse!r}")
        command += ["--fuse", fuse]
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        command += ["--batch-size", str(int(batch_size))]
    if not calibration:
        command.append("--no-calibration")
    if bias_field not in BIAS_FIELDS:
        raise ValueError(f"bias_field must be one of {', '.join(BIAS_FIELDS)}, got {bias_field!r}")
    if bias_field != "restore":
        command += ["--bias-field", bias_field]
    command += ["--progress", "lines", "--overwrite"]
    return command


def child_environment(device: str = "auto", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the converting child process.

    ``cpu`` hides every GPU (``CUDA_VISIBLE_DEVICES=""``) so that not even a CUDA context is created on a
    GPU another program is using. Output is unbuffered UTF-8 so progress lines arrive as they are printed.

    Args:
        device: ``auto``, ``cuda`` or ``cpu``.
        base: environment to start from; defaults to this process's environment (in Slicer it holds the
            library paths that ``PythonSlicer`` needs).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif env.get("CUDA_VISIBLE_DEVICES") == "":
        # An empty value left over from a CPU run would silently hide the GPU the person asked for.
        del env["CUDA_VISIBLE_DEVICES"]
    return env


def target_domain(direction: str | None) -> str | None:
    """The domain a direction translates into: ``"t1-to-t2"`` -> ``"t2"``; None for None."""
    if not direction:
        return None
    source, sep, target = direction.partition("-to-")
    if not sep or not source or not target:
        raise ValueError(f"direction must look like 'a-to-b', got {direction!r}")
    return target


def error_message(stderr: str, returncode: int | None = None) -> str:
    """One line for a person: the last ``error:`` line of the child's stderr, without the prefix.

    Falls back to the last non-empty stderr line (e.g. the exception line of an unexpected traceback),
    then to the exit status.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    if lines:
        return lines[-1]
    return f"medsynth stopped with exit status {returncode}"


class ProgressLines:
    """Turns medsynth's stdout protocol into callbacks; shared by :class:`ProcessRunner` and the worker's runner.

    ``PROGRESS <percent>`` goes to ``on_progress``, ``ESTIMATE <seconds> <path>`` (the expected duration, said
    before the network starts) sets :attr:`expected_seconds` and goes to ``on_estimate``, ``DONE <path>`` sets
    :attr:`done_path`; other lines go to ``on_line``.
    """

    on_progress: ProgressCallback | None = None
    on_line: LineCallback | None = None
    on_estimate: Callable[[float], None] | None = None
    progress: int = 0
    expected_seconds: float | None = None
    done_path: str | None = None

    def _handle_line(self, line: str) -> None:
        """Act on one stdout line."""
        word, _, rest = line.strip().partition(" ")
        if word == "PROGRESS":
            try:
                value = int(round(float(rest)))
            except ValueError:
                value = None
            if value is not None:
                self.progress = max(0, min(100, value))
                if self.on_progress is not None:
                    self.on_progress(self.progress)
                return
        elif word == "ESTIMATE" and rest:
            try:
                self.expected_seconds = float(rest.split()[0])
            except ValueError:
                pass
            else:
                if self.on_estimate is not None:
                    self.on_estimate(self.expected_seconds)
                return
        elif word == "DONE" and rest:
            self.done_path = rest.strip()
            return
        if self.on_line is not None and line.strip():
            self.on_line(line)


class ProcessRunner(ProgressLines):
    """Starts a command, turns its stdout into progress, and can end its whole process tree.

    Stdout lines ``PROGRESS <percent>`` go to ``on_progress``, ``ESTIMATE <seconds> <path>`` (medsynth's expected
    duration, said before it starts) sets :attr:`expected_seconds` and goes to ``on_estimate``, ``DONE <path>``
    sets :attr:`done_path`, other lines go to ``on_line``; stderr is collected whole in :attr:`stderr`.

    Attributes:
        PIPE_GRACE_S: seconds to keep reading output after the child itself has exited.

    Example:
        >>> runner = ProcessRunner([sys.executable, "-c", "print('PROGRESS 50')"], on_progress=print)
        >>> runner.start(); runner.wait()
        50
        0
    """

    PIPE_GRACE_S = 3.0

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
        on_line: LineCallback | None = None,
        cwd: str | Path | None = None,
        on_estimate: Callable[[float], None] | None = None,
    ) -> None:
        self.command = [str(c) for c in command]
        self.on_estimate = on_estimate
        self.expected_seconds: float | None = None
        self.env = dict(env) if env is not None else None
        self.on_progress = on_progress
        self.on_line = on_line
        self.cwd = str(cwd) if cwd is not None else None
        self.process: subprocess.Popen | None = None
        self.progress: int = 0
        self.done_path: str | None = None
        self.cancelled = False
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr_parts: list[str] = []
        self._threads: list[threading.Thread] = []
        self._returncode: int | None = None
        self._exited_at: float | None = None

    # -- starting -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child in its own process group; returns at once."""
        if self.process is not None:
            raise RuntimeError("this runner was already started")
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, name="medsynth-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="medsynth-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\r\n"))

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr_parts.append(line)

    # -- watching -------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Process id of the child (also its process group id on POSIX)."""
        return None if self.process is None else self.process.pid

    @property
    def stderr(self) -> str:
        """Everything the child wrote on stderr so far."""
        return "".join(self._stderr_parts)

    @property
    def returncode(self) -> int | None:
        """Exit status once :meth:`poll` has seen the child end and its output read; else None."""
        return self._returncode

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`poll` reports the end."""
        return self.process is not None and self._returncode is None

    @property
    def error_message(self) -> str:
        """One line saying why the child failed (see :func:`error_message`)."""
        if self.cancelled:
            return "cancelled"
        return error_message(self.stderr, self._returncode)

    def poll(self) -> int | None:
        """Hand pending output lines to the callbacks; return the exit status once all is read, else None.

        Never blocks, so a UI timer can call it.
        """
        if self.process is None:
            raise RuntimeError("start() the runner first")
        self._drain()
        if self._returncode is None and self.process.poll() is not None:
            # The pipes reach end-of-file when the child and anything that inherited them have ended:
            # join briefly so no last line is lost. A grandchild that keeps a pipe open must not hang
            # us, hence the cap measured from the child's exit.
            if self._exited_at is None:
                self._exited_at = time.monotonic()
            for thread in self._threads:
                thread.join(timeout=0.2)
            readers_done = all(not t.is_alive() for t in self._threads)
            if readers_done or self.cancelled or time.monotonic() - self._exited_at > self.PIPE_GRACE_S:
                self._drain()
                self._returncode = self.process.returncode
        return self._returncode

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> int:
        """Block until the child ends (polling, so callbacks still run); return its exit status.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds (it keeps running; call :meth:`cancel`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.command[0]} still running after {timeout} s")
            time.sleep(interval)

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            self._handle_line(line)

    # -- stopping -------------------------------------------------------------------------------------
    def cancel(self, grace: float = 2.0) -> None:
        """End the child and every process in its group; safe to call at any time, and more than once.

        POSIX: SIGTERM to the group, then SIGKILL to whatever is left after ``grace`` seconds.
        Windows: ``taskkill /T /F`` on the tree.
        """
        if self.process is None:
            return
        self.cancelled = True
        end_process_tree(self.process, grace)
        self.poll()


def end_process_tree(process: subprocess.Popen, grace: float = 2.0) -> None:
    """End a child started in its own process group (``start_new_session``) and everything in that group.

    POSIX: SIGTERM to the group, then SIGKILL to whatever is left after ``grace`` seconds.
    Windows: ``taskkill /T /F`` on the tree.
    """
    if sys.platform == "win32":
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        process.kill()
    else:
        # The group id equals the child's pid (start_new_session) and outlives the child itself
        # while any grandchild remains in the group.
        pgid = process.pid
        if not _signal_group(pgid, signal.SIGTERM):
            process.poll()
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the child so it does not linger as a zombie
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    """True while some non-zombie process is in group ``pgid`` (best effort where /proc is missing)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except OSError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # Fields after the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False
