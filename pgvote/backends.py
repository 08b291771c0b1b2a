"""Which stack `pgvote` drives: local processes (pgvote.stack) or `docker compose` (pgvote.containers).

Both implement `Stack`, the interface the CLI and the tools use. The container backend is checked
statically only (mypy): these machines have no Docker engine, so it is unproven here.
"""
from __future__ import annotations

import os
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


def make_stack(state_dir: Path | None = None, ha: bool = False, shards: int | None = None) -> Stack:
    """The stack of this checkout: $PGVOTE_BACKEND=compose, the container one; else the local one, in the HA
    profile (`pgvote up --ha`) or the sharded one (`pgvote up --shards N`) when asked or when its state dir
    remembers it."""
    backend = os.environ.get("PGVOTE_BACKEND", "local").strip().lower() or "local"
    if backend not in ("local", "compose"):
        raise StackError(f"PGVOTE_BACKEND={backend!r}: use 'local' or 'compose'")
    if backend == "compose":
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
