"""General detectors (controller/detectors/general.py): an unknown fault surfaces as its
signal, anomalous since its onset; blips, recurring patterns and unit-sized wobbles do
not; a known fault keeps the signals it moved; many anomalies at once are one
instability; resources near their limits together; sustained throughput."""

from __future__ import annotations

import array
import math
import random
import statistics
from typing import Any

import msgspec
import probe_core
import pytest

from collector.wire import validate_batch
from controller.config import HotStateSettings
from controller.detectors import build_evidence
from controller.detectors.evidence import Evidence, robust_baseline
from controller.detectors.general import DEFAULT_GENERAL, GeneralRules, anomalies, general
from controller.detectors.rules import HostRules
from controller.hotstate import HotState
from controller.workflow.analysis import detect, rank, top_firing
from testkit.scenarios import T0, apply, batch_doc, window


def evidence(snaps: list[Any]) -> Evidence:
    return build_evidence("node-a", snaps, [], {name: "fresh" for name in snaps[-1].sources})


def hyps_of(snaps: list[Any]) -> list[Any]:
    ev = evidence(snaps)
    return rank(ev, detect(ev))


def faults(d: dict[str, Any], i: int, faulty: bool) -> None:
    if faulty:
        apply(d, "host.vmstat_rates.pgmajfault_per_s", 350)


def test_an_unknown_fault_surfaces_as_its_signal_anomalous_since_its_onset() -> None:
    hyps = hyps_of(window(None, calm_s=200, fault_s=20, tweak=faults))
    a = next(h for h in hyps if h.family == "anomaly")
    assert a.culprit["kind"] == "signal" and a.culprit["id"] == "pgmajfault_per_s"
    assert a.culprit["since"] == T0 + 200 and a.culprit["direction"] == "above"
    assert "pgmajfault_per_s anomalous since" in a.summary and a.signal == "pgmajfault_per_s"
    assert a.state == "active" and a.supporting == ["pgmajfault_per_s"]
    # Alone it shows but opens no run: below the default open threshold.
    assert 0.25 <= a.confidence <= DEFAULT_GENERAL.anomaly_max_score < 0.5
    assert top_firing(hyps, 0.5) is None


def test_a_rule_can_let_a_strong_anomaly_open_a_run() -> None:
    ev = evidence(window(None, calm_s=200, fault_s=20, tweak=faults))
    loud = GeneralRules(anomaly_max_score=0.7)
    assert top_firing(rank(ev, detect(ev, HostRules(general=loud))), 0.5) is not None


def test_a_blip_a_wobble_and_a_calm_host_are_no_anomaly() -> None:
    def blip(d: dict[str, Any], i: int, faulty: bool) -> None:
        if 200 <= i < 205:  # shorter than for_s
            apply(d, "host.vmstat_rates.pgmajfault_per_s", 350)

    def wobble(d: dict[str, Any], i: int, faulty: bool) -> None:
        if faulty:  # PSI from 0.5% to 2%: under the unit floor's band
            apply(d, "psi.io.some.avg10", 2.0)

    assert not anomalies(evidence(window(None, calm_s=215, fault_s=0, tweak=blip)), DEFAULT_GENERAL)
    assert not anomalies(evidence(window(None, calm_s=200, fault_s=20, tweak=wobble)), DEFAULT_GENERAL)
    assert hyps_of(window(None, calm_s=300, fault_s=0)) == []


