"""Configuration: the YAML contract, environment overrides, and clear errors."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.settings import from_dict, load

BASE: dict[str, Any] = {"providers": [{"name": "local", "kind": "llama-cpp"},
                                      {"name": "vllm", "kind": "openai-chat", "base_url": "http://127.0.0.1:8000/v1/",
                                       "api_key_env": "VLLM_API_KEY"}],
                        "default_model": "local/gemma-3-270m"}


def test_the_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "switchboard.yaml"
    path.write_text((Path(__file__).resolve().parents[2] / "config" / "switchboard.yaml").read_text())
    config = load(path, env={})
    assert config.server.envoy == "127.0.0.1:10000" and config.default_model == "local/smollm2-135m-instruct"
    assert config.store.startswith("sqlite:///") and [p.kind for p in config.providers] == ["llama-cpp"]


def test_secrets_come_from_the_environment() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    config = from_dict({**BASE, "auth": {"api_keys": ["sk-a"], "api_keys_env": "KEYS"}},
                       env={"KEYS": "sk-b, sk-c", "VLLM_API_KEY": "upstream", "SWITCHBOARD_ENCRYPTION_KEY": key})
    assert config.api_keys == ("sk-a", "sk-b", "sk-c")
    assert config.provider("vllm") is not None and config.provider("vllm").api_key == "upstream"  # type: ignore[union-attr]
    assert config.provider("vllm").base_url == "http://127.0.0.1:8000/v1"  # type: ignore[union-attr]
    assert config.encryption_key == b"k" * 32
    assert not config.otel_enabled
    assert from_dict(BASE, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}).otel_enabled


@pytest.mark.parametrize(("change", "message"), [
    ({"providers": [{"name": "a/b", "kind": "llama-cpp"}]}, "without '/'"),
    ({"providers": [{"name": "x", "kind": "telepathy"}]}, "kind"),
    ({"providers": [{"name": "x", "kind": "openai-chat"}]}, "base_url"),
    ({"providers": [{"name": "x", "kind": "llama-cpp"}, {"name": "x", "kind": "llama-cpp"}]}, "unique"),
    ({"default_model": "nowhere/m"}, "default_model"),
    ({"server": {"grpc": "not-an-address"}}, "HOST:PORT"),
    ({"server": {"grpcc": "127.0.0.1:1"}}, "unknown keys"),
    ({"server": {"event_names": "klingon"}},
     "server.event_names: input should be 'openai' or 'open_responses', got 'klingon'"),
    ({"unsupported_tools": "ignore"}, "unsupported_tools"),
    ({"encryption_key": base64.b64encode(b"short").decode()}, "32 bytes"),
    ({"background": {"lease_seconds": 0}}, "background.lease_seconds: input should be greater than 0"),
    ({"pricing": {"local/m": "cheap"}}, "pricing"),
    ({"server": {"workers": 0}}, "server.workers"),
    ({"server": {"workers": "many"}}, "server.workers"),
    ({"server": {"restart_limit": -1}}, "server.restart_limit"),
    ({"server": {"workers": 2}, "rate_limits": {"requests_per_minute": 5}}, "rate_limits: with server.workers > 1"),
    ({"store_commit_window": 5}, "store_commit_window"),
    ({"store_commit_window": "fast"}, "store_commit_window"),
])
def test_bad_config_is_a_clear_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict({**BASE, **change}, env={})


def test_a_routed_default_model() -> None:
    routing = {"models": [{"name": "llama", "endpoints": [{"provider": "vllm", "model": "meta/llama"}]}]}
    assert from_dict({**BASE, "routing": routing, "default_model": "llama"}, env={}).default_model == "llama"


def test_workers_auto_is_one_per_core() -> None:
    assert from_dict({**BASE, "server": {"workers": "auto"}}, env={}).server.workers == len(os.sched_getaffinity(0))
    assert from_dict(BASE, env={}).server.workers == 1
def test_group_commit_and_the_unix_socket() -> None:
    from switchboard.edge.server import grpc_target

    config = from_dict(BASE, env={})
    assert config.store_commit_window == 0.002 and grpc_target(config) == "127.0.0.1:50051"
    assert from_dict({**BASE, "store_commit_window": None}, env={}).store_commit_window is None
    unix = from_dict({**BASE, "server": {"grpc_unix": "/run/sb.sock"}}, env={})
    assert grpc_target(unix) == "unix:/run/sb.sock"
    both = from_dict({**BASE, "server": {"grpc_unix": "/run/sb.sock", "grpc_target": "127.0.0.1:10001"}}, env={})
    assert grpc_target(both) == "127.0.0.1:10001"
