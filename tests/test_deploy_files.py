"""Deployment artefacts: compose, Mosquitto (run for real with its ACL and TLS), Prometheus config and alert rules
(promtool), the Grafana dashboard's metric names, Kubernetes manifests (schema-validated), Dockerfile, CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import on_a_free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent
PROMTOOL = shutil.which("promtool")
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (Debian package prometheus; "
                                                            "scripts/bootstrap.sh installs it)")


def load_all_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------------- every file
@pytest.mark.parametrize("path", sorted([*DEPLOY.glob("*.yml"), *K8S.glob("*.yaml"), ROOT / "docker-compose.yml",
                                         *(ROOT / ".github" / "workflows").glob("*.yml")]), ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    assert load_all_yaml(path), f"{path} is empty"


# ------------------------------------------------------------------------------------------------ compose
def test_compose_matches_the_compose_spec() -> None:
    result = check_jsonschema("vendor.compose-spec", ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_the_fleet() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgis", "mosquitto", "fleet-api", "ingest-1", "ingest-2", "prometheus"} <= set(services)
    ingest = [services[n]["command"] for n in ("ingest-1", "ingest-2")]
    instances = {cmd[cmd.index("--instance") + 1] for cmd in ingest}
    assert len(instances) == 2, "ingest workers need distinct --instance for unique MQTT client ids"
    assert all("--metrics-port" in cmd for cmd in ingest)
    assert services["fleet-api"]["command"][:3] == ["serve", "--workers", "0"]
    mounts = services["mosquitto"]["volumes"]
    assert any(m.endswith(":/mosquitto/data") for m in mounts), "broker persistence must be on a volume"
    for source in (m.split(":")[0] for m in mounts if m.startswith("./")):
        if "certs" not in source:  # certificates are the operator's, see docs/deploy.md
            assert (ROOT / source).exists(), source
    for name in ("fleet-api", "ingest-1", "ingest-2"):
        assert set(services[name]["secrets"]) == {"database-dsn", "mqtt-password"}
        assert "environment" not in services[name], "secrets come from files, not the environment"


def test_server_configs_for_containers_are_valid() -> None:
    from fleet_server.config import ServerConfig, load

    cfg = load(DEPLOY / "server.toml")
    assert str(cfg.database.dsn_file) == "/run/secrets/database-dsn"
    assert cfg.mqtt.host == "mosquitto"
    k8s_toml = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]["server.toml"]
    k8s_cfg = ServerConfig.model_validate(tomllib.loads(k8s_toml))
    assert k8s_cfg.database.dsn_file is None, "in Kubernetes the DSN comes from the Secret's environment"


# ---------------------------------------------------------------------------------------------- mosquitto
def test_mosquitto_conf_is_persistent_with_sized_queues() -> None:
    conf = dict(line.split(None, 1) for line in (DEPLOY / "mosquitto.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#") and " " in line)
    assert conf["persistence"] == "true"
    assert int(conf["max_queued_messages"]) >= 10000
    assert int(conf["max_queued_bytes"]) > 0
    assert conf["allow_anonymous"] == "false"
    assert int(conf["max_packet_size"]) > 2_500_000  # the server's ingest.max_message_bytes


def make_tls(tmp: Path) -> None:
    """ca.crt, server.crt, server.key for 127.0.0.1 in TMP."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    (tmp / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))


