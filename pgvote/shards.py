"""The sharded profile (`pgvote up --shards N`): polls spread over N PostgreSQL shards by PL/Proxy.

    client -> nginx -> PostgREST x2 -> PgBouncer -> router PostgreSQL --PL/Proxy--> shard-0 .. shard-(N-1)

The stack's own PostgreSQL is the router (full schema, its `api` functions those of procedures/router/);
every shard is a cluster of its own migrated to the full schema, with the router's voter-key secret.
The design, and why no second pooler sits between router and shards: docs/scaling.md. `pgvote grow`
(pgvote/grow.py) doubles N online.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgvote import supervisor
from pgvote.paths import DB_DIR, PROCEDURES_DIR
from pgvote.procedures import Folder, sync_procedures
from pgvote.stack import HOST, START_TIMEOUT, LocalStack, StackError, wait_until

#: The router's functions: all of procedures/router/, re-applied on every sync (see Folder).
ROUTER = Folder(PROCEDURES_DIR / "router", ("api", "router"), remembers=False)
#: PL/Proxy's SQL/MED server: the cluster name of procedures/router/router.*.sql.
CLUSTER = "pgvote_shards"
SHARD_PORT_OFFSET = 80  # shard i listens on port base + 80 + i (Ports reserves +40.. for members)
MAX_SHARDS = 16


def check_count(count: int) -> int:
    """PL/Proxy maps a hash to hash & (N - 1): N must be a power of two."""
    if not 1 <= count <= MAX_SHARDS or count & (count - 1):
        raise StackError(f"--shards {count}: use a power of two from 1 to {MAX_SHARDS}")
    return count


class ShardCluster(LocalStack):
    """One shard: the PostgreSQL half of a LocalStack, in the router stack's state dir, on its own port."""

    def __init__(self, router: LocalStack, index: int) -> None:
        super().__init__(state_dir=router.state_dir / "shards" / f"shard-{index}", port_base=router.ports.base)
        self.index = index
        self.name = f"shard-{index}"
        # its entry in the router stack's supervisor spec: restarted like the stack's own PostgreSQL
        self.component = f"postgres-{self.name}"
        self.pg_port = router.ports.base + SHARD_PORT_OFFSET + index
        self.admin_url = f"postgresql://postgres@{HOST}:{self.pg_port}/pgvote"

    def _reachable_state_dir(self, wanted: Path) -> Path:
        # inside the router's state dir, which is reachable already (LocalStack relocates it if not): the
        # same path whatever exists yet, so every process finds the shard where `up` put it
        return wanted

    def _write_server_config(self) -> None:
        super()._write_server_config()
        # `pgvote grow` moves a poll under a prepared transaction that keeps its fence (pgvote/grow.py)
        local = self.data_dir / "pgvote-local.conf"
        self._write(local, local.read_text() + "max_prepared_transactions = 16\n", 0o600)

    def conninfo(self, database: str = "pgvote") -> str:
        """How PL/Proxy reaches it (the user comes from the server's user mapping)."""
        return f"host={HOST} port={self.pg_port} dbname={database} connect_timeout=2"

    def start(self) -> None:
        self._ensure_dirs()
        self._prepare_database()
        self._start_postgres()
        self._ensure_database()


