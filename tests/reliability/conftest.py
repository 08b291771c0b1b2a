"""Fault-injection fixtures of the reliability suite (in the manner of psycopg_pool's fix_proxy.py).

- ``killable_stack``: a PRIVATE stack of the production topology (nginx, two PostgREST replicas, PgBouncer,
  PostgreSQL, under the launcher's supervisor; own temp dir, free ports), destroyed at the end of the run:
  crash, restart, kill and freeze tests damage it, never the session ``stack`` of the other tests.
- ``cluster``: fault injector bound to that stack (SIGKILL / SIGSTOP / restart, see faults.Cluster); the
  stack is checked (and restarted when needed) before each test.
- ``proxied_stack`` + ``tcp_proxy``: a second private stack whose PgBouncer reaches PostgreSQL through a
  TCP proxy process the test controls (latency, stall, cut, refuse); reset to pass-through after each test.
- ``bouncer``: the admin console of the killable stack.
- ``figures``: measured figures, printed at the end of the run and written to
  ``.pytest_cache/pgvote/reliability-<profile>.json`` (docs/reliability.md quotes the long run).

The profile (ci / long) comes from tests/reliability/profile.py (``PGVOTE_PROFILE``).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgvote.stack import LocalStack, free_port

from .checks import RATE_LIMITS
from .faults import Bouncer, Cluster, TcpProxy
from .profile import PROFILE, Profile

_FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="session")
def profile() -> Profile:
    return PROFILE


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    """Test name -> figures measured by that test (kept for the end-of-run summary)."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _FIGURES:
        return
    out = Path(config.rootpath) / ".pytest_cache" / "pgvote" / f"reliability-{PROFILE.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"profile": PROFILE.__dict__, "figures": _FIGURES}, indent=2, default=str) + "\n")
    terminalreporter.section(f"pgvote reliability figures ({PROFILE.name} profile)")
    terminalreporter.write_line(RATE_LIMITS)
    for name, value in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(value, default=str)}")
    terminalreporter.write_line(f"(written to {out})")


def _private_stack(prefix: str, **kw: Any) -> LocalStack:
    return LocalStack.ephemeral(prefix=prefix, **kw)


@pytest.fixture(scope="session")
def killable_stack() -> Iterator[LocalStack]:
    """A private stack the fault tests may kill; destroyed (processes stopped, data deleted) at the end."""
    stack = _private_stack("pgvote-killable-")
    try:
        stack.up()
        yield stack
    finally:
        Cluster(stack).thaw()  # never leave a frozen cluster behind, even after a failed freeze test
        stack.destroy()


@pytest.fixture
def cluster(killable_stack: LocalStack) -> Iterator[Cluster]:
    """Fault injector of the killable stack; the stack is healthy at the start of every test."""
    control = Cluster(killable_stack)
    control.thaw()
    if not (control.running() and control.ready()):
        killable_stack.up()
    try:  # a failed pause test must not leave the pool paused
        Bouncer(killable_stack).command("RESUME")
    except psycopg.Error:
        pass  # "pooler is not paused/suspended"
    yield control
    control.thaw()


@pytest.fixture
def bouncer(killable_stack: LocalStack) -> Iterator[Bouncer]:
    console = Bouncer(killable_stack)
    yield console
    try:  # a failed PAUSE test must not leave the pool paused for the next test
        console.command("RESUME")
    except psycopg.Error:
        pass  # "pooler is not paused/suspended"


@pytest.fixture(scope="session")
def tcp_proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def proxied_stack(tcp_proxy_port: int) -> Iterator[tuple[LocalStack, TcpProxy]]:
    stack = _private_stack("pgvote-proxied-", server_port_for_bouncer=tcp_proxy_port)
    proxy = TcpProxy(tcp_proxy_port, stack.pg_port)
    try:
        proxy.start()
        stack.up()
        yield stack, proxy
    finally:
        proxy.stop()
        stack.destroy()


@pytest.fixture
def tcp_proxy(proxied_stack: tuple[LocalStack, TcpProxy]) -> Iterator[TcpProxy]:
    """The proxy between the proxied stack's PgBouncer and PostgreSQL, passing traffic at the start and
    again after the test."""
    _, proxy = proxied_stack
    proxy.passthrough()
    yield proxy
    proxy.passthrough()
