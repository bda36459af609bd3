"""Collector settings: a YAML file plus INCIDENTLAB_COLLECTOR_* environment overrides.

Precedence, highest first: keyword arguments, environment, the YAML file, defaults.
Nested keys use ``__`` in the environment (``INCIDENTLAB_COLLECTOR_HARDWARE__REFRESH_INTERVAL``).
Unknown keys and bad values are refused at start with a ConfigError naming each one.
This is the only module that reads the environment; everything else gets the object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from collector.errors import ConfigError, TopologyError
from collector.settings_io import EnvOverYaml, describe, read_yaml_mapping
from collector.topology import check_labels

ENV_PREFIX = "INCIDENTLAB_COLLECTOR_"
# The wire contract's id rule, repeated from collector/wire.py `_ID` (keep the two equal):
# \Z, not $, so "host\n" is refused; no "/", since ids name files and keys downstream.
# Checked with Python's re: pydantic's own `pattern` engine has no \Z.
_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExternalCommand(_Strict):
    """A command that prints Prometheus text or JSON; run every interval under a timeout."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    command: list[str] = Field(min_length=1)
    format: Literal["prometheus", "json"]
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    # 1 MiB of metrics text is already far past what a node-local exporter prints.
    max_output_bytes: int = Field(default=1 << 20, gt=0, le=16 << 20)


class HardwareSettings(_Strict):
    refresh_interval: float = Field(default=300.0, ge=1, le=86_400)


class SpoolSettings(_Strict):
    """The disk spool (collector/spool.py documents the format and the loss windows)."""

    dir: Path = Path("data/spool")
    max_bytes: int = Field(default=256 << 20, ge=1 << 20, le=1 << 40)
    segment_bytes: int = Field(default=8 << 20, ge=64 << 10, le=1 << 30)
    max_record_bytes: int = Field(default=4 << 20, ge=4 << 10, le=256 << 20)
    fsync: Literal["always", "interval"] = "interval"
    fsync_interval_ms: int = Field(default=200, ge=1, le=60_000)
    fsync_bytes: int = Field(default=1 << 20, ge=4 << 10, le=1 << 30)


class TransportSettings(_Strict):
    """Where and how batches go; the token is read from a file so it stays out of configs.

    ``dead_letter_after_500``: a batch the controller answers HTTP 500 on this many
    attempts in a row (counted across sends; any other answer, the batch settling or
    another batch going out starts the count again) goes to the dead-letter file, so
    one batch the controller keeps failing on cannot stop the stream. 502, 503 and 504
    (the controller or a proxy is away) are retried for ever. 0 turns it off. At the
    default backoff (0.5 s doubling to 30 s, full jitter) 20 attempts are some minutes.
    """

    url: str | None = None
    fallback_urls: list[str] = Field(
        default_factory=list
    )  # other controllers, tried when url cannot be reached
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token_file: Path | None = None
    encoding: Literal["gzip", "zstd"] = "gzip"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    read_timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_base_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    dead_letter_after_500: int = Field(default=20, ge=0, le=1_000_000)
    allow_http: bool = False

    @model_validator(mode="after")
    def _check(self) -> TransportSettings:
        for url in [u for u in (self.url, *self.fallback_urls) if u is not None]:
            if not url.startswith("https://") and not (self.allow_http and url.startswith("http://")):
                raise ValueError(
                    f"{url}: must be https:// (set allow_http for plain HTTP on a trusted network)"
                )
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self


class NatsSettings(_Strict):
    """A NATS connection: servers, TLS and credentials (files, read at connect; a change to any
    of them reconnects). The collector's and the controller's bus settings share it."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1, max_length=16)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    creds_file: Path | None = None  # a NATS .creds file (JWT and NKey seed)
    token_file: Path | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)

    @model_validator(mode="after")
    def _connection(self) -> NatsSettings:
        for url in self.servers:
            if not url.startswith(("nats://", "tls://")):
                raise ValueError(f"{url}: a NATS server is nats:// or tls://")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        if self.creds_file is not None and self.token_file is not None:
            raise ValueError("creds_file or token_file, not both")
        return self


BUS_SUBJECT_PREFIX = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


class BusSettings(NatsSettings):
    """Batches through a NATS JetStream stream instead of (or, with ``also_https``, as well
    as) HTTPS to one controller (collector/bus.py). Off by default. The stream belongs to
    the controllers; the collector only publishes to it."""

    enabled: bool = False
    stream: str = Field(default="INCIDENTLAB", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    subject_prefix: str = Field(default="incidentlab.batches", pattern=BUS_SUBJECT_PREFIX)
    # Hosts map to this many partitions by a stable hash of host_id: the controllers' number.
    partitions: int = Field(default=64, ge=1, le=4096)
    also_https: bool = False
    publish_timeout_s: float = Field(default=10.0, gt=0, le=300)


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesSettings(_Strict):
    """Where a collector on Kubernetes reads its node's topology labels (collector/topology.py).

    ``node_name`` comes from the DaemonSet's ``spec.nodeName`` (the Downward API, as
    INCIDENTLAB_COLLECTOR_KUBERNETES__NODE_NAME); without it the API is not read."""

    node_name: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    api_url: str = "https://kubernetes.default.svc"
    token_file: Path | None = SA_DIR / "token"
    ca_file: Path | None = SA_DIR / "ca.crt"
    # This pod's labels through the Downward API (where the cluster copies topology labels onto pods).
    downward_labels_file: Path | None = None
    # Node label keys carried beyond the well-known ones (their last path part names them).
    node_label_keys: list[str] = Field(default_factory=list, max_length=16)
    refresh_s: float = Field(default=300.0, ge=10, le=86_400)
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class MetricsSettings(_Strict):
    """GET /metrics (Prometheus text) from the latest snapshot (collector/metrics.py), for a
    ServiceMonitor to scrape each node without a second exporter. Off by default; the
    DaemonSet turns it on and listens on the pod's address."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=9143, ge=0, le=65535)  # 0: any free port (tests)


