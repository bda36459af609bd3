"""incidentlab-controller: serve the controller API."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from controller.config import load_settings
from controller.errors import ControllerError


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from controller.api.server import uvicorn_options
    from controller.app import create_app

    settings = load_settings(args.config)
    app = create_app(settings, init_store=args.init)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.tls_cert_file is None:
        logging.getLogger(__name__).warning(
            "serving plain HTTP on %s:%d (server.allow_http): tokens and telemetry travel in the clear",
            settings.host,
            settings.port,
        )
    uvicorn.run(app, **uvicorn_options(settings, app.guard))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incidentlab-controller", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API under uvicorn (one worker)")
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument(
        "--init",
        action="store_true",
        help="initialise an empty (0-byte or table-less) database file instead of refusing it",
    )
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
