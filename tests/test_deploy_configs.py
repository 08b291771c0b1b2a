"""The deployment files of deploy/ are checked by the real tools where this machine has them, and by
structural checks where it cannot (each skip says why):

- nginx: `nginx -t` (Debian `nginx`, installed by scripts/install-deps) on a copy of deploy/nginx;
- PgBouncer: the real pgbouncer 1.18 started on deploy/pgbouncer.ini (a free port, a test auth file),
  then asked for its settings on the admin console;
- PostgREST: every setting (api/postgrest.conf, PGRST_* of compose and Kubernetes) is a documented
  PostgREST setting (no binary here to ask);
- Kubernetes: YAML parses; schemas checked by kubernetes-validate (PyPI, bundles the API schemas;
  kubeconform is not packaged for Debian and kubectl needs an API server to validate);
  `kubectl kustomize` renders the kustomization where kubectl exists;
- Prometheus: `promtool check config`, `check rules` and `test rules` where promtool exists (Debian
  `prometheus`), else a structural check; the postgres_exporter queries run as an ops member
  against the test stack, and through the real exporter where `prometheus-postgres-exporter` exists;
- compose: `docker compose config` where the compose plugin exists, plus a structural check.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pgvote.paths import PROJECT_ROOT
from pgvote.stack import NCHAN_MODULE, free_port, read_postgrest_conf, render_template

DEPLOY = PROJECT_ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROCEDURES = PROJECT_ROOT / "procedures"
PROMETHEUS = DEPLOY / "prometheus"

# Every PostgREST v12/v13 setting documented in docs.postgrest.org references/configuration.html
# (List of parameters), plus the aliases it still accepts. Checked against the v13 docs.
POSTGREST_SETTINGS = {
    "admin-server-host", "admin-server-port", "db-aggregates-enabled", "db-anon-role", "db-channel",
    "db-channel-enabled", "db-config", "db-extra-search-path", "db-hoisted-tx-settings", "db-max-rows",
    "db-plan-enabled", "db-pool", "db-pool-acquisition-timeout", "db-pool-automatic-recovery",
    "db-pool-max-idletime", "db-pool-max-lifetime", "db-pre-config", "db-pre-request",
    "db-prepared-statements", "db-root-spec", "db-schemas", "db-tx-end", "db-uri", "jwt-aud",
    "jwt-cache-max-lifetime", "jwt-role-claim-key", "jwt-secret", "jwt-secret-is-base64", "log-level",
    "openapi-mode", "openapi-security-active", "openapi-server-proxy-uri", "server-cors-allowed-origins",
    "server-host", "server-port", "server-timing-enabled", "server-trace-header", "server-unix-socket",
    "server-unix-socket-mode",
    # backwards-compatible aliases
    "db-schema", "db-pool-timeout", "max-rows", "pre-request", "role-claim-key",
}
REQUIRED_POSTGREST = {"db-prepared-statements": "true", "db-channel-enabled": "false",
                      "db-pre-request": "hooks.pre_request", "db-schemas": "api", "db-anon-role": "anon"}


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in yaml_docs(p)]


# ---- nginx --------------------------------------------------------------------------------------------


TEMPLATE = DEPLOY / "nginx" / "pgvote.conf.template"


def compose_nginx_env() -> dict[str, str]:
    """The ${PGVOTE_*} values deploy/compose.yaml gives the nginx image's template step."""
    return {k: str(v) for k, v in yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["nginx"]["environment"].items()}


