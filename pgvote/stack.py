"""Local stack launcher: PostgreSQL -> PgBouncer -> PostgREST as plain local processes.

Used by the `pgvote` CLI and by pytest fixtures::

    stack = LocalStack(state_dir=Path(tempfile.mkdtemp()), pg_port=free_port(),
                       bouncer_port=free_port(), postgrest_port=free_port())
    stack.up()            # initdb (first time), postgres, database, migrations, pgbouncer, postgrest
    ...stack.api_url...   # authenticator through PgBouncer
    stack.down()

Everything a stack owns (cluster, sockets, logs, pid files, generated configs) lives in its state dir, so
several stacks run side by side. Server processes run as the invoking user, or as the `postgres` system user
(`runuser -u postgres --`) when invoked as root, because initdb/postgres/pgbouncer refuse to run as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import json
import os
import pwd
import re
import resource
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psycopg

__all__ = [
    "PROJECT_DIR",
    "LocalStack",
    "StackError",
    "default_state_dir",
    "docker_available",
    "find_server_bindir",
    "free_port",
    "make_stack",
    "select_backend",
]


def _find_project_dir() -> Path:
    """The checkout holding db/ and api/ (editable install), else the current directory."""
    env = os.environ.get("PGVOTE_ROOT")  # same variable as pgvote.paths
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "db" / "postgresql.conf").is_file():
        return here
    return Path.cwd().resolve()


PROJECT_DIR = _find_project_dir()

DEFAULT_PG_PORT = 55432
DEFAULT_BOUNCER_PORT = 56432
DEFAULT_POSTGREST_PORT = 53000
SERVICE_USER = "postgres"  # system user that runs the servers when we are root
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds each component gets to become ready

POSTGREST_NOT_INSTALLED = (
    "PostgREST: not installed (no `postgrest` on PATH and POSTGREST_BIN unset); "
    "the API is reachable through the emulation in pgvote.postgrest_emulation"
)

# Debian package that provides a preloadable library (used in error messages).
_LIB_PACKAGES = {
    "pg_stat_statements": "postgresql-contrib",
    "pg_cron": "postgresql-{major}-cron",
    "plpgsql_check": "postgresql-{major}-plpgsql-check",
}


class StackError(RuntimeError):
    """A failure the user can act on. The CLI prints str(err) (one line, maybe a log tail) and exits 1."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_state_dir() -> Path:
    """$PGVOTE_STATE_DIR, else <project>/.pgvote, else (root) /tmp/pgvote-<hash of the checkout path>.

    As root the checkout is often under /root (mode 700), which the postgres user cannot traverse.
    """
    env = os.environ.get("PGVOTE_STATE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    if os.geteuid() == 0:
        return Path(tempfile.gettempdir()) / f"pgvote-{_short_hash(str(PROJECT_DIR))}"
    return PROJECT_DIR / ".pgvote"


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.parent.name  # /usr/lib/postgresql/<major>/bin/initdb
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)


def find_server_bindir() -> Path:
    """Directory of the newest installed PostgreSQL *server* ($PGVOTE_PG_BINDIR overrides).

    pg_config on PATH may belong to a newer client library without a server, so look for initdb.
    """
    env = os.environ.get("PGVOTE_PG_BINDIR")
    if env:
        if not (Path(env) / "initdb").is_file():
            raise StackError(f"PGVOTE_PG_BINDIR={env} has no initdb")
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if not found:
        raise StackError("no PostgreSQL server found (no /usr/lib/postgresql/*/bin/initdb); run scripts/install-deps")
    return Path(found[-1]).parent


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = HOST, span: int = 1) -> int:
    """A TCP port (and the span-1 ports after it) free right now, for tests that start their own stack.

    Chosen below the kernel's ephemeral range, so outgoing connections (thousands in burst tests) cannot
    grab it between this call and the server's bind.
    """
    low = max(1024, _ephemeral_low())
    lo, hi = (20000, low - span) if low - span > 21000 else (1025, low - span)
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(lo, hi)
        if all(_bindable(port + i, host) and not _port_open(port + i, host) for i in range(span)):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # fall back to the kernel's choice
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(port: int, host: str = HOST, timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int | None, name: str) -> bool:
    """True when pid is a live (non-zombie) process whose command line mentions name."""
    if not pid or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and name in cmdline


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first) if first else None
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) if text else f"(log {path} is empty)"


