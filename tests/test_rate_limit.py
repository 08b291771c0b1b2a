"""Rate limiting in the database: PostgREST's db-pre-request hook (hooks.pre_request, per caller)
and the per-fingerprint limit inside cast_vote (internal.take_fingerprint_token).

Every PostgREST replica of the stack runs the hook (api/postgrest.conf: db-pre-request =
"hooks.pre_request"). The `limited_api` fixture calls one replica directly, the way nginx does, so a
test can send the X-Real-IP a proxy would set (documentation-range and IPv6 addresses included);
that nginx overwrites a client's own X-Real-IP is proven through nginx in tests/test_http_contract.py.
Each test sets the limit it needs (`limit` fixture: fast refill, small burst, restored afterwards)
and uses its own callers (random subs, IPs and fingerprints), so tests never share a bucket.
"""
from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgvote.http import ApiClient, Response
from pgvote.paths import PROCEDURES_DIR, PROJECT_ROOT

from helpers import Poll, fingerprint, user

LimitSetter = Callable[..., None]


@pytest.fixture
def limited_api(stack) -> ApiClient:
    """One PostgREST replica, called as nginx calls it (the test sets X-Real-IP as the proxy would)."""
    return ApiClient(stack.postgrest_url, stack.jwt_secret)


@pytest.fixture
def limit(admin: psycopg.Connection) -> Iterator[LimitSetter]:
    """Set a limit of rate_limit.limits for this test (restored afterwards)."""
    saved = {name: (rpm, burst, enabled) for name, rpm, burst, enabled in admin.execute(
        "select name, requests_per_minute, burst, enabled from rate_limit.limits").fetchall()}

    def set_limit(name: str = "request", *, per_minute: float, burst: int, enabled: bool = True) -> None:
        admin.execute("update rate_limit.limits set requests_per_minute = %s, burst = %s, enabled = %s "
                      "where name = %s", (per_minute, burst, enabled, name))

    yield set_limit
    for name, (rpm, burst, enabled) in saved.items():
        admin.execute("update rate_limit.limits set requests_per_minute = %s, burst = %s, enabled = %s "
                      "where name = %s", (rpm, burst, enabled, name))


def client_ip() -> str:
    """A random documentation-range address: every test is a different client."""
    n = uuid.uuid4().int
    return f"198.51.{n % 256}.{(n >> 8) % 254 + 1}"


def vote(api: ApiClient, poll: Poll, *, claims: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None, voter_fingerprint: str | None = None, **body: Any) -> Response:
    """A POST /rpc/cast_vote that succeeds unless limited: a fresh fingerprint per call for anonymous
    callers (so no repeat is involved), the identical ballot again for JWT callers (`unchanged`)."""
    payload = {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], **body}
    if claims is None:
        payload["voter_fingerprint"] = voter_fingerprint or fingerprint()
    return api.rpc("cast_vote", payload, claims=claims, headers=headers)


def assert_rate_limited(r: Response) -> int:
    assert r.status == 429, (r.status, r.body)
    assert r.body["code"] == "rate_limited" and set(r.body) == {"code", "message", "details", "hint"}
    retry_after = r.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1, "whole seconds"
    return int(retry_after)


# ---- the per-caller limit (hooks.pre_request) -----------------------------------------------------


def test_burst_is_allowed_then_429_with_retry_after(limited_api, make_poll, limit) -> None:
    limit(per_minute=6, burst=5)  # one token every 10 s
    poll, ip = make_poll(), client_ip()
    statuses = [vote(limited_api, poll, headers={"X-Real-IP": ip}).status for _ in range(5)]
    assert statuses == [200] * 5, "the whole burst is served at once"
    retry_after = assert_rate_limited(vote(limited_api, poll, headers={"X-Real-IP": ip}))
    assert retry_after == 10, "the time until the next token, rounded up to whole seconds"


def test_jwt_callers_are_limited_per_sub(limited_api, make_poll, limit) -> None:
    limit(per_minute=6, burst=3)
    poll, voter = make_poll(), user()
    assert [vote(limited_api, poll, claims=voter).status for _ in range(3)] == [200] * 3
    assert_rate_limited(vote(limited_api, poll, claims=voter))


