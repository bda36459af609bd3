"""Controller settings: a YAML file plus INCIDENTLAB_CONTROLLER_* environment overrides.

Refused at start when unsafe: auth on with no tokens, a token shorter than 16
characters, two tokens alike, caps that let a bomb through. This is the only
module that reads the environment.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from collector.config import BUS_SUBJECT_PREFIX, NatsSettings
from collector.settings_io import EnvOverYaml, describe, read_yaml_mapping
from collector.wire import Limits
from controller.errors import ConfigError
from controller.store.db import sqlalchemy_url

Role = Literal["collector", "operator", "admin"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MIN_TOKEN, MAX_TOKEN = 16, 4096
TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")  # RFC 6750 b64token
# Host patterns are host ids with shell wildcards (* ? [..]): fnmatch, case-sensitive.
HOST_PATTERN = re.compile(r"[A-Za-z0-9_.:@*?\[\]!-]{1,128}\Z")


class TokenSpec(_Strict):
    """One bearer token: given inline (env or YAML) or in a file; stored only as its SHA-256.
    ``hosts`` binds a collector token to the host ids it may write (patterns allowed)."""

    name: str = Field(min_length=1, max_length=64)
    role: Role
    token: SecretStr | None = None
    token_file: Path | None = None
    hosts: list[str] | None = Field(default=None, min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _one_source(self) -> TokenSpec:
        if (self.token is None) == (self.token_file is None):
            raise ValueError(f"token {self.name!r}: give exactly one of token and token_file")
        for p in self.hosts or []:
            if not HOST_PATTERN.match(p):
                raise ValueError(f"token {self.name!r}: {p!r} is not a host id or pattern")
        return self

    def secret(self) -> str:
        """The token, checked by the same rules however it is given; ConfigError names it."""
        if self.token is not None:
            value, where = self.token.get_secret_value(), "the inline token"
        else:
            assert self.token_file is not None
            where = f"token_file {self.token_file}"
            try:
                value = self.token_file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"token {self.name!r}: cannot read {self.token_file}: {exc}") from exc
            value = value.strip("\r\n")  # the newline an editor or `echo` leaves, nothing else
        if not value:
            raise ConfigError(f"token {self.name!r}: {where} is empty")
        if not MIN_TOKEN <= len(value) <= MAX_TOKEN:
            raise ConfigError(
                f"token {self.name!r}: {where} holds {len(value)} characters; "
                f"tokens are {MIN_TOKEN} to {MAX_TOKEN}"
            )
        if not TOKEN_CHARS.match(value):
            raise ConfigError(
                f"token {self.name!r}: {where} holds characters outside A-Z a-z 0-9 - . _ ~ + / "
                "(and trailing =)"
            )
        return value

    def digest(self) -> bytes:
        return hashlib.sha256(self.secret().encode()).digest()


class AuthSettings(_Strict):
    enabled: bool = True
    tokens: list[TokenSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tokens(self) -> AuthSettings:
        if not self.enabled:
            return self
        if not self.tokens:
            raise ValueError("auth is on but no tokens are configured (auth.tokens)")
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        seen: dict[bytes, str] = {}
        for t in self.tokens:
            try:
                digest = t.digest()
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
            if digest in seen:
                # Alike secrets would authenticate as whichever is listed last: refuse both names.
                raise ValueError(f"tokens {seen[digest]!r} and {t.name!r} are the same secret")
            seen[digest] = t.name
        return self


class ServerSettings(_Strict):
    """The HTTP front door: what one slow, idle or hostile client may hold.

    A connection has ``header_timeout_s`` to send a complete request head (of at most
    16 KiB, h11's cap, kept for both parsers); at most ``max_pending_connections`` connections may be
    waiting for one at a time, ``max_pending_per_peer`` of them from one client address;
    past that new connections get 503 and are closed. A body must keep arriving:
    ``body_timeout_s`` without a byte, or slower than ``body_min_rate_bytes_s`` once
    ``body_timeout_s`` has passed, ends it with 408 (the model of Apache's
    mod_reqtimeout). Tokens are checked before a body is read, and the bodies being read
    or decoded at once are bounded by ``max_inflight_body_bytes`` and
    ``max_inflight_batches``, and one client address's by its ``..._per_peer`` share
    (past any: 429 with Retry-After); body bytes count as they arrive, not as declared.
    """

    allow_http: bool = False  # plain HTTP without TLS: loopback tests and a trusted network only
    # /docs: the API to explore (Swagger UI, served from this process: no CDN), with an
    # Authorize button for the bearer token. The OpenAPI document is always at /openapi.json.
    docs: bool = True
    # The request parser: httptools (llhttp, C) or h11 (pure Python, a third of the loop's
    # time per batch); and the event loop: uvloop or the standard library's.
    http: Literal["httptools", "h11"] = "httptools"
    loop: Literal["uvloop", "asyncio"] = "uvloop"
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # 16 KiB/s: a 64 KiB batch over a 128 kbit/s link still makes it; a stalled sender does not.
    body_min_rate_bytes_s: int = Field(default=16 << 10, ge=1, le=1 << 30)
    max_pending_connections: int = Field(default=256, ge=1, le=100_000)
    # One client address's share: a collector needs one connection and one body at a time.
    # Behind a proxy every client is one address: the shares are generous for that reason.
    max_pending_per_peer: int = Field(default=64, ge=1, le=100_000)
    max_connections: int = Field(default=2048, ge=1, le=1_000_000)
    keep_alive_s: float = Field(default=5.0, gt=0, le=300)
    max_inflight_body_bytes: int = Field(default=64 << 20, ge=1 << 16, le=16 << 30)
    max_inflight_batches: int = Field(default=64, ge=1, le=100_000)
    max_inflight_batches_per_peer: int = Field(default=32, ge=1, le=100_000)
    # None: a quarter of max_inflight_body_bytes, and never less than one batch (ingest.max_body_bytes).
    max_inflight_bytes_per_peer: int | None = Field(default=None, ge=1 << 16, le=16 << 30)
    # Decode and validation run on these threads; gzip and the JSON check release the GIL.
    decode_workers: int = Field(default=2, ge=1, le=64)
    # A batch that decompresses to at most this is done on the event loop itself: an agent's
    # batch is 5-90 KiB, and the worst 256 KiB can hold (4,000 tiny source entries) is a few
    # ms; a thread hop would cost a third of the ingest path. 0: every batch to the pool.
    inline_decode_bytes: int = Field(default=256 << 10, ge=0, le=8 << 20)
    # Every route but ingest takes small JSON (approvals, replay clocks).
    max_api_body_bytes: int = Field(default=64 << 10, ge=1 << 10, le=16 << 20)


class IngestSettings(_Strict):
    # An agent's batch is one snapshot: 5-90 KiB of JSON, 2-25 KiB compressed. The spool
    # refuses records past 4 MiB by default (spool.max_record_bytes), so 8 MiB decompressed
    # is twice what any agent sends and bounds what one hostile body can cost.
    max_body_bytes: int = Field(default=8 << 20, ge=1 << 10, le=1 << 30)
    max_decompressed_bytes: int = Field(default=8 << 20, ge=1 << 10, le=4 << 30)
    dedupe_window: int = Field(default=4096, ge=16, le=1 << 20)
    # A sample or sent_at further ahead of this controller's clock is refused (a rejected ack).
    max_clock_skew_s: float = Field(default=120.0, ge=1, le=86_400)
    # Bounds on one batch: the wire contract's defaults (collector.wire.Limits), settable here.
    max_depth: int = Field(default=Limits.max_depth, ge=8, le=256)
    max_nodes: int = Field(default=Limits.max_nodes, ge=1000, le=10_000_000)
    max_events: int = Field(default=Limits.max_events, ge=0, le=1_000_000)


class HotStateSettings(_Strict):
    max_hosts: int = Field(default=10_000, ge=1, le=1_000_000)
    # All hosts together. Past it, hosts that stopped sending (nothing for missing_after_s)
    # go first, least recently seen first; a live host is never evicted for bytes (the one
    # sending gives up its oldest samples instead). 1 GiB holds 10,000 hosts' 300 s windows.
    max_total_bytes: int = Field(default=1 << 30, ge=1 << 20, le=1 << 40)
    # History kept per host: at least workflow.window_s; the extra minute serves the
    # verifier's reads and a batch that arrives late.
    retain_s: float = Field(default=360.0, ge=10, le=86_400)
    samples_per_host: int = Field(default=600, ge=1, le=100_000)  # 10 minutes at 1 s
    # A compact sample is a few hundred bytes (controller/detectors/window.py): 1 MiB holds
    # 600 of them with their tables and events several times over.
    bytes_per_host: int = Field(default=1 << 20, ge=1 << 10, le=1 << 30)
    events_per_host: int = Field(default=2_000, ge=0, le=1_000_000)
    stale_after_s: float = Field(default=30.0, gt=0)
    missing_after_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> HotStateSettings:
        if self.missing_after_s <= self.stale_after_s:
            raise ValueError("missing_after_s must be greater than stale_after_s")
        return self


class AdvisorSettings(_Strict):
    """An OpenAI-compatible chat endpoint whose answers are recorded as advice. Off unless url is set."""

    url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    model: str = Field(default="gpt-4o-mini", min_length=1, max_length=128)
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is None:
            return None
        try:
            return self.api_key_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"advisor: cannot read {self.api_key_file}: {exc.strerror}") from exc


class KubernetesSettings(_Strict):
    """The API server the cluster actuators (restart a pod, quarantine a node) call."""

    host: str = Field(pattern=r"^https?://")
    token_file: Path | None = None
    ca_file: Path | None = None
    verify_ssl: bool = True


# What a runbook command's argv may name, filled in from the run's culprit and host.
COMMAND_PLACEHOLDERS = (
    "host_id",
    "node",
    "namespace",
    "pod",
    "container",
    "workload",
    "workload_kind",
    "pid",
    "comm",
    "cgroup",
    "family",
)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


class CommandSettings(_Strict):
    """A runbook command the ``run_command`` actuator may run: an argv (no shell) whose first
    element is an absolute path and whose later ones may hold ``{placeholder}`` fields. Nothing
    that does not match one of these exactly runs."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    argv: list[str] = Field(min_length=1, max_length=16)
    # The families the planner proposes it for, and the gate allows it for.
    for_families: list[str] = Field(min_length=1, max_length=8)
    # host: runs on this controller's machine, so only for local_hosts; cluster: acts through
    # an API (kubectl) and may run for any host.
    scope: Literal["host", "cluster"] = "host"
    timeout_s: float = Field(default=8.0, gt=0, le=600)
    # The command's environment: nothing is inherited but the names in pass_env. A plan
    # records each value only as its sha256 (a value can be a secret).
    env: dict[str, str] = Field(default_factory=dict, max_length=8)
    pass_env: list[str] = Field(default_factory=list, max_length=8)
    expected_effect: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _shape(self) -> CommandSettings:
        exe = self.argv[0]
        if not exe.startswith("/") or _PLACEHOLDER.search(exe) or "\x00" in exe:
            raise ValueError(f"argv[0] must be an absolute path with no placeholder, not {exe!r}")
        if sum(len(a) for a in self.argv) > 512:  # it is recorded in plans, which are compact
            raise ValueError("argv: over 512 characters in all")
        for arg in self.argv:
            if "\x00" in arg or "\n" in arg:
                raise ValueError(f"argv element {arg[:40]!r}: a NUL or a newline")
            for field_name in _PLACEHOLDER.findall(arg):
                if field_name not in COMMAND_PLACEHOLDERS:
                    known = ", ".join(COMMAND_PLACEHOLDERS)
                    raise ValueError(f"unknown placeholder {{{field_name}}} in {arg!r}; known: {known}")
            if "{" in _PLACEHOLDER.sub("", arg) or "}" in _PLACEHOLDER.sub("", arg):
                raise ValueError(f"unbalanced brace in {arg!r}")
        for family in self.for_families:
            if not re.match(r"^[a-z][a-z0-9_]{0,47}\Z", family):
                raise ValueError(f"for_families: {family!r} is not a family name")
        for name in [*self.env, *self.pass_env]:
            if not _ENV_NAME.match(name):
                raise ValueError(f"bad environment variable name {name!r}")
        if any(len(v) > 4096 for v in self.env.values()):
            raise ValueError("env: a value over 4096 characters")
        return self

    def public(self) -> dict[str, Any]:
        """As a plan records it: every field, each env value as its sha256 (already one when
        read back from a plan)."""
        out = self.model_dump(mode="json")
        out["env"] = {k: v if v.startswith("sha256:") else _sha256(v) for k, v in self.env.items()}
        return out

    def digest(self) -> str:
        """What an approval binds to: any change to the listed command changes it."""
        return _sha256(json.dumps(self.public(), sort_keys=True, separators=(",", ":")))


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class ExecutionSettings(_Strict):
    """The posture: what the executor may do. The defaults change nothing on any host."""

    dry_run: bool = True
    approval_required: bool = True
    allow_safe_reversible: bool = False
    allow_impacting: bool = False  # an impacting action without rollback data stays a proposal anyway
    # ...unless named here: impacting actions with no rollback an operator opts into (only
    # those whose effect heals itself: restart_pod, whose controller makes a new pod, and
    # restart_deployment, a rollout by the Deployment's own strategy).
    allow_without_rollback: list[Literal["restart_pod", "restart_deployment"]] = Field(default_factory=list)
    # destructive actions are always proposal-only, and validation is always read-only: not settable.
    approval_ttl_s: float = Field(default=900.0, gt=0, le=86_400)
    action_timeout_s: float = Field(default=10.0, gt=0, le=600)
    max_concurrent_actions: int = Field(default=2, ge=1, le=64)
    tool_call_budget: int = Field(default=12, ge=0, le=1000)  # read-only validation calls per run
    iteration_budget: int = Field(default=3, ge=0, le=100)  # rounds of validation per run
    idempotency_ttl_s: float = Field(default=86_400.0, gt=0)  # a key older than this acts again
    # The verifier waits verify_settle_s after the action, then wants verify_min_samples fresh
    # samples; past verify_deadline_s it says inconclusive.
    verify_settle_s: float = Field(default=5.0, ge=0, le=3600)
    verify_min_samples: int = Field(default=5, ge=1, le=1000)
    verify_deadline_s: float = Field(default=300.0, gt=0, le=86_400)
    rollback_on_not_improved: bool = True
    # Hosts whose processes and cgroups this controller can reach (it runs on them, or in their
    # pid and cgroup namespaces); actions for any other host are blocked. None: this host's name.
    local_hosts: list[str] | None = None
    host_root: Path = Path("/")  # where this host's /proc and /sys are (a container mounts them)
    kubernetes: KubernetesSettings | None = None
    # Runbook commands the run_command actuator may run (argv, no shell): nothing else runs.
    commands: list[CommandSettings] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _commands(self) -> ExecutionSettings:
        names = [c.name for c in self.commands]
        if len(set(names)) != len(names):
            raise ValueError("commands: each name once")
        for c in self.commands:
            if c.timeout_s >= self.action_timeout_s:
                # The executor gives up on an action at action_timeout_s and settles it as unknown.
                raise ValueError(
                    f"commands.{c.name}.timeout_s ({c.timeout_s}) must be under action_timeout_s "
                    f"({self.action_timeout_s})"
                )
        return self


class AnalysisSettings(_Strict):
    """Where hosts are evaluated: in worker processes, off the ingest path's GIL."""

    # Processes, each owning the windows of the hosts hashed to it. 0: evaluate on the
    # engine's thread in this process (small installs and the unit tests).
    workers: int = Field(default=1, ge=0, le=64)
    # Accepted batches waiting per worker, and their bytes: past either a batch is not
    # analysed (counted). At most two hand-overs more are in the worker's pipe.
    queue_max: int = Field(default=10_000, ge=10, le=1_000_000)
    queue_bytes: int = Field(default=64 << 20, ge=1 << 20, le=4 << 30)
    # A worker's answer to a window read (the verifier, /rca): past it, none.
    read_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Workers run this much nicer than ingest: when the CPUs are short, acks come first and
    # analysis falls behind (its lag and any overflow are counted), never the other way round.
    nice: int = Field(default=10, ge=0, le=19)


class FleetSettings(_Strict):
    """The fleet correlator (controller/workflow/fleet.py): host runs of one fault across hosts
    become one fleet incident, with its blast radius."""

    enabled: bool = True
    # Hosts whose runs are sighted within this window are grouped together.
    window_s: float = Field(default=300.0, ge=10, le=86_400)
    min_hosts: int = Field(default=3, ge=2, le=10_000)
    # Hosts that share these labels' values (all of them a host has) are correlated; a host
    # with none of them is correlated with nobody.
    group_by: list[str] = Field(default_factory=lambda: ["cluster", "zone"], max_length=8)
    pearson: float = Field(default=0.7, gt=0, le=1)  # the seed's threshold
    evaluate_every_s: float = Field(default=5.0, ge=0.1, le=3600)
    max_hosts: int = Field(default=50_000, ge=10, le=1_000_000)  # sightings kept
    # Hosts correlated pairwise in one label group (the most recently sighted): bounds the cost.
    max_group: int = Field(default=256, ge=2, le=10_000)
    series_points: int = Field(default=60, ge=6, le=900)


class PostmortemSettings(_Strict):
    """Postmortems rendered when runs end (controller/workflow/postmortems.py): a bounded
    background worker runs ``command`` (papermill and nbconvert, by default in a process of
    their own: the controller never imports the pipelines) off the request path; failures are
    recorded, never in the workflow's way."""

    enabled: bool = True
    # resolved: when the fault ends (times to detect and resolve known); completed: when the
    # stages end; both: whichever comes first.
    when: Literal["resolved", "completed", "both"] = "resolved"
    # None: <data_dir>/postmortems. Each run's report goes to <dir>/<run_id>/postmortem.html.
    dir: Path | None = None
    # The renderer, given RUN_ID --source SOURCE --out DIR; None: this Python's incidentlab-report.
    command: list[str] | None = None
    # What the renderer reads: None, the data directory (SQLite); a controller URL with
    # token_file where metadata lives in PostgreSQL.
    source: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None  # the CA that signed that controller's certificate (a private CA)
    queue_max: int = Field(default=64, ge=1, le=10_000)  # waiting; past it: not rendered, counted
    # Also print postmortem.pdf beside the HTML (headless Chromium: Debian's chromium package,
    # or ``browser``, a path or command). Off by default: a browser is a large install.
    pdf: bool = False
    browser: str | None = Field(default=None, max_length=4096)
    timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_attempts: int = Field(default=2, ge=1, le=10)


class WebhookTarget(_Strict):
    url: str = Field(pattern=r"^https?://")
    # The HMAC key the body is signed with (X-Incidentlab-Signature); none: unsigned.
    secret_file: Path | None = None


class AlertSettings(_Strict):
    """Who is told (controller/workflow/notify.py): Alertmanager's v2 API and webhooks."""

    alertmanager_urls: list[str] = Field(default_factory=list, max_length=8)  # e.g. http://am:9093
    webhooks: list[WebhookTarget] = Field(default_factory=list, max_length=8)
    # Where links in alerts point (this controller as people reach it); None: ha.advertise_url.
    external_url: str | None = None
    resend_s: float = Field(default=60.0, ge=1, le=3600)  # live alerts sent again this often
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_s: float = Field(default=0.5, gt=0, le=60)
    queue_max: int = Field(default=10_000, ge=1, le=1_000_000)


class WorkflowSettings(_Strict):
    enabled: bool = True
    window_s: float = Field(default=300.0, ge=10, le=3600)  # the hot-state window a run's evidence holds
    open_threshold: float = Field(default=0.5, ge=0, le=1)  # top-hypothesis confidence that opens a run
    attach_window_s: float = Field(default=900.0, ge=0, le=86_400)  # same shape within this: attach
    # Clean evaluations in a row (none finds the run's fault active) that resolve a run: the
    # hysteresis between recovering and resolved.
    resolve_after_clean: int = Field(default=3, ge=1, le=1000)
    queue_max: int = Field(default=1024, ge=1, le=1_000_000)  # hosts waiting for evaluation
    # The detectors' rules (thresholds, `for`, labels, runbooks, per-host overrides):
    # docs/rules.md. Read at start; none: every family at its defaults.
    rules_file: str | None = None
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    postmortems: PostmortemSettings = Field(default_factory=PostmortemSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    advisor: AdvisorSettings = Field(default_factory=AdvisorSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    # Fault injection for the crash tests: "<artifact kind>:before_commit|after_commit", or
    # "execution_result:after_intent|after_apply" around a side effect, makes the process
    # SIGKILL itself there. Never set in production.
    failpoint: str | None = Field(
        default=None, pattern=r"^[a-z_]+:(before_commit|after_commit|after_intent|after_apply)$"
    )


class HASettings(_Strict):
    # The URL other controllers and collectors reach this one at; followers send it as the leader hint.
    advertise_url: str | None = None
    lock_key: int = 0x1C1DE17
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    # Replicas sharing the bus's partitions (controller/partitions.py): a replica whose
    # heartbeat is older than this is dead to the others, and a partition lock it still
    # holds is taken from it. A killed replica's partitions move within one poll.
    lease_s: float = Field(default=10.0, gt=0, le=600)
    # With PostgreSQL and the bus, replicas share the partitions; off: one leader consumes all.
    share_partitions: bool = True


class BusSettings(NatsSettings):
    """Batches from a NATS JetStream stream (controller/bus.py): the collectors publish, this
    controller makes sure of the stream and consumes it, one durable consumer per partition
    it owns (all of them alone; its share when replicas on PostgreSQL share the fleet). Off by
    default; the subject layout and ``partitions`` are the collectors'."""

    enabled: bool = False
    stream: str = Field(default="INCIDENTLAB", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    subject_prefix: str = Field(default="incidentlab.batches", pattern=BUS_SUBJECT_PREFIX)
    partitions: int = Field(default=64, ge=1, le=4096)
    replicas: int = Field(default=1, ge=1, le=5)  # the stream's, on a NATS cluster
    # What it keeps: at least the analysis window (a new owner will replay it), and no more
    # than max_age_s; past max_bytes, or max_msgs_per_host for one host, a publish is refused
    # and the collector keeps the batch in its spool: nothing unread is discarded.
    max_age_s: float = Field(default=3600.0, ge=60, le=30 * 86_400)
    max_bytes: int = Field(default=1 << 30, ge=1 << 20, le=1 << 42)
    max_msgs_per_host: int = Field(default=7200, ge=10, le=10_000_000)
    duplicate_window_s: float = Field(default=120.0, ge=1, le=86_400)
    # Messages a partition's consumer fetches at once: held in memory at most partitions x
    # fetch_batch x ingest.max_body_bytes.
    fetch_batch: int = Field(default=8, ge=1, le=1024)
    max_ack_pending: int = Field(default=1024, ge=1, le=100_000)
    # A message a replica took and never answered (it died) goes to the next owner after this.
    ack_wait_s: float = Field(default=10.0, ge=1, le=3600)
    # A batch the ingest fails on (HTTP 500, not a refusal and not the store away) this many
    # deliveries is given up: one poison batch cannot hold its partition's hosts for ever.
    max_deliveries: int = Field(default=20, ge=1, le=1000)


class ControllerSettings(EnvOverYaml):
    model_config = SettingsConfigDict(
        env_prefix="INCIDENTLAB_CONTROLLER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    data_dir: Path = Path("data")
    # None: SQLite at <data_dir>/agent/workflow_runs.db. postgresql://... for shared metadata and HA.
    database_url: str | None = None
    # None: <data_dir>/artifacts on the local filesystem. s3://bucket/prefix through s3fs.
    payload_url: str | None = None
    payload_options: dict[str, Any] = Field(default_factory=dict)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    hot_state: HotStateSettings = Field(default_factory=HotStateSettings)
    ha: HASettings = Field(default_factory=HASettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)

    @model_validator(mode="after")
    def _safe(self) -> ControllerSettings:
        srv = self.server
        if srv.max_inflight_body_bytes < self.ingest.max_body_bytes or not (
            self.ingest.max_body_bytes <= self.peer_inflight_bytes <= srv.max_inflight_body_bytes
        ):
            raise ValueError(
                "server.max_inflight_body_bytes and max_inflight_bytes_per_peer must hold at least one "
                "batch (ingest.max_body_bytes), and a peer's share no more than all"
            )
        if self.ingest.max_decompressed_bytes < self.ingest.max_body_bytes:
            raise ValueError("ingest.max_decompressed_bytes must be at least ingest.max_body_bytes")
        if self.hot_state.retain_s < self.workflow.window_s:
            raise ValueError(
                "hot_state.retain_s must be at least workflow.window_s: a run's window is read from it"
            )
        if self.shares_partitions and self.ha.lease_s < 2 * self.ha.poll_interval_s:
            raise ValueError("ha.lease_s must be at least twice ha.poll_interval_s")
        if self.bus.enabled and self.workflow.enabled and self.bus.max_age_s < self.workflow.window_s:
            raise ValueError(
                "bus.max_age_s must be at least workflow.window_s: a partition's new owner rebuilds "
                "that window from the stream"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.database_url is not None and not self.database_url.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be sqlite:///... or postgresql://...")
        if self.tls_cert_file is None and not self.server.allow_http:
            raise ValueError(
                "no tls_cert_file and tls_key_file: the controller serves HTTPS only "
                "(set server.allow_http for plain HTTP on loopback or a trusted network)"
            )
        return self

    @property
    def peer_inflight_bytes(self) -> int:
        """One client address's share of the body bytes in flight."""
        explicit = self.server.max_inflight_bytes_per_peer
        if explicit is not None:
            return explicit
        return min(
            self.server.max_inflight_body_bytes,
            max(self.ingest.max_body_bytes, self.server.max_inflight_body_bytes // 4),
        )

    @property
    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url(
            self.database_url or f"sqlite:///{self.data_dir / 'agent' / 'workflow_runs.db'}"
        )

    @property
    def is_postgres(self) -> bool:
        return self.sqlalchemy_url.startswith("postgresql")

    @property
    def shares_partitions(self) -> bool:
        """Replicas share the fleet (the bus's partitions under leases): PostgreSQL and the bus."""
        return self.is_postgres and self.bus.enabled and self.ha.share_partitions

    @property
    def payload_root(self) -> str:
        return self.payload_url or str(self.data_dir / "artifacts")


def load_settings(path: Path | None = None, **overrides: Any) -> ControllerSettings:
    data = read_yaml_mapping(path, "controller config", ConfigError) if path is not None else {}
    try:
        return ControllerSettings(**(data | overrides))
    except ValidationError as exc:
        source = f" ({path})" if path else ""
        raise ConfigError(f"controller settings refused{source}: {describe(exc)}") from exc
