"""Builders and helpers shared by the provider tests: conversation items, turns, and fake upstream processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from google.protobuf import struct_pb2

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, tools_pb2
from switchboard.service.providers.base import Delta, TextDelta, ToolCallDelta, Turn
from tests.processes import kill_tree, launcher, track

ROOT = Path(__file__).resolve().parents[2]
USER, ASSISTANT = items_pb2.MESSAGE_ROLE_USER, items_pb2.MESSAGE_ROLE_ASSISTANT
SYSTEM, DEVELOPER = items_pb2.MESSAGE_ROLE_SYSTEM, items_pb2.MESSAGE_ROLE_DEVELOPER
P = content_pb2.ContentPart


def _content(text: str | None, parts: list[P] | None) -> content_pb2.Content:
    if parts is None:
        return content_pb2.Content(text=text or "")
    return content_pb2.Content(parts=content_pb2.ContentList(parts=parts))


def msg(role: int, text: str | None = None, parts: list[P] | None = None, phase: int = 0) -> items_pb2.Item:
    return items_pb2.Item(message=items_pb2.Message(role=role, content=_content(text, parts),  # type: ignore[arg-type]
                                                    phase=phase))  # type: ignore[arg-type]


def call(call_id: str, name: str, args: str) -> items_pb2.Item:
    return items_pb2.Item(function_call=items_pb2.FunctionCall(call_id=call_id, name=name, arguments=args))


def output(call_id: str, text: str | None = None, parts: list[P] | None = None) -> items_pb2.Item:
    return items_pb2.Item(function_call_output=items_pb2.FunctionCallOutput(call_id=call_id,
                                                                            output=_content(text, parts)))


def reasoning(raw: str | None = None, summary: str | None = None, encrypted: str | None = None) -> items_pb2.Item:
    item = items_pb2.ReasoningItem(encrypted_content=encrypted)
    if raw is not None:
        item.content.append(P(reasoning_text=content_pb2.ReasoningTextContent(text=raw)))
    if summary is not None:
        item.summary.append(P(summary_text=content_pb2.SummaryTextContent(text=summary)))
    return items_pb2.Item(reasoning=item)


def text_part(text: str) -> P:
    return P(input_text=content_pb2.InputTextContent(text=text))


def out_part(text: str) -> P:
    return P(output_text=content_pb2.OutputTextContent(text=text))


def image_part(url: str | None = None, file_id: str | None = None, detail: int = 0) -> P:
    return P(input_image=content_pb2.InputImageContent(image_url=url, file_id=file_id,
                                                       detail=detail))  # type: ignore[arg-type]


def file_part(**kw: str) -> P:
    return P(input_file=content_pb2.InputFileContent(**kw))


def struct(obj: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(obj)
    return s


def weather_tool(name: str = "get_weather") -> tools_pb2.FunctionTool:
    return tools_pb2.FunctionTool(name=name, description="Weather by city",
                                  parameters=struct({"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"], "maxProperties": 1}))


def effort(level: int) -> response_pb2.ReasoningConfig:
    return response_pb2.ReasoningConfig(effort=level)  # type: ignore[arg-type]


def user_turn(model: str, text: str = "hello world", **kw: Any) -> Turn:
    return Turn(model=model, items=[msg(USER, text)], **kw)


def start_fake(module: str) -> Iterator[str]:
    """Runs ``python -m <module>`` on a free port; yields its URL and stops it (closing its pipe)."""
    proc = subprocess.Popen([*launcher(), sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    track(proc.pid)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:"), line
        yield line.split(" ", 1)[1]
    finally:
        kill_tree(proc.pid, grace=5)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def wait_cancelled(control: httpx.Client) -> None:
    for _ in range(100):
        if control.get("/_stats").json()["cancelled"] >= 1:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the fake upstream never saw the request cancelled")


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


def calls_of(deltas: list[Delta]) -> list[ToolCallDelta]:
    return [d for d in deltas if isinstance(d, ToolCallDelta)]


def choice(**kw: Any) -> tools_pb2.ToolChoice:
    return tools_pb2.ToolChoice(**kw)
