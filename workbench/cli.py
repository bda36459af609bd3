"""incidentlab: the operator's command line, in the StackStorm st2 habit.

    incidentlab runs [--status S] [--host H] [--scope host|fleet] [--limit N] [--json]
    incidentlab show RUN [--json]
    incidentlab approve RUN [--steps 1,2] [--reason TEXT]
    incidentlab reject RUN --reason TEXT
    incidentlab rollback RUN --reason TEXT
    incidentlab replay RUN
    incidentlab report RUN [--out FILE]
    incidentlab incidents [--json]
    incidentlab check-config --controller FILE | --collector FILE

The controller is ``--url`` (or INCIDENTLAB_URL), the operator token is read from
``--token-file`` (or INCIDENTLAB_TOKEN_FILE): a token never goes on a command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from workbench.client import ApiSource
from workbench.errors import WorkbenchError

PROG = "incidentlab"


def version() -> str:
    from controller import __version__

    return __version__


def _when(t: Any) -> str:
    from datetime import UTC, datetime

    if not isinstance(t, int | float):
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO) -> None:
    cells = [[str(c) for c in header], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _source(args: argparse.Namespace) -> ApiSource:
    url = args.url or os.environ.get("INCIDENTLAB_URL") or "https://127.0.0.1:8443"
    token_file = args.token_file or os.environ.get("INCIDENTLAB_TOKEN_FILE")
    if not token_file:
        raise WorkbenchError("no operator token: give --token-file (or set INCIDENTLAB_TOKEN_FILE)")
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise WorkbenchError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    verify: bool | str = args.ca_file or os.environ.get("INCIDENTLAB_CA_FILE") or True
    return ApiSource(url, token, verify=verify)


def dump(doc: Any, out: TextIO) -> int:
    json.dump(doc, out, indent=2, default=str)
    out.write("\n")
    return 0


def cmd_runs(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    runs = src.list_runs(status=args.status, host=args.host, limit=args.limit)
    if args.scope:
        runs = [r for r in runs if r.get("scope", "host") == args.scope]
    if args.json:
        return dump(runs, out)
    rows = [
        (
            r["run_id"],
            _when(r["created_at"]),
            r["host_id"],
            r["family"],
            (r.get("culprit") or {}).get("id"),
            r["status"],
            r.get("state"),
            "yes" if r.get("pages", True) else "no",
        )
        for r in runs
    ]
    table(rows, ("RUN", "OPENED (UTC)", "HOST", "FAMILY", "CULPRIT", "STATUS", "STATE", "PAGES"), out)
    return 0


def _plan(body: dict[str, Any]) -> dict[str, Any] | None:
    return next((a["payload"] for a in body["chain"] if a["kind"] == "execution_plan"), None)


def cmd_show(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    body = src.run(args.run_id)
    if args.json:
        return dump(body, out)
    run = body["run"]
    out.write(f"run       {run['run_id']} ({run.get('scope', 'host')}) on {run['host_id']}\n")
    out.write(f"family    {run['family']}, confidence {run['confidence']:.2f}\n")
    out.write(f"culprit   {(run.get('culprit') or {}).get('kind')} {(run.get('culprit') or {}).get('id')}\n")
    out.write(f"status    {run['status']}; fault {run.get('state')}, flaps {run.get('flaps', 0)}\n")
    out.write(
        f"times     began {_when(run.get('fault_started_at'))}, detected {_when(run['created_at'])} "
        f"({run.get('time_to_detect_s')} s), resolved {_when(run.get('resolved_at'))} "
        f"({run.get('time_to_resolve_s')} s)\n"
    )
    hyps: list[dict[str, Any]] = next(
        (a["payload"]["hypotheses"] for a in body["chain"] if a["kind"] == "root_cause_hypothesis"), []
    )
    if hyps:
        out.write(f"cause     {hyps[0]['summary']}\n")
    out.write("stages\n")
    table([(a["stage_index"], a["kind"], a["status"]) for a in body["chain"]], ("#", "KIND", "STATUS"), out)
    plan = _plan(body)
    if plan:
        out.write(f"plan      {plan['plan_hash']}\n")
        rows = [(s["step"], s["action"], s["target"], s["decision"], s.get("reason")) for s in plan["steps"]]
        table(rows, ("STEP", "ACTION", "TARGET", "DECISION", "WHY"), out)
    pm = body.get("postmortem")
    if pm:
        out.write(f"postmortem {pm['status']}" + (f": {pm['path']}" if pm.get("path") else "") + "\n")
    if body.get("problems"):
        out.write("PROBLEMS: " + "; ".join(body["problems"]) + "\n")
    return 0


def _steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise WorkbenchError(f"--steps takes step numbers separated by commas, not {text!r}") from None


def cmd_approve(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    plan = _plan(src.run(args.run_id))
    if plan is None:
        raise WorkbenchError(f"run {args.run_id} has no plan to approve")
    got = src.approve(args.run_id, plan["plan_hash"], _steps(args.steps), args.reason)
    out.write(
        f"approved {args.run_id} (plan {got['plan_hash'][:12]}..., steps {got['steps'] or 'all'}) "
        f"until {_when(got.get('expires_at'))} UTC\n"
    )
    return 0


def cmd_reject(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    src.reject(args.run_id, args.reason)
    out.write(f"rejected {args.run_id}: nothing in its plan runs\n")
    return 0


def cmd_rollback(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    got = src.rollback(args.run_id, args.reason)
    rows = [(r.get("step"), r.get("action"), r.get("outcome"), r.get("reason")) for r in got["rollbacks"]]
    table(rows, ("STEP", "ACTION", "OUTCOME", "WHY"), out)
    return 0


def cmd_replay(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    chain = src.replay(args.run_id)
    out.write(f"replayed {args.run_id}: {len(chain)} stages\n")
    return 0


def cmd_report(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    html = src.postmortem_html(args.run_id)
    if args.out:
        Path(args.out).write_text(html)
        out.write(f"{args.out}\n")
    else:
        out.write(html)
    return 0


def cmd_incidents(src: ApiSource, args: argparse.Namespace, out: TextIO) -> int:
    incs = src.incidents(limit=args.limit)
    if args.json:
        return dump(incs, out)
    rows = [
        (
            i["run_id"],
            _when(i["created_at"]),
            i["family"],
            (i.get("culprit") or {}).get("id"),
            i.get("member_count"),
            i.get("live_members"),
            i.get("state"),
        )
        for i in incs
    ]
    table(rows, ("INCIDENT", "OPENED (UTC)", "FAMILY", "SERVICE OR GROUP", "HOSTS", "LIVE", "STATE"), out)
    return 0


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    """Settings checked as the service would at start, without starting it."""
    if bool(args.controller) == bool(args.collector):
        raise WorkbenchError("give --controller FILE or --collector FILE")
    try:
        if args.controller:
            from controller.config import load_settings as controller_settings
            from controller.detectors.rules import Rules

            settings = controller_settings(Path(args.controller))
            if settings.workflow.rules_file:  # read at start too: a bad rule stops the controller
                Rules.load(Path(settings.workflow.rules_file))
        else:
            from collector.config import load_settings as collector_settings

            collector_settings(Path(args.collector))
    except Exception as exc:  # each service's ConfigError: what it would refuse at start
        raise WorkbenchError(str(exc)) from None
    out.write(f"{args.controller or args.collector}: ok\n")
    return 0


COMMANDS: dict[str, Callable[[ApiSource, argparse.Namespace, TextIO], int]] = {
    "runs": cmd_runs,
    "show": cmd_show,
    "approve": cmd_approve,
    "reject": cmd_reject,
    "rollback": cmd_rollback,
    "replay": cmd_replay,
    "report": cmd_report,
    "incidents": cmd_incidents,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("--url", help="the controller (default INCIDENTLAB_URL, else https://127.0.0.1:8443)")
    p.add_argument("--token-file", help="an operator token (default INCIDENTLAB_TOKEN_FILE)")
    p.add_argument(
        "--ca-file", help="the CA that signed the controller's certificate (default INCIDENTLAB_CA_FILE)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", help="runs, newest first")
    runs.add_argument("--status")
    runs.add_argument("--host")
    runs.add_argument("--scope", choices=("host", "fleet"))
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one run: cause, stages, plan, postmortem")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true")
    approve = sub.add_parser("approve", help="approve the run's plan (all steps, or --steps)")
    approve.add_argument("run_id")
    approve.add_argument("--steps", help="step numbers, comma separated")
    approve.add_argument("--reason", default="")
    for name, what in (("reject", "reject the run's plan"), ("rollback", "undo what the run applied")):
        c = sub.add_parser(name, help=what)
        c.add_argument("run_id")
        c.add_argument("--reason", required=True)
    replay = sub.add_parser("replay", help="re-run the stages from the stored evidence")
    replay.add_argument("run_id")
    report = sub.add_parser("report", help="the run's postmortem (HTML), made when it ended")
    report.add_argument("run_id")
    report.add_argument("--out", help="write it here instead of to standard output")
    incidents = sub.add_parser("incidents", help="fleet incidents with their members")
    incidents.add_argument("--limit", type=int, default=50)
    incidents.add_argument("--json", action="store_true")
    check = sub.add_parser("check-config", help="check a controller or collector settings file")
    check.add_argument("--controller")
    check.add_argument("--collector")
    return p


def run_cli(main: Callable[[], int]) -> int:
    """A CLI's body with the habits every CLI here keeps: no traceback on Ctrl-C or a closed
    pipe (``incidentlab runs | head``)."""
    try:
        return main()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at nothing so that flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    stream = out or sys.stdout

    def body() -> int:
        try:
            if args.command == "check-config":
                return cmd_check_config(args, stream)
            src = _source(args)
            try:
                return COMMANDS[args.command](src, args, stream)
            finally:
                src.close()
        except WorkbenchError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
