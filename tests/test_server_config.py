"""What db/postgresql.conf holds the server to: deeply nested JSON bodies end in a clean 4xx,
never a crash; no fingerprint, JWT or header value ever reaches a server log.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import table_snapshot, user

INGEST = {"role": "ingest", "sub": "edge-tier"}
#: PostgreSQL's own margin between max_stack_depth and the stack rlimit (STACK_DEPTH_SLOP).
STACK_DEPTH_SLOP = 512 * 1024


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
    """A session open across the test: a backend that crashed makes the postmaster end every session."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        yield conn


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


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
# max_stack_depth. 120,000: 240 KB, within create_poll's and cast_votes' body limits and past
# any stack depth: 54001, which PostgREST 12.0.2 answers 413. cast_vote and poll_results bodies
# that deep get nginx's own 413 (16 KB limit).
@pytest.mark.parametrize("depth", [16_000, 32_000, 120_000])
def test_nested_json_bodies_answer_4xx_and_write_nothing(api, make_poll, admin, witness, depth) -> None:
    poll = make_poll()
    deep = nested(depth)
    a = f'"{poll.option_ids[0]}"'
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("cast_vote", f'{{"poll_id": "{poll.poll_id}", "option_ids": [{a}], "voter_fingerprint": {deep}}}', None),
        ("cast_vote", f'{{"poll_id": "{poll.poll_id}", "option_ids": {deep}}}', user()),
        ("poll_results", f'{{"poll_id": {deep}}}', None),
        ("create_poll", f'{{"question": "Deep?", "options": {deep}}}', user()),
        ("cast_votes", f'{{"ballots": {deep}}}', INGEST),
        ("cast_votes", f'{{"ballots": [{{"poll_id": "{poll.poll_id}", "option_ids": [{a}], "voter_id": {deep}}}]}}',
         INGEST),
    ]
    before = table_snapshot(admin)
    for fn, body, claims in calls:
        assert_clean_rejection(api.rpc(fn, raw_body=body, claims=claims), parsed=depth <= 32_000)
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


def log_sizes(log_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in log_dir.rglob("*") if p.is_file()}


def logged_since(log_dir: Path, sizes: dict[Path, int]) -> dict[str, str]:
    """What each log file of the stack gained (new files whole)."""
    gained = {}
    for path in (p for p in log_dir.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            f.seek(sizes.get(path, 0))
            gained[path.name] = f.read().decode(errors="replace")
    return gained


def test_no_fingerprint_token_or_header_in_any_server_log(stack, api, make_poll, every_statement_logged) -> None:
    """Votes logged as slow statements, good and bad ones: neither PostgreSQL's log nor PgBouncer's (nor
    any other log of the stack) holds the fingerprint, the sub, the bearer token or a header value."""
    log_dir = Path(stack.pg_log).parent
    sizes = log_sizes(log_dir)
    poll = make_poll()
    claims = user(f"user-{uuid.uuid4()}")
    secrets = {
        "fingerprint": f"fp-{uuid.uuid4()}",
        "sub": claims["sub"],
        "token": api.token(claims),
        "header": f"secret-{uuid.uuid4()}",
        "NUL fingerprint": f"fp-{uuid.uuid4()}",
    }
    headers = {"X-Client-Secret": secrets["header"]}
    a = poll.option_ids[0]
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a],
                                 "voter_fingerprint": secrets["fingerprint"]}, headers=headers).status == 200
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a]},
                   token=secrets["token"], headers=headers).status == 200
    # failures log an ERROR: the same values must not ride along in its DETAIL or CONTEXT
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a, a],
                                 "voter_fingerprint": secrets["fingerprint"]}, headers=headers).status == 400
    assert api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [a], "voter_fingerprint":
                                 secrets["NUL fingerprint"] + "\u0000"}, headers=headers).status == 400
    time.sleep(1.5)  # the server's logger and nginx's buffered access log write asynchronously
    logs = logged_since(log_dir, sizes)
    assert "cast_vote" in logs[Path(stack.pg_log).name] and "duration:" in logs[Path(stack.pg_log).name], \
        "the votes were logged as slow statements"
    assert Path(stack.bouncer_log).name in logs
    for name, value in secrets.items():
        for log, text in logs.items():
            assert value not in text, f"the {name} is in {log}"
