"""incidentlab workbench: runs as pandas frames, evidence plots, replay diffs, and
ipywidgets to step through and approve runs.

    from workbench import Workbench
    wb = Workbench("data")                        # a local data directory, read only
    wb = Workbench("https://ctl:8443", token=..., ca_file="ca.pem")  # or a controller, to approve
    wb.runs()                                     # one row per run
    wb.chain(run_id); wb.evidence(run_id); wb.hypotheses(run_id); wb.audit(); wb.replay(run_id)
    wb.incidents(); wb.members(fleet_run_id); wb.fleet_view(fleet_run_id)  # incidents across hosts
    wb.diagram(run_id); wb.finding_plots(run_id); wb.facts(run_id)          # what a postmortem shows
    wb.live(host)                                 # a host's window and hypotheses, refreshing
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import pandas as pd

from workbench import frames
from workbench.client import ApiSource, LocalSource, Source, open_source
from workbench.errors import WorkbenchError
from workbench.postmortem import DECISIONS as DECISION_KINDS
from workbench.postmortem import Facts

__all__ = ["ApiSource", "LocalSource", "Workbench", "WorkbenchError"]


class Workbench:
    def __init__(
        self, source: str | Path | Source, token: str | None = None, ca_file: str | Path | None = None
    ) -> None:
        self.source = open_source(source, token, ca_file)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs(
        self,
        *,
        status: str | None = None,
        host: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int = 100_000,
    ) -> pd.DataFrame:
        """One row per run, newest first; since and until take datetimes, strings or Unix
        seconds (a time without a zone is UTC)."""
        return frames.runs_frame(
            self.source.list_runs(
                status=status, host=host, since=_unix(since), until=_unix(until), limit=limit
            )
        )

    def incidents(self, *, since: Any = None, limit: int = 1000) -> pd.DataFrame:
        """One row per fleet incident (one fault across hosts), newest first: family, how it
        was grouped (same service, same label group, correlated), the service or label group,
        members and live members, lifecycle and times to detect and resolve."""
        return frames.incidents_frame(self.source.incidents(since=_unix(since), limit=limit))

    def members(self, run_id: str) -> pd.DataFrame:
        """A fleet incident's member runs, one row per host."""
        return frames.members_frame(self.source.fleet_members(run_id))

    def blast_radius(self, run_id: str) -> dict[str, Any]:
        """How far a fleet incident reaches: hosts, services, zones, clusters, shares."""
        chain = self.source.run(run_id)["chain"]
        hyps: list[dict[str, Any]] = next(
            (a["payload"]["hypotheses"] for a in chain if a["kind"] == "root_cause_hypothesis"), []
        )
        radius: dict[str, Any] = hyps[0].get("blast_radius", {}) if hyps else {}
        return radius

    def fleet_view(self, run_id: str) -> Any:
        """A fleet incident at a glance: its members' signal as a hosts-by-time heatmap,
        with the blast radius in the title."""
        from workbench.plots import plot_fleet

        return plot_fleet(frames.fleet_heat(self.source.evidence(run_id)), self.blast_radius(run_id), run_id)

    def postmortem(self, run_id: str) -> dict[str, Any] | None:
        """The run's postmortem, made when it ended: status (queued, rendering, written,
        failed), and where it is (``path``; ``url`` through a controller) or why it failed."""
        return self.source.postmortem(run_id)

    def run(self, run_id: str) -> dict[str, Any]:
        """The run as the API answers it: run, chain, manifest, problems, actions."""
        return self.source.run(run_id)

    def chain(self, run_id: str) -> pd.DataFrame:
        return frames.chain_frame(self.source.run(run_id)["chain"])

    def hypotheses(self, run_id: str) -> pd.DataFrame:
        return frames.hypotheses_frame(self.source.run(run_id)["chain"])

    def evidence(self, run_id: str, signals: list[str] | None = None) -> pd.DataFrame:
        """Tidy (ts, signal, value, window) of the run's evidence window and the verifier's after it."""
        return frames.evidence_frame(self.source.evidence(run_id), self.source.after(run_id), signals)

    def audit(self, **filters: Any) -> pd.DataFrame:
        """Oldest first; filters run_id, actor, kind, since, until (times as for runs())."""
        for key in ("since", "until"):
            if key in filters:
                filters[key] = _unix(filters[key])
        return frames.audit_frame(self.source.audit(**filters))

    def replay(self, run_id: str) -> pd.DataFrame:
        """Re-run the stages with the current code; the fields whose value differs from the record."""
        recorded = self.source.run(run_id)["chain"]
        return frames.diff_frame(recorded, self.source.replay(run_id))

    def plot(self, run_id: str, signals: list[str] | None = None) -> Any:
        from workbench.plots import plot_run

        return plot_run(self, run_id, signals)

    def finding_plots(self, run_id: str) -> list[tuple[dict[str, Any], Any]]:
        """One small figure per signal that fired: (finding, figure), in rank order."""
        from workbench.plots import finding_figures

        return finding_figures(self, run_id)

    def diagram(self, run_id: str, current: int | None = None) -> Diagram:
        """The run's chain as an SVG diagram (status colours, the gate and the approvals)."""
        from workbench.diagram import chain_svg

        chain = self.source.run(run_id)["chain"]
        decisions = [e for e in self.source.audit(run_id=run_id) if e.get("kind") in DECISION_KINDS]
        return Diagram(chain_svg(chain, decisions, current=current))

    def window(self, host_id: str, signals: list[str] | None = None, points: int = 300) -> pd.DataFrame:
        """A host's hot-state window now (through a controller): tidy (ts, signal, value)."""
        from workbench.live import window_frame

        return window_frame(self.source.window(host_id, signals, points))

    def live(self, host_id: str, *, every_s: float = 5.0, signals: list[str] | None = None) -> Any:
        """A live look at a host: its window and current hypotheses, refreshing every
        ``every_s`` while on (a LiveView widget; ``.stop()`` ends it)."""
        from workbench.live import LiveView

        return LiveView(self, host_id, every_s=every_s, signals=signals)

    def facts(self, run_id: str) -> Facts:
        """What the postmortem is written from (workbench.postmortem): run, chain, audit."""
        return Facts.of(self.source.run(run_id), self.source.audit(run_id=run_id))


class Diagram:
    """SVG text that a notebook draws (``_repr_svg_``) and a page embeds (``svg``)."""

    def __init__(self, svg: str) -> None:
        self.svg = svg

    def _repr_svg_(self) -> str:
        return self.svg

    def __repr__(self) -> str:  # the text a notebook stores beside the picture: no address
        stages = self.svg.count('class="stage"')
        return f"<chain diagram: {stages} stages>"

    def _repr_html_(self) -> str:  # inline in HTML reports: searchable, printed sharp in the PDF
        return f'<div class="incidentlab-chain">{self.svg}</div>'


def _unix(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, numbers.Real):  # numpy integers and floats too
        return float(value)
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return float(ts.timestamp())
