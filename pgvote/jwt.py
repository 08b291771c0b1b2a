"""HS256 JSON Web Tokens, signed with the stack's secret (the one PostgREST verifies with).

Only what the local stack, the tests and the load tools need: sign a claims object. PostgREST does
the verifying.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(secret: str, claims: dict[str, Any]) -> str:
    """A compact HS256 JWT carrying claims."""
    signing_input = ".".join(_b64(json.dumps(part, separators=(",", ":")).encode())
                             for part in ({"alg": "HS256", "typ": "JWT"}, claims))
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def claims_for(role: str, sub: str | None = None, expires_in: int = 3600) -> dict[str, Any]:
    """Claims of a token for role (and sub); expires_in seconds from now (negative: already expired)."""
    claims: dict[str, Any] = {"role": role}
    if sub is not None:
        claims["sub"] = sub
    claims["exp"] = int(time.time()) + expires_in
    return claims
