"""Bearer tokens with roles. Tokens are kept only as SHA-256 digests and compared in
constant time against every configured digest, so neither timing nor an early exit
tells which token was close.

Roles: ``collector`` may only ingest; ``operator`` may read and act on runs;
``admin`` may do everything. A token may be bound to the hosts it writes
(``hosts``: exact ids or shell-style patterns); a batch for any other host is 403.

The same rules hold for every token however it is given (inline or in a file), and
are checked at start with the names in the message: 16 to 4096 characters of
RFC 6750's b64token alphabet, no two tokens alike. The header is parsed exactly:
``Bearer``, one or more spaces, the token, nothing else; no Unicode whitespace is
stripped, so ``Bearer`` plus a no-break space is no token at all.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

from controller.config import AuthSettings, Role
from controller.errors import AuthError, ConfigError, Forbidden

Action = Literal["ingest", "read", "write"]
ALLOWED: dict[Action, frozenset[Role]] = {
    "ingest": frozenset({"collector", "admin"}),
    "read": frozenset({"operator", "admin"}),
    "write": frozenset({"operator", "admin"}),
}
HEADER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)\Z")


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    hosts: tuple[str, ...] | None = None  # None: any host

    def may_write(self, host_id: str) -> bool:
        if self.hosts is None:
            return True
        return any(fnmatch.fnmatchcase(host_id, p) for p in self.hosts)


ANONYMOUS_ADMIN = Principal("anonymous", "admin")


def load_tokens(settings: AuthSettings) -> list[tuple[Principal, bytes]]:
    """Every configured token as (principal, digest); the rules are TokenSpec.secret's."""
    out: list[tuple[Principal, bytes]] = []
    seen: dict[bytes, str] = {}
    for spec in settings.tokens:
        digest = spec.digest()
        if digest in seen:  # checked at load too; a token file may have changed since
            raise ConfigError(f"tokens {seen[digest]!r} and {spec.name!r} are the same secret")
        seen[digest] = spec.name
        hosts = tuple(spec.hosts) if spec.hosts is not None else None
        out.append((Principal(spec.name, spec.role, hosts), digest))
    return out


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.enabled = settings.enabled
        self._tokens = load_tokens(settings) if settings.enabled else []

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS_ADMIN
        if not authorization:
            raise AuthError("missing bearer token")
        m = HEADER.match(authorization)
        if m is None:
            raise AuthError("not a bearer token")
        presented = hashlib.sha256(m.group(1).encode("ascii")).digest()
        found: Principal | None = None
        for principal, digest in self._tokens:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, digest):
                found = principal
        if found is None:
            raise AuthError("unknown bearer token")
        return found

    @staticmethod
    def require(principal: Principal, action: Action) -> None:
        if principal.role not in ALLOWED[action]:
            # The message names the role, never the token: a 403 goes back to whoever holds it.
            raise Forbidden(f"a {principal.role} token may not {action}")

    @staticmethod
    def require_host(principal: Principal, host_id: str) -> None:
        if not principal.may_write(host_id):
            raise Forbidden(f"this token may not write host {host_id!r}")
