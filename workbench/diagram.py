"""The chain as a diagram: the eight stages as boxes coloured by status, the gate's
decisions and the approvals under the plan, the change and its verdict under the result.

Plain SVG text (no graphviz, no JavaScript): the same picture in the postmortem's HTML and
PDF and in the stepper, where clicking a box is not needed (the stepper has its buttons).
"""

from __future__ import annotations

from html import escape
from typing import Any

from controller.artifacts import KINDS

STAGES = KINDS  # the chain's eight kinds, in stage order
LABELS = (
    "observe",
    "detect",
    "analyze",
    "propose",
    "plan + gate",
    "execute",
    "verify",
    "report",
)
# Fill and stroke per artifact status; "pending" is a stage with no artifact yet.
COLOURS = {
    "ok": ("#e3f4e1", "#2e7d32"),
    "degraded": ("#fff3d6", "#b26a00"),
    "skipped": ("#eeeeee", "#757575"),
    "failed": ("#fde3e1", "#c62828"),
    "pending": ("#ffffff", "#9e9e9e"),
}
BOX_W, BOX_H, GAP, PAD = 112, 58, 22, 10
NOTE_LINES = 3
MAX_NOTE = 24  # characters a note line keeps


def _cut(text: str, n: int = MAX_NOTE) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def notes(chain: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The lines under a box: the plan's gate counts and approvals, the result's changes,
    the verdict."""
    out: dict[str, list[str]] = {}
    by_kind = {a["kind"]: a["payload"] for a in chain}
    plan = by_kind.get("execution_plan")
    if plan is not None:
        counts: dict[str, int] = {}
        for s in plan.get("steps", []):
            counts[s["decision"]] = counts.get(s["decision"], 0) + 1
        said = []  # the decisions first: what an operator did matters more than the counts
        for e in decisions:
            verb = {"approval": "approved", "rejection": "rejected", "approval_expired": "expired"}.get(
                e.get("kind", "")
            )
            if verb is None:
                continue
            chosen = (e.get("detail") or {}).get("steps")
            which = "" if chosen is None else f" {','.join(map(str, chosen)) or 'none'}"
            said.append(f"{verb}{which} by {e.get('actor')}")
        lines = said + [f"{n} {d.replace('_', ' ')}" for d, n in sorted(counts.items())]
        if len(lines) > NOTE_LINES:
            lines = [*lines[: NOTE_LINES - 1], f"+{len(lines) - NOTE_LINES + 1} more"]
        out["execution_plan"] = lines
    result = by_kind.get("execution_result")
    if result is not None:
        outcomes: dict[str, int] = {}
        for r in result.get("results", []):
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        out["execution_result"] = [f"{n} {o.replace('_', ' ')}" for o, n in sorted(outcomes.items())]
    verdict = by_kind.get("verification_result")
    if verdict is not None:
        out["verification_result"] = [str(verdict.get("verdict"))]
    hyp = by_kind.get("root_cause_hypothesis")
    if hyp and hyp.get("hypotheses"):
        top = hyp["hypotheses"][0]
        out["root_cause_hypothesis"] = [str(top["family"]), f"{float(top['confidence']):.2f}"]
    return out


def chain_svg(
    chain: list[dict[str, Any]],
    decisions: list[dict[str, Any]] | None = None,
    *,
    current: int | None = None,
) -> str:
    """The eight stages left to right; ``current`` outlines one (the stepper's stage)."""
    by_index = {a["stage_index"]: a for a in chain}
    lines = notes(chain, decisions or [])
    width = PAD * 2 + len(STAGES) * BOX_W + (len(STAGES) - 1) * GAP
    height = PAD * 2 + BOX_H + 14 * NOTE_LINES + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" style="max-width:{width}px" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img" '
        f'aria-label="the run\'s chain of eight stages">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#616161"/></marker></defs>',
    ]
    for i, (kind, label) in enumerate(zip(STAGES, LABELS, strict=True)):
        x = PAD + i * (BOX_W + GAP)
        art = by_index.get(i)
        status = art["status"] if art is not None and art["status"] in COLOURS else "pending"
        fill, stroke = COLOURS[status]
        width_px = 3 if current == i else 1.5
        dash = ' stroke-dasharray="4 3"' if art is None else ""
        parts.append(
            f'<g class="stage" data-kind="{kind}" data-status="{status}">'
            f"<title>{escape(kind)}: {escape(status)}</title>"
            f'<rect x="{x}" y="{PAD}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{width_px}"{dash}/>'
            f'<text x="{x + BOX_W / 2}" y="{PAD + 24}" text-anchor="middle" font-weight="bold">'
            f"{i + 1}. {escape(label)}</text>"
            f'<text x="{x + BOX_W / 2}" y="{PAD + 42}" text-anchor="middle" fill="{stroke}">'
            f"{escape(status)}</text>"
        )
        for j, note in enumerate(lines.get(kind, [])[:NOTE_LINES]):
            parts.append(
                f'<text x="{x + BOX_W / 2}" y="{PAD + BOX_H + 14 * (j + 1)}" text-anchor="middle" '
                f'font-size="11" fill="#424242">{escape(_cut(note))}</text>'
            )
        parts.append("</g>")
        if i < len(STAGES) - 1:
            y = PAD + BOX_H / 2
            parts.append(
                f'<line x1="{x + BOX_W}" y1="{y}" x2="{x + BOX_W + GAP - 2}" y2="{y}" '
                f'stroke="#616161" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
    parts.append("</svg>")
    return "".join(parts)
