"""End to end over HTTP: the openai SDK and raw HTTP, through Envoy and directly to the edge."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests import openapi
from tests.e2e.stack import API_KEY, Stack, upstream_requests
from tests.streams import check_stream


def sse_events(response: httpx.Response) -> tuple[list[dict[str, Any]], list[str]]:
    """Parses an SSE body: the JSON events, and the raw `event:` names in order."""
    events: list[dict[str, Any]] = []
    names: list[str] = []
    data_lines: list[str] = []
    for line in response.iter_lines():
        if line.startswith("event: "):
            names.append(line[7:])
        elif line.startswith("data: "):
            data_lines.append(line[6:])
    assert data_lines and data_lines[-1] == "[DONE]", "the stream ends with data: [DONE]"
    events = [json.loads(d) for d in data_lines[:-1]]
    return events, names


def test_unary_with_the_sdk(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake/echo", input="hello gateway", instructions="be nice")
    assert response.output_text == "echo: hello gateway"
    assert response.status == "completed"
    assert response.id.startswith("resp_") and len(response.id) >= 40
    assert response.output[0].id.startswith("msg_")
    assert response.usage is not None and response.usage.total_tokens > 0
    assert response.instructions == "be nice"


def test_unary_json_matches_the_spec(http: httpx.Client) -> None:
    reply = http.post("/v1/responses", json={"model": "fake/echo", "input": "check", "metadata": {"k": "v"},
                                             "temperature": 0.5, "max_output_tokens": 100})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    openapi.validate_response(body)
    assert body["metadata"] == {"k": "v"} and body["temperature"] == 0.5 and body["max_output_tokens"] == 100
    assert body["output_text"] == "echo: check"


def test_streaming_with_the_sdk(client: openai.OpenAI) -> None:
    stream = client.responses.create(model="fake/echo", input="stream me please", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "echo: stream me please"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_stream_helper_with_the_sdk(client: openai.OpenAI) -> None:
    with client.responses.stream(model="fake/echo", input="helper text") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "echo: helper text"


def test_unary_and_stream_agree(client: openai.OpenAI) -> None:
    unary = client.responses.create(model="fake/echo", input="same text")
    streamed = [e for e in client.responses.create(model="fake/echo", input="same text", stream=True)]
    final = streamed[-1].response  # type: ignore[union-attr]
    assert final.output_text == unary.output_text
    assert final.usage == unary.usage


def test_sse_framing_and_order(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/responses", json={"input": "order rules", "stream": True}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events, names = sse_events(reply)
    assert names == [e["type"] for e in events], "every frame's event: equals its JSON type"
    final = check_stream(events)
    assert final["output_text"] == "echo: order rules"
    assert final["usage"]["input_tokens"] > 0


def test_upstream_sees_instructions_first(stack: Stack, client: openai.OpenAI) -> None:
    marker = f"context-{time.monotonic_ns()}"
    client.responses.create(model="fake/echo", instructions="system rules", input=[
        {"role": "user", "content": marker},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "and now"},
    ])
    sent = [r for r in upstream_requests(stack.upstream) if marker in json.dumps(r["body"])][-1]
    assert sent["body"]["model"] == "echo"
    assert [(m["role"], m["content"]) for m in sent["body"]["messages"]] == [
        ("system", "system rules"), ("user", marker), ("assistant", "earlier answer"), ("user", "and now")]


def test_hosted_tools_are_omitted_and_reported(http: httpx.Client, stack: Stack) -> None:
    marker = f"tools-{time.monotonic_ns()}"
    reply = http.post("/v1/responses", json={"input": marker, "tools": [
        {"type": "web_search"}, {"type": "function", "name": "lookup", "parameters": {"type": "object"}}]})
    assert reply.status_code == 200
    assert reply.headers["x-switchboard-omitted-tools"] == "web_search"
    sent = [r for r in upstream_requests(stack.upstream) if marker in json.dumps(r["body"])][-1]
    assert [t["function"]["name"] for t in sent["body"]["tools"]] == ["lookup"]
    assert [t["type"] for t in reply.json()["tools"]] == ["function"]


# ------------------------------------------------------------------ bad input

BAD_REQUESTS: list[tuple[str, Any, int, str | None, str]] = [
    ("invalid json", b"{not json", 400, None, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None, "invalid_json"),
    ("wrong type", {"input": "x", "temperature": "hot"}, 400, "temperature", "invalid_request"),
    ("bad enum", {"input": "x", "truncation": "sometimes"}, 400, "truncation", "invalid_request"),
    ("bad item", {"input": [{"type": "message", "role": "user", "content": 5}]}, 400, "input[0].content",
     "invalid_request"),
    ("unknown provider", {"model": "nowhere/x", "input": "x"}, 404, "model", "model_not_found"),
    ("model without provider", {"model": "gpt-4o", "input": "x"}, 404, "model", "model_not_found"),
    ("no input", {"model": "fake/echo"}, 400, "input", "missing_input"),
    ("upstream 5xx", {"model": "fake/fail-500", "input": "x"}, 502, None, "upstream_error"),
    ("upstream 400", {"model": "fake/fail-400", "input": "x"}, 400, None, "upstream_error"),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_get_clear_errors(http: httpx.Client, body: Any, status: int, param: str | None, code: str,
                                       stream: bool) -> None:
    if isinstance(body, dict):
        content = json.dumps({**body, "stream": stream}).encode()
    else:
        content = body
    reply = http.post("/v1/responses", content=content, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code and error["message"]
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize(("headers", "code"), [({}, "missing_api_key"),
                                               ({"authorization": "Bearer wrong"}, "invalid_api_key"),
                                               ({"authorization": "Basic abc"}, "missing_api_key")])
@pytest.mark.parametrize("stream", [False, True])
def test_auth_errors(base_url: str, headers: dict[str, str], code: str, stream: bool) -> None:
    reply = httpx.post(f"{base_url}/v1/responses", json={"input": "x", "stream": stream}, headers=headers)
    assert reply.status_code == 401
    assert reply.json()["error"]["type"] == "authentication_error"
    assert reply.json()["error"]["code"] == code


def test_sdk_raises_typed_errors(base_url: str) -> None:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            sdk.responses.create(model="fake/echo", input="x")
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.responses.create(model="fake/echo", input="x", temperature="hot")  # type: ignore[arg-type]
        assert caught.value.param == "temperature"  # type: ignore[attr-defined]


def test_upstream_drop_mid_stream_ends_with_failed(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/responses",
                     json={"model": "fake/drop-mid-stream", "input": "one two three four five six", "stream": True}
                     ) as reply:
        assert reply.status_code == 200
        events, _ = sse_events(reply)
    final = check_stream(events)
    assert events[-2]["type"] == "error"
    assert events[-2]["error"]["code"] == "upstream_stream_interrupted"
    assert final["status"] == "failed" and final["error"]["code"] == "server_error"
    assert "echo:" in "".join(e.get("delta", "") for e in events)


def test_body_over_the_limit_gets_413(stack: Stack) -> None:
    big = {"input": "x" * (33 * 1024 * 1024)}
    reply = httpx.post(f"{stack.http}/v1/responses", json=big, headers={"authorization": f"Bearer {API_KEY}"},
                       timeout=60)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def test_unknown_routes_and_methods(base_url: str) -> None:
    missing = httpx.get(f"{base_url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{base_url}/v1/responses")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_healthz(base_url: str) -> None:
    reply = httpx.get(f"{base_url}/healthz")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


def test_client_disconnect_cancels_the_upstream(stack: Stack) -> None:
    before = httpx.get(f"{stack.upstream}/_stats").json()["cancelled"]
    with httpx.Client(timeout=30) as session:
        with session.stream("POST", f"{stack.envoy}/v1/responses", headers={"authorization": f"Bearer {API_KEY}"},
                            json={"model": "fake/slow-300", "input": " ".join(["word"] * 200), "stream": True}
                            ) as reply:
            lines = reply.iter_lines()
            assert next(lines).startswith("event: response.created")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(f"{stack.upstream}/_stats").json()["cancelled"] > before:
            return
        time.sleep(0.1)
    pytest.fail("the upstream request was not cancelled after the client went away")
