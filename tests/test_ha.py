"""The HA profile (`pgvote up --ha`, pgvote/ha.py) on three real etcd members, two Patroni members and HAProxy.

- status: the members with their roles, postmaster and Patroni pids, ports, REST URLs and lag, text and
  JSON; admin_url reaches the leader;
- reads from the replica: results GETs are answered by the PostgREST reading the standby, writes never
  go there, and results fall back to the write replicas when the read side fails;
- the standby lost: in the project's choice (synchronous_mode, not strict) votes go on after the leader
  drops the lost standby from synchronous_standby_names; in strict mode no vote is acknowledged until a
  standby is back, and the vote the client gave up on had committed (its identical re-cast answers
  "unchanged");
- one etcd member lost: the other two keep the quorum, so the leader keeps its key and votes go on.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pgvote import cli
from pgvote.ha import PATRONI_CONFIG, HaStack
from pgvote.http import ApiClient
from pgvote.stack import http_json

from fixtures.ha import haproxy, member, patroni_config
from helpers import frozen_supervisor, user


def _api(stack: HaStack, timeout: float = 60) -> ApiClient:
    return ApiClient(stack.http_url, stack.jwt_secret, timeout=timeout)


def _poll(api: ApiClient) -> dict[str, Any]:
    r = api.rpc("create_poll", {"question": "HA?", "options": ["yes", "no"]}, claims=user())
    assert r.status == 200, r.body
    return dict(r.body)


def _vote(api: ApiClient, poll: dict[str, Any], voter: str) -> Any:
    return api.rpc("cast_vote", {"poll_id": poll["poll_id"], "option_ids": [poll["option_ids"][0]],
                                 "voter_fingerprint": voter})


def _access_log(stack: HaStack, needle: str, want: int, timeout: float = 10) -> list[tuple[str, str]]:
    """(request line, upstream addresses) of the access log lines naming needle (nginx flushes every second)."""
    log = Path(stack.log_dir) / "access.log"
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(r'"(\w+ \S+) HTTP/[\d.]+" \d+ \d+ \S+ "([^"]*)"',
                           "\n".join(line for line in log.read_text().splitlines() if needle in line))
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_status_json_names_the_leader_and_the_sync_standby(ha: HaStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--state-dir", str(ha.state_dir), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["profile"] == "ha"
    members = status["ha"]["members"]
    assert sorted(m["role"] for m in members) == ["leader", "sync_standby"]
    for m in members:
        assert set(m) >= {"name", "role", "pid", "port", "url", "patroni_pid", "lag_bytes"}
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{m['port']}/pgvote", autocommit=True) as conn:
            data_dir, standby = conn.execute("select current_setting('data_directory'), pg_is_in_recovery()").fetchone()
        cmdline = Path(f"/proc/{m['pid']}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].endswith(b"postgres") and data_dir.encode() in cmdline, "pid is the member's postmaster"
        assert standby == (m["role"] != "leader")
        assert m["patroni_pid"] == ha.component_pid(m["name"])
        assert isinstance(m["lag_bytes"], int) and m["lag_bytes"] >= 0
        with urllib.request.urlopen(m["url"] + "/patroni", timeout=5) as resp:
            assert json.load(resp)["patroni"]["scope"] == f"pgvote-{ha.ports.base}", "url is its Patroni REST API"
    leader = next(m for m in members if m["role"] == "leader")
    with psycopg.connect(status["urls"]["admin_url"], autocommit=True) as conn:
        assert conn.execute("select inet_server_port()").fetchone() == (leader["port"],), "admin_url reaches the leader"

    assert cli.main(["--state-dir", str(ha.state_dir), "status"]) == 0
    text = capsys.readouterr().out
    assert f"{leader['name']}: leader" in text and ": sync_standby" in text


def test_profile_is_remembered_by_the_state_dir(ha: HaStack) -> None:
    from pgvote.backends import make_stack

    again = make_stack(ha.state_dir)
    assert isinstance(again, HaStack) and again.status()["ha"]["leader"] is not None


def test_results_gets_are_served_by_the_standby_and_writes_never_reach_it(ha: HaStack) -> None:
    api = _api(ha)
    poll = _poll(api)
    for i in range(5):
        assert _vote(api, poll, f"ha-read-{i}").status == 200
    standby = member(ha, "sync_standby")
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{standby.member.pg_port}/pgvote", autocommit=True) as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
        reads_before = conn.execute("select xact_commit from pg_stat_database where datname = 'pgvote'").fetchone()
        results = api.rpc("poll_results", {"poll_id": poll["poll_id"]}, method="GET")
        assert results.status == 200 and results.body["total_ballots"] == 5, "synchronous: the standby has them"
        readers = conn.execute("select count(*) from pg_stat_activity where usename = 'authenticator'").fetchone()
        # backends report their counts to the statistics at most once a second
        ran = _wait(lambda: conn.execute("select xact_commit from pg_stat_database where datname = 'pgvote'")
                    .fetchone()[0] > reads_before[0], 10)
    assert readers[0] > 0, "the read PostgREST's pool is connected to the standby"
    assert ran, "the GET ran a transaction on the standby"
    read_server = f"127.0.0.1:{ha.read_postgrest_port}"
    gets = [u for r, u in _access_log(ha, poll["poll_id"], want=1) if r.startswith("GET /rpc/poll_results")]
    assert gets == [read_server]
    writes = [u for r, u in _access_log(ha, "POST /rpc/", want=6)]  # every POST the stack has served
    assert len(writes) >= 6 and read_server not in " ".join(writes), "no write ever reached the read PostgREST"


def test_results_fall_back_to_the_write_replicas_when_the_read_side_fails(ha: HaStack) -> None:
    """Every server of HAProxy's read port disabled (runtime API): the read PostgREST has no database,
    answers 503, and nginx passes the GET on to a write replica."""
    api = _api(ha)
    poll = _poll(api)
    assert _vote(api, poll, "ha-fallback").status == 200
    servers = [f"read/db-{m.index}{suffix}" for m in ha.members for suffix in ("", "-leader")]
    try:
        for server in servers:
            haproxy(ha, f"disable server {server}")
            haproxy(ha, f"shutdown sessions server {server}")
        results = api.rpc("poll_results", {"poll_id": poll["poll_id"]}, method="GET")
        assert results.status == 200 and results.body["total_ballots"] == 1, results.body
    finally:
        for server in servers:
            haproxy(ha, f"enable server {server}")
    get = [u for r, u in _access_log(ha, poll["poll_id"], want=3) if r.startswith("GET")]
    assert len(get) == 1
    tried = re.split(r",? : |, ", get[0])  # ", ": the next server of the upstream; " : " after error_page
    assert tried[0] == f"127.0.0.1:{ha.read_postgrest_port}" and tried[-1] in {r.url.removeprefix("http://")
                                                                                 for r in ha.live_replicas()}, get


def _votes_flow(api: ApiClient, poll: dict[str, Any], tag: str, within: float) -> float | None:
    """Seconds until a vote is acknowledged, trying one fresh vote after another (None: none within)."""
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < within:
        i += 1
        try:
            if _vote(api, poll, f"{tag}-{i}").status == 200:
                return round(time.monotonic() - start, 2)
        except OSError:
            pass
    return None


def test_standby_lost_votes_go_on_without_strict_mode(ha: HaStack) -> None:
    """The project's choice: synchronous_mode without strict. The frozen standby's member key expires
    (ttl), the leader drops it from synchronous_standby_names and commits alone; results GETs are
    answered meanwhile (HAProxy's read port falls back to the leader)."""
    api = _api(ha, timeout=5)
    poll = _poll(_api(ha))
    standby = member(ha, "sync_standby")
    leader = member(ha, "leader")
    frozen = standby.freeze_member()
    try:
        waited = _votes_flow(api, poll, "nonstrict", within=60)
        assert waited is not None, "votes resumed on the leader alone"
        results = _api(ha).rpc("poll_results", {"poll_id": poll["poll_id"]}, method="GET")
        assert results.status == 200 and results.body["total_ballots"] >= 1
        with psycopg.connect(ha.admin_url, autocommit=True) as conn:
            assert conn.execute("show synchronous_standby_names").fetchone() == ("",)
        assert member(ha, "leader").member == leader.member, "no failover to the lost standby"
    finally:
        standby.thaw(frozen)
    assert ha.wait_healthy(), "the standby came back as the synchronous standby"
    print(f"non-strict: first acknowledged vote {waited} s after the standby froze")


def test_losing_one_etcd_member_changes_nothing(ha: HaStack) -> None:
    """Three etcd members keep a quorum of two: with one of them dead for longer than the leader key's
    ttl (the supervisor frozen, so it stays dead), the leader keeps its key and every vote is
    acknowledged; the member restarted rejoins the etcd cluster."""
    api = _api(ha, timeout=10)
    poll = _poll(_api(ha))
    leader = member(ha, "leader").member
    ttl = yaml.safe_load(PATRONI_CONFIG.read_text())["bootstrap"]["dcs"]["ttl"]
    victim = ha.component_pid("etcd-0")
    assert victim is not None
    statuses = []
    with frozen_supervisor(ha):
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + ttl + 5
        while time.monotonic() < deadline:
            statuses.append(_vote(api, poll, f"etcd-lost-{len(statuses)}").status)
            time.sleep(0.2)
        assert http_json(f"http://127.0.0.1:{ha.etcd[0][0]}/health")[0] == 0, "etcd-0 stayed dead"
        assert member(ha, "leader").member == leader, "the leader kept its key"
        assert ha.healthy(), ha.cluster()
    assert statuses and set(statuses) == {200}, statuses
    assert _wait(lambda: all((http_json(f"http://127.0.0.1:{client}/health")[1] or {}).get("health") == "true"
                             for client, _ in ha.etcd), 30), "etcd-0 restarted and rejoined"


def test_standby_lost_blocks_votes_in_strict_mode(ha: HaStack) -> None:
    """synchronous_mode_strict: the leader keeps waiting for a standby, so no vote is acknowledged while
    none runs; the vote whose client gave up had committed on the leader and is acknowledged by its
    identical re-cast once the standby is back."""
    patroni_config(ha, {"synchronous_mode_strict": True})
    assert _wait(lambda: _setting(ha, "synchronous_standby_names") != "", 15)
    poll = _poll(_api(ha))
    standby = member(ha, "sync_standby")
    frozen = standby.freeze_member()
    answers: list[Any] = []
    try:
        # proving an absence takes a wait: past the ttl a non-strict leader would have dropped the standby
        time.sleep(yaml.safe_load(PATRONI_CONFIG.read_text())["bootstrap"]["dcs"]["ttl"] + 2)
        call = threading.Thread(target=lambda: answers.append(_try(lambda: _vote(_api(ha, timeout=8), poll, "strict"))))
        call.start()
        call.join(20)
        assert answers and not (hasattr(answers[0], "status") and answers[0].status == 200), answers
        assert _setting(ha, "synchronous_standby_names") != "", "strict: the leader never drops the standby"
    finally:
        standby.thaw(frozen)
    assert ha.wait_healthy()
    again = _vote(_api(ha), poll, "strict")
    assert again.status == 200 and again.body["status"] == "unchanged", again.body


def _try(call: Any) -> Any:
    try:
        return call()
    except OSError as exc:
        return exc


def _setting(ha: HaStack, name: str) -> str:
    with psycopg.connect(ha.admin_url, autocommit=True, connect_timeout=5) as conn:
        return str(conn.execute(f"show {name}").fetchone()[0])


def _wait(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_down_stops_every_process_and_up_brings_the_cluster_back(ha: HaStack) -> None:
    api = _api(ha)
    poll = _poll(api)
    assert _vote(api, poll, "ha-down").status == 200
    status = ha.status()
    pids = [m["pid"] for m in status["ha"]["members"]] + [m["patroni_pid"] for m in status["ha"]["members"]]
    pids += [c["pid"] for name, c in status["components"].items() if isinstance(c, dict) and c.get("pid")]
    pids += [r["pid"] for r in status["components"]["postgrest"]]
    assert all(pids) and len(set(pids)) >= 12, status["components"]
    ha.down()
    alive = [p for p in set(pids) if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]
    assert alive == [], f"still running after down: {alive}"
    assert not ha.status()["ha"]["leader"]
    ha.up()
    assert ha.wait_healthy()
    results = api.rpc("poll_results", {"poll_id": poll["poll_id"]})
    assert results.status == 200 and results.body["total_ballots"] == 1, "the vote survived down and up"
