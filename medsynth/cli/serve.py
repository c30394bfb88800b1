"""``medsynth-serve``: serve models over HTTP (:func:`medsynth.server.create_app` under uvicorn)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from typing import Sequence

from medsynth.cli.formatter import HelpFormatter
from medsynth.errors import InputError, exit_on_error

__all__ = ["build_parser", "main"]

# The server's logger: these lines read like the server's own.
log = logging.getLogger("medsynth.server")


def build_parser() -> argparse.ArgumentParser:
    """Options of ``medsynth-serve``."""
    parser = argparse.ArgumentParser(
        prog="medsynth-serve",
        description="Serve medsynth models over HTTP: POST a volume to /infer, get its translation back.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]PATH",
        help="model file or training run folder; repeat for several (default: the packaged model). "
        "Named after the file's stem or, for model.pt, its run folder, unless NAME= is given",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every route but /health")
    auth.add_argument("--token-file", type=Path, help="read the token from this file (keeps it out of `ps`)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--max-upload-mb", type=float, default=512, help="largest upload in MB")
    parser.add_argument("--queue-size", type=int, default=8, help="requests that may wait for the GPU")
    parser.add_argument("--workers", type=int, default=1, help="translations run at once")
    parser.add_argument("--batch-size", type=int, help="slices per forward pass (default: 4 on a CPU, 64 on a GPU)")
    parser.add_argument("--threads", type=int, help="CPU threads per translation (default: torch's, all cores)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere")
    parser.add_argument("--tmp-dir", type=Path, help="folder for per-request temporary files (default: a new private folder in the system's temporary folder)")
    parser.add_argument("--idle-timeout", type=float, default=30, metavar="SECONDS",
                        help="drop an upload that sends nothing for this long (answer 408, close the connection)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="least severe log messages shown")
    return parser


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a taken port is a one-line error before models load."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(host, f"unknown host ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"{host}:{port}", f"cannot listen ({exc.strerror})") from None
    return sock


@exit_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """``medsynth-serve``: serve models over HTTP (see :mod:`medsynth.server` for the routes)."""
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise InputError(str(args.port), "port must be in 0..65535")
    for option, value, low in (("--max-upload-mb", args.max_upload_mb, 1e-6), ("--queue-size", args.queue_size, 0),
                               ("--workers", args.workers, 1), ("--batch-size", args.batch_size, 1),
                               ("--threads", args.threads, 1), ("--idle-timeout", args.idle_timeout, 0.01)):
        if value is not None and value < low:
            raise InputError(f"{option} {value:g}", f"must be at least {low:g}")
    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(args.token_file, f"cannot read token ({exc.strerror})") from None
        if not token:
            raise InputError(args.token_file, "empty token file")
    # FastAPI, uvicorn and torch: imported only once the options are parsed, so --help stays instant
    from medsynth.server import create_app, parse_model_specs

    models = parse_model_specs(args.model)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    import uvicorn  # the optional [server] extra

    sock = _listen(args.host, args.port)
    try:
        app = create_app(
            models,
            device=args.device,
            token=token,
            max_upload_mb=args.max_upload_mb,
            queue_size=args.queue_size,
            workers=args.workers,
            tmp_dir=args.tmp_dir,
            batch_size=args.batch_size,
            threads=args.threads,
            precision=args.precision,
            idle_timeout=args.idle_timeout,
        )
        host, port = sock.getsockname()[:2]
        if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s without --token: anyone who can reach this port can use the GPU", args.host)
        log.info("medsynth-serve listening on http://%s:%d", host if ":" not in host else f"[{host}]", port)
        config = uvicorn.Config(app, log_level=args.log_level, access_log=False, log_config=None)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            # uvicorn has shut down gracefully and re-raises Ctrl-C; for a server that is the normal way to stop
            log.info("stopped")
    finally:
        sock.close()
    return 0