def test_tokens_refill_over_time(limited_api, make_poll, limit) -> None:
    limit(per_minute=600, burst=2)  # a token every 0.1 s
    poll, ip = make_poll(), client_ip()
    assert [vote(limited_api, poll, headers={"X-Real-IP": ip}).status for _ in range(2)] == [200, 200]
    assert_rate_limited(vote(limited_api, poll, headers={"X-Real-IP": ip}))
    time.sleep(0.25)
    assert vote(limited_api, poll, headers={"X-Real-IP": ip}).status == 200, "a token came back"


def test_separate_identities_have_separate_buckets(limited_api, make_poll, limit) -> None:
    limit(per_minute=6, burst=2)
    poll, ip, other_ip, voter, other_voter = make_poll(), client_ip(), client_ip(), user(), user()
    for _ in range(2):
        assert vote(limited_api, poll, headers={"X-Real-IP": ip}).status == 200
        assert vote(limited_api, poll, claims=voter, headers={"X-Real-IP": ip}).status == 200
    assert_rate_limited(vote(limited_api, poll, headers={"X-Real-IP": ip}))
    assert_rate_limited(vote(limited_api, poll, claims=voter, headers={"X-Real-IP": ip}))
    assert vote(limited_api, poll, headers={"X-Real-IP": other_ip}).status == 200, "another IP"
    assert vote(limited_api, poll, claims=other_voter, headers={"X-Real-IP": ip}).status == 200, \
        "a signed-in caller is keyed by its sub, not by the (exhausted) IP it comes from"


def test_forged_x_forwarded_for_does_not_change_the_identity(limited_api, make_poll, limit) -> None:
    limit(per_minute=6, burst=2)
    poll, ip = make_poll(), client_ip()
    for _ in range(2):
        assert vote(limited_api, poll, headers={"X-Real-IP": ip}).status == 200
    for forged in (client_ip(), f"{client_ip()}, {ip}", "127.0.0.1"):
        r = vote(limited_api, poll, headers={"X-Real-IP": ip, "X-Forwarded-For": forged})
        assert_rate_limited(r)


def test_gets_and_read_only_calls_are_not_limited(limited_api, make_poll, limit, admin) -> None:
    limit(per_minute=6, burst=1)
    poll, ip = make_poll(), client_ip()
    assert vote(limited_api, poll, headers={"X-Real-IP": ip}).status == 200
    assert_rate_limited(vote(limited_api, poll, headers={"X-Real-IP": ip}))
    before = admin.execute("select count(*) from rate_limit.buckets").fetchone()[0]
    for method in ("GET", "POST"):  # POST to a STABLE function runs READ ONLY too
        for _ in range(5):
            r = limited_api.rpc("poll_results", {"poll_id": poll.poll_id}, method=method, headers={"X-Real-IP": ip})
            assert r.status == 200, (method, r.status, r.body)
    r = limited_api.rpc("poll_results", {"poll_id": poll.poll_id}, method="GET", headers={"X-Real-IP": client_ip()})
    assert r.status == 200
    assert admin.execute("select count(*) from rate_limit.buckets").fetchone()[0] == before, "reads write nothing"


def test_failed_requests_give_their_token_back(limited_api, make_poll, limit) -> None:
    """The documented choice (docs/operations.md): a token is taken in the request's transaction,
    so a request that fails, the 429 included, consumes nothing; only successful requests count."""
    limit(per_minute=6, burst=3)
    poll, ip = make_poll(), client_ip()
    headers = {"X-Real-IP": ip}
    assert vote(limited_api, poll, headers=headers).status == 200
    for _ in range(5):  # an option of no poll: 400 invalid_ballot, rolled back with its token
        r = limited_api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [str(uuid.uuid4())],
                                          "voter_fingerprint": fingerprint()}, headers=headers)
        assert r.status == 400 and r.body["code"] == "invalid_ballot"
    assert [vote(limited_api, poll, headers=headers).status for _ in range(2)] == [200, 200]
    for _ in range(3):  # the 429s consume nothing either: still exactly empty, still 429
        assert_rate_limited(vote(limited_api, poll, headers=headers))