class CollectorSettings(EnvOverYaml):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    interval_s: float = Field(default=10.0, ge=0.1, le=3600)
    # None: every source that is enabled by default. A list: exactly these.
    enabled_sources: list[str] | None = None
    disabled_sources: list[str] = Field(default_factory=list)
    # Sources to run on their file fallback even where the kernel path works: for a
    # kernel whose netlink or perf path misbehaves, and for proving the fallbacks.
    force_fallback: list[str] = Field(default_factory=list)
    # How long the eBPF loader child may take to compile and load the programs.
    ebpf_load_timeout_s: float = Field(default=60.0, gt=0, le=600)
    top_n: int = Field(default=20, ge=1, le=1000)
    # Each source's time budget per sample; None: half the interval, at most 2 s.
    source_timeout_s: float | None = Field(default=None, gt=0, le=60)
    # The wire contract's rule (_HOST_ID): refused at start, not batch by batch at the controller.
    host_id: str | None = Field(default=None, min_length=1, max_length=128)
    procfs_root: Path = Path("/proc")
    sysfs_root: Path = Path("/sys")
    # Listen sockets whose accept queue reaches this share of the backlog are reported.
    backlog_ratio: float = Field(default=0.8, gt=0, le=1)
    # Processes whose cgroup and smaps_rollup are re-read at most this often (seconds).
    cold_ttl_s: float = Field(default=10.0, ge=0, le=3600)
    # /proc/PID/stat files kept open between passes (a third cheaper per pid); the
    # collector raises its open-file limit to fit, or keeps fewer when it cannot.
    process_stat_fds: int = Field(default=8192, ge=0, le=65536)
    # The processes holding the most open files are found by a second /proc walk (one
    # stat per pid), at most this often: fd counts move slowly, and an idle process that
    # hoards sockets never reaches the CPU-ranked rows. 0: every pass.
    fd_scan_interval_s: float = Field(default=30.0, ge=0, le=3600)
    fd_holders: int = Field(default=5, ge=0, le=100)
    # Likewise the heaviest readers and writers (a process blocked on direct IO uses no CPU):
    # a separate scanner reads /proc/PID/io of every pid at most this often and ranks the
    # IO rates over its own interval. io_top 0 turns it off.
    io_scan_interval_s: float = Field(default=10.0, ge=0, le=3600)
    io_top: int = Field(default=5, ge=0, le=100)
    hardware: HardwareSettings = Field(default_factory=HardwareSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    transport: TransportSettings = Field(default_factory=TransportSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    external: list[ExternalCommand] = Field(default_factory=list)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    # Where this host sits (zone, rack, cluster, ...): sent in CollectorInfo; the controller
    # groups hosts by them. On Kubernetes the node's labels fill the rest (``kubernetes``).
    labels: dict[str, str] = Field(default_factory=dict)
    kubernetes: KubernetesSettings | None = None

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return check_labels(value, "labels")
        except TopologyError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("host_id")
    @classmethod
    def _check_host_id(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_ID.match(value):
            raise ValueError(
                f"{value!r} is not a wire host id: 1-128 of letters, digits and _.:@-, "
                "starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> CollectorSettings:
        if self.procfs_root.name != "proc" or self.sysfs_root.name != "sys":
            raise ValueError("procfs_root and sysfs_root must end in /proc and /sys")
        if self.procfs_root.parent != self.sysfs_root.parent:
            raise ValueError(
                f"procfs_root ({self.procfs_root}) and sysfs_root ({self.sysfs_root}) must share a parent: "
                "probe_core reads both under one host root (mount the host's as R/proc and R/sys)"
            )
        if self.source_timeout_s is not None and self.source_timeout_s >= self.interval_s:
            raise ValueError(
                f"source_timeout_s ({self.source_timeout_s}) must be below interval_s ({self.interval_s})"
            )
        names = [c.name for c in self.external]
        if len(set(names)) != len(names):
            raise ValueError("external command names must be unique")
        return self

    @property
    def source_budget_s(self) -> float:
        if self.source_timeout_s is not None:
            return self.source_timeout_s
        return min(2.0, self.interval_s / 2)

    @property
    def host_root(self) -> str:
        """The directory holding the host's proc/ and sys/ ("/" on the host itself)."""
        return str(self.procfs_root.parent)


def load_settings(path: Path | None = None, **overrides: Any) -> CollectorSettings:
    """Settings from an optional YAML file, the environment, and keyword overrides.

    Keyword overrides win over everything; the environment wins over the file.
    """
    data = read_yaml_mapping(path, "collector config", ConfigError) if path is not None else {}
    try:
        settings = CollectorSettings(**data)
        if overrides:
            # Re-validated with an environment prefix nothing carries, so env cannot undo a flag.
            merged = settings.model_dump() | overrides
            settings = CollectorSettings(_env_prefix="INCIDENTLAB_COLLECTOR_OVERRIDES_ONLY_", **merged)  # type: ignore[call-arg]
    except ValidationError as exc:
        source = f" ({path})" if path else ""
        raise ConfigError(f"collector settings refused{source}: {describe(exc)}") from exc
    return settings
