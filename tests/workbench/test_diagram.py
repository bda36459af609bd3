"""workbench.diagram on hand-made chains: the notes under the plan, result, verdict and
hypothesis boxes, and the SVG's eight stage groups (status, a missing stage pending and
dashed, the current stage outlined), its escaping and its cut of long notes."""

from __future__ import annotations

import re
from typing import Any

from workbench.diagram import STAGES, chain_svg, notes


def chain(upto: int = 7, verification: str = "ok") -> list[dict[str, Any]]:
    """A cpu_saturation run's chain from stage 0 to ``upto``: step 0 validated, steps 1 and 2
    not run, step 3 applied, the verdict improved."""
    payloads: dict[str, dict[str, Any]] = {
        "root_cause_hypothesis": {"hypotheses": [{"family": "cpu_saturation", "confidence": 0.7793}]},
        "execution_plan": {
            "steps": [
                {"step": 0, "decision": "allowed"},
                *({"step": n, "decision": "approval_required"} for n in (1, 2, 3)),
            ]
        },
        "execution_result": {
            "results": [
                {"step": 0, "outcome": "validated"},
                {"step": 1, "outcome": "not_run"},
                {"step": 2, "outcome": "not_run"},
                {"step": 3, "outcome": "applied"},
            ]
        },
        "verification_result": {"verdict": "improved"},
    }
    return [
        {
            "kind": kind,
            "stage_index": i,
            "status": verification if kind == "verification_result" else "ok",
            "started_at": 1.0,
            "finished_at": 2.0,
            "payload": payloads.get(kind, {}),
        }
        for i, kind in enumerate(STAGES[: upto + 1])
    ]


def approval(actor: str, steps: list[int] | None, kind: str = "approval") -> dict[str, Any]:
    return {
        "id": 5,
        "at": 3.0,
        "actor": actor,
        "kind": kind,
        "run_id": "run-1",
        "plan_hash": "59c5d6fec919",
        "step": None,
        "detail": {"steps": steps},
    }


def groups(svg: str) -> list[str]:
    return re.findall(r'<g class="stage".*?</g>', svg)


def test_notes_under_the_plan_the_result_the_verdict_and_the_hypothesis() -> None:
    decisions = [
        approval("ops", [3]),
        approval("lead", None, "rejection"),
        approval("bot", [1], "approval_expired"),
    ]
    assert notes(chain(), decisions) == {
        "root_cause_hypothesis": ["cpu_saturation", "0.78"],
        # What operators did first; past three lines the rest is counted, not dropped unseen.
        "execution_plan": ["approved 3 by ops", "rejected by lead", "+3 more"],
        "execution_result": ["1 applied", "2 not run", "1 validated"],
        "verification_result": ["improved"],
    }
    assert notes(chain(upto=3), []) == {"root_cause_hypothesis": ["cpu_saturation", "0.78"]}
    assert notes(chain(), [approval("ops", [3])])["execution_plan"] == [
        "approved 3 by ops",
        "1 allowed",
        "3 approval required",
    ]
    # Only decisions are drawn: any other audit entry passed in is left out.
    assert notes(chain(), [approval("ops", None, "rollback")])["execution_plan"] == [
        "1 allowed",
        "3 approval required",
    ]


def test_eight_stages_with_their_status_and_a_missing_one_pending_and_dashed() -> None:
    svg = chain_svg(chain(upto=6, verification="skipped"))
    assert svg.startswith("<svg ") and svg.endswith("</svg>")
    found = groups(svg)
    assert len(found) == svg.count('<g class="stage"') == 8
    statuses = re.findall(r'<g class="stage" data-kind="(\w+)" data-status="(\w+)">', svg)
    assert statuses == [(k, "ok") for k in STAGES[:6]] + [
        ("verification_result", "skipped"),
        ("incident_report", "pending"),
    ]
    assert ["stroke-dasharray" in g for g in found] == [False] * 7 + [True]
    assert svg.count("<line ") == 7  # the arrows between the boxes


def test_the_current_stage_is_outlined() -> None:
    widths = [re.findall(r'stroke-width="([\d.]+)"', g) for g in groups(chain_svg(chain(), current=2))]
    assert widths == [["1.5"]] * 2 + [["3"]] + [["1.5"]] * 5
    assert 'stroke-width="3"' not in chain_svg(chain())


def test_notes_are_drawn_escaped_and_cut() -> None:
    svg = chain_svg(chain(), [approval("<script>", [3])])
    plan = groups(svg)[4]
    assert ">approved 3 by &lt;script&gt;</text>" in plan
    assert "<script>" not in svg
    svg = chain_svg(chain(), [approval("a-very-long-operator-name", [3])])
    assert ">approved 3 by a-very-lo…</text>" in groups(svg)[4]
    assert "a-very-long" not in svg


def test_at_most_three_note_lines_a_box() -> None:
    svg = chain_svg(chain(), [approval("ops", [3]), approval("lead", [3])])
    plan = groups(svg)[4]
    assert plan.count('font-size="11"') == 3
    assert "approved 3 by ops" in plan and "approved 3 by lead" in plan and "+2 more" in plan
