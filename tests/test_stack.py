"""The local stack as a user drives it: one base URL, status, tokens, supervision, blue-green, ports.

Topology changes (killing components, switching colours) run on a private stack, never the session's.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from pgvote.http import ApiClient
from pgvote.stack import LocalStack, Ports

from helpers import stored_ballots, user

K6 = Path(sys.executable).with_name("k6")
STEADY = Path(__file__).with_name("k6") / "steady_votes.js"


def pgvote_cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgvote.cli", "--state-dir", str(stack.requested_state_dir), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def alive(pid: int) -> bool:
    """Running, not a zombie (this machine's init may be slow to reap the children it inherits)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def statuses(points: Path) -> Counter[str]:
    """HTTP status counts in a k6 JSON output file."""
    counts: Counter[str] = Counter()
    for line in points.read_text().splitlines():
        point = json.loads(line)
        if point.get("type") == "Point" and point["metric"] == "http_reqs":
            counts[point["data"]["tags"].get("status", "?")] += 1
    return counts


def test_status_json_lists_the_one_base_url_and_every_replica(stack: LocalStack) -> None:
    status = json.loads(pgvote_cli(stack, "status", "--json").stdout)
    assert status["urls"]["http"] == stack.http_url and not status["urls"]["http"].endswith("/")
    assert status["urls"]["admin_url"] == stack.admin_url
    replicas = status["components"]["postgrest"]
    assert [r["name"] for r in replicas] == ["postgrest-blue-1", "postgrest-blue-2"]
    for r in replicas:
        assert {"name", "colour", "role", "pid", "port", "admin_port"} <= r.keys()
        assert r["colour"] == "blue" and r["role"] == "write" and r["running"] and r["pid"] > 0
    ports = [r["port"] for r in replicas] + [r["admin_port"] for r in replicas]
    assert len(set(ports)) == 4
    assert status["components"]["nginx"]["running"] and status["components"]["supervisor"]["running"]


def test_every_default_port_derives_from_one_base_below_the_ephemeral_range() -> None:
    ports = Ports(Ports.DEFAULT_BASE)
    listening = [ports.postgres, ports.pgbouncer, ports.http] + [p for slot in range(14) for p in ports.postgrest(slot)]
    assert len(set(listening)) == len(listening)
    assert all(Ports.DEFAULT_BASE <= p < Ports.DEFAULT_BASE + Ports.SPAN for p in listening)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert Ports.DEFAULT_BASE + Ports.SPAN <= min(low, 32768)


def test_a_port_base_inside_the_ephemeral_range_is_refused(tmp_path: Path) -> None:
    from pgvote.stack import StackError

    with pytest.raises(StackError, match="ephemeral"):
        LocalStack(state_dir=tmp_path / "s", port_base=40000)


def test_token_prints_only_a_jwt_postgrest_accepts(stack: LocalStack) -> None:
    api = ApiClient(stack.http_url)
    token = pgvote_cli(stack, "token", "--sub", "token-user").stdout
    assert token.count("\n") == 1 and token.count(".") == 2
    created = api.rpc("create_poll", {"question": "Token?", "options": ["a", "b"]}, token=token.strip())
    assert created.status == 200, created.body
    expired = pgvote_cli(stack, "token", "--exp", "-120").stdout.strip()
    refused = api.rpc("create_poll", {"question": "Late?", "options": ["a", "b"]}, token=expired)
    assert refused.status == 401 and refused.body["code"] == "PGRST301", refused.body
    anon = pgvote_cli(stack, "token", "--role", "anon").stdout.strip()
    as_anon = api.rpc("create_poll", {"question": "Anon?", "options": ["a", "b"]}, token=anon)
    assert as_anon.status == 401, as_anon.body  # anon may not create polls


@pytest.mark.parametrize(("mode", "start"), [("ha", "`pgvote up --ha`"), ("router", "`pgvote up --shards N`")])
def test_a_bench_mode_on_the_plain_stack_names_the_stack_it_needs(stack: LocalStack, mode: str, start: str) -> None:
    # --ha here picks a benchmark, not the profile: read as the profile it would probe an HA cluster that is not
    # there and end in a connection error instead of saying which stack to start
    done = pgvote_cli(stack, "bench", f"--{mode}", "--quick", "--no-report")
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: bench --{mode} needs ") and start in lines[0]


def test_the_supervisor_restarts_a_killed_replica_nginx_and_pgbouncer(private_stack: LocalStack) -> None:
    api = ApiClient(private_stack.http_url, private_stack.jwt_secret)
    for name in ("postgrest-blue-1", "nginx", "pgbouncer"):
        before = private_stack.component_pid(name)
        assert before is not None, name
        os.kill(before, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = private_stack.component_pid(name)
            if after not in (None, before) and private_stack.status()["components"]["nginx"]["running"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"{name} was not restarted within 30 s")
        entry = {c.get("name", k): c for k, v in private_stack.status()["components"].items()
                 for c in (v if isinstance(v, list) else [v])}[name]
        assert entry["restarts"] >= 1 and entry["last_exit"] == -signal.SIGKILL, entry
        private_stack.up()  # waits until every component answers again
        r = api.rpc("create_poll", {"question": f"after {name}?", "options": ["a", "b"]}, claims=user())
        assert r.status == 200, (name, r.body)


def test_blue_green_switch_under_load_fails_no_request(private_stack: LocalStack, tmp_path: Path) -> None:
    api = ApiClient(private_stack.http_url, private_stack.jwt_secret)
    poll = api.rpc("create_poll", {"question": "Blue or green?", "options": ["blue", "green"]}, claims=user()).body
    with psycopg.connect(private_stack.admin_url, autocommit=True) as admin:
        print("raising the private stack's database rate limit for the duration of this test")
        admin.execute("update rate_limit.limits set requests_per_minute = 1e6, burst = 1000000 where name = 'request'")
        summary, points = tmp_path / "summary.json", tmp_path / "points.json"
        k6 = subprocess.Popen(
            [str(K6), "run", "--quiet", "--no-color", "--summary-export", str(summary), "--out", f"json={points}",
             "--local-ips", "127.0.5.1-127.0.5.254",
             "-e", f"BASE_URL={private_stack.http_url}", "-e", f"POLL_ID={poll['poll_id']}",
             "-e", f"OPTION_IDS={json.dumps(poll['option_ids'])}", "-e", "VUS=40", "-e", "DURATION=12s", str(STEADY)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(3)
            green = private_stack.start_colour("green")
            private_stack.switch_live("green")
            private_stack.stop_colour("blue")
            output, _ = k6.communicate(timeout=120)
        finally:
            if k6.poll() is None:
                k6.kill()
            admin.execute("update rate_limit.limits set requests_per_minute = 10, burst = 20 where name = 'request'")
        checks = json.loads(summary.read_text())["metrics"]["checks"]
        assert checks["fails"] == 0 and checks["passes"] > 100, (statuses(points), output[-2000:])
        assert stored_ballots(admin, poll["poll_id"]) == checks["passes"]
    status = private_stack.status()
    assert status["live_colour"] == "green"
    assert [r["name"] for r in status["components"]["postgrest"]] == [r.name for r in green]
    access = (Path(status["log_dir"]) / "access.log").read_text()
    assert any(f":{r.port}" in access for r in green), "green served requests after the switch"
    private_stack.start_colour("blue")
    private_stack.switch_live("blue")
    private_stack.stop_colour("green")


def test_every_path_nginx_writes_is_in_the_state_dir(stack: LocalStack) -> None:
    state = str(stack.state_dir)
    main = (stack.nginx_dir / "nginx.conf").read_text()
    api = (stack.nginx_dir / "pgvote.conf").read_text()
    written = re.findall(r"^\s*(?:pid|error_log)\s+([^\s;]+)", main, re.M)
    written += re.findall(r"^\s*(?:access_log|\w+_temp_path|proxy_cache_path)\s+([^\s;]+)", api, re.M)
    written = [path for path in written if path != "off"]
    assert len(written) == 10, written  # pid, error log, access log, 5 temp dirs, results and live caches
    assert all(path.startswith(state) for path in written), written


def test_down_stops_every_process_of_the_stack() -> None:
    local = LocalStack.ephemeral(prefix="pgvote-down-")
    try:
        local.up()
        status = local.status()["components"]
        pids = [status["postgres"]["pid"], status["pgbouncer"]["pid"], status["nginx"]["pid"],
                status["publisher"]["pid"], status["supervisor"]["pid"]] + [r["pid"] for r in status["postgrest"]]
        assert all(pids), pids
        local.down()
        assert not any(alive(pid) for pid in pids), pids
        assert not any(c["running"] for c in local.status()["components"].values() if isinstance(c, dict))
    finally:
        local.destroy()
