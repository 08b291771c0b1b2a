"""Container backend (``PGVOTE_BACKEND=compose``): `docker compose` on deploy/compose.yaml, the whole
topology (PostgreSQL, migrations, PgBouncer, PostgREST, nginx, publisher, monitoring) behind the `Stack`
interface of pgvote/backends.py. Its passwords and JWT secret are generated once per state dir into an
env file compose reads; the project name derives from the state dir, so `up`, `status` and `down` work
across processes. The compose file publishes fixed loopback ports (PgBouncer 6432, nginx 3000): one such
stack per machine. The database is reached through PgBouncer (session-mode alias for the admin login).
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pgvote.paths import PROJECT_ROOT
from pgvote.stack import StackError, default_state_dir, short_hash

COMPOSE_FILE = PROJECT_ROOT / "deploy" / "compose.yaml"
SECRETS = ("POSTGRES_PASSWORD", "AUTHENTICATOR_PASSWORD", "EXPORTER_PASSWORD", "PGRST_JWT_SECRET")


class ContainerStack:
    backend = "compose"

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir).absolute() if state_dir is not None else default_state_dir()
        self.env_file = self.state_dir / "compose.env"
        self.project = f"pgvote-{short_hash(str(self.state_dir))}"
        self.http_url = "http://127.0.0.1:3000"
        self._set_urls()

    def _set_urls(self) -> None:
        """From the env file's KEY=value lines (empty passwords until up() writes it)."""
        pw = dict.fromkeys(SECRETS, "")
        if self.env_file.is_file():
            pw.update(line.partition("=")[::2] for line in self.env_file.read_text().splitlines())
        bouncer = "127.0.0.1:6432"
        self.admin_url = f"postgresql://postgres:{pw['POSTGRES_PASSWORD']}@{bouncer}/pgvote_session"
        self.api_url = f"postgresql://authenticator:{pw['AUTHENTICATOR_PASSWORD']}@{bouncer}/pgvote"
        self.direct_api_url = f"postgresql://authenticator:{pw['AUTHENTICATOR_PASSWORD']}@{bouncer}/pgvote_session"
        self.bouncer_admin_url = f"postgresql://postgres:{pw['POSTGRES_PASSWORD']}@{bouncer}/pgbouncer"

    def compose(self, *args: str) -> str:
        if not shutil.which("docker"):
            raise StackError("PGVOTE_BACKEND=compose but there is no docker CLI; use PGVOTE_BACKEND=local")
        argv = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), "--env-file", str(self.env_file), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StackError(f"`{' '.join(argv[:2] + list(args))}` failed (exit {proc.returncode}; is the compose "
                             f"plugin installed?): {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def up(self, migrate: bool = True) -> None:
        """Build the images, start every service and wait until they are healthy (compose runs the migrations)."""
        if not self.env_file.is_file():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.env_file.touch(mode=0o600)
            self.env_file.write_text("".join(f"{k}={secrets.token_hex(24)}\n" for k in SECRETS))
            self._set_urls()
        self.compose("up", "-d", "--build", "--wait")

    def down(self) -> None:
        if self.env_file.is_file():
            self.compose("down")

    def destroy(self) -> None:
        """down() with the volumes (cluster data included), and the state dir."""
        if self.env_file.is_file():
            self.compose("down", "--volumes")
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        services: list[dict[str, Any]] = []
        if self.env_file.is_file() and shutil.which("docker"):
            text = self.compose("ps", "--all", "--format", "json").strip()
            # compose v2 prints one JSON object per line (older releases: one array)
            services = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
        return {"backend": self.backend, "state_dir": str(self.state_dir),
                "components": {s["Service"]: {"running": s.get("State") == "running", "pid": None,
                                              "note": s.get("Status", "")} for s in services},
                "urls": {"http": self.http_url, "admin_url": self.admin_url, "api_url": self.api_url,
                         "direct_api_url": self.direct_api_url, "bouncer_admin_url": self.bouncer_admin_url}}
