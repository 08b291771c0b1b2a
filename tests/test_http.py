"""The API over real HTTP: a real PostgREST (started by the stack) driven by the official
postgrest Python client with schema="api". Skipped, with the reason printed, when no
`postgrest` binary exists (PATH or POSTGREST_BIN): PostgREST is in no registry these
machines reach; every other test calls the API through the exact emulation instead."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.http


@pytest.fixture(scope="module")
def postgrest_url(stack) -> str:
    if not stack.postgrest_url:
        pytest.skip(f"no real PostgREST to test over HTTP: {stack.postgrest_note}")
    return stack.postgrest_url


def jwt(secret: str, claims: dict[str, Any]) -> str:
    """An HS256 JWT, signed with the stack's jwt-secret."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header_payload = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), header_payload.encode(), hashlib.sha256).digest()
    return header_payload + "." + b64(signature)


def client(url: str, token: str | None = None):
    from postgrest import SyncPostgrestClient

    c = SyncPostgrestClient(url, schema="api")
    return c.auth(token) if token else c


def test_create_vote_and_read_results_over_http(stack, postgrest_url) -> None:
    creator = jwt(stack.jwt_secret, {"role": "authenticated", "sub": f"http-{uuid.uuid4()}"})
    poll = client(postgrest_url, creator).rpc("create_poll", {"question": "HTTP?", "options": ["yes", "no"]}).execute().data
    voted = client(postgrest_url).rpc("cast_vote", {"poll_id": poll["poll_id"], "option_ids": [poll["option_ids"][0]],
                                                     "voter_fingerprint": "http-device"}).execute().data
    assert voted["status"] == "recorded"
    results = client(postgrest_url).rpc("poll_results", {"poll_id": poll["poll_id"]}, get=True).execute().data
    assert results["total_ballots"] == 1


def test_errors_over_http_carry_status_and_code(postgrest_url) -> None:
    from postgrest.exceptions import APIError

    with pytest.raises(APIError) as caught:
        client(postgrest_url).rpc("cast_vote", {"poll_id": str(uuid.uuid4()), "option_ids": [str(uuid.uuid4())],
                                                "voter_fingerprint": "x"}).execute()
    assert caught.value.code == "poll_not_found"