def test_requests_without_a_proxy_address_share_one_bucket(limited_api, make_poll, limit, admin) -> None:
    """PostgREST reached past the proxy (no x-real-ip, or one the proxy cannot have written): every
    such request takes from ONE bucket, whatever else it sends; proxied clients are unaffected."""
    limit(per_minute=6, burst=2)
    admin.execute("delete from rate_limit.buckets where bucket_key = internal.voter_key('ip:none')")
    poll = make_poll()
    assert [vote(limited_api, poll, headers={}).status for _ in range(2)] == [200, 200]
    for headers in ({}, {"X-Forwarded-For": client_ip()}, {"X-Real-IP": "1.2.3.4/8"}, {"X-Real-IP": "unknown"},
                    {"X-Real-IP": ""}, {"X-Real-IP": "fe80::1%eth0"}):
        assert_rate_limited(vote(limited_api, poll, headers=headers))
    assert vote(limited_api, poll, headers={"X-Real-IP": client_ip()}).status == 200, "a proxied client"
    assert vote(limited_api, poll, claims=user()).status == 200, "a signed-in caller is keyed by its sub"


def test_ipv6_clients_are_keyed_by_their_64(limited_api, make_poll, limit) -> None:
    limit(per_minute=6, burst=2)
    poll, n = make_poll(), uuid.uuid4().int
    prefix = f"2001:db8:{n % 65536:x}:{(n >> 16) % 65536:x}"
    assert vote(limited_api, poll, headers={"X-Real-IP": f"{prefix}::1"}).status == 200
    assert vote(limited_api, poll, headers={"X-Real-IP": f"{prefix}:aaaa:bbbb:cccc:dddd"}).status == 200
    assert_rate_limited(vote(limited_api, poll, headers={"X-Real-IP": f"{prefix.upper()}:0:0:0:2"}))
    other = f"2001:db8:{n % 65536:x}:{((n >> 16) + 1) % 65536:x}::1"
    assert vote(limited_api, poll, headers={"X-Real-IP": other}).status == 200, "the next /64"


def test_ipv4_mapped_address_is_its_ipv4_address(limited_api, make_poll, limit) -> None:
    limit(per_minute=6, burst=2)
    poll, ip = make_poll(), client_ip()
    assert [vote(limited_api, poll, headers={"X-Real-IP": ip}).status for _ in range(2)] == [200, 200]
    assert_rate_limited(vote(limited_api, poll, headers={"X-Real-IP": f"::ffff:{ip}"}))
    assert vote(limited_api, poll, headers={"X-Real-IP": f"::ffff:{client_ip()}"}).status == 200, \
        "another IPv4 client: mapped addresses do not share one /64"


def test_ingest_role_is_not_limited(limited_api, make_poll, limit, stack) -> None:
    """Role ingest (the trusted batching tier of the bulk path) is never limited by the hook."""
    limit(per_minute=6, burst=1)
    edge_ip = client_ip()  # one bucket: a limited role would be refused from the 2nd call on
    with psycopg.connect(stack.direct_api_url, autocommit=True) as conn:
        for _ in range(3):
            with conn.transaction():
                conn.execute("select set_config('role', 'ingest', true), "
                             "set_config('request.jwt.claims', '{\"role\": \"ingest\", \"sub\": \"edge-1\"}', true), "
                             "set_config('request.method', 'POST', true), "
                             "set_config('request.headers', %s, true)", (f'{{"x-real-ip": "{edge_ip}"}}',))
                conn.execute("select hooks.pre_request()")


def test_disabled_limit_takes_no_token(limited_api, make_poll, limit) -> None:
    limit(per_minute=6, burst=1, enabled=False)
    poll, ip = make_poll(), client_ip()
    assert [vote(limited_api, poll, headers={"X-Real-IP": ip}).status for _ in range(3)] == [200] * 3


