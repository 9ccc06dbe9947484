"""Plugins end to end: file-parser, response-healing, context-compression, truncation, and the refusals."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.e2e.stack import Stack, upstream_requests
from tests.service.test_plugins import make_pdf


def _sent(stack: Stack, marker: str) -> dict:  # type: ignore[type-arg]
    found: dict = [r for r in upstream_requests(stack.upstream) if marker in json.dumps(r["body"])][-1]["body"]  # type: ignore[type-arg]
    return found


def test_file_parser_turns_a_pdf_into_text(http: httpx.Client, stack: Stack) -> None:
    marker = f"pdf-{time.monotonic_ns()}"
    data = "data:application/pdf;base64," + base64.b64encode(make_pdf("Quarterly revenue grew")).decode()
    reply = http.post("/v1/responses", json={"plugins": [{"id": "file-parser"}], "input": [{"role": "user", "content": [
        {"type": "input_text", "text": marker},
        {"type": "input_file", "filename": "report.pdf", "file_data": data}]}]})
    assert reply.status_code == 200, reply.text
    parts = _sent(stack, marker)["messages"][-1]["content"]
    assert any(p.get("type") == "text" and "Quarterly revenue grew" in p["text"] for p in parts)
    assert all(p.get("type") != "file" for p in parts)


def test_response_healing_repairs_json(http: httpx.Client) -> None:
    request = {"input": '{"a": 1, "b": [1, 2,],}', "text": {"format": {"type": "json_object"}},
               "plugins": [{"id": "response-healing"}]}
    healed = http.post("/v1/responses", json=request).json()
    assert json.loads(healed["output_text"]) == {"a": 1, "b": [1, 2]}
    raw = http.post("/v1/responses", json={k: v for k, v in request.items() if k != "plugins"}).json()
    assert raw["output_text"].startswith("echo: ")


def test_context_compression_trims_the_middle(http: httpx.Client, stack: Stack) -> None:
    marker = f"compress-{time.monotonic_ns()}"
    middle = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "filler " * 60}
              for i in range(10)]
    items = [{"role": "user", "content": f"first {marker}"}, *middle, {"role": "user", "content": f"last {marker}"}]
    too_long = http.post("/v1/responses", json={"model": "tiny-context", "input": items})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    assert too_long.json()["error"]["param"] == "input"
    reply = http.post("/v1/responses", json={"model": "tiny-context", "input": items, "max_output_tokens": 16,
                                             "plugins": [{"id": "context-compression"}]})
    assert reply.status_code == 200, reply.text
    sent = [m["content"] for m in _sent(stack, f"last {marker}")["messages"]]
    assert sent[0] == f"first {marker}" and sent[-1] == f"last {marker}" and len(sent) < len(items)


def test_truncation_auto_drops_the_oldest_turns(http: httpx.Client, stack: Stack) -> None:
    marker = f"truncate-{time.monotonic_ns()}"
    items = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "filler " * 60}
             for i in range(10)] + [{"role": "user", "content": f"last {marker}"}]
    reply = http.post("/v1/responses", json={"model": "tiny-context", "input": items, "truncation": "auto",
                                             "instructions": "be brief", "max_output_tokens": 16})
    assert reply.status_code == 200, reply.text
    sent = [m["content"] for m in _sent(stack, f"last {marker}")["messages"]]
    assert sent[0] == "be brief" and sent[-1] == f"last {marker}"
    assert "turn 0 " not in " ".join(sent[1:]) and len(sent) < len(items) + 1


@pytest.mark.parametrize(("plugins", "extra", "param"), [
    ([{"id": "web"}], {}, "plugins[0].id"),
    ([{"id": "moderation"}], {}, "plugins[0].id"),
    ([{"id": "response-healing"}], {"stream": True, "text": {"format": {"type": "json_object"}}}, "plugins[0].id"),
    ([{"id": "response-healing"}], {}, "plugins[0].id"),
    ([{"id": "telepathy"}], {}, "plugins[0].id"),
])
def test_plugins_that_cannot_run_get_400(http: httpx.Client, plugins: list, extra: dict, param: str) -> None:  # type: ignore[type-arg]
    reply = http.post("/v1/responses", json={"input": "x", "plugins": plugins, **extra})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_a_disabled_plugin_is_ignored(http: httpx.Client) -> None:
    reply = http.post("/v1/responses", json={"input": "x", "plugins": [{"id": "web", "enabled": False}]})
    assert reply.status_code == 200
