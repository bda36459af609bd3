"""sockets: TCP socket queues through sock_diag, falling back to /proc/net/tcp and tcp6.

Per-state counts, listen sockets whose accept queue nears the backlog, the
sockets with the fullest receive and send queues, and those retransmitting
most (tcp_info). The /proc fallback costs more (it walks every hash bucket as
text) and has no backlog and no tcp_info: those fields are None.
"""

from __future__ import annotations

import probe_core

from collector.sources.base import PathPlan, Source, SourceContext, SourceResult
from collector.sources.registry import register

TOP_SOCKETS = 10


@register
class SocketsSource(Source):
    name = "sockets"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._why_file: str | None = None
        if ctx.fallback_forced(self.name):
            self._why_file = "sock_diag turned off by configuration (force_fallback)"
        else:
            try:
                probe_core.sock_diag_tcp(top_n=0)
            except probe_core.ReadError as exc:
                # EPROTONOSUPPORT/ENOENT: inet_diag or tcp_diag is not built or loaded.
                self._why_file = f"sock_diag unavailable: {exc}"

    def plan(self) -> PathPlan:
        return PathPlan("kernel") if self._why_file is None else PathPlan("file", self._why_file)

    def sample(self) -> SourceResult:
        ratio = self.ctx.settings.backlog_ratio
        if self._why_file is None:
            try:
                return SourceResult.ok("kernel", dict(probe_core.sock_diag_tcp(TOP_SOCKETS, ratio)))
            except probe_core.ReadError as exc:
                reason = f"sock_diag failed this sample: {exc}"
        else:
            reason = self._why_file
        summary = probe_core.read_proc_net_tcp(self.ctx.host_root, TOP_SOCKETS, ratio)
        return SourceResult.fallback(reason, dict(summary))
