"""Container backend: PostgreSQL 16 with pg_cron (deploy/postgres/Dockerfile) + edoburu/pgbouncer via
testcontainers, behind the same `Stack` interface as LocalStack (pgvote/backends.py).

Selected by PGVOTE_BACKEND=testcontainers, or automatically when PGVOTE_BACKEND is unset and a Docker engine
answers `docker info` (see pgvote.backends.select_backend). Needs the optional extra: pip install -e '.[docker]'.
Importing this module never needs testcontainers; up() reports its absence as a StackError.

Containers get fixed names derived from the state dir and the reaper (Ryuk) is disabled, so `pgvote up`,
`pgvote status` and `pgvote down` work across separate processes like the local stack does; a test fixture
simply calls down(). Authentication is trust on the private container network (dev stack only), so the URLs
look exactly like LocalStack's. PostgREST is not started here (use deploy/compose.yaml for the full stack).
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path
from typing import Any

from pgvote.stack import PROJECT_DIR, StackError, default_state_dir, short_hash

# db/postgresql.conf preloads pg_cron, which the official image lacks: by default the stack builds
# deploy/postgres/Dockerfile (the image compose uses); PGVOTE_POSTGRES_IMAGE names a ready image instead.
POSTGRES_IMAGE = os.environ.get("PGVOTE_POSTGRES_IMAGE")
POSTGRES_IMAGE_TAG = "pgvote-postgres:local"
PGBOUNCER_IMAGE = os.environ.get("PGVOTE_PGBOUNCER_IMAGE", "edoburu/pgbouncer:latest")
POSTGREST_NOT_STARTED = "PostgREST and nginx are not started by the container backend: use deploy/compose.yaml"


class ContainerStack:
    backend = "testcontainers"

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir).absolute() if state_dir is not None else default_state_dir()
        self.state_file = self.state_dir / "containers.json"
        self.name = f"pgvote-{short_hash(str(self.state_dir))}"
        saved = self._load()
        self.host: str = saved.get("host", "127.0.0.1")
        self.pg_port: int | None = saved.get("pg_port")
        self.bouncer_port: int | None = saved.get("bouncer_port")
        self.postgrest_url: str | None = None
        self._set_urls()

    @staticmethod
    def _postgres_image() -> str:
        if POSTGRES_IMAGE:
            return POSTGRES_IMAGE
        from testcontainers.core.image import DockerImage

        DockerImage(path=str(PROJECT_DIR / "deploy" / "postgres"), tag=POSTGRES_IMAGE_TAG).build()
        return POSTGRES_IMAGE_TAG

    def _set_urls(self) -> None:
        self.admin_url = f"postgresql://postgres@{self.host}:{self.pg_port}/pgvote"
        self.api_url = f"postgresql://authenticator@{self.host}:{self.bouncer_port}/pgvote"
        self.direct_api_url = f"postgresql://authenticator@{self.host}:{self.pg_port}/pgvote"
        self.bouncer_admin_url = f"postgresql://postgres@{self.host}:{self.bouncer_port}/pgbouncer"

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _docker(self) -> Any:
        try:
            import docker  # installed with testcontainers
        except ImportError:
            raise StackError(
                "testcontainers is not installed: pip install -e '.[docker]' (or set PGVOTE_BACKEND=local)"
            ) from None
        try:
            return docker.from_env()
        except docker.errors.DockerException as exc:
            raise StackError(f"no Docker engine answers ({exc}); use PGVOTE_BACKEND=local") from exc

    def up(self, migrate: bool = True) -> None:
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # containers outlive this process
        try:
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.network import Network
            from testcontainers.core.waiting_utils import wait_for_logs

            try:
                from testcontainers.community.postgres import PostgresContainer  # testcontainers >= 4.14
            except ImportError:
                from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise StackError(
                "testcontainers is not installed: pip install -e '.[docker]' (or set PGVOTE_BACKEND=local)"
            ) from None
        from pgvote.backends import docker_available

        if not docker_available():
            raise StackError(
                "PGVOTE_BACKEND=testcontainers but no Docker engine answers `docker info`; "
                "use PGVOTE_BACKEND=local (local processes)"
            )
        if self.status()["components"]["postgres"]["running"]:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        network = Network()
        network.name = f"{self.name}-net"
        network.create()
        pg = (
            PostgresContainer(self._postgres_image(), username="postgres", password="postgres", dbname="pgvote", driver=None)
            .with_name(f"{self.name}-postgres")
            .with_network(network)
            .with_network_aliases("postgres")
            .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")  # private network, dev stack only
            .with_volume_mapping(str(PROJECT_DIR / "db" / "postgresql.conf"), "/etc/postgresql/pgvote-tuning.conf")
            .with_volume_mapping(str(PROJECT_DIR / "deploy" / "postgresql.conf"), "/etc/postgresql/postgresql.conf")
            .with_command("postgres -c config_file=/etc/postgresql/postgresql.conf")
            .with_kwargs(shm_size="256m")
        )
        if self.pg_port:
            pg = pg.with_bind_ports(5432, self.pg_port)
        pg.start()
        self.host = pg.get_container_host_ip()
        self.pg_port = int(pg.get_exposed_port(5432))
        self._set_urls()
        if migrate:
            from pgvote import migrate as migrations

            migrations.upgrade(self.admin_url)

        # PgBouncer from the same template as the local stack, rendered for the container network.
        ini = string.Template((PROJECT_DIR / "db" / "pgbouncer.ini").read_text()).substitute(
            listen_addr="0.0.0.0",
            listen_port=6432,
            unix_socket_dir="",
            pg_host="postgres",
            pg_port=5432,
            auth_file="/etc/pgbouncer/userlist.txt",
            logfile="",
            pidfile="",
        )
        (self.state_dir / "pgbouncer-container.ini").write_text(ini)
        (self.state_dir / "userlist-container.txt").write_text('"postgres" ""\n"authenticator" ""\n')
        for f in ("pgbouncer-container.ini", "userlist-container.txt"):
            (self.state_dir / f).chmod(0o644)  # the image runs pgbouncer as an unprivileged user
        bouncer = (
            DockerContainer(PGBOUNCER_IMAGE)
            .with_name(f"{self.name}-pgbouncer")
            .with_network(network)
            .with_volume_mapping(str(self.state_dir / "pgbouncer-container.ini"), "/etc/pgbouncer/pgbouncer.ini")
            .with_volume_mapping(str(self.state_dir / "userlist-container.txt"), "/etc/pgbouncer/userlist.txt")
            .with_command("pgbouncer /etc/pgbouncer/pgbouncer.ini")
            .with_exposed_ports(6432)
        )
        if self.bouncer_port:
            bouncer = bouncer.with_bind_ports(6432, self.bouncer_port)
        bouncer.start()
        wait_for_logs(bouncer, "process up", timeout=60)
        self.bouncer_port = int(bouncer.get_exposed_port(6432))
        self._set_urls()
        self.state_file.write_text(
            json.dumps({"host": self.host, "pg_port": self.pg_port, "bouncer_port": self.bouncer_port}, indent=2)
        )

    def down(self) -> None:
        client = self._docker()
        import docker.errors

        for suffix in ("pgbouncer", "postgres"):
            try:
                client.containers.get(f"{self.name}-{suffix}").remove(force=True)
            except docker.errors.NotFound:
                pass
        for net in client.networks.list(names=[f"{self.name}-net"]):
            net.remove()

    def destroy(self) -> None:
        """down() and delete the state dir (the containers keep no volume: their data goes with them)."""
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        try:
            client = self._docker()
            import docker.errors
        except Exception:  # no SDK or no engine: report everything as stopped
            client = None

        def container(suffix: str, port: int | None) -> dict[str, Any]:
            stopped = {"running": False, "pid": None, "port": port}
            if client is None:
                return stopped
            try:
                c = client.containers.get(f"{self.name}-{suffix}")
            except docker.errors.NotFound:
                return stopped
            return {
                "running": c.status == "running",
                "pid": c.attrs["State"]["Pid"] or None,
                "port": port,
                "container": c.name,
            }

        return {
            "backend": self.backend,
            "state_dir": str(self.state_dir),
            "components": {
                "postgres": container("postgres", self.pg_port),
                "pgbouncer": container("pgbouncer", self.bouncer_port),
                "postgrest": {
                    "running": False,
                    "pid": None,
                    "port": None,
                    "note": POSTGREST_NOT_STARTED,
                },
            },
            "urls": {
                "admin_url": self.admin_url,
                "api_url": self.api_url,
                "direct_api_url": self.direct_api_url,
                "bouncer_admin_url": self.bouncer_admin_url,
                "postgrest_url": None,
            },
        }
