"""A long-lived ``python -m medsynth worker`` child, so that each Translate pays only the translation.

A fresh ``medsynth convert`` child starts Python, imports torch and loads the model for every volume (about
2 s on a 2-core CPU, as long as the translation itself of a 240 x 240 x 155 volume in bf16). The module keeps
one :class:`Worker` instead: started once (when the panel is shown, or at the first Translate), fed one job
per Translate, ended when the module closes. Cancel ends the worker itself, since a translation cannot be
stopped half-way inside it; the next Translate starts a new one. If Slicer itself ends, the worker's stdin
closes and it ends too: no orphan is left behind.

:class:`WorkerRunner` drives one job and is polled exactly like :class:`MedSynthLib.process.ProcessRunner`.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from MedSynthLib.process import (
    DEVICES,
    LineCallback,
    ProgressCallback,
    ProgressLines,
    end_process_tree,
    error_message,
)

__all__ = ["Worker", "WorkerRunner", "worker_command"]


def worker_command(python_exe: str | Path, device: str = "auto") -> list[str]:
    """Command line of the worker child.

    Example:
        >>> worker_command("python", "cpu")
        ['python', '-m', 'medsynth', 'worker', '--device', 'cpu']
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return [str(python_exe), "-m", "medsynth", "worker", "--device", device]


class Worker:
    """One ``python -m medsynth worker`` child: started once, fed jobs one at a time, ended on demand.

    Args:
        python_exe: the Python with medsynth installed (in Slicer: ``PythonSlicer``).
        device: ``auto``, ``cuda`` or ``cpu``; fixed for the worker's life.
        env: the child's environment (:func:`MedSynthLib.process.child_environment`).
        cwd: the child's working folder.
    """

    def __init__(self, python_exe: str | Path, device: str = "auto", env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None) -> None:
        self.command = worker_command(python_exe, device)
        self.env = dict(env) if env is not None else None
        self.cwd = str(cwd) if cwd is not None else None
        self.process: subprocess.Popen | None = None
        self.ready = False
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    @property
    def key(self) -> tuple[Any, ...]:
        """What the worker was started with; a job that needs anything else needs another worker."""
        return (tuple(self.command), tuple(sorted((self.env or {}).items())), self.cwd)

    @property
    def alive(self) -> bool:
        """True while the child runs."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the child unless it already runs; returns at once (it prints READY when its imports are done)."""
        with self._lock:
            if self.alive:
                return
            self.ready = False
            self.lines = queue.Queue()
            self.stderr_lines = []
            kwargs: dict = {}
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
            else:
                kwargs["start_new_session"] = True  # Cancel ends the child and anything it started
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
            )
            process, lines, stderr_lines = self.process, self.lines, self.stderr_lines
            # Each reader keeps the queue and list of its own child, so a restarted worker's lines stay apart.
            self._readers = [
                threading.Thread(target=self._read, args=(process.stdout, lines.put), name="medsynth-worker-stdout",
                                 daemon=True),
                threading.Thread(target=self._read, args=(process.stderr, stderr_lines.append),
                                 name="medsynth-worker-stderr", daemon=True),
            ]
            for reader in self._readers:
                reader.start()

    @staticmethod
    def _read(stream: Any, sink: Callable[[str], None]) -> None:
        for line in stream:
            sink(line.rstrip("\r\n"))

    def submit(self, job: Mapping[str, Any]) -> None:
        """Send one job (see ``medsynth.cli.worker``); the answer comes as lines in :attr:`lines`.

        Raises:
            RuntimeError: the worker is not running.
        """
        if not self.alive or self.process is None or self.process.stdin is None:
            raise RuntimeError("the medsynth worker is not running")
        self.process.stdin.write(json.dumps(dict(job)) + "\n")
        self.process.stdin.flush()

    @property
    def stderr(self) -> str:
        """Everything the current child wrote on stderr."""
        return "\n".join(self.stderr_lines) + ("\n" if self.stderr_lines else "")

    def drain_output(self, timeout: float = 1.0) -> None:
        """Wait up to ``timeout`` seconds for the readers to reach the end of an ended child's output."""
        for reader in self._readers:
            reader.join(timeout=timeout)

    def __del__(self) -> None:
        # A worker nobody holds any more is ended; one whose parent dies ends by itself (its stdin closes).
        try:
            self.stop(grace=0.5)
        except Exception:
            pass

    def stop(self, grace: float = 2.0) -> None:
        """End the child and its process group; safe to call at any time, and more than once."""
        with self._lock:
            process, self.process = self.process, None
            self.ready = False
        if process is None:
            return
        if process.poll() is None:
            end_process_tree(process, grace)
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