def test_buckets_hold_no_identity_in_clear(limited_api, make_poll, limit, admin) -> None:
    limit(per_minute=6, burst=5)
    poll, ip, voter = make_poll(), client_ip(), user()
    vote(limited_api, poll, headers={"X-Real-IP": ip})
    vote(limited_api, poll, claims=voter)
    dump = admin.execute("select coalesce(string_agg(b::text, ''), '') from rate_limit.buckets b").fetchone()[0]
    for secret in (ip, voter["sub"]):
        assert secret not in dump and secret.encode().hex() not in dump
    key = admin.execute("select internal.voter_key('ip:' || %s)", (ip,)).fetchone()[0]
    assert admin.execute("select count(*) from rate_limit.buckets where limit_name = 'request' and bucket_key = %s",
                         (key,)).fetchone()[0] == 1


def test_purge_deletes_only_full_buckets(limited_api, make_poll, limit, admin) -> None:
    limit(per_minute=6, burst=2)
    poll, full_ip, busy_ip = make_poll(), client_ip(), client_ip()
    vote(limited_api, poll, headers={"X-Real-IP": full_ip})
    vote(limited_api, poll, headers={"X-Real-IP": busy_ip})
    full = admin.execute("select internal.voter_key('ip:' || %s)", (full_ip,)).fetchone()[0]
    busy = admin.execute("select internal.voter_key('ip:' || %s)", (busy_ip,)).fetchone()[0]
    # burst 2 at 0.1 token/s: full again after 20 s; pretend the first caller's was 21 s ago
    admin.execute("update rate_limit.buckets set refilled_at = refilled_at - interval '21 seconds' "
                  "where bucket_key = %s", (full,))
    assert admin.execute("select internal.purge_rate_limit_buckets()").fetchone()[0] >= 1
    remaining = {bytes(k) for (k,) in admin.execute(
        "select bucket_key from rate_limit.buckets where bucket_key = any(%s)", ([full, busy],)).fetchall()}
    assert remaining == {bytes(busy)}


def test_purge_job_is_scheduled_with_pg_cron(admin) -> None:
    rows = admin.execute("select schedule, command from cron.job where jobname = 'pgvote-purge-rate-limit-buckets'"
                         ).fetchall()
    assert rows == [("*/5 * * * *", "select internal.purge_rate_limit_buckets()")]


def test_buckets_are_unlogged(admin) -> None:
    persistence = admin.execute("select relpersistence from pg_class where oid = 'rate_limit.buckets'::regclass"
                                ).fetchone()[0]
    assert persistence == "u"


