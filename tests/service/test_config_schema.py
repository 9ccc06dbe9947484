"""`switchboard config-schema`: a valid JSON Schema that the shipped, deployed and tested configs satisfy."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from switchboard.shared.config.limits import RateLimitConfig
from switchboard.shared.config.routing import RoutingConfig
from switchboard.shared.config.schema import (
    BackgroundFile,
    ConfigFile,
    McpFile,
    RateLimitsFile,
    RoutingFile,
    ServerFile,
)
from switchboard.shared.config.settings import BackgroundConfig, Config, McpConfig, ServerConfig, from_dict
from tests.e2e.stack import write_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "config" / "switchboard.yaml",
           *sorted(p for p in (ROOT / "deploy" / "k8s").glob("**/config/*.yaml"))]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "switchboard.cli.main", "config-schema"], capture_output=True,
                          text=True, timeout=60, check=True)
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed


def test_the_printed_schema_is_valid_json_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert {"server", "providers", "routing", "rate_limits", "mcp"} <= set(schema["properties"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_validate(schema: dict[str, Any], path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), schema, cls=jsonschema.Draft202012Validator)


def test_the_configs_the_tests_write_validate(schema: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "switchboard.yaml"
    write_config(path, "http://127.0.0.1:9", more_upstreams={"anthropic": "http://127.0.0.1:9",
                                                             "responses": "http://127.0.0.1:9"},
                 server={"workers": "auto", "grpc_unix": str(tmp_path / "sb.sock")},
                 extra={"rate_limits": {"requests_per_minute": 5, "redis_url": "redis://127.0.0.1:6379/0",
                                        "per_key": {"sk-x": {"tokens_per_minute": None}}},
                        "background": {"concurrency": 2}, "mcp": {"allowed_servers": ["http://127.0.0.1:9/"]}})
    jsonschema.validate(yaml.safe_load(path.read_text()), schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("bad", [
    {"server": {"grpcc": "127.0.0.1:1"}},
    {"server": {"workers": 0}},
    {"providers": [{"name": "x", "kind": "telepathy"}]},
    {"routing": {"models": [{"name": "m", "endpoints": []}]}},
    {"rate_limits": {"redis_url": "http://cache"}},
    {"store_commit_window": 5},
])
def test_the_schema_rejects_what_the_loader_rejects(schema: dict[str, Any], bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(("model", "section"), [
    (ServerFile, ServerConfig), (BackgroundFile, BackgroundConfig), (McpFile, McpConfig),
    (RoutingFile, RoutingConfig), (RateLimitsFile, RateLimitConfig), (ConfigFile, Config),
])
def test_the_schema_documents_the_defaults_the_code_uses(model: type[Any], section: type[Any]) -> None:
    loaded = from_dict({}, env={})
    fields = {f.name for f in dataclasses.fields(section)}
    compared = 0
    for name, spec in model.model_fields.items():
        if name not in fields:
            continue
        actual = getattr(section(), name) if section is not Config else getattr(loaded, name)
        if not isinstance(actual, type(None) | int | float | str | Path):
            continue  # sections and collections: null in the file is their empty value
        default = spec.get_default(call_default_factory=True)
        if name == "envoy_config":
            assert str(actual).endswith(default)
        else:
            assert actual == default, f"{model.__name__}.{name}"
        compared += 1
    assert compared >= 3
