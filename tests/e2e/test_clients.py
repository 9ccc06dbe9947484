"""Real clients, installed from npm by the test itself, end to end through Envoy against the fake upstream.

- The Vercel AI SDK (`ai` + `@ai-sdk/openai`, Responses API): generateText, streamText and a tool loop whose tool
  the SDK really executes (tests/clients/ai_sdk.mjs).
- Codex CLI (`codex exec`) with a custom `wire_api = "responses"` model provider pointing at Switchboard: one turn
  with a real function call, Codex's `function_call_output` going back through Switchboard to the upstream.

Versions are pinned in tests/clients/package.json and package-lock.json; `npm ci` installs them once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import API_KEY, ROOT, Stack, upstream_requests

CLIENTS = ROOT / "tests" / "clients"
NPM_TIMEOUT = 300
CLIENT_TIMEOUT = 120

# npm ci (up to 300 s) runs inside the first test's setup, on top of the session stack's start.
pytestmark = pytest.mark.timeout(NPM_TIMEOUT + CLIENT_TIMEOUT + 180)


def _output(result: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired) -> str:
    def text(value: str | bytes | None) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else value or ""

    return f"--- stdout ---\n{text(result.stdout)[-6000:]}\n--- stderr ---\n{text(result.stderr)[-6000:]}"


def _run(args: list[str], *, what: str, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} did not finish within {timeout} s\n{_output(exc)}")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """`npm ci` of the pinned clients; a failure fails the tests (the test command must install them)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("these tests install their clients with npm: Node.js (node and npm on PATH) is required")
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false"}
    result = _run([npm, "ci", "--no-audit", "--no-fund"], what="npm ci", timeout=NPM_TIMEOUT, cwd=CLIENTS, env=env)
    if result.returncode != 0:
        pytest.fail(f"npm ci in {CLIENTS} failed with exit code {result.returncode}\n{_output(result)}")
    return CLIENTS / "node_modules"


def _envoy(stack: Stack) -> str:
    assert stack.envoy is not None
    return stack.envoy


def _user_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _requests_with(upstream: str, nonce: str) -> list[dict[str, Any]]:
    """The upstream Chat Completions bodies of this test's conversation (its user message carries the nonce)."""
    bodies = [record["body"] for record in upstream_requests(upstream) if isinstance(record.get("body"), dict)]
    return [body for body in bodies
            if any(m.get("role") == "user" and nonce in _user_text(m) for m in body.get("messages") or [])]


def _tool_round_trip(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The assistant tool call and the tool result answering it, if the request carries both."""
    messages = body.get("messages") or []
    calls = {call["id"]: m for m in messages if m.get("role") == "assistant" for call in m.get("tool_calls") or []}
    for message in messages:
        if message.get("role") == "tool" and message.get("tool_call_id") in calls:
            return calls[message["tool_call_id"]], message
    return None


def test_vercel_ai_sdk(node_modules: Path, stack: Stack, upstream: str) -> None:
    nonce = uuid.uuid4().hex[:12]
    prompt = f"hello from the ai sdk {nonce}"
    env = {**os.environ, "SWITCHBOARD_URL": _envoy(stack), "SWITCHBOARD_KEY": API_KEY, "PROMPT": prompt,
           "TOOL_PROMPT": f"What is the weather? {nonce}"}
    result = _run(["node", str(CLIENTS / "ai_sdk.mjs")], what="ai_sdk.mjs", timeout=CLIENT_TIMEOUT, cwd=CLIENTS,
                  env=env)
    assert result.returncode == 0, _output(result)
    out = json.loads(result.stdout.strip().splitlines()[-1])

    assert out["generate"]["text"] == f"echo: {prompt}", out["generate"]
    assert out["generate"]["finishReason"] == "stop"
    assert out["generate"]["responseId"].startswith("resp_")

    assert len(out["stream"]["deltas"]) > 1, out["stream"]
    assert "".join(out["stream"]["deltas"]) == f"echo: {prompt}"
    assert out["stream"]["text"] == f"echo: {prompt}"
    assert out["stream"]["finishReason"] == "stop"
    assert out["stream"]["usage"]["totalTokens"] > 0

    tools = out["tools"]
    assert tools["executed"] == [{"x": 1}], tools  # the SDK ran get_weather itself
    assert tools["text"] == "tool said: sunny", tools
    first, last = tools["steps"][0], tools["steps"][-1]
    assert first["finishReason"] == "tool-calls"
    assert [(c["toolName"], c["input"]) for c in first["toolCalls"]] == [("get_weather", {"x": 1})]
    assert first["toolResults"][0]["output"] == "sunny"
    assert last["text"] == "tool said: sunny" and last["finishReason"] == "stop"

    trips = [trip for body in _requests_with(upstream, nonce) if (trip := _tool_round_trip(body)) is not None]
    assert trips, "the upstream never received the tool result"
    call, tool_message = trips[-1]
    assert call["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool_message["tool_call_id"] == first["toolCalls"][0]["toolCallId"]
    assert _user_text(tool_message) == "sunny"


def _codex_config(base_url: str) -> str:
    """An isolated, offline Codex config: Switchboard as a custom Responses provider, no retries, nothing remote."""
    return f"""\
model_provider = "switchboard"
model = "fake/tool-call"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false

[model_providers.switchboard]
name = "Switchboard"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "SWITCHBOARD_KEY"
request_max_retries = 1
stream_max_retries = 1
stream_idle_timeout_ms = 30000

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

[features]
# By default Codex retries a refused connection forever ("Reconnecting... waiting for network").
unbounded_connection_retries = false
plugins = false
remote_plugin = false
apps = false
tool_suggest = false
shell_snapshot = false
"""


def test_codex_cli(node_modules: Path, stack: Stack, upstream: str, tmp_path: Path) -> None:
    codex = node_modules / ".bin" / "codex"  # bin/codex.js, which execs the native binary of @openai/codex-<platform>
    assert codex.exists(), f"{codex} missing after npm ci"
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(_codex_config(_envoy(stack)))
    last_message = tmp_path / "last-message.txt"
    nonce = uuid.uuid4().hex[:12]
    env = {**os.environ, "CODEX_HOME": str(home), "SWITCHBOARD_KEY": API_KEY}
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    args = [str(codex), "exec", "--strict-config", "--skip-git-repo-check", "--ephemeral", "--color", "never",
            "--cd", str(work), "--output-last-message", str(last_message),
            f"Call a tool once, then report what it said. ({nonce})"]
    result = _run(args, what="codex exec", timeout=CLIENT_TIMEOUT, cwd=work, env=env)
    gateway_log = "".join(stack.process.output)[-4000:]
    assert result.returncode == 0, f"{_output(result)}\n--- switchboard ---\n{gateway_log}"
    assert "tool said:" in result.stdout, _output(result)
    assert last_message.read_text().startswith("tool said:"), _output(result)

    bodies = _requests_with(upstream, nonce)
    assert len(bodies) >= 2, f"expected a tool call turn and a follow-up turn upstream, got {len(bodies)}"
    trips = [trip for body in bodies if (trip := _tool_round_trip(body)) is not None]
    assert trips, f"no tool result reached the upstream\n{_output(result)}"
    call, tool_message = trips[-1]
    declared = [tool["function"]["name"] for tool in bodies[0].get("tools") or []]
    assert call["tool_calls"][0]["function"]["name"] == declared[0]  # the fake calls Codex's first tool
    assert call["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    assert _user_text(tool_message), tool_message  # Codex's function_call_output, e.g. its argument parse error
    assert f"tool said: {_user_text(tool_message)}" in result.stdout