def test_a_recurring_pattern_is_not_an_anomaly_but_its_first_time_is() -> None:
    def cron(d: dict[str, Any], i: int, faulty: bool) -> None:
        if i % 60 >= 45:  # a job 15 s of every minute
            apply(d, "host.vmstat_rates.pgmajfault_per_s", 350)

    seen = anomalies(evidence(window(None, calm_s=299, fault_s=0, tweak=cron)), DEFAULT_GENERAL)
    assert seen == []  # the same phase of the earlier minutes was as high
    no_cron = GeneralRules(periods_s=())
    assert [
        a.signal for a in anomalies(evidence(window(None, calm_s=299, fault_s=0, tweak=cron)), no_cron)
    ] == ["pgmajfault_per_s"]

    def once(d: dict[str, Any], i: int, faulty: bool) -> None:
        if i >= 285:
            apply(d, "host.vmstat_rates.pgmajfault_per_s", 350)

    first = anomalies(evidence(window(None, calm_s=299, fault_s=0, tweak=once)), DEFAULT_GENERAL)
    assert [a.signal for a in first] == ["pgmajfault_per_s"] and first[0].seasonal == {"60.0": 0.0}


def test_a_known_fault_keeps_the_signals_it_moved() -> None:
    hyps = hyps_of(window("cpu_saturation", calm_s=200, fault_s=30))
    assert hyps[0].family == "cpu_saturation"
    assert not any(h.family == "anomaly" and h.culprit["id"] == "cpu_busy_pct" for h in hyps)


def test_anomalies_beside_a_known_fault_ride_on_it() -> None:
    def extra(d: dict[str, Any], i: int, faulty: bool) -> None:
        faults(d, i, faulty)

    hyps = hyps_of(window("cpu_saturation", calm_s=200, fault_s=30, tweak=extra))
    top = hyps[0]
    assert top.family == "cpu_saturation"
    assert any(s["family"] == "anomaly" and s["culprit"]["id"] == "pgmajfault_per_s" for s in top.symptoms)
    riding = next(h for h in hyps if h.family == "anomaly")
    assert riding.explained_by is not None and riding.explained_by["family"] == "cpu_saturation"


def test_many_anomalies_at_once_are_one_instability_that_carries_them() -> None:
    hyps = hyps_of(window("host_instability", calm_s=200, fault_s=30))
    top = hyps[0]
    assert top.family == "host_instability" and top.culprit["id"] == "host" and top.confidence >= 0.5
    carried = {s["culprit"]["id"] for s in top.symptoms}
    assert {"pgmajfault_per_s", "load1", "procs_blocked", "processes"} <= carried
    assert top_firing(hyps, 0.5) is top  # one run: the anomalies open none


def test_resources_near_their_limits_together() -> None:
    hyps = hyps_of(window("multi_resource_saturation", calm_s=200, fault_s=30))
    top = hyps[0]
    assert top.family == "multi_resource_saturation"
    assert top.culprit["resources"] == ["cpu", "io", "memory"]
    # One resource past its own family's line: that family names the owner and carries it.

    def hot_cpu(d: dict[str, Any], i: int, faulty: bool) -> None:
        if faulty:
            apply(d, "host.memory.MemAvailable", int(0.08 * (24 << 30)))

    both = hyps_of(window("cpu_saturation", calm_s=200, fault_s=30, tweak=hot_cpu))
    assert both[0].family == "cpu_saturation"
    assert any(s["family"] == "multi_resource_saturation" for s in both[0].symptoms)


def test_throughput_must_hold_and_hurt_to_open_a_run() -> None:
    hyps = hyps_of(window("network_throughput", calm_s=100, fault_s=30))
    top = hyps[0]
    assert top.family == "network_throughput" and top.culprit["id"] == "eth0" and top.confidence >= 0.5
    assert "450 MB/s" in top.summary

    def burst(d: dict[str, Any], i: int, faulty: bool) -> None:
        if i >= 110:  # 20 s: not sustained
            d["network"]["interfaces"][0]["rates"] = {"rx_bytes_per_s": 450e6}

    assert not [
        h
        for h in hyps_of(window(None, calm_s=130, fault_s=0, tweak=burst))
        if h.family == "network_throughput"
    ]

    def quiet(d: dict[str, Any], i: int, faulty: bool) -> None:
        if faulty:
            d["sockets"]["in_rto_backoff"] = 0  # nobody backs off: the link carries it

    calm_link = [h for h in hyps_of(window("network_throughput", calm_s=100, fault_s=30, tweak=quiet))]
    fast = next(h for h in calm_link if h.family == "network_throughput")
    assert fast.contradicting and fast.confidence < 0.5


