"""Stored state end to end, through Envoy and on the edge: `previous_response_id` chains (with a tool call),
retrieve, delete, input items paging, background mode (poll, cancel, stream resumption), owner scoping,
`store: false` and compaction. The openai SDK where it fits, raw HTTP for the wire details."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import openapi
from tests.e2e.stack import API_KEY, Stack, start_stack, upstream_requests
from tests.e2e.test_http import sse_events
from tests.streams import check_stream

pytestmark = pytest.mark.timeout(60)

OTHER_KEY = "sk-other-abcdef0123456789"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TERMINAL = {"completed", "failed", "incomplete", "cancelled"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Stack]:
    """Overrides the session stack: this module needs a second API key (owner scoping), and no local model."""
    started = start_stack(Path(tmp_path_factory.mktemp("state")), upstream, local_model=False,
                          extra={"auth": {"api_keys": [API_KEY, OTHER_KEY]}})
    yield started
    started.stop()


@pytest.fixture
def other(base_url: str) -> Iterator[openai.OpenAI]:
    """The SDK with the second API key: another owner."""
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=OTHER_KEY, max_retries=0, timeout=30) as sdk:
        yield sdk


def marker(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def sent_messages(stack: Stack, mark: str) -> list[list[dict[str, Any]]]:
    """The `messages` of every upstream request that carried ``mark``, oldest first, normalised."""
    found = [r["body"] for r in upstream_requests(stack.upstream) if mark in json.dumps(r["body"])]
    return [[_normal(m) for m in body["messages"]] for body in found]


def _normal(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message["role"]}
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content)
    if content is not None:
        out["content"] = content
    if message.get("tool_calls"):
        calls = message["tool_calls"]
        out["tool_calls"] = [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls]
    if "tool_call_id" in message:
        out["tool_call_id"] = message["tool_call_id"]
    return out


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def poll(read: Callable[[], dict[str, Any]], until: Callable[[dict[str, Any]], bool], timeout: float = 15.0,
         every: float = 0.05) -> tuple[dict[str, Any], list[str]]:
    """Reads until ``until`` holds (bounded); returns the last body and the statuses seen."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        body = read()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if until(body):
            return body, seen
        assert time.monotonic() < deadline, f"still {body['status']!r} after {timeout}s (seen {seen})"
        time.sleep(every)


def get_json(http: httpx.Client, response_id: str) -> dict[str, Any]:
    reply = http.get(f"/v1/responses/{response_id}")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    openapi.validate_response(body)
    return body


def replay(http: httpx.Client, response_id: str, after: int | None = None) -> list[dict[str, Any]]:
    """The persisted stream of a background response (after ``after``), as SSE."""
    params: dict[str, Any] = {"stream": "true"}
    if after is not None:
        params["starting_after"] = after
    with http.stream("GET", f"/v1/responses/{response_id}", params=params) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        events, names = sse_events(reply)
    assert names == [e["type"] for e in events]
    for event in events:
        openapi.validate_event(event)
    return events


