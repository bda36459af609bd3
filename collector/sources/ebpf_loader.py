"""Compile and load the eBPF programs in a short-lived child, and keep only their fds.

bcc compiles C with the LLVM it links in, and LLVM stays mapped and its heap stays
grown for the life of the process that imported it: about 120 MB of the collector's
RSS. So the collector never imports bcc. It starts ``python -m
collector.sources.ebpf_loader``, which compiles and loads ebpf.bpf.c (bcc attaches
each TRACEPOINT_PROBE as it loads), and sends back over a Unix socket, with
SCM_RIGHTS, the fds that keep the programs running and readable: each tracepoint's
perf event (an attachment lives as long as its fd), each program, and the maps the
collector reads. The child then leaves with ``os._exit`` so that bcc's atexit
cleanup, which would detach the tracepoints it shares with the collector, never runs.
The collector reads the maps and the perf output through probe_core (bpf() and
perf_event_open(), no LLVM). Closing the fds detaches everything.

The trade-off: the programs are compiled at every start (a few seconds, in a child
whose memory is given back when it exits) and the child needs what bcc needs (kernel
headers, CAP_BPF and CAP_PERFMON), exactly as before; nothing is pinned in bpffs, so
a collector that dies leaves nothing attached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from collector.errors import CollectorError

PROGRAM = Path(__file__).with_name("ebpf.bpf.c")
MAPS = ("events", "runq_hist", "bio_hist")  # what the collector reads
MAX_FDS = 64
MAX_MESSAGE = 1 << 16


class LoadError(CollectorError):
    """The loader child could not compile, load or hand over the programs; the message says why."""


def compile_flags(host_root: str) -> list[str]:
    """bcc's cflags for this kernel: whether oom:mark_victim carries the victim's memory."""
    flags = ["-Wno-macro-redefined"]
    fmt = Path(host_root) / "sys" / "kernel" / "tracing" / "events" / "oom" / "mark_victim" / "format"
    try:
        if "total_vm" in fmt.read_text():
            flags.append("-DMARK_VICTIM_HAS_RSS")
    except OSError:
        pass
    return flags


def parse_cpu_list(text: str) -> list[int]:
    """CPU numbers from a kernel cpu list such as ``0-3,8,10-11``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise LoadError(f"not a CPU list: {text.strip()[:80]!r}") from None
        if first < 0 or last < first or last - first > 65536:
            raise LoadError(f"not a CPU list: {text.strip()[:80]!r}")
        cpus.extend(range(first, last + 1))
    return cpus


@dataclass
class Loaded:
    """The fds the child handed over, by role; closing them detaches the programs."""

    tracepoints: dict[str, int] = field(default_factory=dict)
    programs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fds in (self.tracepoints, self.programs, self.maps):
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            fds.clear()


def _unpack(meta: dict[str, object], fds: list[int]) -> Loaded:
    names = [meta.get(k) for k in ("tracepoints", "programs", "maps")]
    if not all(isinstance(n, list) and all(isinstance(x, str) for x in n) for n in names):
        raise LoadError("the loader's answer has no fd names")
    tps, progs, maps = (list(n) for n in names if isinstance(n, list))
    if len(tps) + len(progs) + len(maps) != len(fds):
        raise LoadError(f"the loader named {len(tps) + len(progs) + len(maps)} fds and sent {len(fds)}")
    it = iter(fds)
    loaded = Loaded({n: next(it) for n in tps}, {n: next(it) for n in progs}, {n: next(it) for n in maps})
    missing = [m for m in MAPS if m not in loaded.maps]
    if missing or not loaded.tracepoints:
        raise LoadError(f"the loader sent no {', '.join(missing) or 'tracepoint'}")
    return loaded


def load(host_root: str, timeout_s: float, python: str = sys.executable) -> Loaded:
    """Run the loader child and take its fds; LoadError says why when it cannot."""
    # Out of fds, a full /tmp: the source falls back, the collector runs.
    try:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError as exc:
        raise LoadError(f"cannot set up the loader: {exc}") from exc
    try:
        errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the socket, below)
    except OSError as exc:
        parent.close()
        child.close()
        raise LoadError(f"cannot set up the loader: {exc}") from exc
    with parent, errors:
        try:
            with child:
                proc = subprocess.Popen(
                    [python, "-m", "collector.sources.ebpf_loader", "--sock", str(child.fileno()), host_root],
                    pass_fds=(child.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=errors,
                    stderr=errors,
                )
        except OSError as exc:
            raise LoadError(f"cannot start the loader: {exc.strerror}") from exc
        try:
            parent.settimeout(timeout_s)
            try:
                msg, fds, _, _ = socket.recv_fds(parent, MAX_MESSAGE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
            except TimeoutError:
                raise LoadError(f"the loader did not answer within {timeout_s} s") from None
            except OSError as exc:
                raise LoadError(f"reading the loader's answer: {exc}") from exc
        finally:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        try:
            meta = json.loads(msg) if msg else {}
        except ValueError:  # not JSON, or not even UTF-8
            meta = {}
        if not isinstance(meta, dict) or not meta.get("ok"):
            for fd in fds:
                os.close(fd)
            errors.seek(0)
            tail = errors.read()[-2000:].decode("utf-8", "replace").strip()
            why = meta.get("error") if isinstance(meta, dict) else None
            last = tail.splitlines()[-1] if tail else f"the loader exited with status {proc.returncode}"
            raise LoadError(str(why or last)[:500])
        try:
            return _unpack(meta, fds)
        except LoadError:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise


def _child(sock_fd: int, host_root: str) -> int:
    sock = socket.socket(fileno=sock_fd)
    try:
        from bcc import BPF

        bpf = BPF(text=PROGRAM.read_bytes(), cflags=compile_flags(host_root))
        tps = {k.decode() if isinstance(k, bytes) else str(k): int(v) for k, v in bpf.tracepoint_fds.items()}
        progs = {k.decode() if isinstance(k, bytes) else str(k): int(f.fd) for k, f in bpf.funcs.items()}
        maps = {m: int(bpf[m.encode()].get_fd()) for m in MAPS}
        meta = {"ok": True, "tracepoints": list(tps), "programs": list(progs), "maps": list(maps)}
        socket.send_fds(sock, [json.dumps(meta).encode()], [*tps.values(), *progs.values(), *maps.values()])
        return 0
    except Exception as exc:  # bcc raises bare Exception when clang or the verifier refuses
        answer = {"ok": False, "error": f"eBPF programs did not load: {str(exc)[:300]}"}
        with contextlib.suppress(OSError):
            sock.send(json.dumps(answer).encode())
        return 1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="compile and load the eBPF programs; hand their fds over")
    ap.add_argument("--sock", type=int, required=True)
    ap.add_argument("host_root")
    args = ap.parse_args(argv)
    code = _child(args.sock, args.host_root)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: bcc's atexit cleanup would detach what the collector now holds


if __name__ == "__main__":
    main()
