"""Where the workbench reads runs from: a controller's API (with a token) or a local data
directory or database, read-only and with no controller running.

Both sources answer the same plain dicts, shaped as the API answers them; frames.py
turns them into DataFrames. Only the API source can approve or reject (a decision is
the controller's to record).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec

from collector.wire import LEADER_HEADER
from controller import artifacts
from controller.errors import ControllerError, StoreError
from controller.store.db import read_only_engine
from controller.store.payloads import PayloadStore
from controller.store.runs import RunStore
from controller.workflow.reads import RunReader, evidence_key
from workbench.errors import WorkbenchError

MAX_RUNS = 100_000  # runs() reads at most this many rows


class Pages:
    """The progress of a load that takes more than one page: nothing for one page, a bar
    (tqdm.auto: a widget in JupyterLab, text in a terminal) from the second on."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what, self.total, self.got = what, total, 0
        self.bar: Any = None

    def add(self, n: int, more: bool) -> None:
        self.got += n
        if self.bar is None and more:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=self.what, total=self.total, unit=" rows", leave=False)
            self.bar.update(self.got)
        elif self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Source(Protocol):
    def list_runs(
        self,
        *,
        status: str | None = None,
        host: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = MAX_RUNS,
    ) -> list[dict[str, Any]]: ...
    def run(self, run_id: str) -> dict[str, Any]: ...
    def incidents(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...
    def fleet_members(self, run_id: str) -> list[dict[str, Any]]: ...
    def postmortem(self, run_id: str) -> dict[str, Any] | None: ...
    def evidence(self, run_id: str) -> dict[str, Any]: ...
    def after(self, run_id: str) -> dict[str, Any] | None: ...
    def audit(self, **filters: Any) -> list[dict[str, Any]]: ...
    def replay(self, run_id: str) -> list[dict[str, Any]]: ...
    def approve(
        self, run_id: str, plan_hash: str, steps: list[int] | None, reason: str
    ) -> dict[str, Any]: ...
    def reject(self, run_id: str, reason: str, plan_hash: str | None = None) -> dict[str, Any]: ...
    def window(self, host_id: str, signals: list[str] | None = None, points: int = 300) -> dict[str, Any]: ...


class ApiSource:
    """A controller's HTTP API with an operator (or admin) token."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0, verify: bool | str = True) -> None:
        self.url = url.rstrip("/")
        try:
            tls: bool | ssl.SSLContext = (
                ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            )
        except (OSError, ssl.SSLError) as exc:  # a CA file that is missing or not PEM
            raise WorkbenchError(f"cannot use the CA file {verify}: {exc.strerror or exc}") from None
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s, verify=tls
        )

    def close(self) -> None:
        self._http.close()

    def _follows(self, owner: str | None) -> bool:
        """Whether to send this client's token to the replica a 503 names: another URL of the
        same scheme (never from HTTPS down to plain HTTP)."""
        if not owner or owner.rstrip("/") == self.url:
            return False
        return urllib.parse.urlsplit(owner).scheme == urllib.parse.urlsplit(self.url).scheme

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, "/api/v1/agent" + path, **kw)
            owner = r.headers.get(LEADER_HEADER)
            if r.status_code == 503 and method != "GET" and self._follows(owner):
                assert owner is not None
                # Replicas share the fleet: a run's decisions go to the one running its stages
                # (reads work anywhere). Followed once, with this client's token and TLS.
                r = self._http.request(method, owner.rstrip("/") + "/api/v1/agent" + path, **kw)
        except httpx.HTTPError as exc:
            raise WorkbenchError(f"controller at {self.url} unreachable: {exc}") from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise WorkbenchError(f"{method} {path}: {r.status_code} {detail}", status=r.status_code)
        return r

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    def rollback(self, run_id: str, reason: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call(
            "POST", f"/workflow/runs/{run_id}/rollback", json={"reason": reason}
        )
        return answer

    def postmortem_html(self, run_id: str) -> str:
        return self._request("GET", f"/workflow/runs/{run_id}/postmortem").text

    def list_runs(
        self,
        *,
        status: str | None = None,
        host: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = MAX_RUNS,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            k: v
            for k, v in {"status": status, "host": host, "since": since, "until": until}.items()
            if v is not None
        }
        out: list[dict[str, Any]] = []
        cursor = None
        pages = Pages("runs", total=None if limit >= MAX_RUNS else limit)
        try:
            while len(out) < limit:
                page = self._call(
                    "GET",
                    "/workflow/runs",
                    params=params
                    | {"limit": min(500, limit - len(out))}
                    | ({"cursor": cursor} if cursor else {}),
                )
                out.extend(page["runs"])
                cursor = page["next_cursor"]
                pages.add(len(page["runs"]), cursor is not None and len(out) < limit)
                if cursor is None:
                    break
        finally:
            pages.close()
        return out

    def window(self, host_id: str, signals: list[str] | None = None, points: int = 300) -> dict[str, Any]:
        """The host's hot-state window now: current hypotheses and series."""
        params: dict[str, Any] = {"points": points} | ({"signal": signals} if signals else {})
        path = f"/hosts/{urllib.parse.quote(host_id, safe='')}/window"
        body: dict[str, Any] = self._call("GET", path, params=params)
        return body

    def run(self, run_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", f"/workflow/runs/{run_id}")
        return body

    def incidents(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        params = {"since": since} if since is not None else {}
        while len(out) < limit:
            page = self._call(
                "GET",
                "/workflow/incidents",
                params=params
                | {"limit": min(200, limit - len(out))}
                | ({"cursor": cursor} if cursor else {}),
            )
            out.extend(page["incidents"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return out

    def postmortem(self, run_id: str) -> dict[str, Any] | None:
        got: dict[str, Any] | None = self.run(run_id).get("postmortem")
        for key in ("url", "pdf_url"):
            if got is not None and got.get(key):
                got[key] = self.url.rstrip("/") + got[key]
        return got

    def fleet_members(self, run_id: str) -> list[dict[str, Any]]:
        page = self._call("GET", "/workflow/runs", params={"fleet": run_id, "limit": 500})
        members: list[dict[str, Any]] = page["runs"]
        return members

    def evidence(self, run_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", f"/workflow/evidence/{run_id}")
        return body

    def after(self, run_id: str) -> dict[str, Any] | None:
        after: dict[str, Any] | None = self.evidence(run_id).get("after")
        return after

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self._call(
                "GET",
                "/workflow/audit",
                params=params | {"limit": 1000} | ({"cursor": cursor} if cursor else {}),
            )
            out.extend(page["entries"])
            cursor = page["next_cursor"]
            if cursor is None or len(out) >= MAX_RUNS:
                return out

    def replay(self, run_id: str) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = self._call("POST", f"/workflow/runs/{run_id}/replay", json={})["chain"]
        return chain

    def approve(self, run_id: str, plan_hash: str, steps: list[int] | None, reason: str) -> dict[str, Any]:
        body: dict[str, Any] = {"plan_hash": plan_hash, "reason": reason}
        if steps is not None:
            body["steps"] = steps
        answer: dict[str, Any] = self._call("POST", f"/workflow/runs/{run_id}/approve", json=body)
        return answer

    def reject(self, run_id: str, reason: str, plan_hash: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} | ({"plan_hash": plan_hash} if plan_hash else {})
        answer: dict[str, Any] = self._call("POST", f"/workflow/runs/{run_id}/reject", json=body)
        return answer


class LocalSource:
    """A controller's data directory (SQLite and payload files) or database URL, read only:
    through the run store and the workflow's read-only query API, never an engine."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        database_url: str | None = None,
        payload_url: str | None = None,
    ) -> None:
        if data_dir is None and (database_url is None or payload_url is None):
            raise WorkbenchError("a local source needs a data directory, or a database URL and a payload URL")
        root = Path(data_dir) if data_dir is not None else None
        if database_url is None:
            assert root is not None
            db_file = root / "agent" / "workflow_runs.db"
            if not db_file.is_file():
                raise WorkbenchError(f"no run store at {db_file}")
            database_url = f"sqlite:///{db_file}"
        try:
            self.db = read_only_engine(database_url)
        except ControllerError as exc:
            raise WorkbenchError(str(exc)) from exc
        payloads = payload_url or str(Path(str(root)) / "agent")
        if "://" not in payloads and not Path(payloads).is_dir():
            raise WorkbenchError(f"no payload store at {payloads}")
        self.store = PayloadStore(payloads)
        self.runs = RunStore(self.db)
        self.reader = RunReader(self.runs, self.store)

    def close(self) -> None:
        self.db.dispose()

    def list_runs(
        self,
        *,
        status: str | None = None,
        host: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = MAX_RUNS,
    ) -> list[dict[str, Any]]:
        try:
            rows = self.runs.list_runs(status=status, host_id=host, since=since, until=until, limit=limit)
        except StoreError as exc:
            raise WorkbenchError(str(exc)) from exc
        return [dict(r) | {"culprit": json.loads(r["culprit"])} for r in rows]

    def incidents(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        try:
            rows = self.runs.list_runs(scope="fleet", since=since, limit=limit)
            with self.runs.read() as tx:
                out = []
                for r in rows:
                    members = tx.fleet_members(r["run_id"], limit=500)
                    live = sum(1 for m in members if m["state"] in ("firing", "recovering"))
                    out.append(
                        dict(r)
                        | {"culprit": json.loads(r["culprit"]), "members": members}
                        | {"member_count": len(members), "live_members": live}
                    )
        except StoreError as exc:
            raise WorkbenchError(str(exc)) from exc
        return out

    def fleet_members(self, run_id: str) -> list[dict[str, Any]]:
        with self.runs.read() as tx:
            return tx.fleet_members(run_id, limit=500)

    def postmortem(self, run_id: str) -> dict[str, Any] | None:
        with self.runs.read() as tx:
            row = tx.postmortem(run_id)
        if row is None:
            return None
        got = dict(row)
        pdf = Path(str(got["path"])).with_suffix(".pdf") if got.get("path") else None
        if pdf is not None and pdf.is_file():
            got["pdf"] = str(pdf)
        return got

    def _chain(self, run_id: str, replay: bool) -> list[dict[str, Any]]:
        try:
            with self.runs.read() as tx:
                refs = tx.chain_refs(run_id, replay=replay)
        except StoreError as exc:
            raise WorkbenchError(str(exc)) from exc
        chain = []
        for ref in refs:
            try:
                art = artifacts.decode(self.store.get(ref["path"]))
            except (artifacts.ArtifactError, OSError) as exc:
                raise WorkbenchError(f"run {run_id}, {ref['path']}: {exc}") from exc
            chain.append(msgspec.to_builtins(art))
        return chain

    def _run_row(self, run_id: str) -> dict[str, Any]:
        try:
            found = self.runs.run(run_id)
        except StoreError as exc:
            raise WorkbenchError(str(exc)) from exc
        if found is None:
            raise WorkbenchError(f"no workflow run {run_id!r}", status=404)
        return dict(found)

    def run(self, run_id: str) -> dict[str, Any]:
        found = self._run_row(run_id)
        run = found | {"culprit": json.loads(found["culprit"])}
        chain = self._chain(run_id, replay=False)
        decoded = [artifacts.decode(msgspec.json.encode(a)) for a in chain]
        try:
            actions = [dict(a) for a in self.runs.intents_of(run_id)]
        except StoreError as exc:
            raise WorkbenchError(str(exc)) from exc
        return {
            "run": run,
            "chain": chain,
            "manifest": artifacts.manifest(decoded) if decoded else None,
            "problems": artifacts.verify_chain(decoded) if decoded else [],
            "actions": actions,
        }

    def evidence(self, run_id: str) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = msgspec.json.decode(self.store.get(evidence_key(run_id)))
        except (OSError, StoreError, msgspec.DecodeError) as exc:
            raise WorkbenchError(
                f"run {run_id!r} has no readable evidence package: {exc}", status=404
            ) from exc
        return doc

    def after(self, run_id: str) -> dict[str, Any] | None:
        try:
            raw = self.reader.after(run_id)
            doc: dict[str, Any] | None = msgspec.json.decode(raw) if raw is not None else None
        except (OSError, StoreError, msgspec.DecodeError):
            return None  # no verification window (nothing changed), or unreadable: none to draw
        return doc

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        try:
            rows = self.runs.audit_entries(
                run_id=filters.get("run_id"),
                actor=filters.get("actor"),
                kind=filters.get("kind"),
                since=filters.get("since"),
                until=filters.get("until"),
                limit=MAX_RUNS,
            )
        except StoreError as exc:
            raise WorkbenchError(str(exc)) from exc
        return [dict(r) for r in rows]

    def replay(self, run_id: str) -> list[dict[str, Any]]:
        """The stages re-run with the current code, written nowhere."""
        self._run_row(run_id)
        try:
            return [msgspec.to_builtins(a) for a in self.reader.compute_replay(run_id)]
        except (OSError, StoreError, artifacts.ArtifactError) as exc:
            raise WorkbenchError(f"replay of {run_id} failed: {exc}") from exc

    def approve(self, run_id: str, plan_hash: str, steps: list[int] | None, reason: str) -> dict[str, Any]:
        raise WorkbenchError("a local source is read-only: approve through the controller's API")

    def reject(self, run_id: str, reason: str, plan_hash: str | None = None) -> dict[str, Any]:
        raise WorkbenchError("a local source is read-only: reject through the controller's API")

    def window(self, host_id: str, signals: list[str] | None = None, points: int = 300) -> dict[str, Any]:
        raise WorkbenchError("a live look needs a controller: a data directory has no hot state")


def open_source(
    source: str | Path | Source, token: str | None = None, ca_file: str | Path | None = None
) -> Source:
    """A URL (http or https, with a token; ``ca_file``: the CA that signed its certificate,
    for a private CA), a data directory, or a database URL."""
    if not isinstance(source, (str, Path)):
        return source
    text = str(source)
    if text.startswith(("http://", "https://")):
        if not token:
            raise WorkbenchError("a controller URL needs a token (an operator's)")
        return ApiSource(text, token, verify=str(ca_file) if ca_file else True)
    if text.startswith(("sqlite:", "postgresql")):
        raise WorkbenchError(
            "a database URL needs payload_url too: use LocalSource(database_url=..., payload_url=...)"
        )
    return LocalSource(text)