def _env_port(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None


def _raise_nofile_limit() -> None:
    """preexec_fn: raise RLIMIT_NOFILE soft limit to the hard limit (pgbouncer needs ~1 fd per client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --------------------------------------------------------------------------------------------------
# LocalStack
# --------------------------------------------------------------------------------------------------


class LocalStack:
    """PostgreSQL + PgBouncer (+ PostgREST when installed) as local processes in one state directory."""

    backend = "local"

    def __init__(
        self,
        state_dir: Path | None = None,
        pg_port: int | None = None,
        bouncer_port: int | None = None,
        postgrest_port: int | None = None,
        server_port_for_bouncer: int | None = None,
        bouncer_settings: dict[str, str] | None = None,
    ) -> None:
        self.is_root = os.geteuid() == 0
        self.service_user = (
            os.environ.get("PGVOTE_SERVICE_USER", SERVICE_USER) if self.is_root else pwd.getpwuid(os.geteuid()).pw_name
        )
        self.requested_state_dir = Path(state_dir).absolute() if state_dir is not None else default_state_dir()
        self.state_dir = self._reachable_state_dir(self.requested_state_dir)
        self.data_dir = self.state_dir / "data"
        self.log_dir = self.state_dir / "log"
        self.run_dir = self._socket_dir()
        self.state_file = self.state_dir / "state.json"

        saved = self._load_state().get("ports", {})
        self.pg_port: int = pg_port or _env_port("PGVOTE_PG_PORT") or saved.get("postgres") or DEFAULT_PG_PORT
        self.bouncer_port: int = (
            bouncer_port or _env_port("PGVOTE_BOUNCER_PORT") or saved.get("pgbouncer") or DEFAULT_BOUNCER_PORT
        )
        self.postgrest_port: int = (
            postgrest_port or _env_port("PGVOTE_POSTGREST_PORT") or saved.get("postgrest") or DEFAULT_POSTGREST_PORT
        )
        # PostgREST's admin server (/live, /ready): next port unless told otherwise.
        self.postgrest_admin_port: int = _env_port("PGVOTE_POSTGREST_ADMIN_PORT") or self.postgrest_port + 1
        # Port PgBouncer's [databases] entry dials on 127.0.0.1 (default: PostgreSQL's own); the reliability
        # tests point it at a TCP proxy they control to inject network faults between the two.
        self.server_port_for_bouncer: int | None = server_port_for_bouncer
        # [pgbouncer] settings that replace (or add to) the template's, e.g. a tiny pool for overload tests.
        self.bouncer_settings: dict[str, str] = dict(bouncer_settings or {})

        self.admin_url = f"postgresql://postgres@{HOST}:{self.pg_port}/pgvote"
        self.api_url = f"postgresql://authenticator@{HOST}:{self.bouncer_port}/pgvote"
        self.direct_api_url = f"postgresql://authenticator@{HOST}:{self.pg_port}/pgvote"
        self.bouncer_admin_url = f"postgresql://postgres@{HOST}:{self.bouncer_port}/pgbouncer"

        self.pg_log = self.log_dir / "postgresql.log"
        self.bouncer_ini = self.state_dir / "pgbouncer.ini"
        self.bouncer_log = self.log_dir / "pgbouncer.log"
        self.bouncer_pidfile = self.run_dir / "pgbouncer.pid"
        self.postgrest_conf = self.state_dir / "postgrest.conf"
        self.postgrest_log = self.log_dir / "postgrest.log"
        self.postgrest_pidfile = self.run_dir / "postgrest.pid"
        self.jwt_secret_file = self.state_dir / "jwt-secret"
        self._postgrest_proc: subprocess.Popen[bytes] | None = None
        self._bindir: Path | None = None

    # ---- public API ------------------------------------------------------------------------------

    @classmethod
    def ephemeral(cls, prefix: str = "pgvote-test-", server_port_for_bouncer: int | None = None,
                  bouncer_settings: dict[str, str] | None = None) -> LocalStack:
        """A stack in a fresh temp dir on free ports (for tests); pair with destroy()."""
        return cls(
            state_dir=Path(tempfile.mkdtemp(prefix=prefix)),
            pg_port=free_port(),
            bouncer_port=free_port(),
            postgrest_port=free_port(span=2),  # PostgREST's admin server takes the next port
            server_port_for_bouncer=server_port_for_bouncer,
            bouncer_settings=bouncer_settings,
        )

    def __enter__(self) -> LocalStack:
        self.up()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    @property
    def postgrest_url(self) -> str | None:
        """http://127.0.0.1:<port> while PostgREST runs, else None."""
        if _pid_alive(_read_pid(self.postgrest_pidfile), "postgrest"):
            return f"http://{HOST}:{self.postgrest_port}"
        return None

    @property
    def jwt_secret(self) -> str:
        """HS256 secret PostgREST verifies JWTs with (generated once per state dir)."""
        if not self.jwt_secret_file.is_file():
            self._ensure_dirs()
            self._write(self.jwt_secret_file, secrets.token_urlsafe(48) + "\n", mode=0o600)
        return self.jwt_secret_file.read_text().strip()

    @property
    def postgrest_note(self) -> str | None:
        """Why PostgREST is not running (None when it is installed)."""
        return None if self._postgrest_bin() else POSTGREST_NOT_INSTALLED

    def up(self, migrate: bool = True) -> None:
        """Idempotent start: initdb (first use), postgres, database "pgvote", migrations, pgbouncer, postgrest."""
        self._check_prerequisites()
        self._ensure_dirs()
        with self._locked():
            self._save_state()
            self._initdb_if_needed()
            self._write_server_config()
            started: list[str] = []  # what this call started, stopped again if a later step fails
            try:
                if self._postgres_pid() is None:
                    started.append("postgres")
                self._start_postgres()
                self._ensure_database()
                if migrate:
                    self._migrate()
                if not _pid_alive(_read_pid(self.bouncer_pidfile), "pgbouncer"):
                    started.append("pgbouncer")
                self._start_pgbouncer()
                if not _pid_alive(_read_pid(self.postgrest_pidfile), "postgrest"):
                    started.append("postgrest")
                self._start_postgrest()
            except BaseException:
                stoppers = {"postgres": self._stop_postgres, "pgbouncer": self._stop_pgbouncer,
                            "postgrest": self._stop_postgrest}  # fmt: skip
                for name in reversed(started):
                    with contextlib.suppress(Exception):
                        stoppers[name]()
                raise

    def down(self) -> None:
        """Stop what runs from this state dir (fast shutdown). Idempotent."""
        if not self.state_dir.exists():
            return
        with self._locked():
            self._stop_postgrest()
            self._stop_pgbouncer()
            self._stop_postgres()

    def destroy(self) -> None:
        """down() and delete the state dir (cluster data included)."""
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if self.run_dir.parent != self.state_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.requested_state_dir != self.state_dir:
            shutil.rmtree(self.requested_state_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """What runs (pid, port), where the state lives, and the URLs."""
        pg_pid = self._postgres_pid()
        bouncer_pid = _read_pid(self.bouncer_pidfile)
        rest_pid = _read_pid(self.postgrest_pidfile)
        rest_running = _pid_alive(rest_pid, "postgrest")
        try:
            bindir: str | None = str(self.bindir)
        except StackError:
            bindir = None
        result: dict[str, Any] = {
            "backend": self.backend,
            "state_dir": str(self.state_dir),
            "data_dir": str(self.data_dir),
            "log_dir": str(self.log_dir),
            "run_dir": str(self.run_dir),
            "run_as": self.service_user,
            "server_bindir": bindir,
            "initialized": (self.data_dir / "PG_VERSION").is_file(),
            "components": {
                "postgres": {
                    "running": pg_pid is not None,
                    "pid": pg_pid,
                    "port": self.pg_port,
                    "log": str(self.pg_log),
                },
                "pgbouncer": {
                    "running": _pid_alive(bouncer_pid, "pgbouncer"),
                    "pid": bouncer_pid if _pid_alive(bouncer_pid, "pgbouncer") else None,
                    "port": self.bouncer_port,
                    "log": str(self.bouncer_log),
                },
                "postgrest": {
                    "running": rest_running,
                    "pid": rest_pid if rest_running else None,
                    "port": self.postgrest_port,
                    "admin_port": self.postgrest_admin_port,
                    "log": str(self.postgrest_log),
                    "note": self.postgrest_note,
                },
            },
            "urls": {
                "admin_url": self.admin_url,
                "api_url": self.api_url,
                "direct_api_url": self.direct_api_url,
                "bouncer_admin_url": self.bouncer_admin_url,
                "postgrest_url": self.postgrest_url,
            },
        }
        if self.requested_state_dir != self.state_dir:
            result["requested_state_dir"] = str(self.requested_state_dir)
        return result

    # ---- locations / users ---------------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        """Server binaries: those matching an existing cluster's major, else the newest installed."""
        if self._bindir is None:
            version_file = self.data_dir / "PG_VERSION"
            if version_file.is_file():
                major = version_file.read_text().strip()
                candidate = Path(f"/usr/lib/postgresql/{major}/bin")
                if os.environ.get("PGVOTE_PG_BINDIR"):
                    candidate = find_server_bindir()
                if not (candidate / "postgres").is_file():
                    raise StackError(
                        f"the cluster in {self.data_dir} was created by PostgreSQL {major}, whose server is not "
                        f"installed; install postgresql-{major} or remove the state dir (`pgvote clean`)"
                    )
                self._bindir = candidate
            else:
                self._bindir = find_server_bindir()
        return self._bindir

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
        if not self.is_root:
            return wanted
        try:
            pwd.getpwnam(self.service_user)
        except KeyError:
            return wanted  # up() reports the missing user
        probe = wanted.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        ok = subprocess.run(
            ["runuser", "-u", self.service_user, "--", "test", "-x", str(probe)], capture_output=True, check=False
        )
        if ok.returncode == 0:
            return wanted
        return Path(tempfile.gettempdir()) / f"pgvote-{_short_hash(str(wanted))}"

    def _socket_dir(self) -> Path:
        """<state dir>/run, unless the socket path would exceed the 107-byte unix socket limit."""
        run = self.state_dir / "run"
        if len(str(run)) + len("/.s.PGSQL.65535.lock") < 100:
            return run
        return Path(tempfile.gettempdir()) / f"pgvote-run-{_short_hash(str(self.state_dir))}"

    def _service_ids(self) -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(self.service_user)
        except KeyError:
            raise StackError(
                f"no system user {self.service_user!r} to run PostgreSQL as (root cannot run it); "
                "run scripts/install-deps"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _as_service(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self.service_user, "--", *args] if self.is_root else args

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        if self.is_root:
            env["HOME"] = str(self.state_dir)
        return env

    def _chown(self, path: Path) -> None:
        if self.is_root:
            uid, gid = self._service_ids()
            os.chown(path, uid, gid)

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
                f"The postgres user cannot reach this directory; the stack lives in {self.state_dir}\n"
            )
        for d in (self.state_dir, self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
            self._chown(d)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down of one state dir across processes (e.g. parallel test workers)."""
        with open(self.state_dir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        state = {
            "backend": self.backend,
            "ports": {"postgres": self.pg_port, "pgbouncer": self.bouncer_port, "postgrest": self.postgrest_port},
            "bindir": str(self.bindir),
            "project_dir": str(PROJECT_DIR),
        }
        self._write(self.state_file, json.dumps(state, indent=2) + "\n")

    def _run(self, args: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the service user; failures become one StackError line."""
        try:
            return subprocess.run(
                self._as_service(args),
                check=True,
                capture_output=True,
                text=True,
                cwd=self.state_dir,
                env=self._env(),
                timeout=timeout,
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            raise StackError(f"{what} failed (exit {exc.returncode}): {detail[-1] if detail else 'no output'}") from exc
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{what} did not finish within {timeout:.0f} s") from exc

    # ---- prerequisites -----------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        for needed in ("db/postgresql.conf", "db/pg_hba.conf", "db/pgbouncer.ini", "api/postgrest.conf"):
            if not (PROJECT_DIR / needed).is_file():
                raise StackError(f"{PROJECT_DIR / needed} not found: run from the checkout or set PGVOTE_ROOT")
        if self.is_root:
            self._service_ids()
            if not shutil.which("runuser"):
                raise StackError("runuser not found (package util-linux); needed to run PostgreSQL as non-root")
        self._bouncer_bin()
        # every shared_preload_libraries entry of db/postgresql.conf must exist, or postgres won't start
        tuning = (PROJECT_DIR / "db" / "postgresql.conf").read_text()
        matches = re.findall(r"^\s*shared_preload_libraries\s*=\s*'([^']*)'", tuning, flags=re.MULTILINE)
        libdir = self._libdir()
        for lib in (x.strip() for x in (matches[-1].split(",") if matches else []) if x.strip()):
            if not (libdir / f"{lib}.so").is_file():
                package = _LIB_PACKAGES.get(lib, "the package providing it").format(major=self.major)
                raise StackError(
                    f"db/postgresql.conf preloads {lib!r} but {libdir}/{lib}.so is missing; "
                    f"install {package} (scripts/install-deps)"
                )

    def _bouncer_bin(self) -> str:
        found = (
            os.environ.get("PGBOUNCER_BIN")
            or shutil.which("pgbouncer")
            or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin:/usr/bin")
        )
        if not found:
            raise StackError("pgbouncer not found (apt-get install pgbouncer, or run scripts/install-deps)")
        return found

    def _postgrest_bin(self) -> str | None:
        env = os.environ.get("POSTGREST_BIN")
        if env:
            return env if os.access(env, os.X_OK) else None
        return shutil.which("postgrest")

    # ---- PostgreSQL ------------------------------------------------------------------------------

    def _initdb_if_needed(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise StackError(f"{self.data_dir} exists but holds no cluster; remove it or pick another state dir")
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",  # dev stack: loopback + socket only, see db/pg_hba.conf
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--data-checksums",  # detect storage corruption of vote data early
            ],
            "initdb",
        )
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write(
                "\n# ---- added by pgvote/stack.py ----\n"
                "# tuned settings, copied from the project's db/postgresql.conf on every `pgvote up`\n"
                "include 'pgvote-tuning.conf'\n"
                "# machine-specific settings (port, sockets), regenerated on every `pgvote up`\n"
                "include 'pgvote-local.conf'\n"
            )

    def _write_server_config(self) -> None:
        self._write(self.data_dir / "pgvote-tuning.conf", (PROJECT_DIR / "db" / "postgresql.conf").read_text(), 0o600)
        self._write(self.data_dir / "pg_hba.conf", (PROJECT_DIR / "db" / "pg_hba.conf").read_text(), 0o600)
        local = (
            "# Generated by pgvote/stack.py on every `pgvote up`; do not edit (edit db/postgresql.conf).\n"
            f"port = {self.pg_port}\n"
            f"listen_addresses = '{HOST}'\n"
            f"unix_socket_directories = '{self.run_dir}'\n"
            f"cluster_name = 'pgvote-{self.pg_port}'\n"
        )
        self._write(self.data_dir / "pgvote-local.conf", local, 0o600)

    def _postgres_pid(self) -> int | None:
        """Pid of the running postmaster of this data dir, or None."""
        pid = _read_pid(self.data_dir / "postmaster.pid")
        return pid if _pid_alive(pid, "postgres") else None

    def _running_pg_port(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return None

    def _start_postgres(self) -> None:
        if self._postgres_pid() is not None:
            running = self._running_pg_port()
            if running is not None and running != self.pg_port:
                raise StackError(
                    f"PostgreSQL of {self.state_dir} already runs on port {running} (asked for {self.pg_port}); "
                    "run `pgvote down` first"
                )
        else:
            if _port_open(self.pg_port):
                raise StackError(f"port {self.pg_port} is already in use on {HOST}; set PGVOTE_PG_PORT to a free one")
            if not self.pg_log.exists():
                self.pg_log.touch()
                self._chown(self.pg_log)
            try:
                self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.pg_log),
                        "-w",
                        "-t",
                        str(int(START_TIMEOUT)),
                        "-s",
                        "start",
                    ],
                    "pg_ctl start",
                    timeout=START_TIMEOUT + 15,
                )
            except StackError as exc:
                raise StackError(
                    f"PostgreSQL did not start ({exc}); last lines of {self.pg_log}:\n{_tail(self.pg_log)}"
                ) from exc
        self._wait_postgres()

    def _wait_postgres(self) -> None:
        url = f"postgresql://postgres@{HOST}:{self.pg_port}/postgres"
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
                    conn.execute("select 1")
                    return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.2)
        raise StackError(
            f"PostgreSQL on port {self.pg_port} not accepting connections ({last}); "
            f"last lines of {self.pg_log}:\n{_tail(self.pg_log)}"
        )

    def _ensure_database(self) -> None:
        url = f"postgresql://postgres@{HOST}:{self.pg_port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            if conn.execute("select 1 from pg_database where datname = 'pgvote'").fetchone() is None:
                conn.execute("create database pgvote owner postgres")

    def _migrate(self) -> None:
        from pgvote import migrate  # imported late: the lead's module, may be heavy

        try:
            migrate.upgrade(self.admin_url)
        except StackError:
            raise
        except Exception as exc:
            raise StackError(f"migrations failed against {self.admin_url}: {type(exc).__name__}: {exc}") from exc

    def _stop_postgres(self) -> None:
        if self._postgres_pid() is None:
            return
        ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", "-s", "stop"]
        try:
            self._run([*ctl, "-m", "fast"], "pg_ctl stop", timeout=75)
        except StackError:
            self._run([*ctl, "-m", "immediate"], "pg_ctl stop -m immediate", timeout=75)

    # ---- PgBouncer -----------------------------------------------------------------------------

    def _render_bouncer(self) -> None:
        template = string.Template((PROJECT_DIR / "db" / "pgbouncer.ini").read_text())
        auth_file = self.state_dir / "userlist.txt"
        ini = template.substitute(
            listen_addr=HOST,
            listen_port=self.bouncer_port,
            unix_socket_dir=self.run_dir,
            pg_host=HOST,
            pg_port=self.server_port_for_bouncer or self.pg_port,
            auth_file=auth_file,
            logfile=self.bouncer_log,
            pidfile=self.bouncer_pidfile,
        )
        for key, value in self.bouncer_settings.items():  # overrides: replace the line, or add it to [pgbouncer]
            line = f"{key} = {value}"
            ini, found = re.subn(rf"^{re.escape(key)}\s*=.*$", lambda _m: line, ini, flags=re.MULTILINE)
            if not found:
                ini = ini.rstrip("\n") + f"\n{line}\n"  # [pgbouncer] is the template's last section
        header = "; GENERATED by pgvote/stack.py from db/pgbouncer.ini on every `pgvote up`; do not edit.\n"
        self._write(self.bouncer_ini, header + ini, 0o600)
        # DEV STACK ONLY: auth_type = trust still requires the user to be listed; passwords are ignored.
        self._write(auth_file, '"postgres" ""\n"authenticator" ""\n', 0o600)

    def _bouncer_immediate_signal(self) -> signal.Signals:
        """Immediate-shutdown signal: SIGTERM up to 1.22, SIGQUIT from 1.23 (SIGTERM then waits for clients)."""
        try:
            out = subprocess.run([self._bouncer_bin(), "--version"], capture_output=True, text=True, check=False)
            match = re.search(r"(\d+)\.(\d+)", out.stdout)
            if match and (int(match[1]), int(match[2])) >= (1, 23):
                return signal.SIGQUIT
        except (OSError, StackError):
            pass
        return signal.SIGTERM

    def _start_pgbouncer(self) -> None:
        self._render_bouncer()
        pid = _read_pid(self.bouncer_pidfile)
        if _pid_alive(pid, "pgbouncer"):
            if not _port_open(self.bouncer_port):
                raise StackError(
                    f"PgBouncer of {self.state_dir} runs (pid {pid}) but not on port {self.bouncer_port}; "
                    "run `pgvote down` first"
                )
            self._wait_bouncer()
            return
        self.bouncer_pidfile.unlink(missing_ok=True)
        if _port_open(self.bouncer_port):
            raise StackError(
                f"port {self.bouncer_port} is already in use on {HOST}; set PGVOTE_BOUNCER_PORT to a free one"
            )
        start_log = self.log_dir / "pgbouncer-start.log"
        with open(start_log, "w") as out:
            # -d: daemonise; its output goes to a file, never to a pipe a daemon could keep open
            proc = subprocess.run(
                self._as_service([*self._nofile_wrapper(), self._bouncer_bin(), "-d", str(self.bouncer_ini)]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=self._env(),
                preexec_fn=_raise_nofile_limit,  # soft fd limit -> hard limit (non-root path)
                timeout=30,
                check=False,
            )
        if proc.returncode != 0:
            raise StackError(
                f"PgBouncer failed to start (exit {proc.returncode}): {_tail(start_log, 3)}\n"
                f"last lines of {self.bouncer_log}:\n{_tail(self.bouncer_log)}"
            )
        self._wait_bouncer()

    def _nofile_wrapper(self) -> list[str]:
        """As root, runuser's PAM session (pam_limits) resets the soft fd limit to 1024, undoing preexec_fn:
        re-raise it inside the session with util-linux prlimit (soft = our hard limit, 20000 here)."""
        prlimit = shutil.which("prlimit")
        if not self.is_root or not prlimit:
            return []
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return [prlimit, f"--nofile={'unlimited' if hard == resource.RLIM_INFINITY else hard}", "--"]

    def _wait_bouncer(self) -> None:
        def ready() -> bool:
            if not (_pid_alive(_read_pid(self.bouncer_pidfile), "pgbouncer") and _port_open(self.bouncer_port)):
                return False
            try:  # a real login on the admin console (simple query protocol)
                with psycopg.connect(self.bouncer_admin_url, autocommit=True, connect_timeout=5) as conn:
                    conn.cursor(binary=False).execute("SHOW VERSION", prepare=False)
                return True
            except psycopg.Error:
                return False

        if not _wait_until(ready, START_TIMEOUT, 0.1):
            raise StackError(
                f"PgBouncer not accepting connections on {HOST}:{self.bouncer_port} after {START_TIMEOUT:.0f} s; "
                f"last lines of {self.bouncer_log}:\n{_tail(self.bouncer_log)}"
            )

    def _stop_pgbouncer(self) -> None:
        pid = _read_pid(self.bouncer_pidfile)
        if _pid_alive(pid, "pgbouncer"):
            assert pid is not None
            self._signal_and_wait(pid, "pgbouncer", self._bouncer_immediate_signal(), 10)
        self.bouncer_pidfile.unlink(missing_ok=True)

    # ---- PostgREST -----------------------------------------------------------------------------

    def _render_postgrest(self) -> None:
        overrides: dict[str, str | int] = {
            "db-uri": self.api_url,
            "jwt-secret": self.jwt_secret,
            "server-host": HOST,
            "server-port": self.postgrest_port,
            "admin-server-port": self.postgrest_admin_port,
        }
        lines, seen = [], set()
        for line in (PROJECT_DIR / "api" / "postgrest.conf").read_text().splitlines():
            match = re.match(r"^\s*([A-Za-z0-9.-]+)\s*=", line)
            if match and match[1] in overrides:
                key = match[1]
                value = overrides[key]
                line = f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"'
                seen.add(key)
            lines.append(line)
        for key, value in overrides.items():
            if key not in seen:
                lines.append(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"')
        header = "# GENERATED by pgvote/stack.py from api/postgrest.conf on every `pgvote up`; do not edit.\n"
        self._write(self.postgrest_conf, header + "\n".join(lines) + "\n", 0o600)

    def _start_postgrest(self) -> None:
        binary = self._postgrest_bin()
        if binary is None:
            return  # reported by status()/postgrest_note; never an error
        if _pid_alive(_read_pid(self.postgrest_pidfile), "postgrest"):
            return
        for port in (self.postgrest_port, self.postgrest_admin_port):
            if _port_open(port):
                raise StackError(f"port {port} is already in use on {HOST}; set PGVOTE_POSTGREST_PORT to a free one")
        self._render_postgrest()
        extra: dict[str, Any] = {}
        if self.is_root:
            uid, gid = self._service_ids()
            extra = {"user": uid, "group": gid, "extra_groups": []}
        log: IO[bytes]
        with open(self.postgrest_log, "ab") as log:
            self._postgrest_proc = subprocess.Popen(
                [binary, str(self.postgrest_conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=self._env(),
                start_new_session=True,  # survives the CLI process and terminal signals
                **extra,
            )
        self._write(self.postgrest_pidfile, f"{self._postgrest_proc.pid}\n")

        def ready() -> bool:
            if self._postgrest_proc is not None and self._postgrest_proc.poll() is not None:
                raise StackError(
                    f"PostgREST exited with {self._postgrest_proc.returncode}; last lines of {self.postgrest_log}:\n"
                    f"{_tail(self.postgrest_log)}"
                )
            try:
                url = f"http://{HOST}:{self.postgrest_admin_port}/ready"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        if not _wait_until(ready, START_TIMEOUT, 0.2):
            raise StackError(
                f"PostgREST not ready on port {self.postgrest_port} after {START_TIMEOUT:.0f} s; "
                f"last lines of {self.postgrest_log}:\n{_tail(self.postgrest_log)}"
            )

    def _stop_postgrest(self) -> None:
        pid = _read_pid(self.postgrest_pidfile)
        if _pid_alive(pid, "postgrest"):
            assert pid is not None
            self._signal_and_wait(pid, "postgrest", signal.SIGTERM, 10)
        if self._postgrest_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._postgrest_proc.wait(timeout=1)  # reap our child
            self._postgrest_proc = None
        self.postgrest_pidfile.unlink(missing_ok=True)

    # ---- process control -------------------------------------------------------------------------

    def _signal_and_wait(self, pid: int, name: str, sig: signal.Signals, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if self._postgrest_proc is not None and self._postgrest_proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._postgrest_proc.wait(timeout=timeout)
        if not _wait_until(lambda: not _pid_alive(pid, name), timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid, name), 5)


# --------------------------------------------------------------------------------------------------
# backend selection (local processes or testcontainers)
# --------------------------------------------------------------------------------------------------


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


def make_stack(
    state_dir: Path | None = None,
    pg_port: int | None = None,
    bouncer_port: int | None = None,
    postgrest_port: int | None = None,
) -> Any:
    """A LocalStack or a ContainerStack (same URL attributes and up/down/status), per select_backend()."""
    if select_backend() == "testcontainers":
        from pgvote.containers import ContainerStack

        return ContainerStack(state_dir, pg_port, bouncer_port, postgrest_port)
    return LocalStack(state_dir, pg_port, bouncer_port, postgrest_port)
