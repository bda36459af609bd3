"""What the API's routes share: the dependency aliases, the answer a follower gives,
and how an auth failure maps to HTTP. Both the FastAPI routes and the raw ASGI ingest
path (fast_ingest.py) answer through these, so the two never drift apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Header, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from collector.wire import LEADER_HEADER
from controller.auth import Action, Principal
from controller.errors import AuthError, Forbidden
from controller.runtime import Runtime
from controller.workflow.fleet import FLEET_HOST


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


# Documents the scheme in OpenAPI; the header itself is parsed by Authenticator, exactly.
BEARER = HTTPBearer(auto_error=False, description="a token from auth.tokens, by role")


@dataclass(frozen=True)
class Refusal:
    """An HTTP refusal before any work: its status, detail and headers."""

    status: int
    detail: str
    headers: dict[str, str]
    reason: str  # the refusal metric's label

    def http(self) -> HTTPException:
        return HTTPException(self.status, self.detail, headers=self.headers or None)


def auth_refusal(exc: AuthError) -> Refusal:
    """401 for no token or an unknown one (with the Bearer challenge), 403 for a role that
    may not do this."""
    if isinstance(exc, Forbidden):
        return Refusal(403, str(exc), {}, "forbidden")
    return Refusal(401, str(exc), {"WWW-Authenticate": "Bearer"}, "unauthenticated")


class _Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...
    @property
    def leader_url(self) -> str | None: ...


def follower_refusal(leadership: _Leadership) -> Refusal | None:
    """None on the leader; on a follower, 503 naming the leader (header and detail) when known."""
    if leadership.is_leader:
        return None
    url = leadership.leader_url
    detail = "this controller is a follower" + (f"; the leader is at {url}" if url else "")
    return Refusal(503, detail, {LEADER_HEADER: url} if url else {}, "follower")


def require(action: Action) -> Callable[..., Principal]:
    def dep(
        rt: Annotated[Runtime, Depends(runtime)],
        _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        try:
            principal = rt.auth.authenticate(authorization)
            rt.auth.require(principal, action)
        except AuthError as exc:
            raise auth_refusal(exc).http() from exc
        return principal

    return dep


def leader_only(rt: Annotated[Runtime, Depends(runtime)], run_id: str | None = None) -> None:
    """Decisions and side effects happen where the run's stages run: on the leader, or, when
    replicas share the fleet, on the owner of the run's host (any replica for what is not a
    run's: silences are rows every replica reads)."""
    if rt.ownership.sharded:
        row = rt.workflow.load_run(run_id) if run_id is not None else None
        if row is None or rt.workflow.triggers.mine(row["host_id"]):
            return  # an unknown run is answered 404 by the decision itself
        host = row["host_id"]
        url = rt.leadership.leader_url if host == FLEET_HOST else rt.ownership.owner_url(host)
        detail = "another controller runs this run's stages" + (f"; it is at {url}" if url else "")
        raise Refusal(503, detail, {LEADER_HEADER: url} if url else {}, "not_owner").http()
    refusal = follower_refusal(rt.leadership)
    if refusal is not None:
        raise refusal.http()


Rt = Annotated[Runtime, Depends(runtime)]
Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