class WorkerRunner(ProgressLines):
    """One translation by a :class:`Worker`, polled like :class:`MedSynthLib.process.ProcessRunner`.

    Args:
        worker: the worker; started here if it is not running.
        job: the job line's fields (``input``, ``output``, ``model``, ``direction``, ``axis``, ``batch_size``).
        on_progress, on_line, on_estimate: as for ``ProcessRunner``.
    """

    def __init__(self, worker: Worker, job: Mapping[str, Any], on_progress: ProgressCallback | None = None,
                 on_line: LineCallback | None = None, on_estimate: Callable[[float], None] | None = None) -> None:
        self.worker = worker
        self.job = {key: value for key, value in job.items() if value is not None}
        self.on_progress, self.on_line, self.on_estimate = on_progress, on_line, on_estimate
        self.progress = 0
        self.expected_seconds: float | None = None
        self.done_path: str | None = None
        self.cancelled = False
        self.failure: str | None = None
        self._returncode: int | None = None
        self._started = False
        self._stderr_from = 0
        #: the worker's child process doing this job (the Popen), once started
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the worker if needed and hand it the job; returns at once."""
        if self._started:
            raise RuntimeError("this runner was already started")
        self._started = True
        self.worker.start()
        self.process = self.worker.process
        self._stderr_from = len(self.worker.stderr_lines)
        try:
            self.worker.submit(self.job)
        except (OSError, ValueError, RuntimeError):
            # The worker ended between start() and now (its stdin is closed): poll() reports why.
            pass

    @property
    def stderr(self) -> str:
        """What the worker wrote on stderr during this job."""
        lines = self.worker.stderr_lines[self._stderr_from:]
        return "\n".join(lines) + ("\n" if lines else "")

    @property
    def returncode(self) -> int | None:
        """0 once the worker said DONE, 1 once it said FAILED or ended; else None."""
        return self._returncode

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`poll` reports the end."""
        return self._started and self._returncode is None

    @property
    def error_message(self) -> str:
        """One line saying why the job failed."""
        if self.cancelled:
            return "cancelled"
        if self.failure is not None:
            return self.failure
        return error_message(self.worker.stderr, None if self.worker.process is None else self.worker.process.poll())

    def poll(self) -> int | None:
        """Hand pending lines to the callbacks; 0 or 1 once the job has ended, else None. Never blocks."""
        if not self._started:
            raise RuntimeError("start() the runner first")
        if self._returncode is not None:
            return self._returncode
        while True:
            try:
                line = self.worker.lines.get_nowait()
            except queue.Empty:
                break
            word, _, rest = line.strip().partition(" ")
            if word == "READY":
                self.worker.ready = True
            elif word == "FAILED":
                self.failure = rest.strip() or "medsynth failed"
                self._returncode = 1
                return 1
            else:
                self._handle_line(line)
                if word == "DONE" and self.done_path:
                    self._returncode = 0
                    return 0
        process = self.worker.process
        if process is None or process.poll() is not None:
            # The worker itself ended (killed, out of memory, a broken install): that ends the job too.
            code = None if process is None else process.returncode
            self.worker.drain_output()
            lines = [line for line in self.worker.stderr_lines[self._stderr_from:] if line.strip()]
            self.failure = (error_message("\n".join(lines), code) if lines
                            else f"the medsynth worker stopped (exit status {code})")
            self.worker.stop()
            self._returncode = 1
        return self._returncode

    def cancel(self) -> None:
        """End the job by ending the worker (a translation cannot be stopped half-way inside it)."""
        if not self._started or self._returncode is not None:
            self.cancelled = self.cancelled or self._returncode is None
            return
        self.cancelled = True
        self.worker.stop()
        self._returncode = 1
