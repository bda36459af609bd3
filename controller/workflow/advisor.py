"""An optional LLM advisor over an OpenAI-compatible chat endpoint.

It sees only the compact artifacts (the observation summary, the findings and the
ranked hypotheses), never raw telemetry, and what it says is recorded in the
hypothesis artifact under ``advisor`` marked as advice: it changes no rank, no
proposal, no safety class. Every failure (refused connection, timeout, an answer
that is not the JSON asked for) is recorded there and leaves the run as it was.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from controller.artifacts import Artifact

MAX_REQUEST_BYTES = 24 * 1024
MAX_ANSWER_BYTES = 64 * 1024
MAX_ANNOTATIONS = 5
MAX_NOTE_CHARS = 300

SYSTEM_PROMPT = (
    "You review an incident analysis of one Linux/GPU host. You receive the observation "
    "summary, the anomaly findings and the ranked root-cause hypotheses as JSON. Answer with "
    'one JSON object only: {"annotations": [{"rank": <hypothesis rank>, "note": <short '
    'text>}], "rerank": [<hypothesis ranks in the order you find most likely>]}. '
    "Do not propose actions."
)


class Advisor:
    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def close(self) -> None:
        self._client.close()

    def annotate(self, chain: list[Artifact], hypotheses: list[dict[str, Any]]) -> dict[str, Any]:
        """Never raises: the outcome, good or bad, is the returned record."""
        record: dict[str, Any] = {"advice": True, "model": self.model}
        try:
            request = self._request(chain, hypotheses)
        except ValueError as exc:
            return record | {"status": "skipped", "error": str(exc)}
        try:
            resp = self._client.post(self.url, json=request)
        except httpx.TimeoutException:
            return record | {"status": "timeout", "error": f"no answer within {self.timeout_s}s"}
        except httpx.HTTPError as exc:
            return record | {"status": "error", "error": _short(f"{type(exc).__name__}: {exc}")}
        if resp.status_code != 200:
            return record | {"status": "error", "error": f"HTTP {resp.status_code}"}
        if len(resp.content) > MAX_ANSWER_BYTES:
            return record | {"status": "garbage", "error": f"answer over {MAX_ANSWER_BYTES} bytes"}
        try:
            annotations, rerank = parse_answer(resp.content, {h["rank"] for h in hypotheses})
        except ValueError as exc:
            return record | {"status": "garbage", "error": _short(str(exc))}
        return record | {"status": "ok", "annotations": annotations, "rerank": rerank}

    def _request(self, chain: list[Artifact], hypotheses: list[dict[str, Any]]) -> dict[str, Any]:
        compact = {
            "artifacts": [{"kind": a.kind, "status": a.status, "payload": a.payload} for a in chain],
            "hypotheses": hypotheses,
        }
        content = json.dumps(compact, sort_keys=True, separators=(",", ":"))
        if len(content) > MAX_REQUEST_BYTES:
            raise ValueError(f"compact artifacts are {len(content)} bytes, over {MAX_REQUEST_BYTES}")
        return {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": content},
            ],
        }


def _short(text: str) -> str:
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


def parse_answer(body: bytes, ranks: set[int]) -> tuple[list[dict[str, Any]], list[int]]:
    """The chat completion's JSON answer, checked and bounded; ValueError names what is wrong."""
    try:
        doc = json.loads(body)
        content = doc["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a chat completion: {type(exc).__name__}") from exc
    if not isinstance(content, str):
        raise ValueError("message content is not text")
    text = content.strip()
    if text.startswith("```"):  # models often fence JSON
        text = text.strip("`").removeprefix("json").strip()
    try:
        answer = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"answer is not JSON: {text[:60]!r}") from exc
    if not isinstance(answer, dict):
        raise ValueError("answer is not a JSON object")
    raw_notes = answer.get("annotations", [])
    raw_rerank = answer.get("rerank", [])
    if not isinstance(raw_notes, list) or not isinstance(raw_rerank, list):
        raise ValueError("annotations and rerank must be lists")
    annotations = []
    for item in raw_notes[:MAX_ANNOTATIONS]:
        if (
            not isinstance(item, dict)
            or item.get("rank") not in ranks
            or not isinstance(item.get("note"), str)
        ):
            raise ValueError(f"annotation {str(item)[:60]!r} names no hypothesis or has no note")
        annotations.append({"rank": item["rank"], "note": _short(item["note"])})
    if any(r not in ranks for r in raw_rerank) or len(set(raw_rerank)) != len(raw_rerank):
        raise ValueError("rerank must list known hypothesis ranks, each once")
    return annotations, [int(r) for r in raw_rerank]