def nginx_as_compose_renders_it(tmp_path: Path, colour: str) -> Path:
    """deploy/nginx as the nginx image would see it, moved under tmp_path: the template rendered with
    compose's variables (paths re-rooted), upstream servers rewritten to 127.0.0.1 (the compose service
    names resolve only inside Docker, and `nginx -t` resolves every upstream host), inside a main file
    like the image's own nginx.conf."""
    conf_dir = tmp_path / "etc" / "nginx" / "pgvote"
    shutil.copytree(DEPLOY / "nginx", conf_dir, symlinks=True)
    for i, upstream in enumerate(sorted(conf_dir.glob("upstream-*.conf"))):
        text = upstream.read_text()
        text = re.sub(r"^(\s*server\s+)[A-Za-z0-9.-]+:(\d+)",
                      lambda m, base=i * 10: f"{m[1]}127.0.0.1:{int(m[2]) + base}", text, flags=re.M)
        upstream.write_text(text)
    live = conf_dir / "live-upstream.conf"
    live.unlink()
    live.symlink_to(f"upstream-{colour}.conf")
    values = {k: str(tmp_path) + v if v.startswith("/") else v for k, v in compose_nginx_env().items()}
    values["PGVOTE_LISTEN"] = "127.0.0.1:8080"  # port 80 needs root
    for key in ("PGVOTE_NGINX_STATE", "PGVOTE_NGINX_LOGS", "PGVOTE_STATIC"):
        Path(values[key]).mkdir(parents=True, exist_ok=True)
    (conf_dir / "pgvote.conf").write_text(render_template(TEMPLATE.read_text(), values))
    main = tmp_path / "nginx.conf"
    # the image's nginx.conf loads Debian's nchan module (modules-enabled/50-mod-nchan.conf)
    main.write_text(f"load_module {NCHAN_MODULE};\npid {tmp_path}/nginx.pid;\nevents {{}}\n"
                    "http {\n    include /etc/nginx/mime.types;\n"
                    f"    include {conf_dir}/pgvote.conf;\n}}\n")
    return main


@pytest.mark.parametrize("colour", ["blue", "green"])
def test_nginx_template_as_compose_renders_it_passes_nginx_t(tmp_path, colour) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = nginx_as_compose_renders_it(tmp_path, colour)
    out = run([nginx, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)])
    assert out.returncode == 0, out.stderr


def test_compose_gives_every_template_variable_and_mounts_the_template() -> None:
    wanted = set(re.findall(r"\$\{(PGVOTE_\w+)\}", TEMPLATE.read_text()))
    assert wanted == set(compose_nginx_env()), "compose's nginx environment must give exactly the template's variables"
    volumes = yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["nginx"]["volumes"]
    assert "./nginx/pgvote.conf.template:/etc/nginx/templates/pgvote.conf.template:ro" in volumes


def test_nginx_config_does_what_the_guide_asks() -> None:
    conf = TEMPLATE.read_text()
    assert re.search(r"upstream postgrest \{\s*least_conn;", conf)
    assert "limit_req_zone $binary_remote_addr zone=vote_limit:10m rate=10r/s;" in conf
    assert re.search(r"location = /rpc/cast_vote \{[^}]*limit_req zone=vote_limit burst=20 nodelay;", conf)
    assert "proxy_set_header X-Real-IP $remote_addr;" in conf
    assert "$proxy_add_x_forwarded_for" not in conf, "never pass on a client-written X-Forwarded-For"
    assert 'add_header Cache-Control "public, immutable"' in conf and "expires 1y;" in conf
    assert (DEPLOY / "nginx" / "live-upstream.conf").resolve().name in ("upstream-blue.conf", "upstream-green.conf")
    for colour in ("blue", "green"):
        servers = re.findall(r"^server (postgrest-\w+-\d):3000", (DEPLOY / "nginx" / f"upstream-{colour}.conf").read_text(),
                             re.M)
        assert len(servers) >= 2 and all(colour in s for s in servers)


def test_every_error_nginx_answers_itself_has_the_api_json_shape() -> None:
    conf = TEMPLATE.read_text()
    pages = dict(re.findall(r"^\s*error_page (\d+) (/_errors/\w+);", conf, re.M))
    assert {"400", "404", "405", "413", "414", "429", "494", "500", "502", "503", "504"} <= set(pages)
    for status, name in pages.items():
        body = re.search(rf"location = {name} \{{(.*?)\n    \}}", conf, re.S)
        assert body, name
        assert "internal;" in body[1] and "types { }" in body[1] and "default_type application/json;" in body[1]
        answer = re.search(r"return (\d+) '(.*)';", body[1])
        assert answer and json.loads(answer[2]).keys() == {"code", "message", "details", "hint"}, name
        assert answer[1] == ("400" if status == "494" else status)


