"""`switchboard chat` end to end: piped stdin (HTTP and gRPC), conversation state, commands, and a pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import sys
from typing import Any

import httpx
import pexpect
from rich.console import Console

from switchboard.cli.chat import Renderer
from tests.e2e.stack import API_KEY, ROOT, Stack, upstream_requests

CHAT = [sys.executable, "-m", "switchboard.cli.main", "chat"]


def chat(stack: Stack, text: str, *args: str, key: str = API_KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWITCHBOARD_API_KEY": key}
    return subprocess.run([*CHAT, "--config", str(stack.config_path), *args], input=text, text=True,
                          capture_output=True, timeout=120, env=env, cwd=ROOT, check=False)


def upstream_messages(stack: Stack, marker: str) -> list[list[dict[str, Any]]]:
    """The `messages` of each upstream request that mentions ``marker``."""
    found = []
    for request in upstream_requests(stack.upstream):
        messages = request.get("body", request).get("messages") or []
        if marker in str(messages):
            found.append(messages)
    return found


def test_piped_prompt_prints_the_answer_and_usage(stack: Stack) -> None:
    done = chat(stack, "hi there\n", "--model", "fake/echo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: hi there"
    # Usage and cost go to stderr, so stdout is the answer alone. fake/echo is priced in the config.
    assert "fake/echo" in done.stderr and " in, " in done.stderr and "$" in done.stderr


def test_turns_continue_the_conversation(stack: Stack) -> None:
    first, second = f"first-{secrets.token_hex(4)}", f"second-{secrets.token_hex(4)}"
    done = chat(stack, f"{first}\n{second}\n", "--model", "fake/echo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"echo: {first}", f"echo: {second}"]
    # The second turn reached the upstream with the first one before it (previous_response_id).
    last = upstream_messages(stack, second)[-1]
    assert first in str(last[0]) and f"echo: {first}" in str(last[1])


def test_stateless_resends_the_history(stack: Stack) -> None:
    first, second = f"one-{secrets.token_hex(4)}", f"two-{secrets.token_hex(4)}"
    done = chat(stack, f"{first}\n{second}\n", "--model", "fake/echo", "--stateless")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"echo: {first}", f"echo: {second}"]
    assert first in str(upstream_messages(stack, second)[-1])


def test_new_forgets_and_model_switches(stack: Stack) -> None:
    first, second = f"old-{secrets.token_hex(4)}", f"fresh-{secrets.token_hex(4)}"
    done = chat(stack, f"{first}\n/new\n/model tiny-context\n{second}\n", "--model", "fake/echo")
    assert done.returncode == 0, done.stderr
    assert "(new conversation)" in done.stderr and "(model: tiny-context)" in done.stderr
    assert done.stdout.splitlines() == [f"echo: {first}", f"echo: {second}"]
    assert first not in str(upstream_messages(stack, second)[-1])
    assert "[tiny-context" in done.stderr


def test_reasoning_is_shown_before_the_answer(stack: Stack) -> None:
    done = chat(stack, "think\n", "--model", "fake/reasoning")
    assert done.returncode == 0, done.stderr
    assert "thinking hard" in done.stdout and "echo: think" in done.stdout


def test_grpc_transport(stack: Stack) -> None:
    done = chat(stack, "over grpc\n", "--model", "fake/echo", "--grpc")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: over grpc"
    assert "fake/echo" in done.stderr


def test_wrong_key_is_a_clear_error(stack: Stack) -> None:
    for extra in ((), ("--grpc",)):
        done = chat(stack, "hi\n", "--model", "fake/echo", *extra, key="sk-wrong")
        assert done.returncode == 1
        assert "Incorrect API key" in done.stderr


def test_base_url_instead_of_config(stack: Stack) -> None:
    env = {**os.environ, "SWITCHBOARD_API_KEY": ""}
    done = subprocess.run([*CHAT, "--base-url", stack.http, "--api-key", API_KEY, "--model", "fake/echo"],
                          input="by url\n", text=True, capture_output=True, timeout=120, env=env, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: by url"


def test_interactive_under_a_pseudo_terminal(stack: Stack) -> None:
    env = {**os.environ, "SWITCHBOARD_API_KEY": API_KEY, "TERM": "xterm-256color", "COLUMNS": "120"}
    child = pexpect.spawn(sys.executable, [*CHAT[1:], "--config", str(stack.config_path), "--model", "fake/echo"],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=60, dimensions=(40, 120))
    try:
        child.expect("you>")
        child.sendline("hello from a terminal")
        child.expect("echo: hello from a terminal")
        child.expect(r"fake/echo: \d+ in, \d+ out")
        child.expect("you>")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_tool_calls_render_as_they_stream(stack: Stack) -> None:
    """The renderer fed with the gateway's real events for a streamed tool call."""
    tool = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    events = []
    with httpx.stream("POST", f"{stack.http}/v1/responses", headers={"authorization": f"Bearer {API_KEY}"},
                      json={"model": "fake/tool-call", "input": "time?", "tools": [tool], "stream": True},
                      timeout=60) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[len("data: "):]))
    assert "response.function_call_arguments.delta" in {e["type"] for e in events}
    out, info = io.StringIO(), io.StringIO()
    renderer = Renderer(Console(file=out, width=200), Console(file=info, width=200))
    for event in events:
        renderer.event(event)
    renderer.finish()
    assert re.fullmatch(r'→ tool call get_time\(\{"x": 1\}\) \[call_\w+\]\n', out.getvalue()), out.getvalue()
    assert "fake/tool-call" in info.getvalue()
