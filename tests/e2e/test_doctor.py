"""`switchboard doctor` end to end: a healthy configuration and a broken one, as a table and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import redis_server
from tests.e2e.stack import ROOT, free_port

SECRET = "sk-doctor-secret-value-0123456789"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    yield from redis_server.redis_url()


def doctor(config: dict[str, Any], tmp_path: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "switchboard.cli.main", "doctor", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                          env={**os.environ, **(env or {})})


def healthy(tmp_path: Path, upstream: str, native: dict[str, str], redis: str) -> dict[str, Any]:
    return {
        "server": {"grpc": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}",
                   "envoy": f"127.0.0.1:{free_port()}", "envoy_grpc": f"127.0.0.1:{free_port()}",
                   "envoy_admin": f"127.0.0.1:{free_port()}"},
        "auth": {"api_keys_env": "DOCTOR_GATEWAY_KEYS"},
        "store": f"sqlite:///{tmp_path / 'doctor.db'}",
        "providers": [
            {"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1", "api_key_env": "DOCTOR_KEY"},
            {"name": "responses", "kind": "openai-responses", "base_url": f"{native['openai_responses']}/v1",
             "api_key": "sk-test", "models": ["echo"]},
            {"name": "anthropic", "kind": "anthropic", "base_url": native["anthropic"], "api_key": "sk-ant",
             "models": ["claude-test"]},
            {"name": "local", "kind": "llama-cpp", "n_threads": 2},
        ],
        "default_model": "fake/echo",
        "rate_limits": {"requests_per_minute": 100, "redis_url": redis},
    }


def test_healthy_configuration_passes(tmp_path: Path, upstream: str, native_upstreams: dict[str, str],
                                      redis_url: str) -> None:
    config = healthy(tmp_path, upstream, native_upstreams, redis_url)
    env = {"DOCTOR_KEY": SECRET, "DOCTOR_GATEWAY_KEYS": "sk-a,sk-b"}
    done = doctor(config, tmp_path, "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert SECRET not in done.stdout and "sk-a" not in done.stdout
    report = json.loads(done.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["env DOCTOR_KEY"]["status"] == "ok" and "sha256:" in checks["env DOCTOR_KEY"]["detail"]
    assert checks["provider fake"]["detail"].startswith("model list")
    assert checks["provider fake"]["latency_ms"] is not None
    # No model list on these two: a 1-token request instead.
    assert checks["provider responses"]["status"] == "ok" and "1-token" in checks["provider responses"]["detail"]
    assert checks["provider anthropic"]["status"] == "ok" and "1-token" in checks["provider anthropic"]["detail"]
    assert checks["redis"]["status"] == "ok"
    assert checks["envoy config"]["status"] == "ok"
    assert checks["store"]["status"] == "warn"  # not created yet: `serve` creates it
    assert checks["model local"]["status"] == "ok" and "1 token" in checks["model local"]["detail"]
    assert "features:" in checks["cpu"]["detail"]
    assert "CPU :" in checks["llama.cpp build"]["detail"]


def test_broken_configuration_fails_with_one_line_per_problem(tmp_path: Path, upstream: str,
                                                              native_upstreams: dict[str, str]) -> None:
    config = healthy(tmp_path, upstream, native_upstreams, f"redis://127.0.0.1:{free_port()}/0")
    config["providers"][1]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config["store"] = f"postgresql://doctor:{SECRET}@127.0.0.1:{free_port()}/switchboard"
    broken = tmp_path / "broken-envoy.yaml"
    broken.write_text("static_resources: {listeners: [{name: x}]}\n")
    config["server"]["envoy_config"] = str(broken)
    done = doctor(config, tmp_path, "--skip-model", env={"DOCTOR_KEY": ""})
    assert done.returncode == 1, done.stdout + done.stderr
    assert SECRET not in done.stdout
    problems = [line for line in done.stdout.splitlines() if line.startswith("problem: ")]
    assert any("export DOCTOR_KEY=" in line for line in problems)
    assert any(line.startswith("problem: provider responses: check providers[].base_url") for line in problems)
    assert any(line.startswith("problem: store:") for line in problems)
    assert any(line.startswith("problem: redis: start Redis") for line in problems)
    assert any(line.startswith("problem: envoy config: fix server.envoy_config") for line in problems)
    assert len(problems) == 5, problems
    assert "5 problem(s) found" in done.stdout
    assert "switchboard doctor" in done.stdout  # the table's title


def test_unreadable_configuration(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers: [{name: x, kind: nope}]\n")
    done = subprocess.run([sys.executable, "-m", "switchboard.cli.main", "doctor", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 1
    assert "problem: config: fix" in done.stdout and "providers[0].kind" in done.stdout