class ShardedStack(LocalStack):
    """A LocalStack whose PostgreSQL is a PL/Proxy router in front of N shard clusters."""

    def __init__(self, state_dir: Path | None = None, port_base: int | None = None, shards: int | None = None) -> None:
        super().__init__(state_dir=state_dir, port_base=port_base)
        saved = self._load_state()
        count = shards or saved.get("shards")
        if not count:
            raise StackError(f"{self.state_dir} holds no sharded stack: start one with `pgvote up --shards N`")
        self.shards = [ShardCluster(self, i) for i in range(check_count(int(count)))]
        # the new shards of an unfinished growth to 2N (pgvote/grow.py), which the state dir remembers from
        # its first step: they run and are supervised, and `up` keeps the router on all 2N, until it ends
        self.joining = [ShardCluster(self, i) for i in range(len(self.shards), int(saved.get("growing_to") or 0))]
        self.held_down: set[int] = set()  # shards stop_shard took out of supervision

    # ---- the launcher's steps, extended to the shards ------------------------------------------

    def _check_prerequisites(self) -> None:
        super()._check_prerequisites()
        if not (self._libdir() / "plproxy.so").is_file():
            raise StackError(f"PL/Proxy is not installed ({self._libdir()}/plproxy.so): install "
                             f"postgresql-{self.major}-plproxy (scripts/install-deps)")

    def _profile_state(self) -> dict[str, Any]:
        return {"shards": len(self.shards), **({"growing_to": len(self.every)} if self.joining else {})}

    @property
    def every(self) -> list[ShardCluster]:
        """The shards and the joining ones: every cluster this stack runs besides the router."""
        return self.shards + self.joining

    def _start_postgres(self) -> None:
        super()._start_postgres()
        for shard in self.every:
            if shard.index not in self.held_down:
                shard.start()

    def _stop_postgres(self) -> None:
        super()._stop_postgres()
        for shard in self.every:
            shard._stop_postgres()

    def _migrate(self) -> None:
        """Every shard to the full schema, the router too, then the router's cluster and functions."""
        for shard in self.every:
            shard._migrate()
        super()._migrate()
        with psycopg.connect(self.admin_url) as conn:  # one transaction: the router changes at once
            configure_router(conn, [s.conninfo() for s in self.every])
            if self.joining:  # an unfinished growth: every poll stays where it is until it moves
                conn.execute("update router.growth set active = true, partitions = %s", (len(self.shards),))
        share_voter_key_secret(self.admin_url, [s.admin_url for s in self.every])

    def _member_components(self) -> list[dict[str, Any]]:
        return [s._pg_ctl_component(s.component) for s in self.every if s.index not in self.held_down]

    # ---- faults, for tests and operators ---------------------------------------------------------

    def stop_shard(self, index: int) -> None:
        """Take one shard out of supervision and stop it (fast shutdown): its polls answer shard_unavailable."""
        shard = self.shards[index]
        with self._locked():  # the supervisor cannot restart it meanwhile (it needs this lock)
            self.held_down.add(index)
            self._write_supervised_configs()
            if not wait_until(lambda: shard.component not in supervisor.read_status(self.state_dir).get("components", {}),
                              START_TIMEOUT):
                raise StackError(f"the supervisor still watches {shard.component} after {START_TIMEOUT:.0f} s")
            shard._stop_postgres()

    def start_shard(self, index: int) -> None:
        """Start a stopped shard and put it back under supervision."""
        with self._locked():
            self.shards[index].start()
            self.held_down.discard(index)
            self._write_supervised_configs()

    # ---- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result = super().status()
        shards = [{"name": s.name, "url": s.admin_url, "port": s.pg_port, "running": s._postgres_pid() is not None,
                   "pid": s._postgres_pid(), "data_dir": str(s.data_dir), "log": str(s.pg_log),
                   "joining": s in self.joining} for s in self.every]
        result.update(profile="sharded", shards=shards)
        result["components"]["shards"] = shards
        return result


def configure_router(conn: psycopg.Connection, partitions: list[str]) -> None:
    """PL/Proxy, the router schema and its cluster (one partition per shard, in order), then the
    router's functions (procedures/router/). Idempotent; a changed list replaces the cluster."""
    conn.execute((DB_DIR / "router.sql").read_text())
    conn.execute(sql.SQL("drop server if exists {} cascade").format(sql.Identifier(CLUSTER)))
    options = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(f"p{i}"), sql.Literal(p))
                                 for i, p in enumerate(partitions))
    conn.execute(sql.SQL("create server {} foreign data wrapper plproxy options (connection_lifetime '1800', {})")
                 .format(sql.Identifier(CLUSTER), options))
    # Every router function runs as the owner of the api functions (SECURITY DEFINER): the mapping is
    # PUBLIC's, and the shards admit that login to the shard.* entry points only (db/grants.sql).
    conn.execute(sql.SQL("create user mapping for public server {} options (user 'pgvote_router')")
                 .format(sql.Identifier(CLUSTER)))
    sync_procedures(conn, ROUTER)


def share_voter_key_secret(router_url: str, shard_urls: list[str]) -> None:
    """Give every shard the router's voter-key secret: a voter is the same key on every shard (a poll
    moved between shards keeps its voters). A shard that stored ballots under another secret is refused:
    re-keying would make them unmatchable to their voters."""
    query = "select inner_pad, outer_pad from internal.voter_key_secret"
    with psycopg.connect(router_url, autocommit=True) as conn:
        secret = conn.execute(query).fetchone()
    for url in shard_urls:
        with psycopg.connect(url) as conn:
            if conn.execute(query).fetchone() == secret:
                continue
            if conn.execute("select exists (select from voting.ballots)").fetchone() == (True,):
                raise StackError(f"{url} holds ballots under another voter-key secret than the router's")
            conn.execute("update internal.voter_key_secret set inner_pad = %s, outer_pad = %s", secret)
