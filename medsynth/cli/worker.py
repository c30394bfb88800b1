"""``python -m medsynth worker``: a long-lived converter that reads jobs on stdin (for the Slicer module).

A fresh ``medsynth convert`` process pays Python's start, the torch import and the model load on every
volume: about 2 s on a 2-core CPU, as much as the whole translation of a 240 x 240 x 155 volume in bf16. The
worker pays them once and then translates one job after another, with the same progress protocol as
``medsynth convert --progress lines``.

Protocol, one line per message:

- stdin: one JSON object per job, ``{"input": PATH, "output": PATH, "model": PATH|null, "direction": ...,
  "axis": ..., "fuse": ..., "dtype": ..., "batch_size": N|null, "calibration": true|false,
  "bias_field": "restore"|"remove"}`` (only ``input`` and ``output`` are required; ``calibration: false`` skips a
  calibrated model's output curve, ``bias_field: "remove"`` leaves a bias-corrected model's translation without the
  input's field); end of input ends the worker.
- stdout: ``READY`` once the models can be loaded, then per job ``ESTIMATE <seconds> <input>``,
  ``PROGRESS <percent>`` lines, ``TIMING <seconds> <network seconds>`` (the job's time and the part of it
  spent in the generators) and one last line, ``DONE <output>`` or ``FAILED <one-line message>``.

A bad job (a missing file, a wrong direction, a model that cannot be read) fails that job only; the worker
goes on. Outputs are written atomically and replaced, as ``medsynth convert --overwrite`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any, Sequence

from medsynth.bias import BIAS_OUTPUTS
from medsynth.cli.formatter import HelpFormatter
from medsynth.cli.progress import Reporter
from medsynth.errors import InputError, exit_on_error
from medsynth.fusion import DEFAULT_FUSION

__all__ = ["JOB_FIELDS", "build_parser", "main", "run_job"]

#: Keys a job line may hold; anything else is refused so a typo is not silently ignored.
JOB_FIELDS = ("input", "output", "model", "direction", "axis", "fuse", "dtype", "batch_size", "calibration",
              "bias_field")


def build_parser() -> argparse.ArgumentParser:
    """Options of ``python -m medsynth worker`` (those of ``medsynth-convert`` that hold for every job)."""
    p = argparse.ArgumentParser(
        prog="python -m medsynth worker",
        description="Translate volumes named one JSON line at a time on stdin, keeping the model loaded.",
        formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere")
    return p


class _Models:
    """The Translator of the model last asked for: loaded once, kept until another model is asked for.

    One model at a time, since a worker that kept every model it was ever sent would only grow.
    """

    def __init__(self, device: str, threads: int | None, precision: str) -> None:
        self.device, self.threads, self.precision = device, threads, precision
        self.key: tuple[Any, ...] | None = None
        self.translator: Any = None

    def get(self, model: str | None, batch_size: int | None) -> Any:
        from medsynth.inference import Translator

        key = (model, batch_size)
        if key != self.key:
            self.translator, self.key = None, None  # free the old one before loading the next
            self.translator = Translator.from_file(model, device=self.device, batch_size=batch_size,
                                                   precision=self.precision, threads=self.threads)
            self.key = key
        return self.translator


def _parse_job(line: str) -> dict[str, Any]:
    try:
        job = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError("<stdin>", f"job is not JSON ({exc.msg})") from None
    if not isinstance(job, dict):
        raise InputError("<stdin>", "job must be a JSON object")
    unknown = sorted(set(job) - set(JOB_FIELDS))
    if unknown:
        raise InputError("<stdin>", f"unknown job field(s): {', '.join(unknown)}")
    for field in ("input", "output"):
        if not isinstance(job.get(field), str) or not job[field]:
            raise InputError("<stdin>", f"job needs '{field}': a path")
    batch = job.get("batch_size")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise InputError("<stdin>", f"batch_size {batch!r} must be a whole number of at least 1")
    if not isinstance(job.get("calibration", True), bool):
        raise InputError("<stdin>", f"calibration {job['calibration']!r} must be true or false")
    if job.get("bias_field", "restore") not in BIAS_OUTPUTS:
        choices = " or ".join(json.dumps(b) for b in BIAS_OUTPUTS)
        raise InputError("<stdin>", f"bias_field {job['bias_field']!r} must be {choices}")
    return job


def run_job(models: _Models, job: dict[str, Any]) -> str:
    """Translate one job, printing ESTIMATE and PROGRESS lines; return the output path.

    Raises:
        InputError: the job's input, output, model or options are bad.
    """
    tic = time.perf_counter()
    translator = models.get(job.get("model"), job.get("batch_size"))
    reporter = Reporter("lines", 1)
    network_before = translator.network_seconds
    out = translator.translate_file(job["input"], job["output"], job.get("direction"), job.get("axis", "axial"),
                                    job.get("fuse", DEFAULT_FUSION), job.get("dtype", "float32"), overwrite=True,
                                    progress=reporter.slices, on_start=reporter.expect,
                                    calibrate=job.get("calibration", True),
                                    bias_field=job.get("bias_field", "restore"))
    # the split says what a job costs beyond the network (reading, statistics, writing, a model load)
    print(f"TIMING {time.perf_counter() - tic:.4g} {translator.network_seconds - network_before:.4g}", flush=True)
    return str(out)


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medsynth worker``: translate jobs from stdin until it ends."""
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads", f"{args.threads} must be at least 1")
    import medsynth.inference  # noqa: F401  the imports a job needs, paid before READY

    models = _Models(args.device, args.threads, args.precision)
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = _parse_job(line)
            out = run_job(models, job)
        except InputError as exc:
            print(f"FAILED {exc}", flush=True)
        except Exception as exc:  # one bad job must not end the worker: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            print(f"FAILED internal error ({type(exc).__name__}: {exc})".replace("\n", " "), flush=True)
        else:
            print(f"DONE {out}", flush=True)
    return 0
