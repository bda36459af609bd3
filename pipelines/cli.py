"""incidentlab-report: postmortem reports of runs, through papermill and nbconvert.

incidentlab-report RUN_ID [--source data] [--out reports] [--pdf]
incidentlab-report --all-closed [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller import __version__
from pipelines.errors import PipelineError
from pipelines.report import render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="incidentlab-report", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("run_id", nargs="?", help="the run to report on")
    ap.add_argument("--all-closed", action="store_true", help="every completed run without a report yet")
    ap.add_argument("--force", action="store_true", help="with --all-closed: redo reports that exist")
    ap.add_argument(
        "--source", default="data", help="a data directory, or a controller URL (with --token-file)"
    )
    ap.add_argument("--token-file", default="", help="an operator token, for a controller URL")
    ap.add_argument("--ca-file", default="", help="the CA that signed the controller's certificate")
    ap.add_argument("--out", type=Path, default=Path("reports"), help="reports go to OUT/RUN_ID/")
    ap.add_argument("--show-input", action="store_true", help="keep the code cells in the HTML")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ap.add_argument("--pdf", action="store_true", help="also print postmortem.pdf (headless Chromium)")
    ap.add_argument("--browser", default=None, help="the Chromium to print with (default: found on PATH)")
    args = ap.parse_args(argv)
    if bool(args.run_id) == args.all_closed:
        ap.error("give a RUN_ID or --all-closed")
    try:
        run_ids = (
            [args.run_id]
            if args.run_id
            else _closed(args.source, args.token_file, args.ca_file, args.out, args.force)
        )
        for run_id in run_ids:
            report = render(
                run_id,
                args.source,
                args.out,
                token_file=str(Path(args.token_file).resolve()) if args.token_file else "",
                ca_file=str(Path(args.ca_file).resolve()) if args.ca_file else "",
                show_input=args.show_input,
                timeout_s=args.timeout,
                pdf=args.pdf,
                browser=args.browser,
            )
            beside = ", ".join(p.name for p in (report.notebook, report.pdf) if p is not None)
            print(f"{run_id}: {report.html} ({beside} beside it)")
            if report.pdf_error:
                print(f"incidentlab-report: no PDF: {report.pdf_error}", file=sys.stderr)
        if not run_ids:
            print("no completed run without a report")
    except PipelineError as exc:
        print(f"incidentlab-report: {exc}", file=sys.stderr)
        return 1
    return 0


def _closed(source: str, token_file: str, ca_file: str, out: Path, force: bool) -> list[str]:
    from workbench import Workbench, WorkbenchError

    token = Path(token_file).read_text().strip() if token_file else None
    try:
        with Workbench(_local(source), token=token, ca_file=ca_file or None) as wb:
            runs = wb.runs(status="completed")
    except WorkbenchError as exc:
        raise PipelineError(str(exc)) from exc
    ids = [str(r) for r in runs["run_id"]]
    return [r for r in ids if force or not (out / r / "postmortem.html").is_file()]


def _local(source: str) -> str:
    return source if source.startswith(("http://", "https://")) else str(Path(source).resolve())


if __name__ == "__main__":
    raise SystemExit(main())