def test_compose_nginx_has_nchan_and_the_publisher_shares_its_loopback() -> None:
    """The official nginx image has no nchan: compose builds deploy/nginx/Dockerfile (Debian's module), and
    nchan's publisher endpoint listens on the nginx container's loopback, reached only by the publisher,
    which runs in that container's network namespace."""
    services = yaml_docs(DEPLOY / "compose.yaml")[0]["services"]
    assert services["nginx"]["build"]["context"] == "./nginx"
    dockerfile = (DEPLOY / "nginx" / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]*\bnginx libnginx-mod-nchan\b", dockerfile)
    assert "COPY render-templates.sh" in dockerfile and (DEPLOY / "nginx" / "render-templates.sh").stat().st_mode & 0o111
    env = compose_nginx_env()
    assert env["PGVOTE_LIVE_PUBLISH_LISTEN"].startswith("127.0.0.1:")
    assert env["PGVOTE_LIVE_PUBLISHER"].startswith("127.0.0.1:")
    publisher = services["publisher"]
    assert publisher["network_mode"] == "service:nginx"
    command = "\n".join(publisher["command"])
    assert f"--listen {env['PGVOTE_LIVE_PUBLISHER']}" in command
    assert f"--nchan-url http://{env['PGVOTE_LIVE_PUBLISH_LISTEN']}" in command
    assert "./nginx/static:" + env["PGVOTE_STATIC"] + ":ro" in services["nginx"]["volumes"]


def test_nginx_log_format_matches_the_log_exporter() -> None:
    conf = TEMPLATE.read_text()
    log_format = re.search(r"log_format pgvote '([^']*)';", conf)[1]
    exporter = yaml_docs(PROMETHEUS / "nginxlog-exporter.yml")[0]
    namespace = exporter["namespaces"][0]
    assert namespace["format"] == log_format
    assert namespace["source"]["files"] == [compose_nginx_env()["PGVOTE_NGINX_LOGS"] + "/access.log"]
    assert "access_log ${PGVOTE_NGINX_LOGS}/access.log pgvote" in conf
    assert "$request_time" in log_format and "$status" in log_format, "latency histogram and status counts"



# ---- PgBouncer --------------------------------------------------------------------------------------


