"""incidentlab-controller: serve the controller API."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from controller import __version__
from controller.config import load_settings
from controller.errors import ControllerError


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from controller.api.server import uvicorn_options
    from controller.app import create_app

    settings = load_settings(args.config)
    app = create_app(settings, init_store=args.init)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger(__name__)
    scheme = "https" if settings.tls_cert_file is not None else "http"
    print(
        f"incidentlab-controller: listening on {scheme}://{settings.host}:{settings.port}",
        file=sys.stderr,
        flush=True,
    )
    if settings.tls_cert_file is None:
        log.warning(
            "serving plain HTTP on %s:%d (server.allow_http): tokens and telemetry travel in the clear",
            settings.host,
            settings.port,
        )
    uvicorn.run(
        app, **uvicorn_options(settings, app.guard, log_level=args.log_level, access_log=args.access_log)
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incidentlab-controller", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API under uvicorn (one worker)")
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument(
        "--init",
        action="store_true",
        help="initialise an empty (0-byte or table-less) database file instead of refusing it",
    )
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning")
    serve.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ControllerError as exc:
        print(f"incidentlab-controller: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