def test_a_window_keeps_its_baselines_between_steps_and_matches_the_plain_path() -> None:
    snaps = window(None, calm_s=230, fault_s=30, tweak=faults)
    hot = HotState(HotStateSettings(samples_per_host=1000, bytes_per_host=64 << 20), clock=lambda: T0 + 400)
    doc = batch_doc(snaps)
    raw = msgspec.json.encode(doc)
    hot.ingest(validate_batch(doc), raw)
    lazy = hot.evidence("node-a", 300, lazy=True)
    assert lazy is not None
    plain = evidence(snaps)
    assert anomalies(lazy, DEFAULT_GENERAL) == anomalies(plain, DEFAULT_GENERAL)
    kept = hot.host("node-a").window.baselines  # type: ignore[union-attr]
    key, entries = kept.key, dict(kept.entries)
    assert entries and key is not None
    again = hot.evidence("node-a", 300, lazy=True)
    assert again is not None
    anomalies(again, DEFAULT_GENERAL)
    assert kept.key == key and all(kept.entries[n] is entries[n] for n in entries)  # not remade
    # Counted in the window's bytes at its next sample (hot state's bounds see it).
    window_ = hot.host("node-a").window  # type: ignore[union-attr]
    grown = kept.recharge()
    assert grown == 200 * len(kept.entries) > 0 and kept.recharge() == 0
    kept.charged = 0  # as if not yet counted: the window's next change counts it
    window_.drop_oldest()
    assert kept.charged == grown
    f_lazy = general(lazy, [], DEFAULT_GENERAL)
    f_plain = general(plain, [], DEFAULT_GENERAL)
    assert [f.to_dict() for f in f_lazy] == [f.to_dict() for f in f_plain]


@pytest.mark.parametrize("n", [1, 2, 7, 8, 240])
def test_probe_core_median_mad_is_statistics_median(n: int) -> None:
    rng = random.Random(n)
    values = [rng.choice([rng.gauss(50, 10), 0.0, 1e9, -3.5]) for _ in range(n)]
    with_gaps = array.array("d", values + [math.nan] * 3)
    rng.shuffle(with_gaps)
    med = statistics.median(values)
    assert probe_core.median_mad(with_gaps) == (med, statistics.median(abs(v - med) for v in values), n)
    assert robust_baseline(values) == robust_baseline(with_gaps)
    assert probe_core.median_mad(memoryview(with_gaps)[: len(with_gaps)]) is not None


def test_probe_core_median_mad_refuses_what_is_not_doubles() -> None:
    assert probe_core.median_mad(array.array("d")) is None
    assert probe_core.median_mad(array.array("d", [math.nan])) is None
    for bad in (b"12345678", array.array("f", [1.0]), array.array("q", [1])):
        with pytest.raises(TypeError):
            probe_core.median_mad(bad)
    with pytest.raises(TypeError):
        probe_core.median_mad([1.0, 2.0])


def test_a_small_anomaly_says_it_is_small_and_weighs_less() -> None:
    def small(d: dict[str, Any], i: int, faulty: bool) -> None:
        if faulty:
            apply(d, "host.vmstat_rates.pgmajfault_per_s", 10)  # z 5 on the unit floor

    weak = next(
        h for h in hyps_of(window(None, calm_s=200, fault_s=20, tweak=small)) if h.family == "anomaly"
    )
    strong = next(
        h for h in hyps_of(window(None, calm_s=200, fault_s=20, tweak=faults)) if h.family == "anomaly"
    )
    assert weak.contradicting and "robust deviations out" in weak.contradicting[0]
    assert not strong.contradicting and weak.confidence < strong.confidence