def assert_error(reply: httpx.Response, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error: dict[str, Any] = reply.json()["error"]
    openapi.validate_schema("Error", error)
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


# ------------------------------------------------------------------ chaining


def test_five_turn_conversation_with_a_tool_call(client: openai.OpenAI, stack: Stack) -> None:
    mark = marker("chain")
    first = client.responses.create(model="fake/echo", input=f"m1 {mark}", instructions=f"be terse {mark}")
    assert first.output_text == f"echo: m1 {mark}" and first.instructions == f"be terse {mark}"
    second = client.responses.create(model="fake/tool-call", input="m2 what is the weather?",
                                     tools=[WEATHER], previous_response_id=first.id)  # type: ignore[list-item]
    call = second.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    third = client.responses.create(
        model="fake/tool-call", tools=[WEATHER], previous_response_id=second.id,  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert third.output_text == "tool said: sunny"
    fourth = client.responses.create(model="fake/echo", input="m4", previous_response_id=third.id)
    fifth = client.responses.create(model="fake/echo", input="m5", previous_response_id=fourth.id,
                                    instructions="second system")
    assert fifth.output_text == "echo: m5"

    tool_call = {"role": "assistant", "tool_calls": [(call.call_id, "get_weather", call.arguments)]}
    tool_output = {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    context = [user(f"m1 {mark}"), assistant(f"echo: m1 {mark}")]
    expected = [
        [{"role": "system", "content": f"be terse {mark}"}, user(f"m1 {mark}")],
        [*context, user("m2 what is the weather?")],
        [*context, user("m2 what is the weather?"), tool_call, tool_output],
        [*context, user("m2 what is the weather?"), tool_call, tool_output, assistant("tool said: sunny"),
         user("m4")],
        # `instructions` are never inherited: only this turn's own system message.
        [{"role": "system", "content": "second system"}, *context, user("m2 what is the weather?"), tool_call,
         tool_output, assistant("tool said: sunny"), user("m4"), assistant("echo: m4"), user("m5")],
    ]
    assert sent_messages(stack, mark) == expected

    chain = [first, second, third, fourth, fifth]
    for previous, turn in zip([None, *chain], chain, strict=False):
        stored = client.responses.retrieve(turn.id)
        assert stored.previous_response_id == (previous.id if previous else None)
        assert stored.output == turn.output and stored.status == "completed"
    assert [client.responses.retrieve(t.id).instructions for t in chain] == [
        f"be terse {mark}", None, None, None, "second system"]
    # A turn's input items are its own input, not the inherited context.
    items = list(client.responses.input_items.list(third.id))
    assert [(i.type, getattr(i, "call_id", None)) for i in items] == [("function_call_output", call.call_id)]


def test_retrieve_and_delete(client: openai.OpenAI, http: httpx.Client) -> None:
    created = client.responses.create(model="fake/echo", input="keep me", metadata={"k": "v"})
    body = get_json(http, created.id)
    assert body["id"] == created.id and body["status"] == "completed" and body["metadata"] == {"k": "v"}
    assert body["output"][0]["id"] == created.output[0].id and body["output_text"] == "echo: keep me"
    assert client.responses.retrieve(created.id).output_text == "echo: keep me"

    reply = http.delete(f"/v1/responses/{created.id}")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    assert_error(http.get(f"/v1/responses/{created.id}"), 404, "not_found", "response_id")
    assert_error(http.get(f"/v1/responses/{created.id}/input_items"), 404, "not_found")
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="fake/echo", input="after delete", previous_response_id=created.id)
    assert caught.value.code == "previous_response_not_found"
    assert_error(http.post("/v1/responses", json={"input": "x", "previous_response_id": created.id}), 404,
                 "previous_response_not_found", "previous_response_id")


def test_a_deleted_turn_breaks_the_chain_after_it(client: openai.OpenAI) -> None:
    first = client.responses.create(model="fake/echo", input="one")
    second = client.responses.create(model="fake/echo", input="two", previous_response_id=first.id)
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake/echo", input="three", previous_response_id=second.id)
    # The earlier turn is untouched.
    assert client.responses.retrieve(first.id).output_text == "echo: one"


def test_input_items_paging(client: openai.OpenAI, http: httpx.Client) -> None:
    texts = [f"item {i}" for i in range(7)]
    created = client.responses.create(
        model="fake/echo", input=[user(t) if i % 2 == 0 else assistant(t) for i, t in enumerate(texts)])

    def text(item: Any) -> str:
        content = item["content"] if isinstance(item, dict) else item.content
        if isinstance(content, str):
            return content
        return "".join(p["text"] if isinstance(p, dict) else p.text for p in content)

    # The SDK follows the cursor (`after` = the page's last id) through every page.
    assert [text(i) for i in client.responses.input_items.list(created.id, limit=3, order="asc")] == texts
    assert [text(i) for i in client.responses.input_items.list(created.id, limit=2, order="desc")] == texts[::-1]
    first = client.responses.input_items.list(created.id, limit=3, order="asc")
    assert first.has_more is True and len(first.data) == 3
    assert first.first_id == first.data[0].id and first.last_id == first.data[-1].id

    everything = http.get(f"/v1/responses/{created.id}/input_items", params={"order": "asc", "limit": 100}).json()
    assert everything["object"] == "list" and everything["has_more"] is False
    ids = [item["id"] for item in everything["data"]]
    assert [text(item) for item in everything["data"]] == texts and len(set(ids)) == 7
    for item in everything["data"]:
        openapi.validate_schema("ItemParam", item)
    default = http.get(f"/v1/responses/{created.id}/input_items").json()
    assert [item["id"] for item in default["data"]] == ids[::-1], "the default order is desc"

    def page(**params: Any) -> tuple[list[str], bool, str | None, str | None]:
        reply = http.get(f"/v1/responses/{created.id}/input_items", params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        return [item["id"] for item in body["data"]], body["has_more"], body["first_id"], body["last_id"]

    assert page(order="asc", after=ids[2], limit=2) == ([ids[3], ids[4]], True, ids[3], ids[4])
    assert page(order="asc", after=ids[4], limit=2) == ([ids[5], ids[6]], False, ids[5], ids[6])
    assert page(order="asc", before=ids[5], limit=2) == ([ids[3], ids[4]], True, ids[3], ids[4])
    assert page(order="asc", before=ids[1], limit=5) == ([ids[0]], False, ids[0], ids[0])
    assert page(order="desc", after=ids[5], limit=2) == ([ids[4], ids[3]], True, ids[4], ids[3])
    assert page(order="desc", before=ids[1], limit=2) == ([ids[3], ids[2]], True, ids[3], ids[2])
    assert page(order="asc", after=ids[1], before=ids[5], limit=10) == (ids[2:5], False, ids[2], ids[4])
    assert page(order="asc", after=ids[6]) == ([], False, "", "")  # strings, as openai-python requires

    for params, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order"),
                          ({"after": "msg_nope"}, "after"), ({"before": "msg_nope"}, "before")):
        assert_error(http.get(f"/v1/responses/{created.id}/input_items", params=params), 400, "invalid_request",
                     param)


# ------------------------------------------------------------------ background mode


def test_background_then_poll_until_completed(client: openai.OpenAI, http: httpx.Client, stack: Stack) -> None:
    mark = marker("poll")
    reply = http.post("/v1/responses", json={"model": "fake/slow-300", "input": mark, "background": True})
    assert reply.status_code == 200, reply.text
    queued = reply.json()
    openapi.validate_response(queued)
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []

    final, seen = poll(lambda: get_json(http, queued["id"]), lambda b: b["status"] in TERMINAL)
    assert final["status"] == "completed" and final["output_text"] == f"echo: {mark}"
    assert set(seen) <= {"queued", "in_progress", "completed"} and seen[-1] == "completed"
    assert client.responses.retrieve(queued["id"]).output_text == f"echo: {mark}"
    # The worker ran it exactly once; its whole stream was persisted.
    assert len(sent_messages(stack, mark)) == 1
    events = replay(http, queued["id"])
    assert [e["type"] for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert check_stream(events)["output"] == final["output"]


def _wait_status(http: httpx.Client, response_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    body, _ = poll(lambda: get_json(http, response_id), lambda b: b["status"] in {status} | TERMINAL, timeout)
    assert body["status"] == status, body
    return body


def test_background_then_cancel_while_running(client: openai.OpenAI, http: httpx.Client, stack: Stack) -> None:
    before = httpx.get(f"{stack.upstream}/_stats").json()["cancelled"]
    mark = marker("cancel")
    created = client.responses.create(model="fake/slow-2000", input=mark, background=True)
    _wait_status(http, created.id, "in_progress")
    started = time.monotonic()
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and time.monotonic() - started < 5
    time.sleep(0.3)
    body = get_json(http, created.id)
    assert body["status"] == "cancelled" and body["error"] is None  # as OpenAI: the status says it all
    events = replay(http, created.id)
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["status"] == "cancelled"
    check_stream(events)
    # Cancelling stopped the upstream call (the fake counts requests whose client went away).
    deadline = time.monotonic() + 5
    while httpx.get(f"{stack.upstream}/_stats").json()["cancelled"] <= before:
        assert time.monotonic() < deadline, "the upstream request was not cancelled"
        time.sleep(0.05)
    # Cancelling again returns the terminal response as it is.
    assert client.responses.cancel(created.id).status == "cancelled"
    # Only background responses can be cancelled.
    plain = client.responses.create(model="fake/echo", input="not background")
    assert_error(http.post(f"/v1/responses/{plain.id}/cancel"), 400, "invalid_request", "response_id")


def test_a_cancel_before_the_first_token_sticks(client: openai.OpenAI, http: httpx.Client) -> None:
    """A job a worker has claimed but whose upstream has not answered yet: the cancel wins for good (it used to
    flip back to in_progress when the first token came, and the upstream call ran on)."""
    created = client.responses.create(model="fake/slow-1000", input="cancel me early", background=True)
    time.sleep(0.3)  # claimed by now; the upstream answers after 1 s
    assert client.responses.cancel(created.id).status == "cancelled"
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert get_json(http, created.id)["status"] == "cancelled"
        time.sleep(0.1)
    events = replay(http, created.id)
    assert [e["type"] for e in events] == ["response.created", "response.queued", "response.failed"]
    check_stream(events)


def test_background_then_cancel_while_queued(client: openai.OpenAI, http: httpx.Client, stack: Stack) -> None:
    """Fills the worker's slots with slow jobs, so the next job stays queued: cancelling it ends it at once,
    and no worker ever runs it."""
    mark = marker("queued")
    blockers: list[str] = []
    waiting: str | None = None
    for index in range(9):
        job = client.responses.create(model="fake/slow-3000", input=f"{mark} blocker {index}", background=True)
        try:
            _wait_status(http, job.id, "in_progress", timeout=1.0)
            blockers.append(job.id)
        except AssertionError:
            waiting = job.id  # every slot is busy: this one stays queued
            break
    try:
        assert waiting is not None and blockers, "the worker never ran out of slots"
        assert get_json(http, waiting)["status"] == "queued"
        cancelled = client.responses.cancel(waiting)
        assert cancelled.status == "cancelled"
        events = replay(http, waiting)
        assert [e["type"] for e in events] == ["response.created", "response.queued", "response.failed"]
        assert events[-1]["response"]["status"] == "cancelled"
        check_stream(events)
    finally:
        for job_id in blockers:
            assert client.responses.cancel(job_id).status == "cancelled"
    # The freed slots let a worker claim the cancelled job: it must not run it, nor change it.
    time.sleep(0.5)
    assert get_json(http, waiting)["status"] == "cancelled"
    assert replay(http, waiting) == events
    ran = [r for r in sent_messages(stack, mark) if f"blocker {len(blockers)}" in json.dumps(r[-1])]
    assert ran == [], "the cancelled queued job reached the upstream"


def test_stream_resumption_with_starting_after(client: openai.OpenAI, http: httpx.Client) -> None:
    words = " ".join(f"w{i}" for i in range(12))
    body = {"model": "fake/slow-300", "input": words, "background": True, "stream": True}
    first: list[dict[str, Any]] = []
    with http.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                first.append(json.loads(line[6:]))
                if len(first) == 5:
                    break  # the client drops the connection mid-stream
    assert [e["sequence_number"] for e in first] == [0, 1, 2, 3, 4]
    assert [e["type"] for e in first[:3]] == ["response.created", "response.queued", "response.in_progress"]
    response_id = first[0]["response"]["id"]
    last = first[-1]["sequence_number"]

    rest = replay(http, response_id, after=last)
    assert [e["sequence_number"] for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1]["type"] == "response.completed"
    whole = first + rest
    final = check_stream(whole)
    assert final["output_text"] == f"echo: {words}"
    # The persisted stream from the start is the same stream.
    assert replay(http, response_id) == whole
    assert replay(http, response_id, after=-1) == whole
    # The SDK's resumption.
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=last + 3))
    assert [e.sequence_number for e in resumed] == [e["sequence_number"] for e in rest[3:]]
    assert client.responses.retrieve(response_id).status == "completed"
    # Only background responses have a persisted stream.
    plain = client.responses.create(model="fake/echo", input="not background")
    assert_error(http.get(f"/v1/responses/{plain.id}", params={"stream": "true"}), 400, "invalid_request")
    assert_error(http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": "x"}), 400,
                 "invalid_request", "starting_after")


# ------------------------------------------------------------------ owner scoping and store: false


def test_another_key_gets_404_for_everything(client: openai.OpenAI, other: openai.OpenAI, http: httpx.Client,
                                             base_url: str) -> None:
    mine = client.responses.create(model="fake/echo", input="private")
    job = client.responses.create(model="fake/slow-2000", input="private job", background=True)
    raw = httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {OTHER_KEY}"}, timeout=30)
    with raw:
        for response_id in (mine.id, job.id):
            with pytest.raises(openai.NotFoundError):
                other.responses.retrieve(response_id)
            with pytest.raises(openai.NotFoundError):
                other.responses.delete(response_id)
            with pytest.raises(openai.NotFoundError):
                other.responses.cancel(response_id)
            with pytest.raises(openai.NotFoundError):
                other.responses.input_items.list(response_id)
            with pytest.raises(openai.NotFoundError) as caught:
                other.responses.create(model="fake/echo", input="steal", previous_response_id=response_id)
            assert caught.value.code == "previous_response_not_found"
            # The error never tells the data apart from a missing id.
            error = assert_error(raw.get(f"/v1/responses/{response_id}"), 404, "not_found")
            assert error["message"] == f"No response found with id {response_id!r}."
            assert_error(raw.get(f"/v1/responses/{response_id}", params={"stream": "true"}), 404, "not_found")
            assert_error(raw.post("/v1/responses/compact", json={"model": "fake/echo",
                                                                   "previous_response_id": response_id}),
                         404, "previous_response_not_found")
    # The owner still has everything.
    assert client.responses.retrieve(mine.id).output_text == "echo: private"
    assert [i.id for i in client.responses.input_items.list(mine.id)]
    assert client.responses.cancel(job.id).status == "cancelled"


def test_store_false_is_not_retrievable(client: openai.OpenAI, http: httpx.Client) -> None:
    transient = client.responses.create(model="fake/echo", input="forget me", store=False)
    assert transient.store is False and transient.output_text == "echo: forget me"
    assert_error(http.get(f"/v1/responses/{transient.id}"), 404, "not_found")
    assert_error(http.get(f"/v1/responses/{transient.id}/input_items"), 404, "not_found")
    assert_error(http.delete(f"/v1/responses/{transient.id}"), 404, "not_found")
    assert_error(http.post("/v1/responses", json={"input": "x", "previous_response_id": transient.id}), 404,
                 "previous_response_not_found")
    assert_error(http.post("/v1/responses", json={"input": "x", "store": False, "background": True}), 400,
                 "invalid_value", "background")


# ------------------------------------------------------------------ compaction


def test_compaction_round_trip(client: openai.OpenAI, http: httpx.Client, stack: Stack) -> None:
    mark = marker("compact")
    first = client.responses.create(model="fake/echo", input=f"c1 {mark}", instructions="not carried")
    reply = http.post("/v1/responses/compact", json={"model": "fake/echo", "previous_response_id": first.id,
                                                     "input": "c2 more"})
    assert reply.status_code == 200, reply.text
    compaction = reply.json()
    openapi.validate_schema("CompactResource", compaction)
    assert compaction["object"] == "response.compaction"
    (item,) = compaction["output"]
    assert item["type"] == "compaction" and item["id"].startswith("cmp_") and len(item["encrypted_content"]) > 40
    assert mark not in item["encrypted_content"], "the context is encrypted"

    # Sending the item back restores the context for the upstream, without previous_response_id.
    restored = client.responses.create(model="fake/echo", input=[item, user("c3")])  # type: ignore[list-item]
    assert restored.output_text == "echo: c3"
    context = [user(f"c1 {mark}"), assistant(f"echo: c1 {mark}"), user("c2 more")]
    assert sent_messages(stack, mark)[-1] == [*context, user("c3")]
    # A stored turn that holds the compaction item is expanded again when the chain continues.
    following = client.responses.create(model="fake/echo", input="c4", previous_response_id=restored.id)
    assert following.output_text == "echo: c4"
    assert sent_messages(stack, mark)[-1] == [*context, user("c3"), assistant("echo: c3"), user("c4")]

    # The SDK's compact call.
    again = client.responses.compact(model="fake/echo", input=f"sdk {mark}")  # type: ignore[arg-type]
    assert again.object == "response.compaction" and again.output[0].type == "compaction"


def test_compaction_errors(http: httpx.Client) -> None:
    assert_error(http.post("/v1/responses/compact", json={"input": "no model"}), 400, "missing_required_parameter",
                 "model")
    item = http.post("/v1/responses/compact", json={"model": "fake/echo", "input": "secret"}).json()["output"][0]
    content = item["encrypted_content"]
    flipped = content[:30] + ("A" if content[30] != "A" else "B") + content[31:]
    for bad in (flipped, content[:-8], "not-a-sealed-blob"):
        reply = http.post("/v1/responses", json={"model": "fake/echo",
                                                 "input": [{**item, "encrypted_content": bad}, user("q")]})
        assert_error(reply, 400, "invalid_encrypted_content", "input[0].encrypted_content")


def test_compaction_rejects_a_tampered_item_at_once(http: httpx.Client) -> None:
    item = http.post("/v1/responses/compact", json={"model": "fake/echo", "input": "secret"}).json()["output"][0]
    bad = {**item, "encrypted_content": item["encrypted_content"][:-8]}
    reply = http.post("/v1/responses/compact", json={"model": "fake/echo", "input": [bad, user("more")]})
    assert_error(reply, 400, "invalid_encrypted_content")


def test_compacting_a_compacted_context(http: httpx.Client, stack: Stack) -> None:
    mark = marker("twice")
    once = http.post("/v1/responses/compact", json={"model": "fake/echo", "input": f"d1 {mark}"}).json()["output"]
    twice = http.post("/v1/responses/compact", json={"model": "fake/echo",
                                                     "input": [*once, user("d2")]}).json()["output"]
    reply = http.post("/v1/responses", json={"model": "fake/echo", "input": [*twice, user("d3")]})
    assert reply.status_code == 200, reply.text
    assert sent_messages(stack, mark)[-1] == [user(f"d1 {mark}"), user("d2"), user("d3")]