@pytest.fixture
def bouncer_dir() -> Iterator[Path]:
    """A scratch dir the server user can enter (pytest's tmp_path is under a root-only 0700 dir)."""
    work = Path(tempfile.mkdtemp(prefix="pgvote-bouncer-config-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_pgbouncer_loads_the_deploy_config(bouncer_dir) -> None:
    """Start the real pgbouncer on deploy/pgbouncer.ini (port, files and auth file moved into a temp dir;
    [databases] untouched: PgBouncer resolves `postgres` only when a client needs that pool), then read
    the settings back from its admin console, as the admin and as the monitoring (stats) user."""
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        pytest.skip("no pgbouncer binary (scripts/install-deps installs Debian's pgbouncer)")
    port = free_port()
    work = bouncer_dir
    ini = (DEPLOY / "pgbouncer.ini").read_text()
    for key, value in (("listen_addr", "127.0.0.1"), ("listen_port", str(port)), ("auth_file", f"{work}/userlist.txt"),
                       ("logfile", f"{work}/pgbouncer.log"), ("pidfile", f"{work}/pgbouncer.pid")):
        ini, n = re.subn(rf"^{key} =.*$", f"{key} = {value}", ini, flags=re.M)
        assert n == 1, key
    (work / "pgbouncer.ini").write_text(ini)
    (work / "userlist.txt").write_text('"postgres" "admin-secret"\n"pgvote_exporter" "exporter-secret"\n'
                                       '"authenticator" "authenticator-secret"\n')
    command = [binary, str(work / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(work, "postgres")
        for f in work.iterdir():
            shutil.chown(f, "postgres")
        work.chmod(0o700)
        command = ["runuser", "-u", "postgres", "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"postgresql://{{user}}:{{password}}@127.0.0.1:{port}/pgbouncer"
        deadline, conn = time.monotonic() + 20, None
        while conn is None:
            try:
                conn = psycopg.connect(url.format(user="postgres", password="admin-secret"), autocommit=True,
                                       connect_timeout=2)
            except psycopg.OperationalError:
                assert proc.poll() is None, f"pgbouncer exited: {proc.stdout.read() if proc.stdout else ''}"
                assert time.monotonic() < deadline, "pgbouncer did not accept connections"
                time.sleep(0.1)
        with conn:
            cur = conn.cursor(binary=False)
            cur.execute("SHOW CONFIG", prepare=False)
            config = {row[0]: row[1] for row in cur.fetchall()}
        assert config["pool_mode"] == "transaction"
        assert config["auth_type"] == "scram-sha-256"
        assert int(config["max_client_conn"]) == 6000 and int(config["default_pool_size"]) == 40
        assert int(config["max_db_connections"]) == 60
        assert "pgvote_exporter" in config["stats_users"]
        with psycopg.connect(url.format(user="pgvote_exporter", password="exporter-secret"), autocommit=True) as conn:
            cur = conn.cursor(binary=False)
            cur.execute("SHOW POOLS", prepare=False)  # a stats user may read the pools
            cur.fetchall()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_deploy_and_local_pgbouncer_share_the_pooling_policy() -> None:
    def settings(text: str) -> dict[str, str]:
        return dict(re.findall(r"^(\w+) = (.*)$", text, re.M))

    deploy, local = settings((DEPLOY / "pgbouncer.ini").read_text()), settings((PROJECT_ROOT / "db" / "pgbouncer.ini").read_text())
    for key in ("pool_mode", "default_pool_size", "max_db_connections", "reserve_pool_size", "max_client_conn",
                "query_wait_timeout", "server_reset_query"):
        assert deploy.get(key) == local.get(key), key


# ---- PostgREST --------------------------------------------------------------------------------------


def postgrest_conf() -> dict[str, str]:
    return read_postgrest_conf()


def env_settings(env: dict[str, Any]) -> dict[str, str]:
    """PGRST_DB_PRE_REQUEST -> db-pre-request (PostgREST's environment naming)."""
    return {k.removeprefix("PGRST_").lower().replace("_", "-"): str(v) for k, v in env.items() if k.startswith("PGRST_")}


def compose_services() -> dict[str, Any]:
    return yaml_docs(DEPLOY / "compose.yaml")[0]["services"]


def k8s_postgrest_settings() -> dict[str, str]:
    config_map = next(d for d in k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "postgrest-env")
    settings = env_settings(config_map["data"])
    for doc in k8s_docs():
        if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("postgrest-"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                settings.update(env_settings({e["name"]: e.get("value", "") for e in container.get("env", [])}))
    return settings


@pytest.mark.parametrize("source", ["api/postgrest.conf", "deploy/compose.yaml", "deploy/k8s"])
def test_postgrest_settings_are_documented_and_pgbouncer_safe(source) -> None:
    if source == "api/postgrest.conf":
        settings = postgrest_conf()
    elif source == "deploy/compose.yaml":
        replicas = {n: s for n, s in compose_services().items() if n.startswith("postgrest-")}
        assert len([n for n in replicas if "blue" in n]) >= 2 and len([n for n in replicas if "green" in n]) >= 2
        envs = [env_settings(s["environment"]) for s in replicas.values()]
        assert all(e == envs[0] for e in envs), "every replica runs the same settings"
        settings = envs[0]
    else:
        settings = k8s_postgrest_settings()
    unknown = sorted(k for k in settings if k not in POSTGREST_SETTINGS and not k.startswith("app.settings."))
    assert unknown == [], f"not PostgREST settings: {unknown}"
    for key, value in REQUIRED_POSTGREST.items():
        assert settings.get(key) == value, (key, settings.get(key))


# ---- Kubernetes -------------------------------------------------------------------------------------


def test_k8s_manifests_parse_and_pass_a_schema_check() -> None:
    docs = k8s_docs()
    assert docs, "no manifests"
    for doc in docs:  # the structure every object needs, checked whatever validator exists
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc.get("kind")
        assert doc["metadata"].get("name"), doc["kind"]
        assert "spec" in doc or doc["kind"] in ("ConfigMap", "Secret", "Namespace"), doc["kind"]
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[test]'): structure checked only")
    failures = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_docs(path):
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert failures == []


def test_kustomization_renders_with_kubectl() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the kustomization is checked structurally only (test_k8s_*)")
    out = run([kubectl, "kustomize", str(K8S)])
    assert out.returncode == 0, out.stderr
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d)
    assert ("Deployment", "postgrest-blue") in kinds and ("Deployment", "pgbouncer") in kinds
    assert all(d["metadata"].get("namespace") == "pgvote" for d in yaml.safe_load_all(out.stdout)
               if d and d["kind"] != "Namespace")


def test_postgrest_deployment_has_health_probes_autoscaler_and_budget() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    for colour in ("blue", "green"):
        deployment = docs[("Deployment", f"postgrest-{colour}")]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 3000, "admin": 3001}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
        hpa = docs[("HorizontalPodAutoscaler", f"postgrest-{colour}")]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": f"postgrest-{colour}"}
        pdb = docs[("PodDisruptionBudget", f"postgrest-{colour}")]
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    blue = (K8S / "postgrest-blue.yaml").read_text().split("apiVersion", 1)[1]
    green = (K8S / "postgrest-green.yaml").read_text().split("apiVersion", 1)[1]
    assert green == blue.replace("blue", "green"), "the colours differ by their colour only"
    assert docs[("Service", "postgrest")]["spec"]["selector"]["pgvote.dev/colour"] in ("blue", "green")


def test_k8s_postgrest_accepts_api_traffic_from_the_proxy_only() -> None:
    """The rate limit trusts x-real-ip because only the proxy reaches PostgREST: a NetworkPolicy selects
    every PostgREST pod (both colours) and opens its API port to named proxy pods, nothing else."""
    docs = k8s_docs()
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("postgrest-")]
    assert len(pods) == 2
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and all(set(d["spec"]["podSelector"]["matchLabels"].items()) <= set(labels.items()) for labels in pods)]
    assert len(policies) == 1, "one policy covers both colours"
    spec = policies[0]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    api_rules = [r for r in spec["ingress"] if any(port["port"] in ("http", 3000) for port in r.get("ports", []))]
    assert api_rules, "the API port is open to someone"
    for rule in spec["ingress"]:
        assert rule.get("ports"), "a rule without ports opens every port"
        assert rule.get("from"), "a rule without peers admits every pod and address"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, "addresses are not identities inside a cluster"
            assert peer.get("podSelector", {}).get("matchLabels"), "named pods, not whole namespaces"
            assert peer.get("namespaceSelector", {}).get("matchLabels"), "in a named namespace"
    kustomization = yaml_docs(K8S / "kustomization.yaml")[0]
    assert "postgrest-network-policy.yaml" in kustomization["resources"]


def test_k8s_pgbouncer_runs_the_deploy_config() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    assert docs[("ConfigMap", "pgbouncer-config")]["data"]["pgbouncer.ini"] == (DEPLOY / "pgbouncer.ini").read_text()
    containers = docs[("Deployment", "pgbouncer")]["spec"]["template"]["spec"]["containers"]
    assert {c["name"] for c in containers} == {"pgbouncer", "pgbouncer-exporter"}


def test_pool_sizing_holds() -> None:
    """docs/deployment.md: sum of PostgREST pools <= PgBouncer max_client_conn, and PgBouncer's server
    connections (every replica) <= PostgreSQL max_connections minus reserved and admin headroom."""
    bouncer = dict(re.findall(r"^(\w+) = (.*)$", (DEPLOY / "pgbouncer.ini").read_text(), re.M))
    pg = dict(re.findall(r"^(\w+) = (\S+)", (PROJECT_ROOT / "db" / "postgresql.conf").read_text(), re.M))
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    db_pool = int(k8s_postgrest_settings()["db-pool"])
    max_postgrest = sum(docs[("HorizontalPodAutoscaler", f"postgrest-{c}")]["spec"]["maxReplicas"] for c in ("blue", "green"))
    bouncers = docs[("Deployment", "pgbouncer")]["spec"]["replicas"]
    headroom = 20  # migrations, exporters, pg_cron, psql sessions of operators
    assert db_pool * max_postgrest <= int(bouncer["max_client_conn"]) * bouncers
    assert bouncers * int(bouncer["max_db_connections"]) <= (int(pg["max_connections"])
                                                            - int(pg["superuser_reserved_connections"]) - headroom)
    compose_pool = int(env_settings(compose_services()["postgrest-blue-1"]["environment"])["db-pool"])
    assert compose_pool * 4 <= int(bouncer["max_client_conn"]), "4 compose replicas during a blue-green switch"


# ---- Prometheus -------------------------------------------------------------------------------------


def test_alert_rules_cover_the_guide_and_parse() -> None:
    groups = yaml_docs(PROMETHEUS / "alerts.yml")[0]["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    for name, threshold in (("HighErrorRate", "> 0.05"), ("HighResponseTime", "> 1"),
                            ("PgBouncerPoolSaturated", "> 0.8"), ("AggregationBacklog", "> 10000")):
        assert threshold in " ".join(rules[name]["expr"].split()), name
    assert "histogram_quantile(0.95" in rules["HighResponseTime"]["expr"]
    for rule in rules.values():
        assert {"expr", "labels", "annotations"} <= set(rule) and rule["labels"].get("severity")
    prometheus = yaml_docs(PROMETHEUS / "prometheus.yml")[0]
    assert prometheus["rule_files"] == ["alerts.yml"]
    assert {j["job_name"] for j in prometheus["scrape_configs"]} >= {"postgres", "pgbouncer", "nginx", "postgrest"}


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts.test.yml"]], ids=["config", "rules", "rule-tests"])
def test_promtool(args) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian package `prometheus`): alerts.yml checked structurally only")
    out = run([promtool, *args], cwd=PROMETHEUS)
    assert out.returncode == 0, out.stdout + out.stderr


def exporter_queries() -> dict[str, Any]:
    return yaml_docs(PROMETHEUS / "postgres-exporter-queries.yaml")[0]


@pytest.fixture(scope="module")
def exporter_login(stack) -> str:
    """A login that is a member of ops only, as deploy/compose.yaml creates for the exporters."""
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute("""do $$ begin
                          if not exists (select from pg_roles where rolname = 'pgvote_test_exporter') then
                            create role pgvote_test_exporter login in role ops;
                          end if; end $$""")
    return stack.admin_url.replace("postgres@", "pgvote_test_exporter@", 1)


def test_exporter_queries_run_as_ops_and_match_their_metrics(exporter_login) -> None:
    with psycopg.connect(exporter_login, autocommit=True) as conn:
        for name, spec in exporter_queries().items():
            assert re.search(r"\bfrom monitoring\.\w+", spec["query"]), name
            cur = conn.execute(spec["query"])
            columns = [d.name for d in cur.description]
            metrics = [next(iter(m)) for m in spec["metrics"]]
            assert columns == metrics, name
            for metric in spec["metrics"]:
                (column, desc), = metric.items()
                assert desc["usage"] in ("LABEL", "COUNTER", "GAUGE"), (name, column)
                assert desc["description"], (name, column)


def test_alerts_use_metrics_the_exporters_produce() -> None:
    produced = {f"{name}_{next(iter(m))}" for name, spec in exporter_queries().items() for m in spec["metrics"]}
    exprs = " ".join(r["expr"] for g in yaml_docs(PROMETHEUS / "alerts.yml")[0]["groups"] for r in g["rules"])
    used = set(re.findall(r"\bpgvote_\w+", exprs))
    assert used and used <= produced, used - produced


def test_postgres_exporter_serves_the_monitoring_views(exporter_login, tmp_path) -> None:
    binary = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")
    if binary is None:
        pytest.skip("no postgres_exporter binary (Debian package prometheus-postgres-exporter): "
                    "queries checked against the database only")
    port = free_port()
    env = {**os.environ, "DATA_SOURCE_NAME": exporter_login + "?sslmode=disable"}
    proc = subprocess.Popen([binary, f"--extend.query-path={PROMETHEUS / 'postgres-exporter-queries.yaml'}",
                             f"--web.listen-address=127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 20, ""
        while "pgvote_" not in body:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the exporter served no pgvote_ metric"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert re.search(r"^pg_exporter_user_queries_load_error\{.*\} 0$", body, re.M), "queries file loaded"
    assert re.search(r"^pg_exporter_last_scrape_error 0$", body, re.M), "every query ran"
    for metric in ("pgvote_votes_votes_per_second", "pgvote_aggregation_backlog_pending_slots",
                   "pgvote_connections_usage_ratio", "pgvote_transactions_xact_rollback",
                   "pgvote_cache_cache_hit_ratio", 'pgvote_rate_limit_burst{limit_name="request"'):
        assert metric in body, metric


# ---- compose ----------------------------------------------------------------------------------------


def test_compose_file_has_the_production_services() -> None:
    services = compose_services()
    for name in ("postgres", "migrate", "pgbouncer", "postgrest-blue-1", "postgrest-blue-2", "nginx",
                 "postgres-exporter", "pgbouncer-exporter", "nginxlog-exporter", "prometheus"):
        assert name in services, name
    assert services["migrate"]["restart"] == "no", "one-shot"
    assert services["pgbouncer"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["postgres"]["build"]["context"] == "./postgres"
    assert "-cron" in (DEPLOY / "postgres" / "Dockerfile").read_text()
    assert "shared_preload_libraries = 'pg_stat_statements,pg_cron'" in (PROJECT_ROOT / "db" / "postgresql.conf").read_text()
    assert services["postgrest-green-1"]["profiles"] == ["green"]
    unpublished = [n for n, s in services.items() if n.startswith("postgrest-") and not s.get("ports")]
    assert len(unpublished) == 4, "PostgREST only behind nginx: the rate limit trusts x-real-ip"
    mounts = " ".join(services["nginx"]["volumes"])
    assert "/etc/nginx/templates/pgvote.conf.template" in mounts and "./nginx:/etc/nginx/pgvote" in mounts
    for volume in services["postgres-exporter"]["volumes"] + services["prometheus"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    if run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here: compose.yaml checked structurally only")
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "AUTHENTICATOR_PASSWORD": "x", "EXPORTER_PASSWORD": "x",
           "PGRST_JWT_SECRET": "x" * 32}
    for profile in ([], ["--profile", "green"]):
        out = run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), *profile, "config", "--quiet"], env=env)
        assert out.returncode == 0, out.stderr


# ---- the Citus variant (deploy/citus/): static only, Citus is not installable here -------------------------

CITUS = DEPLOY / "citus"


def function_signatures(text: str) -> dict[str, list[tuple[str, str]]]:
    """schema.name -> [(argument name, type)] of every CREATE [OR REPLACE] FUNCTION in SQL text."""
    found: dict[str, list[tuple[str, str]]] = {}
    for match in re.finditer(r"create (?:or replace )?function ([\w.]+)\((.*?)\)\s*returns", text, re.I | re.S):
        args, depth, current = [], 0, ""
        for ch in match[2] + ",":
            depth += ch in "([" and 1 or (ch in ")]" and -1 or 0)
            if ch == "," and depth == 0:
                if current.strip():
                    name, kind = current.strip().split(None, 1)
                    args.append((name, re.split(r"\s+default\s+", kind, flags=re.I)[0].strip().lower()))
                current = ""
            else:
                current += ch
        found[match[1]] = args
    return found


def test_citus_distributes_existing_entry_points_by_their_poll_id_argument() -> None:
    sql = (CITUS / "distribute.sql").read_text()
    calls = re.findall(r"create_distributed_function\('([\w.]+)\(([^)]*)\)',\s*distribution_arg_name => '(\w+)'", sql)
    assert {name for name, _, _ in calls} == {p.name.removesuffix(".sql") for p in PROCEDURES.glob("shard.*.sql")
                                              if p.name != "shard.cast_votes.sql"}, "every one-poll entry point"
    for name, types, argument in calls:
        defined = function_signatures((PROCEDURES / f"{name}.sql").read_text())[name]
        assert [t for _, t in defined] == [t.strip() for t in types.split(",")], name
        assert argument == "poll_id" and argument in [n for n, _ in defined], name


def test_citus_distributes_the_tables_of_a_poll_and_replaces_exactly_the_pl_proxy_transport() -> None:
    sql = (CITUS / "distribute.sql").read_text()
    tables = "\n".join(p.read_text() for p in sorted((PROJECT_ROOT / "db" / "tables").glob("*.sql")))
    for table in re.findall(r"create_distributed_table\('([\w.]+)', 'poll_id'", sql):
        body = re.search(rf"create (?:unlogged )?table {re.escape(table)} \((.*?)\n\)", tables, re.S)
        assert body and re.search(r"^\s+poll_id\s+uuid", body[1], re.M), table
    for table in re.findall(r"create_reference_table\('([\w.]+)'\)", sql):
        assert re.search(rf"create (?:unlogged )?table {re.escape(table)} \(", tables), table
    plproxy = {n: a for p in (PROCEDURES / "router").glob("router.*.sql")
               for n, a in function_signatures(p.read_text()).items() if "language plproxy" in p.read_text()}
    citus = function_signatures(sql)
    assert {n: [t for _, t in a] for n, a in plproxy.items()} == \
        {n: [t for _, t in a] for n, a in citus.items() if n in plproxy}
    assert set(plproxy) <= set(citus), "every PL/Proxy call has its Citus twin, with the same arguments"


def test_citus_compose_overrides_the_database_and_applies_files_that_exist() -> None:
    services = yaml_docs(CITUS / "compose.yaml")[0]["services"]
    assert {"postgres", "citus-worker-1", "citus-worker-2", "citus-setup"} <= set(services)
    images = {s["image"] for s in services.values() if "image" in s}
    assert all(re.fullmatch(r"citusdata/citus:\d+\.\d+\.\d+", i) for i in images), images
    setup = services["citus-setup"]
    assert setup["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for cited in re.findall(r"/src/([\w./*-]+)", setup["command"][0]):
        assert list(PROJECT_ROOT.glob(cited)), cited


# ---- the HA database tier: Patroni, HAProxy (deploy/patroni/) --------------------------------------------

PATRONI = DEPLOY / "patroni"


def test_patroni_config_passes_patronis_own_validator(tmp_path: Path) -> None:
    """`patroni --validate-config` (Debian's Patroni 3.0) on deploy/patroni/patroni.yml: its one complaint
    may be that etcd, which only the deployment has, is not reachable from here."""
    patroni = shutil.which("patroni")
    assert patroni, "no patroni: scripts/install-deps installs it (the HA profile needs it too)"
    out = run([patroni, "--validate-config", str(PATRONI / "patroni.yml")], cwd=tmp_path)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert all(line.startswith("etcd3.hosts ") for line in complaints), complaints


def test_patroni_dcs_values_keep_patronis_rule_and_the_projects_choices() -> None:
    config = yaml.safe_load((PATRONI / "patroni.yml").read_text())
    dcs = config["bootstrap"]["dcs"]
    # Patroni's rule: the old leader gives up (retry_timeout) before its key can expire (ttl)
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert dcs["master_start_timeout"] == 0, "a crashed leader fails over instead of restarting in place"
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["postgresql"]["parameters"]["synchronous_commit"] == "on"
    assert dcs["postgresql"]["use_pg_rewind"] is True and "data-checksums" in config["bootstrap"]["initdb"]
    assert config["etcd3"]["use_proxies"] is True
    tuning = (PROJECT_ROOT / "db" / "postgresql.conf").read_text()
    assert re.search(rf"^max_connections = {dcs['postgresql']['parameters']['max_connections']}\b", tuning, re.M)


def test_haproxy_config_passes_haproxy_c(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.access(haproxy, os.X_OK), "no haproxy: scripts/install-deps installs it (the HA profile needs it too)"
    given = {"PGVOTE_HAPROXY_SOCKET": str(tmp_path / "admin.sock"), "PGVOTE_WRITE_LISTEN": "127.0.0.1:5432",
             "PGVOTE_READ_LISTEN": "127.0.0.1:5433", "PGVOTE_DB0": "127.0.0.1:6000", "PGVOTE_DB0_REST_PORT": "8008",
             "PGVOTE_DB1": "127.0.0.1:6001", "PGVOTE_DB1_REST_PORT": "8009"}
    out = run([haproxy, "-c", "-f", str(PATRONI / "haproxy.cfg")], env={**os.environ, **given})
    assert out.returncode == 0, out.stdout + out.stderr
    compose = yaml_docs(PATRONI / "compose.yaml")[0]["services"]["postgres"]["environment"]
    wanted = set(re.findall(r'"\$\{(PGVOTE_\w+)\}"', (PATRONI / "haproxy.cfg").read_text()))
    assert wanted == set(compose) == set(given), "compose gives every variable the file uses"


def test_patroni_compose_and_kubernetes_forms() -> None:
    services = yaml_docs(PATRONI / "compose.yaml")[0]["services"]
    etcd = [f"etcd-{i}" for i in range(3)]  # a quorum of two
    assert {*etcd, "pgvote-db-0", "pgvote-db-1", "postgres"} <= set(services)
    for name in etcd:
        assert set(services[name]["command"][-2].split("=", 1)[1].split(",")) == {f"{e}=http://{e}:2380" for e in etcd}
    for name in ("pgvote-db-0", "pgvote-db-1"):
        env = services[name]["environment"]
        assert env["PATRONI_NAME"] == name and env["PATRONI_POSTGRESQL_CONNECT_ADDRESS"] == f"{name}:5432"
        assert env["PATRONI_ETCD3_HOSTS"] == ",".join(f"{e}:2379" for e in etcd)
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert source.endswith("-data") or (PATRONI / source).exists(), volume
    kustomization = yaml_docs(PATRONI / "kustomization.yaml")[0]
    for path in kustomization["resources"] + kustomization["configMapGenerator"][0]["files"]:
        assert (PATRONI / path).is_file(), path
    docs = yaml_docs(PATRONI / "k8s.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("StatefulSet", "pgvote-db"), ("StatefulSet", "etcd"), ("Deployment", "pgvote-db-haproxy")} <= kinds
    members = next(d for d in docs if d["metadata"]["name"] == "pgvote-db" and d["kind"] == "StatefulSet")
    assert members["spec"]["replicas"] == 2
    etcd_set = next(d for d in docs if d["metadata"]["name"] == "etcd" and d["kind"] == "StatefulSet")
    initial = next(a for a in etcd_set["spec"]["template"]["spec"]["containers"][0]["command"]
                   if a.startswith("--initial-cluster="))
    assert etcd_set["spec"]["replicas"] == 3 == len(initial.split(","))
    import kubernetes_validate  # a test dependency (pyproject.toml): its absence is a broken install

    failures = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert failures == []