@pytest.fixture
def deployed_broker(tmp_path: Path) -> Any:
    """deploy/mosquitto.conf and deploy/mosquitto.acl run by a real Mosquitto, paths moved into TMP_PATH."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (scripts/bootstrap.sh installs it)")
    from fleet_server.mqtt_accounts import set_password

    for sub in ("config", "auth", "data", "certs"):
        (tmp_path / sub).mkdir()
    make_tls(tmp_path / "certs")
    shutil.copy(DEPLOY / "mosquitto.acl", tmp_path / "config" / "acl")
    set_password(tmp_path / "auth" / "passwd", "roadmon-server", "server-pw")
    set_password(tmp_path / "auth" / "passwd", "veh-001", "veh1-pw")
    for f in (tmp_path / "config" / "acl", tmp_path / "auth" / "passwd"):
        f.chmod(0o600)
    log = tmp_path / "mosquitto.log"

    def broker_on(plain: int, tls: int) -> tuple[subprocess.Popen, int, int]:
        conf = (DEPLOY / "mosquitto.conf").read_text().replace("/mosquitto/", f"{tmp_path}/")
        conf = conf.replace("listener 1883", f"listener {plain} 127.0.0.1").replace("listener 8883",
                                                                                   f"listener {tls} 127.0.0.1")
        conf = conf.replace("log_dest stdout", f"log_dest file {log}")
        conf = ("user root\n" if os.geteuid() == 0 else "") + conf
        (tmp_path / "config" / "mosquitto.conf").write_text(conf)
        log.unlink(missing_ok=True)
        proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "config" / "mosquitto.conf")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", tls), timeout=0.5).close()
                return proc, plain, tls
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        proc.kill()
        said = proc.stdout.read().decode() + (log.read_text() if log.exists() else "")
        raise OSError(f"mosquitto refused deploy/mosquitto.conf: {said}")  # "Address already in use": retried

    proc, plain, tls = on_a_free_port(broker_on, ports=2)
    yield {"plain": plain, "tls": tls, "ca": tmp_path / "certs" / "ca.crt", "dir": tmp_path}
    proc.terminate()
    proc.wait(10)


def connect(port: int, user: str, password: str, ca: Path | None = None) -> tuple[mqtt.Client, list, threading.Event]:
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}")
    client.username_pw_set(user, password)
    if ca:
        client.tls_set(ca_certs=str(ca))
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, got, subscribed


def test_deployed_broker_runs_with_tls_and_the_acl(deployed_broker: dict[str, Any]) -> None:
    server, received, subscribed = connect(deployed_broker["plain"], "roadmon-server", "server-pw")
    server.subscribe("roadmon/#", qos=1)
    assert subscribed.wait(5)
    device, _, _ = connect(deployed_broker["tls"], "veh-001", "veh1-pw", ca=deployed_broker["ca"])
    device.publish("roadmon/v1/veh-001/event", b"mine", qos=1).wait_for_publish(5)
    device.publish("roadmon/v1/veh-999/event", b"not mine", qos=1).wait_for_publish(5)  # the ACL drops it
    device.publish("roadmon/v1/veh-001/event", b"mine again", qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    for c in (device, server):
        c.loop_stop()
        c.disconnect()
    assert received == [("roadmon/v1/veh-001/event", b"mine"), ("roadmon/v1/veh-001/event", b"mine again")]


def test_deployed_broker_refuses_wrong_password(deployed_broker: dict[str, Any]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
    client.username_pw_set("veh-001", "wrong")
    client.tls_set(ca_certs=str(deployed_broker["ca"]))
    codes: list[Any] = []
    done = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        codes.append(rc)
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", deployed_broker["tls"])
    client.loop_start()
    assert done.wait(5)
    client.loop_stop()
    assert codes[0].is_failure


# --------------------------------------------------------------------------------------------- prometheus
@needs_promtool
def test_prometheus_config_and_rules(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    prom = (DEPLOY / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(tmp_path / "alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(prom)
    for args in (["check", "config", str(tmp_path / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "alerts.yml")],
                 ["test", "rules", str(DEPLOY / "alerts.test.yml")]):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@needs_promtool
def test_promtool_would_catch_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: rate(road_queue_depth[5m\n")
    assert subprocess.run([PROMTOOL, "check", "rules", str(bad)], capture_output=True).returncode != 0


def exported_metric_names() -> set[str]:
    """What the fleet server really exports: its registry's sample names plus the scrape-time device metrics."""
    from prometheus_client import REGISTRY

    import fleet_server.metrics as m

    names = {"up"}
    for metric in REGISTRY.collect():
        names.update(sample.name for sample in metric.samples)
        names.add(metric.name)
    frozen = {"health": {"camera": "frozen"}}
    row = ("online", 3, 120.0, datetime.now(UTC), 2.0, "veh-1", frozen, None, None, None, None)
    collector = m.DeviceCollector(lambda sql: [] if "rejected" in sql else [row], 600.0)
    for metric in collector.collect():
        names.update(sample.name for sample in metric.samples)
    for counter in ("road_detection_submissions", "road_api_responses", "road_ingest_messages", "road_ingest_acks",
                    "road_ingest_db_errors", "road_ingest_broker_connects"):
        names.add(f"{counter}_total")  # a labelled counter has no samples until first used
    for histogram in ("road_api_latency_seconds", "road_ingest_batch_seconds"):
        names.update(f"{histogram}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:road_[a-z_]+)|up)\b(?=\s*[{\[)\s]|$)", expr))


def test_alerts_and_dashboard_use_real_metric_names() -> None:
    known = exported_metric_names()
    assert "road_queue_depth" in known and "road_inference_latency_seconds_bucket" in known
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "road-monitor.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert {"road_detection_submissions_total", "road_api_latency_seconds_bucket",
            "road_inference_latency_seconds_bucket", "road_queue_depth"} <= used, "DESIGN.md's names are all shown"
    assert used <= known, f"unknown metric names: {sorted(used - known)}"
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert {"road:api_availability:ratio_30d", "road:api_latency_seconds:p95_5m"} <= recorded  # the guide's KPIs
    shown = set().union(*(re.findall(r"\broad:[a-z0-9_:]+", e) for e in exprs))
    assert shown and shown <= recorded, f"recording rules not in alerts.yml: {sorted(shown - recorded)}"