def test_concurrent_requests_of_one_caller_never_exceed_the_burst(stack, make_poll, limit) -> None:
    """Interleaving: 16 connections fire at once for one caller; the bucket row lock makes them
    queue, so exactly `burst` succeed (no over-admission under READ COMMITTED)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    limit(per_minute=0.001, burst=5)  # no refill within the test
    poll, ip = make_poll(), client_ip()
    barrier = threading.Barrier(16)

    api = ApiClient(stack.postgrest_url, stack.jwt_secret)

    def one(_: int) -> int:
        barrier.wait(timeout=30)
        return vote(api, poll, headers={"X-Real-IP": ip}).status

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = sorted(pool.map(one, range(16)))
    assert statuses == [200] * 5 + [429] * 11


def documented_precedence(text: str) -> list[str]:
    """The codes of a "first in this order wins" / "first match wins" list, in order."""
    found = re.search(r"(?:first in this order wins|first match wins):(.*?)\.(?:\s|$)", text, re.S)
    assert found, "the precedence is stated"
    return re.findall(r"\b(poll_not_found|poll_closed|login_required|invalid_fingerprint|invalid_ballot|"
                      r"rate_limited|already_voted)\b", found.group(1))


def test_request_limit_is_decided_before_the_function_runs(limited_api, make_poll, limit) -> None:
    """The hook runs before cast_vote, so once a caller's bucket is empty every call answers
    rate_limited, even one that would be poll_not_found or invalid_ballot: api/README.md and
    cast_vote's contract say so, listing the hook's rate_limited first."""
    limit(per_minute=1, burst=1)
    poll, caller = make_poll(), user()
    unknown_poll = {"poll_id": str(uuid.uuid4()), "option_ids": [poll.option_ids[0]]}
    assert limited_api.rpc("cast_vote", unknown_poll, claims=caller).status == 404, "a failed call costs nothing"
    assert vote(limited_api, poll, claims=caller).status == 200
    assert_rate_limited(limited_api.rpc("cast_vote", unknown_poll, claims=caller))
    assert_rate_limited(limited_api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": []}, claims=caller))

    readme = documented_precedence((PROJECT_ROOT / "api" / "README.md").read_text())
    contract = documented_precedence(re.sub(r"\n--\s*", " ", (PROCEDURES_DIR / "api.cast_vote.sql").read_text()))
    expected = ["rate_limited", "poll_not_found", "poll_closed", "login_required", "invalid_fingerprint",
                "invalid_ballot", "rate_limited", "already_voted"]
    assert readme == contract == expected


# ---- the per-fingerprint limit inside cast_vote (internal.take_fingerprint_token) ------------------


def test_fingerprint_limit_on_multiple_vote_poll(api, make_poll, limit) -> None:
    """Anonymous ballots of one fingerprint on one multiple-vote poll are limited inside cast_vote
    (the hook cannot see the body). Needs the call of internal.take_fingerprint_token in
    api.cast_vote (procedures/api.cast_vote.sql, after the ballot is validated)."""
    limit("fingerprint", per_minute=6, burst=3)
    poll, single = make_poll(allow_multiple_votes=True), make_poll()
    fp = fingerprint()
    statuses = [vote(api, poll, voter_fingerprint=fp).status for _ in range(3)]
    assert statuses == [200] * 3
    assert_rate_limited(vote(api, poll, voter_fingerprint=fp))
    assert vote(api, poll, voter_fingerprint=fingerprint()).status == 200, "another fingerprint"
    assert vote(api, make_poll(allow_multiple_votes=True), voter_fingerprint=fp).status == 200, "another poll"
    voter = user()
    assert [vote(api, poll, claims=voter).status for _ in range(5)] == [200] * 5, "JWT callers: the hook's job"
    assert [vote(api, single, voter_fingerprint=fp).status for _ in range(5)] == [200] * 5, \
        "single-ballot polls: a repeat is `unchanged` anyway"
    # precedence: invalid_ballot before rate_limited
    r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [], "voter_fingerprint": fp})
    assert r.status == 400 and r.body["code"] == "invalid_ballot"


def test_take_fingerprint_token_limits_anonymous_http_callers_only(admin, make_poll, limit) -> None:
    """The function itself, as cast_vote will call it (role and request settings as PostgREST sets them)."""
    limit("fingerprint", per_minute=6, burst=2)
    poll = make_poll(allow_multiple_votes=True)
    key = admin.execute("select internal.voter_key('fp:' || %s)", (fingerprint(),)).fetchone()[0]

    def take(claims: str, method: str | None = "POST", multiple: bool = True) -> str | None:
        try:
            with admin.transaction():
                admin.execute("select set_config('request.jwt.claims', %s, true), "
                              "set_config('request.method', %s, true)", (claims, method or ""))
                admin.execute("select internal.take_fingerprint_token(%s, %s, %s)", (poll.poll_id, multiple, key))
            return None
        except psycopg.Error as exc:
            return exc.diag.message_primary

    anon = '{"role": "anon"}'
    assert take(anon) is None and take(anon) is None
    limited = take(anon)
    assert limited is not None and '"rate_limited"' in limited
    assert take(anon, multiple=False) is None, "single-ballot poll"
    assert take('{"role": "authenticated", "sub": "u"}') is None, "JWT caller"
    assert take(anon, method=None) is None, "database path"


# ---- guards on the design ---------------------------------------------------------------------------


def test_retry_after_is_rounded_up(limited_api, make_poll, limit) -> None:
    limit(per_minute=7, burst=1)  # 60/7 = 8.57 s per token
    poll, ip = make_poll(), client_ip()
    assert vote(limited_api, poll, headers={"X-Real-IP": ip}).status == 200
    assert assert_rate_limited(vote(limited_api, poll, headers={"X-Real-IP": ip})) == math.ceil(60 / 7)
