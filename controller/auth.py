"""Bearer tokens with roles. Tokens are kept only as SHA-256 digests and compared in
constant time against every configured digest, so neither timing nor an early exit
tells which token was close.

Roles: ``collector`` may only ingest; ``operator`` may read and act on runs;
``admin`` may do everything.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from controller.config import AuthSettings, Role
from controller.errors import AuthError, Forbidden

Action = Literal["ingest", "read", "write"]
ALLOWED: dict[Action, frozenset[Role]] = {
    "ingest": frozenset({"collector", "admin"}),
    "read": frozenset({"operator", "admin"}),
    "write": frozenset({"operator", "admin"}),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


ANONYMOUS_ADMIN = Principal("anonymous", "admin")


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.enabled = settings.enabled
        self._tokens = [(t.name, t.role, t.digest()) for t in settings.tokens]

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS_ADMIN
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("missing bearer token")
        presented = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found: Principal | None = None
        for name, role, digest in self._tokens:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, digest):
                found = Principal(name, role)
        if found is None:
            raise AuthError("unknown bearer token")
        return found

    @staticmethod
    def require(principal: Principal, action: Action) -> None:
        if principal.role not in ALLOWED[action]:
            raise Forbidden(f"role {principal.role!r} ({principal.name}) may not {action}")
