"""The HA profile of the local stack (`pgvote up --ha`): two PostgreSQL members under Patroni.

    client -> nginx -> PostgREST x2 -> PgBouncer -> HAProxy :write (Patroni /primary) -> the leader
                    -> PostgREST read (results GETs) -> HAProxy :read (Patroni /replica) -> the standby
    Patroni x2 -> (each through its own HAProxy frontend) -> etcd x3

The design is docs/deployment.md ("High availability"). Here the etcd members, the Patroni members (each
owns its PostgreSQL: the stack never pg_ctls it) and HAProxy are components of the stack's supervisor,
started before the single node's tier; each Patroni member reaches etcd through its own HAProxy frontend
over the three etcd members, which the failover tests cut (tests/fixtures/ha.py). Three etcd members make
a quorum of two: losing any one of them changes nothing, where a single one would stop every write (a
leader that cannot reach etcd demotes itself).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from pgvote import supervisor
from pgvote.paths import PROJECT_ROOT
from pgvote.stack import (
    HOST,
    LocalStack,
    Replica,
    StackError,
    find_tool,
    http_json,
    tail,
    wait_until,
)

PROFILE = "ha"
MEMBERS = 2
ETCD_MEMBERS = 3
PATRONI_CONFIG = PROJECT_ROOT / "deploy" / "patroni" / "patroni.yml"
CLUSTER_TIMEOUT = 120.0  # bootstrap of the leader and the standby's base backup


@dataclass(frozen=True)
class Member:
    """One Patroni member: its PostgreSQL port, REST port and the HAProxy frontend it reaches etcd by."""

    index: int
    pg_port: int
    rest_port: int
    etcd_port: int

    @property
    def name(self) -> str:
        return f"patroni-{self.index}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"


class HaStack(LocalStack):
    """LocalStack with the database tier replaced by etcd, two Patroni members and HAProxy."""

    def __init__(self, state_dir: Path | None = None, port_base: int | None = None) -> None:
        super().__init__(state_dir=state_dir, port_base=port_base)
        base = self.ports.base + 70  # the reserved block of further members (see Ports)
        # (client port, peer port) of each etcd member
        self.etcd = [(base + 82 + 2 * i, base + 83 + 2 * i) for i in range(ETCD_MEMBERS)]
        self.members = [Member(i, base + 2 + i, base + 4 + i, base + 6 + i) for i in range(MEMBERS)]
        self.write_port, self.read_port = base + 8, base + 9
        self.read_postgrest_port, self.read_postgrest_admin_port = base + 10, base + 11
        # PgBouncer, migrations and every admin connection reach the leader through HAProxy
        self.pg_port = self.write_port
        self.admin_url = f"postgresql://postgres@{HOST}:{self.pg_port}/pgvote"
        self.direct_api_url = f"postgresql://authenticator@{HOST}:{self.pg_port}/pgvote"
        self.haproxy_cfg = self.state_dir / "haproxy.cfg"
        self.haproxy_socket = self.run_dir / "haproxy.sock"

    # ---- lifecycle -------------------------------------------------------------------------------

    # `up` is the single node's: etcd, HAProxy and both members first (the supervisor runs them), the
    # database on the leader, migrations, then the tier of the single-node stack and the read PostgREST.

    def _check_prerequisites(self) -> None:
        super()._check_prerequisites()
        for tool in ("etcd", "haproxy", "patroni"):
            self._tool(tool)
        if (self.data_dir / "PG_VERSION").is_file():
            raise StackError(f"{self.state_dir} holds a single-node stack: `pgvote clean` it or use another --state-dir")
        if (self.state_dir / "etcd" / "member").is_dir():  # one member's data cannot become three members'
            raise StackError(f"{self.state_dir} holds an HA stack made with one etcd member: `pgvote clean` it "
                             "or use another --state-dir")

    def _prepare_database(self) -> None:
        self._write_ha_configs()
        if self._supervisor_pid() is None:
            self._write_spec(self._ha_components())  # the database tier first: migrations need the leader
        else:
            self._write_supervised_configs()  # running already: the whole spec, nothing is stopped

    def _start_postgres(self) -> None:
        self._start_supervisor()
        if not self.wait_healthy():
            logs = "\n".join(f"{m.name}:\n{tail(self.log_dir / f'{m.name}.log', 8)}" for m in self.members)
            raise StackError(f"no leader with a synchronous standby after {CLUSTER_TIMEOUT:.0f} s "
                             f"(cluster: {self.cluster()}); last lines of the Patroni logs:\n{logs}")

    def _stop_postgres(self) -> None:
        """The supervisor, stopped first, stopped every member (Patroni stops its PostgreSQL); a postmaster
        a killed Patroni left behind is stopped here."""
        for member in (m for m in self.members if self.member_postmaster(m) is not None):
            with contextlib.suppress(StackError):
                self._pg_ctl_stop(self._member_dir(member) / "data")

    def _profile_state(self) -> dict[str, Any]:
        return {"profile": PROFILE}

    # ---- configuration ---------------------------------------------------------------------------

    def _member_dir(self, member: Member) -> Path:
        return self.state_dir / member.name

    def _tool(self, name: str) -> str:
        return find_tool(name, missing=": the HA profile needs etcd-server, haproxy and patroni (scripts/install-deps)")

    def _patroni_config(self, member: Member) -> dict[str, Any]:
        """deploy/patroni/patroni.yml with this member's addresses and paths; the local stack's trust
        rules (db/pg_hba.conf) and one superuser for replication too, as in the single-node stack."""
        config: dict[str, Any] = yaml.safe_load(PATRONI_CONFIG.read_text())
        home = self._member_dir(member)
        config["scope"] = f"pgvote-{self.ports.base}"
        config["name"] = member.name
        config["restapi"] = {"listen": f"{HOST}:{member.rest_port}", "connect_address": f"{HOST}:{member.rest_port}"}
        config["etcd3"]["hosts"] = f"{HOST}:{member.etcd_port}"
        config["log"] = {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"}
        pg = config["postgresql"]
        pg.update({"listen": f"{HOST}:{member.pg_port}", "connect_address": f"{HOST}:{member.pg_port}",
                   "data_dir": str(home / "data"), "bin_dir": str(self.bindir), "pgpass": str(home / "pgpass"),
                   "custom_conf": str(home / "pgvote-tuning.conf"),
                   "parameters": {"unix_socket_directories": str(self.run_dir)}})
        pg["authentication"]["replication"]["username"] = "postgres"
        hba = (PROJECT_ROOT / "db" / "pg_hba.conf").read_text().splitlines()
        pg["pg_hba"] = config["bootstrap"]["pg_hba"] = [" ".join(line.split()) for line in hba
                                                        if line.strip() and not line.startswith("#")]
        return config

    def _write_ha_configs(self) -> None:
        for path in (self.state_dir / "etcd", *self._etcd_dirs()):
            path.mkdir(exist_ok=True)
            self._chown(path)
        for member in self.members:
            home = self._member_dir(member)
            home.mkdir(exist_ok=True)
            home.chmod(0o700)
            self._chown(home)
            self._write(home / "pgvote-tuning.conf", (PROJECT_ROOT / "db" / "postgresql.conf").read_text(), 0o600)
            # JSON is YAML: Patroni reads it as its configuration file
            self._write(home / "patroni.yml", json.dumps(self._patroni_config(member), indent=2) + "\n", 0o600)
        self._write(self.haproxy_cfg, self._haproxy_config(), 0o600)

    def _haproxy_config(self) -> str:
        """deploy/patroni/haproxy.cfg (its addresses come from the environment, see :meth:`_ha_components`), and
        one etcd frontend per member: the member's own way to etcd, which the failover tests cut; a dead
        etcd member fails its check and gets no connection."""
        lines = [(PROJECT_ROOT / "deploy" / "patroni" / "haproxy.cfg").read_text()]
        for m in self.members:
            lines += [f"# GENERATED by pgvote/ha.py: {m.name}'s way to etcd", f"listen etcd-{m.index}",
                      f"    bind {HOST}:{m.etcd_port}", "    option redispatch", "    retries 2",
                      *(f"    server etcd-{i} {HOST}:{client} check" for i, (client, _) in enumerate(self.etcd)), ""]
        return "\n".join(lines)

    def _etcd_dirs(self) -> list[Path]:
        return [self.state_dir / "etcd" / f"etcd-{i}" for i in range(ETCD_MEMBERS)]

    def _ha_components(self) -> list[dict[str, Any]]:
        initial = ",".join(f"etcd-{i}=http://{HOST}:{peer}" for i, (_, peer) in enumerate(self.etcd))
        etcd = [[self._tool("etcd"), "--name", f"etcd-{i}", "--data-dir", str(data),
                 "--listen-client-urls", f"http://{HOST}:{client}", "--advertise-client-urls", f"http://{HOST}:{client}",
                 "--listen-peer-urls", f"http://{HOST}:{peer}", "--initial-advertise-peer-urls", f"http://{HOST}:{peer}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"pgvote-{self.ports.base}", "--logger", "zap", "--log-level", "warn"]
                for i, ((client, peer), data) in enumerate(zip(self.etcd, self._etcd_dirs(), strict=True))]
        haproxy_env = {**self._env(), "PGVOTE_HAPROXY_SOCKET": str(self.haproxy_socket),
                       "PGVOTE_WRITE_LISTEN": f"{HOST}:{self.write_port}", "PGVOTE_READ_LISTEN": f"{HOST}:{self.read_port}"}
        for m in self.members:  # the addresses deploy/patroni/haproxy.cfg expands
            haproxy_env |= {f"PGVOTE_DB{m.index}": f"{HOST}:{m.pg_port}", f"PGVOTE_DB{m.index}_REST_PORT": str(m.rest_port)}
        return [*(self._component(f"etcd-{i}", argv) for i, argv in enumerate(etcd)),
                self._component("haproxy", [self._tool("haproxy"), "-db", "-f", str(self.haproxy_cfg)], env=haproxy_env),
                *[self._component(m.name, [self._tool("patroni"), str(self._member_dir(m) / "patroni.yml")])
                  for m in self.members]]

    def _components(self) -> list[dict[str, Any]]:
        """The HA components, the single-node tier without its PostgreSQL, and the read PostgREST."""
        tier = [c for c in super()._components() if c["name"] != "postgres"]
        # the results reader: straight to HAProxy's read port (a session of its own per pool connection,
        # so its prepared statements stay), with the write replicas' settings otherwise
        reader = Replica("read", 1, self.read_postgrest_port, self.read_postgrest_admin_port)
        return [*self._ha_components(), *tier,
                self._postgrest_component(reader, f"postgresql://authenticator@{HOST}:{self.read_port}/pgvote",
                                         "postgrest-read")]

    def _read_upstreams(self, live: str) -> str:
        return ("# GENERATED: results GETs to the standby's PostgREST; the live replicas when it fails.\n"
                f"server {HOST}:{self.read_postgrest_port} max_fails=0;\n" + live.replace(";\n", " backup;\n"))

    # ---- the cluster ----------------------------------------------------------------------------

    def cluster(self) -> list[dict[str, Any]]:
        """Patroni's /cluster members, as the leader sees them (a member cut off from etcd may answer
        with the view it last had), else as the first member that answers ([] when none does)."""
        leader = self.leader()
        for member in ([leader] if leader else []) + self.members:
            doc = http_json(member.url + "/cluster")[1]
            if isinstance(doc, dict):
                members: list[dict[str, Any]] = doc.get("members", [])
                return members
        return []

    def leader(self) -> Member | None:
        """The member HAProxy's write port sends to (deploy/patroni/haproxy.cfg): Patroni answers /primary
        (it holds the leader key) and its PostgreSQL is not in recovery."""
        for m in self.members:  # /primary answers Patroni's status document, 200 only on the leader
            status, doc = http_json(m.url + "/primary")
            if status == 200 and (doc or {}).get("role") in ("master", "primary"):
                return m
        return None

    def healthy(self) -> bool:
        """A running leader and a streaming synchronous standby, and HAProxy's write port reaches the leader."""
        roles = sorted((m.get("role"), m.get("state")) for m in self.cluster())
        if roles not in ([("leader", "running"), ("sync_standby", "streaming")],
                         [("leader", "running"), ("sync_standby", "running")]):
            return False
        try:
            url = f"postgresql://postgres@{HOST}:{self.write_port}/postgres"  # pgvote may not exist yet
            with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
                return conn.execute("select not pg_is_in_recovery()").fetchone() == (True,)
        except psycopg.Error:
            return False

    def wait_healthy(self, timeout: float = CLUSTER_TIMEOUT) -> bool:
        return wait_until(self.healthy, timeout, 0.25)

    def member_postmaster(self, member: Member) -> int | None:
        return supervisor.live_pid(self._member_dir(member) / "data" / "postmaster.pid", "postgres")

    # ---- status ----------------------------------------------------------------------------------

    def _health_urls(self) -> dict[str, str]:
        return {**super()._health_urls(), "postgrest-read": f"http://{HOST}:{self.read_postgrest_admin_port}/ready"}

    def status(self) -> dict[str, Any]:
        result = super().status()
        components = result["components"]
        cluster = {m["name"]: m for m in self.cluster()}
        supervised = self._supervised()
        for name, port in (*((f"etcd-{i}", client) for i, (client, _) in enumerate(self.etcd)),
                           ("haproxy", self.write_port),
                           *((m.name, m.rest_port) for m in self.members)):
            components[name] = self._status_entry(name, port, supervised=supervised)
        members = []
        for member in self.members:
            info = cluster.get(member.name, {})
            lag = info.get("lag", 0 if info.get("role") == "leader" else None)
            members.append({"name": member.name, "role": info.get("role"), "state": info.get("state"),
                            "pid": self.member_postmaster(member), "port": member.pg_port, "url": member.url,
                            "patroni_pid": components[member.name]["pid"],
                            "lag_bytes": lag if isinstance(lag, int) else None, "timeline": info.get("timeline")})
        components["postgrest"].append({"name": "postgrest-read", "colour": "read", "role": "read",
                                        **self._status_entry("postgrest-read", self.read_postgrest_port, supervised=supervised,
                                                             admin_port=self.read_postgrest_admin_port, live=True)})
        leader = next((m for m in members if m["role"] == "leader"), None)
        # "postgres" is the leader, as clients reach it (HAProxy's write port)
        components["postgres"] = {"running": leader is not None and leader["pid"] is not None,
                                  "pid": leader["pid"] if leader else None, "port": self.write_port,
                                  "log": str(self.log_dir / f"{leader['name'] if leader else 'patroni-0'}.log"),
                                  "note": "the leader, through HAProxy's write port"}
        result["profile"] = PROFILE
        result["ha"] = {"members": members, "leader": leader["name"] if leader else None,
                        "write_port": self.write_port, "read_port": self.read_port,
                        "etcd": [f"http://{HOST}:{client}" for client, _ in self.etcd]}
        result["urls"]["leader_url"] = (f"postgresql://postgres@{HOST}:{leader['port']}/pgvote" if leader else None)
        return result