GUIDE_ALERTS = ("HighLatency", "HighErrorRate", "QueueBacklog", "ModelInferenceFailed")
GUIDE_PANELS = ("Detections Per Hour", "API Latency P95", "Inference Latency", "Queue Depth", "Error Rate")


def test_the_deployment_guides_alerts_and_panels_exist_and_each_alert_is_fired_by_a_test() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]
             if "alert" in r}
    assert set(GUIDE_ALERTS) <= set(rules)
    assert 'status="failed"' in rules["HighErrorRate"]["expr"]
    assert 'status="error"' in rules["ModelInferenceFailed"]["expr"]
    fired = {case["alertname"] for t in yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())["tests"]
             for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert set(GUIDE_ALERTS) <= fired  # promtool (test_prometheus_config_and_rules) checks that they do fire
    dashboard = json.loads((DEPLOY / "grafana" / "road-monitor.json").read_text())
    assert set(GUIDE_PANELS) <= {p["title"] for p in dashboard["panels"]}


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "road-monitor.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


# ------------------------------------------------------------------------------------------------ k8s
def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def test_k8s_manifests_validate_against_the_kubernetes_schema() -> None:
    files = [p for p in k8s_files() if p.name != "kustomization.yaml"]
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.30.0",
                             *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_validation_would_catch_a_typo(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "api.yaml").read_text().replace("containerPort:", "containerPrt:", 1))
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.30.0", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def test_k8s_has_what_the_issue_asks() -> None:
    docs = [d for p in k8s_files() for d in load_all_yaml(p)]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    kustom = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).exists() for r in kustom["resources"])
    assert "secret.example.yaml" not in kustom["resources"], "real secrets are created out of band"
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert {"secretRef": {"name": "fleet-server-secrets"}} in c["envFrom"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_runs_this_version_of_the_server_image() -> None:
    """The manifests pulled 0.1.0 while the code was 0.3.0: a cluster ran a server without its migrations."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    kustom = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert [i["newTag"] for i in kustom["images"] if i["name"] == "road-monitor/fleet-server"] == [version]
    images = [c["image"] for p in k8s_files() for d in load_all_yaml(p) if isinstance(d, dict)
              for c in _containers(d)]
    assert images and all(i == f"road-monitor/fleet-server:{version}" for i in images), images


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


# ------------------------------------------------------------------------------------- Dockerfile and CI
def test_dockerfile_is_multi_stage_and_not_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M | re.I)
    assert len(stages) >= 2
    final = text[text.rfind("\nFROM "):]
    assert "COPY --from=build" in final
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    for path in re.findall(r"^COPY\s+(?!--)(\S+)", text, flags=re.M):
        assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"


def test_the_server_image_builds_from_what_it_copies(tmp_path) -> None:
    """`pip install .` in the build stage sees only what the Dockerfile copies: every data file pyproject names
    must be there once the Dockerfile's own edits ran (the agent's bundled model was not, and the image never
    built)."""
    text = (ROOT / "Dockerfile").read_text()
    build = text[:text.rfind("\nFROM ")]
    copied = [p for line in re.findall(r"^COPY\s+(?!--)(.+)$", build, flags=re.M) for p in line.split()[:-1]]
    for path in copied:
        (shutil.copytree if (ROOT / path).is_dir() else shutil.copy)(ROOT / path, tmp_path / path)
    for edit in re.findall(r"(sed -i '[^']*' pyproject\.toml)", build):
        subprocess.run(edit, shell=True, cwd=tmp_path, check=True, timeout=30)
    project = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    data_files = project.get("tool", {}).get("setuptools", {}).get("data-files", {})
    missing = [f for files in data_files.values() for f in files if not (tmp_path / f).exists()]
    assert not missing, f"pip install . in the image would fail: {missing} not copied"
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any((tmp_path / pattern.rstrip("*")).is_dir() for pattern in packages)


def test_github_workflow_runs_make_test() -> None:
    path = ROOT / ".github" / "workflows" / "test.yml"
    result = check_jsonschema("vendor.github-workflows", path)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = yaml.safe_load(path.read_text())
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any(s.strip() == "make test" for s in steps)


@pytest.mark.parametrize("path", ["deploy/certs/ca.key", "deploy/certs/server.key", "deploy/secrets/mqtt-password",
                                  "deploy/secrets/database-dsn"])
def test_deploy_secrets_and_keys_are_ignored_by_git(path: str) -> None:
    """Section 1 of docs/deploy.md makes these in the checkout (the CA's private key, passwords): git must never
    offer to commit them (.dockerignore alone kept them out of the image only)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, timeout=30)
    assert result.returncode == 0, f"{path} is not ignored by .gitignore"
