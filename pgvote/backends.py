"""Which stack `pgvote` drives: local processes (pgvote.stack) or containers (pgvote.containers).

Both implement `Stack`, the interface the CLI and the tools use. The container backend is checked
statically only (mypy): these machines have no Docker engine, so it is unproven here.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

from pgvote.stack import LocalStack, StackError


class Stack(Protocol):
    backend: str
    state_dir: Path
    admin_url: str
    api_url: str
    direct_api_url: str
    bouncer_admin_url: str

    def up(self, migrate: bool = True) -> None: ...
    def down(self) -> None: ...
    def destroy(self) -> None: ...
    def status(self) -> dict[str, Any]: ...


def docker_available(timeout: float = 5.0) -> bool:
    """True when a Docker engine answers `docker info` within timeout seconds."""
    if not shutil.which("docker"):
        return False
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def select_backend() -> str:
    """'local' or 'testcontainers': $PGVOTE_BACKEND, else testcontainers when Docker answers and it is installed."""
    choice = os.environ.get("PGVOTE_BACKEND", "").strip().lower()
    if choice in ("local", "testcontainers"):
        return choice
    if choice:
        raise StackError(f"PGVOTE_BACKEND={choice!r}: use 'local' or 'testcontainers'")
    if importlib.util.find_spec("testcontainers") is not None and docker_available():
        return "testcontainers"
    return "local"


def make_stack(state_dir: Path | None = None, ha: bool = False, shards: int | None = None) -> Stack:
    """The stack of this checkout per select_backend(); the local one in the HA profile (`pgvote up --ha`)
    or the sharded one (`pgvote up --shards N`) when asked or when its state dir remembers it."""
    if select_backend() == "testcontainers":
        from pgvote.containers import ContainerStack

        return ContainerStack(state_dir)
    stack = LocalStack(state_dir)
    saved = stack._load_state().get("shards")
    if ha or stack.profile == "ha":
        if shards is not None or saved:
            raise StackError("the HA and the sharded profiles do not combine: one state dir runs one of them")
        from pgvote.ha import HaStack

        return HaStack(state_dir)
    if shards is None and not saved:
        return stack
    if shards is not None and saved and shards != saved:
        raise StackError(f"{stack.state_dir} runs {saved} shards: `pgvote grow` doubles them online "
                         "(docs/scaling.md); `pgvote clean` first for a new stack")
    from pgvote.shards import ShardedStack

    return ShardedStack(stack.requested_state_dir, shards=shards or int(str(saved)))


def require_running(stack: Stack, component: str = "nginx") -> None:
    """The one "is the stack running" guard: a clear error naming the command that starts it."""
    entry = stack.status()["components"].get(component)
    if not (isinstance(entry, dict) and entry.get("running")):
        raise StackError(f"the local stack ({stack.state_dir}) is not running ({component} is down): "
                         "start it with `pgvote up` (or `make demo`)")
