"""Bearer tokens: read once from --auth-token-file, checked in constant time, never logged.

Both transports ask the same question here: gRPC of its `authorization` metadata, HTTP of its
`Authorization` header. A refusal is the typed `Unauthenticated` error, which each transport's one
error boundary answers (UNAUTHENTICATED, 401).
"""

from __future__ import annotations

import hmac
from pathlib import Path

from .core.errors import Unauthenticated

SCHEME = "Bearer "


def read_tokens(path: Path) -> list[bytes]:
    tokens = [line.strip() for line in path.read_text().splitlines()]
    found = [t.encode() for t in tokens if t and not t.startswith("#")]
    if not found:
        raise ValueError(f"auth_token_file {path} holds no token")
    return found


def refusal(how: str) -> Unauthenticated:
    """The error of a call without a valid token; `how` says how this transport carries one."""
    return Unauthenticated(f"missing or invalid bearer token (send {how})")


class BearerTokens:
    def __init__(self, tokens: list[bytes]) -> None:
        self._tokens = tokens

    def accepts(self, authorization: object) -> bool:
        """Whether an `authorization` value (`Bearer <token>`) carries one of the tokens."""
        given = b""
        if isinstance(authorization, str) and authorization.startswith(SCHEME):
            given = authorization[len(SCHEME) :].encode()
        valid = False
        for token in self._tokens:  # no early exit: the time taken does not depend on which matched
            valid |= hmac.compare_digest(given, token)
        return valid and bool(given)

    def check(self, authorization: object, how: str) -> None:
        """Raise Unauthenticated unless `authorization` carries one of the tokens."""
        if not self.accepts(authorization):
            raise refusal(how)
