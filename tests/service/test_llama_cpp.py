"""The local-model provider's own logic, with no model loaded: prompts, request validation, the fair queue and the
errors of a model that cannot start. Generation itself runs in worker processes (tests/e2e/test_local_worker.py);
no test loads llama.cpp into the pytest process."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from switchboard.responses.v1 import content_pb2, items_pb2
from switchboard.service.local.generate import transcript
from switchboard.service.local.supervisor import describe_exit
from switchboard.service.local.worker import BadRequest, parse_job
from switchboard.service.providers.base import Turn
from switchboard.service.providers.chat_translate import build_body
from switchboard.service.providers.llama_cpp import FairQueue, LlamaCppProvider
from switchboard.shared.errors import ApiError, UpstreamError


def msg(role: items_pb2.MessageRole.ValueType, text: str) -> items_pb2.Item:
    return items_pb2.Item(message=items_pb2.Message(role=role, content=content_pb2.Content(text=text)))


def test_a_base_model_gets_the_conversation_as_a_transcript() -> None:
    items = [
        msg(items_pb2.MESSAGE_ROLE_SYSTEM, "Be terse."),
        msg(items_pb2.MESSAGE_ROLE_USER, "Hi there"),
        msg(items_pb2.MESSAGE_ROLE_ASSISTANT, "Hello!"),
        items_pb2.Item(function_call=items_pb2.FunctionCall(call_id="c1", name="get_time", arguments='{"tz":"UTC"}')),
        items_pb2.Item(function_call_output=items_pb2.FunctionCallOutput(
            call_id="c1", output=content_pb2.Content(text="12:00"))),
        msg(items_pb2.MESSAGE_ROLE_USER, "What time is it?"),
    ]
    # What the provider sends the worker: the Chat Completions messages of the turn.
    messages = build_body(Turn(model="gemma-3-270m", items=items))["messages"]
    assert transcript(messages) == (
        "Be terse.\n\n"
        "User: Hi there\n"
        # The reply and its tool call are one assistant message.
        "Assistant: Hello!\n"
        'Called get_time({"tz":"UTC"}) [call c1]\n'
        "User: Result of call c1: 12:00\n"
        "User: What time is it?\n"
        "Assistant:"
    )


def test_the_worker_validates_a_request_and_keeps_the_defaults() -> None:
    job = parse_job({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert (job.max_tokens, job.temperature, job.top_p, job.top_k, job.deadline) == (256, 0.8, 0.95, 40, None)
    job = parse_job({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5,
                     "temperature": 0, "timeout": 3})
    assert job.max_tokens == 5 and job.temperature == 0.0 and job.deadline is not None
    media = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
    cases = [({"messages": [media]}, "unsupported_input"), ({"messages": []}, "invalid_request"),
             ({"messages": [{"role": "robot"}]}, "invalid_request"),
             ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "invalid_request"),
             ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "invalid_request")]
    for body, code in cases:
        with pytest.raises(BadRequest) as err:
            parse_job(body)
        assert err.value.code == code, body


async def test_the_queue_is_first_in_first_out_bounded_and_left_by_a_cancelled_waiter() -> None:
    queue = FairQueue("m", size=2, retry_after=5.0)
    order: list[int] = []
    gate = asyncio.Event()

    async def request(n: int) -> None:
        async with queue.slot():
            order.append(n)
            await gate.wait()

    first = asyncio.create_task(request(0))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(request(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    assert queue.waiting == 2
    with pytest.raises(UpstreamError) as busy:
        async with queue.slot():
            pass
    assert busy.value.code == "local_model_busy" and busy.value.status_code == 429 and busy.value.retry_after == 5
    waiting[0].cancel()  # a cancelled request leaves the queue and frees its place
    await asyncio.sleep(0)
    assert queue.waiting == 1
    late = asyncio.create_task(request(3))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, waiting[1], late)
    assert order == [0, 2, 3]


async def test_a_model_that_cannot_start_names_its_cause_and_starts_no_process(tmp_path: Path) -> None:
    provider = LlamaCppProvider("local", models={"gone": str(tmp_path / "gone.gguf")}, socket_dir=str(tmp_path))
    try:
        await provider.warm_up()
        turn = Turn(model="gone", items=[msg(items_pb2.MESSAGE_ROLE_USER, "hi")])
        for _ in range(2):
            with pytest.raises(UpstreamError) as err:
                [d async for d in provider.stream(turn)]
            assert err.value.status_code == 503 and err.value.code == "local_model_unavailable"
            assert "gone.gguf does not exist" in err.value.message
    finally:
        await provider.aclose()


async def test_unknown_models_and_media_input_are_client_errors() -> None:
    provider = LlamaCppProvider("local")
    with pytest.raises(ApiError) as err:
        [d async for d in provider.stream(Turn(model="nope", items=[msg(items_pb2.MESSAGE_ROLE_USER, "hi")]))]
    assert err.value.status_code == 404 and "local/smollm2-135m-instruct, local/gemma-3-270m" in err.value.message
    image = items_pb2.Item(message=items_pb2.Message(role=items_pb2.MESSAGE_ROLE_USER, content=content_pb2.Content(
        parts=content_pb2.ContentList(parts=[content_pb2.ContentPart(
            input_image=content_pb2.InputImageContent(image_url="data:image/png;base64,iVBORw0KGgo="))]))))
    with pytest.raises(ApiError) as err:
        [d async for d in provider.stream(Turn(model="gemma-3-270m", items=[image]))]
    assert err.value.code == "unsupported_input" and err.value.status_code == 400
    await provider.aclose()  # nothing was started


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError):
        LlamaCppProvider("local", models={"custom": None})  # not packaged: needs a path
    with pytest.raises(TypeError):
        LlamaCppProvider("local", queue_size=-1)


def test_exits_are_described_by_signal_or_status() -> None:
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(3) == "exit status 3"
