"""Postmortems made when runs end: a bounded background worker renders each one.

When a run resolves (its fault ended: times to detect and resolve known) or completes (its
stages ended), as ``workflow.postmortems.when`` says, the engine asks for its postmortem.
The ask is an append to a bounded queue (past ``queue_max`` it is dropped and counted):
nothing on the workflow's path waits for a render. One worker thread takes the asks in
order, records each in the ``postmortems`` table, and runs the renderer in a process of its
own (papermill and nbconvert through ``incidentlab-report`` by default; the controller never
imports the pipelines) under ``timeout_s``, at most ``max_attempts`` times. The result, the
report's path or the error, is in the table and the audit log (``postmortem_written``,
``postmortem_failed``); the run's API entry links it. A restart picks up the asks it left
unfinished.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.config import PostmortemSettings
from controller.errors import ConfigError
from controller.store.runs import PostmortemRow, RunStore

log = logging.getLogger(__name__)
ERROR_TAIL = 2000  # characters of the renderer's output kept with a failure
Renderer = Callable[[list[str], float], tuple[int, str]]  # (argv, timeout) -> (exit code, output)


class Command:
    """The renderer in a process of its own (its output, the end of it, says why it failed);
    ``stop`` ends one that is running, so a controller that stops leaves none behind."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._stopped = False

    def __call__(self, argv: list[str], timeout_s: float) -> tuple[int, str]:
        if self._stopped:
            return 125, "the controller is stopping"
        try:
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as exc:
            return 127, f"could not start {argv[0]}: {exc}"
        try:
            out, _ = self._proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return 124, f"timed out after {timeout_s:g} s"
        finally:
            code = self._proc.returncode
            self._proc = None
        return code, (out or "")[-ERROR_TAIL:]

    def stop(self) -> None:
        self._stopped = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


# What incidentlab-report prints PDFs with, looked for in this order (pipelines/report.py
# looks for the same: a controller that starts with pdf on can print).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def which_browser(name: str | None) -> str | None:
    """The browser that prints postmortem PDFs: ``name`` (a path or a command), else the first
    of BROWSERS on PATH; None when there is none."""
    for candidate in [name] if name else BROWSERS:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def browser_of(name: str | None) -> str:
    """The browser the PDFs will be printed with, or ConfigError: pdf on and nothing to print
    with is found at start, not at the first postmortem."""
    found = which_browser(name)
    if found is not None:
        return found
    raise ConfigError(
        f"workflow.postmortems.pdf is on but no browser to print with was found "
        f"({name or ' or '.join(BROWSERS)}): install Debian's chromium, set browser, or turn pdf off"
    )


class Postmortems:
    def __init__(
        self,
        runs: RunStore,
        settings: PostmortemSettings,
        *,
        data_dir: Path,
        clock: Callable[[], float],
        render: Renderer | None = None,
    ) -> None:
        self.runs = runs
        self.s = settings
        self.dir = (settings.dir or data_dir / "postmortems").resolve()
        self.source = settings.source or str(data_dir.resolve())
        self.clock = clock
        self.render: Renderer = render or Command()
        if settings.enabled and settings.pdf and render is None:
            self.browser = browser_of(settings.browser)
        self._queue: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self.last_error: str | None = None

    def wanted(self, why: str) -> bool:
        return self.s.enabled and (self.s.when == "both" or self.s.when == why)

    def ask(self, run_id: str, why: str) -> None:
        """A run ended (``why``: resolved or completed): its postmortem, later. Never blocks."""
        if not self.wanted(why):
            return
        with self._lock:
            if len(self._queue) >= self.s.queue_max:
                self.dropped += 1
                return
            self._queue.append((run_id, why))
        self._wake.set()

    def command(self, run_id: str) -> list[str]:
        base = list(self.s.command) if self.s.command else [sys.executable, "-m", "pipelines.cli"]
        argv = [*base, run_id, "--source", self.source, "--out", str(self.dir)]
        if self.s.token_file is not None:
            argv += ["--token-file", str(self.s.token_file)]
        if self.s.ca_file is not None:
            argv += ["--ca-file", str(self.s.ca_file)]
        if self.s.pdf:
            argv += ["--pdf"] + (["--browser", self.s.browser] if self.s.browser else [])
        return argv

    def path_of(self, run_id: str) -> Path:
        return self.dir / run_id / "postmortem.html"

    # --- the worker ------------------------------------------------------------------------------

    def start(self, resume: bool = True) -> None:
        """``resume``: queue the postmortems a stop left unfinished (the leader's part when
        replicas share the fleet: one of them, not each)."""
        if self._thread is not None or not self.s.enabled:
            return
        left = []
        if resume:
            with self.runs.read() as tx:
                left = tx.unfinished_postmortems(self.s.queue_max)
        with self._lock:
            self._queue.extendleft((r, "resumed") for r in reversed(left))
        self._thread = threading.Thread(target=self._loop, name="postmortems", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        stop = getattr(self.render, "stop", None)
        if stop is not None:
            stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                item = self._queue.popleft() if self._queue else None
            if item is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self.make(*item)
            except Exception:  # the store hiccupped: this one is left queued for a restart
                log.exception("the postmortem of %s could not be made", item[0])

    def make(self, run_id: str, why: str) -> PostmortemRow | None:
        """Render one run's postmortem now (the worker's body; tests call it directly)."""
        now = self.clock()
        with self.runs.begin() as tx:
            if why != "resumed":
                tx.request_postmortem(run_id, why=why, at=now)
            row = tx.postmortem(run_id)
            if row is None or row["status"] not in ("queued", "rendering"):
                return row  # asked twice (resolved, then completed): made once
            tx.start_postmortem(run_id, at=now)
        out, code = "", 1
        for _ in range(self.s.max_attempts):
            code, out = self.render(self.command(run_id), self.s.timeout_s)
            if code == 0:
                break
        path = self.path_of(run_id)
        ok = code == 0 and path.is_file()
        error = (
            None
            if ok
            else (out.strip() or f"the renderer exited {code} without writing {path}")[-ERROR_TAIL:]
        )
        at = self.clock()
        with self.runs.begin() as tx:
            tx.finish_postmortem(run_id, ok=ok, at=at, path=str(path) if ok else None, error=error)
            detail: dict[str, Any] = {"path": str(path)} if ok else {"error": (error or "")[-500:]}
            if ok and self.s.pdf and not path.with_suffix(".pdf").is_file():
                # The HTML stands; the print's failure is said, not made the postmortem's.
                detail["pdf_error"] = (out.strip() or "no PDF was printed")[-500:]
            tx.audit(
                at=at,
                actor="postmortems",
                kind="postmortem_written" if ok else "postmortem_failed",
                run_id=run_id,
                detail=detail,
            )
            got = tx.postmortem(run_id)
        if ok:
            self.written += 1
        else:
            self.failed += 1
            self.last_error = error
            log.warning("the postmortem of %s failed: %s", run_id, (error or "")[-300:])
        return got

    def stats(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
        return {
            "enabled": self.s.enabled,
            "when": self.s.when,
            "queued": queued,
            "dropped": self.dropped,
            "written": self.written,
            "failed": self.failed,
            "last_error": (self.last_error or "")[-300:] or None,
        }
