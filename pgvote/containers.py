"""Container backend (``PGVOTE_BACKEND=testcontainers``, extra ``.[docker]``): PostgreSQL with pg_cron
(deploy/postgres/Dockerfile, or ``PGVOTE_POSTGRES_IMAGE``) and PgBouncer, behind the `Stack` interface
of pgvote/backends.py. PostgREST and nginx are not started here (deploy/compose.yaml runs them).

Containers get names derived from the state dir and the reaper (Ryuk) is off, so `up`, `status` and
`down` work across processes like the local stack; trust auth on the private network (dev stack only)
keeps the URLs the same as LocalStack's. Importing this module never needs testcontainers.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pgvote.paths import PROJECT_ROOT
from pgvote.stack import BOUNCER_USERS, StackError, default_state_dir, render_bouncer_ini, short_hash

MISSING = "testcontainers is not installed: pip install -e '.[docker]' (or set PGVOTE_BACKEND=local)"


class ContainerStack:
    backend = "testcontainers"

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir).absolute() if state_dir is not None else default_state_dir()
        self.state_file = self.state_dir / "containers.json"
        self.name = f"pgvote-{short_hash(str(self.state_dir))}"
        try:
            saved = dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            saved = {}
        self.host: str = saved.get("host", "127.0.0.1")
        self.pg_port: int | None = saved.get("pg_port")
        self.bouncer_port: int | None = saved.get("bouncer_port")
        self._set_urls()

    def _set_urls(self) -> None:
        pg, bouncer = f"{self.host}:{self.pg_port}", f"{self.host}:{self.bouncer_port}"
        self.admin_url = f"postgresql://postgres@{pg}/pgvote"
        self.api_url = f"postgresql://authenticator@{bouncer}/pgvote"
        self.direct_api_url = f"postgresql://authenticator@{pg}/pgvote"
        self.bouncer_admin_url = f"postgresql://postgres@{bouncer}/pgbouncer"

    def _docker(self) -> Any:
        try:
            import docker  # installed with testcontainers
        except ImportError:
            raise StackError(MISSING) from None
        try:
            return docker.from_env()
        except docker.errors.DockerException as exc:
            raise StackError(f"no Docker engine answers ({exc}); use PGVOTE_BACKEND=local") from exc

    def up(self, migrate: bool = True) -> None:
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # containers outlive this process
        try:
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.image import DockerImage
            from testcontainers.core.network import Network
            from testcontainers.core.waiting_utils import wait_for_logs

            try:
                from testcontainers.community.postgres import PostgresContainer  # testcontainers >= 4.14
            except ImportError:
                from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise StackError(MISSING) from None
        from pgvote.backends import docker_available

        if not docker_available():
            raise StackError("PGVOTE_BACKEND=testcontainers but no Docker engine answers `docker info`; "
                             "use PGVOTE_BACKEND=local (local processes)")
        if self.status()["components"]["postgres"]["running"]:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        network = Network()
        network.name = f"{self.name}-net"
        network.create()
        # db/postgresql.conf preloads pg_cron, which the official image lacks: build the image compose uses
        image = os.environ.get("PGVOTE_POSTGRES_IMAGE") or "pgvote-postgres:local"
        if "PGVOTE_POSTGRES_IMAGE" not in os.environ:
            DockerImage(path=str(PROJECT_ROOT / "deploy" / "postgres"), tag=image).build()
        pg = (PostgresContainer(image, username="postgres", password="postgres", dbname="pgvote", driver=None)
              .with_name(f"{self.name}-postgres").with_network(network).with_network_aliases("postgres")
              .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
              .with_volume_mapping(str(PROJECT_ROOT / "db" / "postgresql.conf"), "/etc/postgresql/pgvote-tuning.conf")
              .with_volume_mapping(str(PROJECT_ROOT / "deploy" / "postgresql.conf"), "/etc/postgresql/postgresql.conf")
              .with_command("postgres -c config_file=/etc/postgresql/postgresql.conf").with_kwargs(shm_size="256m"))
        if self.pg_port:
            pg = pg.with_bind_ports(5432, self.pg_port)
        pg.start()  # waits until the server accepts connections
        self.host, self.pg_port = pg.get_container_host_ip(), int(pg.get_exposed_port(5432))
        self._set_urls()
        if migrate:
            from pgvote import migrate as migrations

            migrations.upgrade(self.admin_url)
        # PgBouncer from the local stack's template, rendered for the container network; the image runs it
        # as an unprivileged user, hence world-readable files
        ini = render_bouncer_ini(LISTEN_ADDR="0.0.0.0", LISTEN_PORT=6432, UNIX_SOCKET_DIR="", PG_HOST="postgres",
                                 PG_PORT=5432, AUTH_FILE="/etc/pgbouncer/userlist.txt", LOGFILE="", PIDFILE="")
        bouncer = (DockerContainer(os.environ.get("PGVOTE_PGBOUNCER_IMAGE", "edoburu/pgbouncer:latest"))
                   .with_name(f"{self.name}-pgbouncer").with_network(network)
                   .with_command("pgbouncer /etc/pgbouncer/pgbouncer.ini"))
        for name, text in (("pgbouncer.ini", ini), ("userlist.txt", BOUNCER_USERS)):
            path = self.state_dir / f"container-{name}"
            path.write_text(text)
            path.chmod(0o644)
            bouncer = bouncer.with_volume_mapping(str(path), f"/etc/pgbouncer/{name}")
        bouncer = bouncer.with_bind_ports(6432, self.bouncer_port) if self.bouncer_port else bouncer.with_exposed_ports(6432)
        bouncer.start()
        wait_for_logs(bouncer, "process up", timeout=60)
        self.bouncer_port = int(bouncer.get_exposed_port(6432))
        self._set_urls()
        self.state_file.write_text(json.dumps({"host": self.host, "pg_port": self.pg_port,
                                               "bouncer_port": self.bouncer_port}))

    def down(self) -> None:
        client = self._docker()
        for container in client.containers.list(all=True, filters={"name": self.name}):
            container.remove(force=True)
        for net in client.networks.list(names=[f"{self.name}-net"]):
            net.remove()

    def destroy(self) -> None:
        """down() and delete the state dir (the containers keep no volume: their data goes with them)."""
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        try:
            found = {c.name: c for c in self._docker().containers.list(all=True, filters={"name": self.name})}
        except StackError:  # no SDK or no engine: everything is stopped
            found = {}

        def component(suffix: str, port: int | None) -> dict[str, Any]:
            c = found.get(f"{self.name}-{suffix}")
            return {"running": c is not None and c.status == "running",
                    "pid": (c.attrs["State"]["Pid"] or None) if c else None, "port": port}

        return {"backend": self.backend, "state_dir": str(self.state_dir),
                "components": {"postgres": component("postgres", self.pg_port),
                               "pgbouncer": component("pgbouncer", self.bouncer_port),
                               "postgrest": {"running": False, "pid": None, "port": None,
                                             "note": "not started by the container backend: use deploy/compose.yaml"}},
                "urls": {"admin_url": self.admin_url, "api_url": self.api_url, "direct_api_url": self.direct_api_url,
                         "bouncer_admin_url": self.bouncer_admin_url, "postgrest_url": None}}
