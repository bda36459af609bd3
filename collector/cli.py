"""incidentlab-collector: sample a host and print snapshots, or print what the collector can do here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from collector import __version__
from collector.config import load_settings
from collector.errors import CollectorError
from collector.sampler import Sampler
from collector.topology import topology_from


def _summary_line(name: str, entry: dict[str, Any]) -> str:
    reason = f"  ({entry['reason']})" if entry["reason"] else ""
    return (
        f"  {name:<10} {entry['status']:<11} {entry['path']:<6} {entry['duration_s'] * 1000:8.2f} ms{reason}"
    )


def _print_snapshot(snapshot: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(snapshot, sort_keys=True, default=str), flush=True)
        return
    interval = snapshot["interval_s"]
    head = f"snapshot at {time.strftime('%H:%M:%S', time.localtime(snapshot['ts']))}"
    print(head + (f", {interval:.2f} s after the last" if interval else ""))
    for name, entry in snapshot["sources"].items():
        print(_summary_line(name, entry))
    sys.stdout.flush()


def cmd_sample(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.interval is not None:
        overrides["interval_s"] = args.interval
    settings = load_settings(args.config, **overrides)
    sampler = Sampler(settings)
    try:
        count = 1 if args.once else args.count
        # Rates need two readings: --once takes a short first pass and reports the second.
        if args.once:
            sampler.sample()
            time.sleep(min(1.0, settings.interval_s))
        n = 0
        while count is None or n < count:
            started = time.monotonic()
            _print_snapshot(sampler.sample(), args.json)
            n += 1
            if count is not None and n >= count:
                break
            time.sleep(max(0.0, settings.interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 130
    finally:
        sampler.close()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    sampler = Sampler(settings)
    topology = topology_from(settings)
    try:
        topology.refresh()  # once, in the foreground: what the agent would send first
        info = sampler.info().to_dict() | {"labels": topology.labels(), "topology": topology.state()}
    finally:
        sampler.close()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"host {info['host_id']}  ({info['hostname']}, Linux {info['kernel']}, boot {info['boot_id']})")
    caps = info["capabilities"]
    print(
        f"capabilities: {', '.join(caps['effective']) or 'none'}; "
        f"perf_event_paranoid={caps['perf_event_paranoid']}"
    )
    print(f"bpf: {'yes' if caps['bpf'] else 'no: ' + str(caps['bpf_reason'])}")
    print(f"nvml: {'yes' if caps['nvml'] else 'no: ' + str(caps['nvml_reason'])}")
    labels = ", ".join(f"{k}={v}" for k, v in sorted(info["labels"].items()))
    print(f"labels: {labels or 'none'}")
    for where, why in info["topology"]["errors"].items():
        print(f"  labels from {where} failed: {why}")
    for name, src in info["sources"].items():
        state = "on " if src["enabled"] else "off"
        reason = f"  ({src['reason']})" if src["reason"] else ""
        print(f"  {name:<10} {state} {src['path']:<6}{reason}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # httpx imports its command-line client (rich, click, pygments: about 4 MB of RSS for as
    # long as the agent runs) whenever those happen to be installed; the agent never uses
    # it, and httpx goes on without it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from collector.agent import Agent

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    agent = Agent(load_settings(args.config))
    print(
        f"incidentlab-collector: running, stream {agent.spool.stream_id}, spool {agent.settings.spool.dir}, "
        f"sending to {agent.transport.url}",
        file=sys.stderr,
        flush=True,
    )
    agent.run(max_samples=args.count)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from collector.agent import read_status

    settings = load_settings(args.config)
    status = read_status(settings.spool.dir)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    agent = status.get("agent", {})
    print(f"stream {status['stream_id']}: next seq {status['next_seq']}, acked {status['acked']}")
    print(
        f"spool {status['spool_bytes']} bytes, {status['unacked_records']} unacked "
        f"(oldest {status['oldest_unacked_age_s']} s), evicted {status['evicted_records']}, "
        f"corrupt {status['corrupt_records']}, dead letters {status['dead_letters']}"
    )
    print(
        f"sending to {agent.get('leader')}, last latency {agent.get('send_latency_s')} s, "
        f"last error: {agent.get('last_error')}"
    )
    print(f"status written {status['age_s']} s ago")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incidentlab-collector", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("sample", help="sample this host and print snapshots")
    sample.add_argument("--config", type=Path, help="YAML settings file")
    sample.add_argument(
        "--once", action="store_true", help="print one snapshot (after a warm-up pass for rates)"
    )
    sample.add_argument("--count", type=int, default=None, help="stop after this many snapshots")
    sample.add_argument("--interval", type=float, default=None, help="seconds between snapshots")
    sample.add_argument("--json", action="store_true", help="one JSON object per line")
    sample.set_defaults(func=cmd_sample)
    run = sub.add_parser("run", help="run the agent: sample, spool and ship to the controller")
    run.add_argument("--config", type=Path, help="YAML settings file")
    run.add_argument("--count", type=int, default=None, help="stop after this many samples (tests)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="the agent's health from its spool directory")
    status.add_argument("--config", type=Path, help="YAML settings file")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    info = sub.add_parser("info", help="print CollectorInfo: capabilities and each source's path")
    info.add_argument("--config", type=Path, help="YAML settings file")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CollectorError as exc:
        print(f"incidentlab-collector: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `incidentlab-collector info --json | head`: quiet, as such tools are
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    raise SystemExit(main())
