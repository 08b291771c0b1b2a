"""A small HTTP client for the API (nginx -> PostgREST), used by the demo, the verifiers and the tests.

Standard library only: one connection per call, from a chosen loopback source address. The stack's
nginx and the database rate-limit per client address, so a caller that stands for many clients (a test,
the demo) gives each call its own address in 127.64.0.0/10 unless it pins one.
"""
from __future__ import annotations

import http.client
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import urlencode, urlsplit

from pgvote import jwt


@dataclass(frozen=True)
class Response:
    """Status, headers and body of one answer; body is the parsed JSON (None when empty, text when not JSON)."""

    status: int
    headers: Message  # http.client's HTTPMessage: case-insensitive lookup, None for a missing header
    body: Any
    text: str = field(repr=False, default="")


# The system's randomness, not the random module's shared generator: property-based tests (hypothesis)
# reseed that one for every example, which would give every example the same addresses and drain their
# rate-limit buckets.
_ADDRESSES = random.SystemRandom()


def random_loopback_address(rng: random.Random | None = None) -> str:
    """An address in 127.64.0.0/10: routed to the loopback interface on Linux, never 127.0.0.1."""
    r = rng or _ADDRESSES
    return f"127.{r.randint(64, 127)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _query_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # PostgREST reads array arguments as literals: {a,b}
        return "{" + ",".join(str(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ApiClient:
    """Calls /rpc/<fn> on base_url (the stack's nginx); claims are signed with jwt_secret into a bearer token."""

    def __init__(self, base_url: str, jwt_secret: str | None = None, *, source_ip: str | None = None,
                 timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"base_url must be http://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.jwt_secret = jwt_secret
        self.source_ip = source_ip
        self.timeout = timeout

    def token(self, claims: Mapping[str, Any]) -> str:
        if self.jwt_secret is None:
            raise ValueError("this client has no JWT secret to sign claims with")
        return jwt.sign(self.jwt_secret, dict(claims))

    def rpc(self, fn: str, body: Any = None, *, claims: Mapping[str, Any] | None = None, method: str = "POST",
            headers: Mapping[str, str] | None = None, token: str | None = None, raw_body: bytes | str | None = None,
            source_ip: str | None = None) -> Response:
        """`method /rpc/fn`: POST sends body as JSON (raw_body verbatim instead); GET/HEAD send it as the query.

        claims are signed into `Authorization: Bearer` (token sends a ready-made one); none means anonymous.
        """
        method = method.upper()
        path = f"/rpc/{fn}"
        sent_headers = {"Accept": "application/json"}
        payload: bytes | None = None
        if method in ("GET", "HEAD"):
            if body:
                path += "?" + urlencode({k: _query_value(v) for k, v in body.items()})
        else:
            raw = json.dumps({} if body is None else body) if raw_body is None else raw_body
            payload = raw.encode() if isinstance(raw, str) else raw
            sent_headers["Content-Type"] = "application/json"
        if token is None and claims is not None:
            token = self.token(claims)
        if token is not None:
            sent_headers["Authorization"] = f"Bearer {token}"
        sent_headers.update(headers or {})
        return self.request(method, path, payload, sent_headers, source_ip=source_ip)

    def request(self, method: str, path: str, payload: bytes | None = None,
                headers: Mapping[str, str] | None = None, *, source_ip: str | None = None) -> Response:
        address = source_ip or self.source_ip or random_loopback_address()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, source_address=(address, 0))
        try:
            conn.request(method, path, body=payload, headers=dict(headers or {}))
            answer = conn.getresponse()
            raw = answer.read()
        finally:
            conn.close()
        text = raw.decode("utf-8", errors="replace")
        parsed: Any = None
        if text:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
        return Response(answer.status, answer.headers, parsed, text)
