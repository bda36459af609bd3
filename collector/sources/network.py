"""network: per-interface counters, operstate, MTU and carrier through rtnetlink (pyroute2).

Falls back to /proc/net/dev plus /sys/class/net/<if>/{operstate,mtu,carrier,carrier_changes}
when rtnetlink cannot be used. Changes of operstate, MTU, carrier and carrier
flaps between two samples are listed in ``changes``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import probe_core

from collector.errors import SourceError
from collector.sources.base import PathPlan, Rates, Source, SourceContext, SourceResult
from collector.sources.registry import register

RATE_KEYS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)
WATCHED = ("operstate", "mtu", "carrier", "carrier_changes")


def _sysfs_value(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None  # EINVAL reading carrier on a down interface, or the file is absent


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def iproute_class() -> Any:
    """pyroute2's IPRoute, loaded without the package's __init__ where that works: the
    __init__ imports every pyroute2 API (NDB with sqlite, IPDB, nftables, wireguard...),
    about 10 MB of the collector's RSS, where IPRoute alone is about 4 MB."""
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations is not None:
            package = types.ModuleType("pyroute2")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec

            def whole(name: str) -> Any:
                # A submodule is imported as such; any other of the package's names runs
                # its real __init__ first.
                if importlib.util.find_spec(f"pyroute2.{name}") is not None:
                    return importlib.import_module(f"pyroute2.{name}")
                del package.__getattr__
                assert spec.loader is not None
                spec.loader.exec_module(package)
                return getattr(package, name)

            package.__getattr__ = whole  # type: ignore[method-assign]
            sys.modules["pyroute2"] = package
            try:
                from pyroute2.iproute.linux import IPRoute as Lean

                return Lean
            except ImportError:
                # Another layout: drop the bare package and its half-loaded submodules.
                for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                    del sys.modules[name]
    from pyroute2 import IPRoute

    return IPRoute


def links_from_rtnetlink(ipr: Any) -> list[dict[str, Any]]:
    out = []
    for link in ipr.get_links():
        stats = link.get_attr("IFLA_STATS64")
        counters = dict(stats) if stats is not None else {}
        carrier = link.get_attr("IFLA_CARRIER")
        out.append(
            {
                "name": link.get_attr("IFLA_IFNAME"),
                "operstate": link.get_attr("IFLA_OPERSTATE"),
                "mtu": link.get_attr("IFLA_MTU"),
                "carrier": None if carrier is None else bool(carrier),
                "carrier_changes": link.get_attr("IFLA_CARRIER_CHANGES"),
                "counters": {
                    k: counters.get(k)
                    for k in (
                        *RATE_KEYS,
                        "rx_missed_errors",
                        "rx_over_errors",
                        "rx_crc_errors",
                        "rx_fifo_errors",
                        "tx_carrier_errors",
                    )
                },
            }
        )
    return out


def links_from_files(host_root: str, sysfs: Path) -> list[dict[str, Any]]:
    out = []
    for dev in probe_core.read_net_dev(host_root):
        base = sysfs / "class" / "net" / dev["interface"]
        carrier = _int_or_none(_sysfs_value(base / "carrier"))
        out.append(
            {
                "name": dev["interface"],
                "operstate": (_sysfs_value(base / "operstate") or "unknown").upper(),
                "mtu": _int_or_none(_sysfs_value(base / "mtu")),
                "carrier": None if carrier is None else bool(carrier),
                "carrier_changes": _int_or_none(_sysfs_value(base / "carrier_changes")),
                "counters": {
                    "rx_bytes": dev["rx_bytes"],
                    "tx_bytes": dev["tx_bytes"],
                    "rx_packets": dev["rx_packets"],
                    "tx_packets": dev["tx_packets"],
                    "rx_errors": dev["rx_errs"],
                    "tx_errors": dev["tx_errs"],
                    "rx_dropped": dev["rx_drop"],
                    "tx_dropped": dev["tx_drop"],
                    "rx_fifo_errors": dev["rx_fifo"],
                    "tx_carrier_errors": dev["tx_carrier"],
                },
            }
        )
    return out


def diff_links(prev: dict[str, dict[str, Any]], cur: list[dict[str, Any]]) -> list[dict[str, Any]]:
    changes = []
    seen = set()
    for link in cur:
        name = link["name"]
        seen.add(name)
        old = prev.get(name)
        if old is None:
            if prev:
                changes.append({"interface": name, "field": "present", "old": False, "new": True})
            continue
        for key in WATCHED:
            if old.get(key) != link.get(key):
                changes.append({"interface": name, "field": key, "old": old.get(key), "new": link.get(key)})
    changes += [
        {"interface": n, "field": "present", "old": True, "new": False} for n in prev if n not in seen
    ]
    return changes


@register
class NetworkSource(Source):
    name = "network"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._rates = Rates(ctx.clock)
        self._prev: dict[str, dict[str, Any]] = {}
        self._ipr: Any = None
        self._why_file: str | None = None
        if ctx.fallback_forced(self.name):
            self._why_file = "rtnetlink turned off by configuration (force_fallback)"
            return
        try:
            self._ipr = iproute_class()()
        except Exception as exc:  # any failure to open rtnetlink means the file path, with why
            self._why_file = f"rtnetlink unavailable: {type(exc).__name__}: {exc}"

    def plan(self) -> PathPlan:
        return PathPlan("kernel") if self._ipr is not None else PathPlan("file", self._why_file)

    def sample(self) -> SourceResult:
        if self._ipr is not None:
            try:
                links = links_from_rtnetlink(self._ipr)
            except OSError as exc:
                raise SourceError(f"rtnetlink link dump failed: {exc}") from exc
        else:
            links = links_from_files(self.ctx.host_root, self.ctx.settings.sysfs_root)
        self._rates.begin()
        interfaces = []
        for link in links:
            counters = link.pop("counters")
            rates = {
                f"{k}_per_s": self._rates.rate(f"{link['name']}.{k}", v)
                for k, v in counters.items()
                if k in RATE_KEYS and v is not None
            }
            interfaces.append(link | {"rates": rates, "counters": counters})
        self._rates.end()
        changes = diff_links(self._prev, interfaces)
        self._prev = {i["name"]: i for i in interfaces}
        data = {"interfaces": interfaces, "changes": changes}
        if self._ipr is not None:
            return SourceResult.ok("kernel", data)
        return SourceResult.fallback(self._why_file or "rtnetlink unavailable", data)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
