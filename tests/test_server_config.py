"""What db/postgresql.conf holds the server to: deeply nested JSON bodies end in a clean 4xx,
never a crash; no fingerprint, JWT claim or request header ever reaches a server log.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from conftest import fingerprint, table_snapshot, user

T = TypeVar("T")

INGEST = {"role": "ingest"}
#: PostgreSQL's own margin between max_stack_depth and the stack rlimit (STACK_DEPTH_SLOP).
STACK_DEPTH_SLOP = 512 * 1024


def nested_arrays(depth: int) -> list[Any]:
    """[[[...]]] `depth` levels deep, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def with_deep_stack(call: Callable[[], T]) -> T:
    """Run `call` in a thread with room to JSON-encode tens of thousands of nesting levels
    (the client's encoder recurses once per level, like the server's parser)."""
    import sys

    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    old_limit, old_size = sys.getrecursionlimit(), threading.stack_size()
    sys.setrecursionlimit(1_000_000)
    threading.stack_size(512 * 1024 * 1024)
    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old_size)
        sys.setrecursionlimit(old_limit)
    if errors:
        raise errors[0]
    return result[0]


# ---- nested JSON ------------------------------------------------------------------------------------


def stack_rlimit(admin: psycopg.Connection) -> int | None:
    """The soft stack limit of a server backend (inherited from the postmaster), in bytes."""
    pid = admin.execute("select pg_backend_pid()").fetchone()[0]
    limits = Path(f"/proc/{pid}/limits")
    if not limits.exists():
        return None
    for line in limits.read_text().splitlines():
        if line.startswith("Max stack size"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    return None


def test_max_stack_depth_is_raised_and_below_the_stack_rlimit(admin) -> None:
    depth = int(admin.execute("select setting::int * 1024 from pg_settings where name = 'max_stack_depth'"
                              ).fetchone()[0])
    assert depth == 6 * 1024 * 1024, "db/postgresql.conf's value, not the 2MB default"
    limit = stack_rlimit(admin)
    if limit is None:
        pytest.skip("the server's stack rlimit is unlimited or unreadable: no bound to check against")
    assert depth <= limit - STACK_DEPTH_SLOP - 1024 * 1024, "at least 1 MB beyond PostgreSQL's own margin"


@pytest.fixture
def witness(stack) -> Iterator[psycopg.Connection]:
    """A connection open across the test: a crashed backend makes the postmaster end every session."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        yield conn


def assert_clean_rejection(r: Any, *, parsed: bool) -> None:
    """A 4xx error with a code and a message, or a bulk answer that rejected its only ballot."""
    assert r.status < 500, (r.status, r.body)
    if r.status == 200:
        assert r.body["recorded"] == 0 and [b["status"] for b in r.body["results"]] == ["rejected"], r.body
        return
    assert 400 <= r.status < 500 and r.body.get("code") and r.body.get("message"), (r.status, r.body)
    if parsed:  # the server converted the body: the function's own answer, whatever PostgREST maps 54001 to
        assert r.body["code"] != "54001", r.body


# 16,000 levels: a 32 KB body, beyond the ~13,000 of the 2MB default. 32,000: 64 KB, within
# max_stack_depth. 200,000: a 400 KB body, which only a bulk location admits, past any stack depth:
# 54001, PostgREST 12.0.2's 413.
@pytest.mark.parametrize("depth", [16_000, 32_000, 200_000])
def test_nested_json_bodies_answer_4xx_and_write_nothing(api, make_poll, admin, witness, depth) -> None:
    poll = make_poll()
    deep = nested_arrays(depth)
    calls: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = [
        ("cast_vote", {"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]], "voter_fingerprint": deep},
         None, "POST"),
        ("cast_vote", {"poll_id": poll.poll_id, "option_ids": deep, "voter_fingerprint": fingerprint()},
         None, "POST"),
        ("cast_vote", {"poll_id": poll.poll_id, "option_ids": deep}, user(), "POST"),
        ("poll_results", {"poll_id": deep}, None, "POST"),
        ("cast_votes", {"ballots": deep}, INGEST, "POST"),
        ("cast_votes", {"ballots": [{"poll_id": poll.poll_id, "option_ids": [poll.option_ids[0]],
                                     "voter_id": deep}]}, INGEST, "POST"),
    ]
    before = table_snapshot(admin)
    for fn, body, claims, method in calls:
        r = with_deep_stack(lambda: api.rpc(fn, body, claims=claims, method=method))
        assert_clean_rejection(r, parsed=depth <= 32_000)
    assert table_snapshot(admin) == before, "rejected calls write nothing"
    assert witness.execute("select 1").fetchone() == (1,), "no backend crashed (the witness session lives)"


# ---- secrets in the logs ----------------------------------------------------------------------------


@pytest.fixture
def every_statement_logged(admin) -> Iterator[None]:
    """Log every statement with its duration, as a slow vote would be under the 500ms threshold,
    for the whole cluster (ALTER SYSTEM and reload reach the pooled server connections too)."""
    admin.execute("alter system set log_min_duration_statement = 0")
    admin.execute("select pg_reload_conf()")
    time.sleep(1)  # every backend applies the reload before its next command
    try:
        yield
    finally:
        admin.execute("alter system reset log_min_duration_statement")
        admin.execute("select pg_reload_conf()")


def log_text(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_no_fingerprint_claim_or_header_in_the_server_logs(stack, api, make_poll, every_statement_logged) -> None:
    logs = [Path(stack.pg_log), Path(stack.bouncer_log)]
    offsets = [p.stat().st_size for p in logs]
    poll = make_poll()
    secrets = {
        "fingerprint": f"fp-{uuid.uuid4()}",
        "sub": f"user-{uuid.uuid4()}",
        "header": f"secret-{uuid.uuid4()}",
        "nul fingerprint": f"fp-{uuid.uuid4()}",
    }
    headers = {"X-Client-Secret": secrets["header"]}
    a = poll.option_ids[0]
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a],
                                 "voter_fingerprint": secrets["fingerprint"]}, headers=headers).status == 200
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a]},
                   claims=user(secrets["sub"]), headers=headers).status == 200
    # failures log an ERROR: the same values must not ride along in its DETAIL or CONTEXT
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a, a],
                                 "voter_fingerprint": secrets["fingerprint"]}, headers=headers).status == 400
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a],
                                 "voter_fingerprint": secrets["nul fingerprint"] + "\u0000"},
                   headers=headers).status == 400
    time.sleep(0.5)  # the logger process writes asynchronously
    pg_log, bouncer_log = (log_text(p, o) for p, o in zip(logs, offsets))
    assert "cast_vote" in pg_log and "duration:" in pg_log, "the votes were logged as slow statements"
    for name, value in secrets.items():
        assert value not in pg_log, f"the {name} is in the PostgreSQL log"
        assert value not in bouncer_log, f"the {name} is in the PgBouncer log"
