"""The advisor against a small fake OpenAI-compatible server: a normal answer, a timeout, garbage."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.wire import validate_batch
from controller.artifacts import KINDS, verify_chain
from controller.config import HotStateSettings, load_settings
from controller.hotstate import HotState
from controller.runtime import Runtime
from controller.store.db import make_engine, migrate
from controller.store.payloads import PayloadStore
from controller.workflow.advisor import Advisor, parse_answer
from controller.workflow.engine import WorkflowEngine
from testkit.scenarios import batch_for

from .conftest import base_config


class FakeChat:
    """Answers /v1/chat/completions according to ``mode``; keeps every request body it saw."""

    def __init__(self) -> None:
        self.mode = "normal"
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization")} | json.loads(body)
                )
                if fake.mode == "slow":
                    time.sleep(1.5)
                if fake.mode == "garbage":
                    content = "I think it is probably the CPU, but who knows"
                elif fake.mode == "bad_rank":
                    content = json.dumps({"annotations": [{"rank": 99, "note": "x"}], "rerank": []})
                else:
                    sent = json.loads(fake.requests[-1]["messages"][1]["content"])
                    ranks = [h["rank"] for h in sent["hypotheses"]]
                    answer = {
                        "annotations": [{"rank": 1, "note": "matches a miner " * 40}],
                        "rerank": ranks[::-1],
                    }
                    content = "```json\n" + json.dumps(answer) + "\n```"
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                if fake.mode == "not_json":
                    out = "<html>502</html>"
                data = out.encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (the timeout case)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat() -> Iterator[FakeChat]:
    fake = FakeChat()
    yield fake
    fake.close()


def engine_with(tmp_path: Path, advisor: Advisor | None, host: str = "node-a") -> WorkflowEngine:
    db = make_engine(f"sqlite:///{tmp_path / f'{host}.db'}")
    migrate(db)
    hot = HotState(HotStateSettings(samples_per_host=1000, bytes_per_host=64 << 20))
    raw = msgspec.json.encode(batch_for("cpu_saturation", host))
    hot.ingest(validate_batch(raw), raw)
    return WorkflowEngine(db, PayloadStore(str(tmp_path / host)), hot, advisor=advisor)


def run_once(eng: WorkflowEngine) -> list[Any]:
    run_id = eng.evaluate("node-a")
    assert run_id is not None
    chain = eng.load_chain(run_id)
    assert [a.kind for a in chain] == list(KINDS) and verify_chain(chain) == []
    return chain


def test_a_normal_answer_is_recorded_as_advice_and_changes_nothing_downstream(
    chat: FakeChat, tmp_path: Path
) -> None:
    advisor = Advisor(chat.url, "test-model", api_key="k-123", timeout_s=5)
    advised = run_once(engine_with(tmp_path / "a", advisor))
    plain = run_once(engine_with(tmp_path / "b", None))
    record = advised[2].payload["advisor"]
    assert record["advice"] is True and record["status"] == "ok"
    assert record["rerank"] == [h["rank"] for h in plain[2].payload["hypotheses"]][::-1]
    assert record["annotations"][0]["rank"] == 1 and len(record["annotations"][0]["note"]) <= 300
    # Advice only: the ranking and everything the planner and gate decided are the same without it.
    assert advised[2].payload["hypotheses"] == plain[2].payload["hypotheses"]
    for i in range(3, 7):
        assert advised[i].payload == plain[i].payload
    sent = chat.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer k-123"
    assert sent["model"] == "test-model"
    user = sent["messages"][1]["content"]
    assert len(user) < 24 * 1024 and '"series"' not in user and '"snapshots"' not in user
    assert json.loads(user)["hypotheses"] == plain[2].payload["hypotheses"]
    advisor.close()


@pytest.mark.parametrize(
    ("mode", "status"),
    [("slow", "timeout"), ("garbage", "garbage"), ("not_json", "garbage"), ("bad_rank", "garbage")],
)
def test_a_bad_answer_is_recorded_and_the_run_completes(
    chat: FakeChat, tmp_path: Path, mode: str, status: str
) -> None:
    chat.mode = mode
    advisor = Advisor(chat.url, "m", timeout_s=0.5)
    chain = run_once(engine_with(tmp_path, advisor))
    record = chain[2].payload["advisor"]
    assert record["status"] == status and record["error"] and "annotations" not in record
    assert chain[2].payload["hypotheses"][0]["family"] == "cpu_saturation"
    advisor.close()


def test_a_dead_endpoint_is_an_error_record(tmp_path: Path) -> None:
    from bench.peers import free_port

    advisor = Advisor(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=1)
    chain = run_once(engine_with(tmp_path, advisor))
    assert chain[2].payload["advisor"]["status"] == "error"
    advisor.close()


def test_parse_answer_takes_only_what_was_asked() -> None:
    def completion(content: object) -> bytes:
        return json.dumps({"choices": [{"message": {"content": content}}]}).encode()

    ok = completion(json.dumps({"annotations": [{"rank": 2, "note": "n"}], "rerank": [2, 1]}))
    assert parse_answer(ok, {1, 2}) == ([{"rank": 2, "note": "n"}], [2, 1])
    for bad, why in [
        (b"{}", "not a chat completion"),
        (completion(None), "not text"),
        (completion("[1, 2]"), "not a JSON object"),
        (completion(json.dumps({"rerank": [1, 1]})), "each once"),
        (completion(json.dumps({"annotations": "x"})), "must be lists"),
        (completion(json.dumps({"annotations": [{"rank": 1}]})), "no note"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_answer(bad, {1, 2})


def test_the_runtime_builds_the_advisor_only_when_configured(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret-key\n")
    off = Runtime(load_settings(**base_config(tmp_path / "d1")))
    assert off.workflow.advisor is None
    on = Runtime(
        load_settings(
            **base_config(
                tmp_path / "d2",
                workflow={"advisor": {"url": "http://127.0.0.1:9/v1", "api_key_file": str(key)}},
            )
        )
    )
    assert isinstance(on.workflow.advisor, Advisor)
    on.stop()
    off.stop()


class Fickle:
    """An advisor that never says the same thing twice."""

    def __init__(self) -> None:
        self.calls = 0

    def annotate(self, chain: list[Any], hypotheses: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        return {
            "advice": True,
            "model": "m",
            "status": "ok",
            "annotations": [],
            "rerank": [],
            "n": self.calls,
        }


def test_a_replay_reuses_the_recorded_advice_and_stays_deterministic(tmp_path: Path) -> None:
    fickle = Fickle()
    eng = engine_with(tmp_path, fickle)  # type: ignore[arg-type]
    chain = run_once(eng)
    run_id = eng.list_runs()[0]["run_id"]
    first = eng.replay(run_id, clock=lambda: 1_800_001_000.0)
    second = eng.replay(run_id, clock=lambda: 1_800_001_000.0)
    assert fickle.calls == 1 and chain[2].payload["advisor"]["n"] == 1
    assert first[2].payload["advisor"] == chain[2].payload["advisor"]
    assert [a.sha256 for a in first] == [a.sha256 for a in second]
