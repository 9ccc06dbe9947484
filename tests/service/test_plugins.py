"""pipeline.plugins, table-driven: plugin checks, file-parser, context-compression, truncation and response-healing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from switchboard.edge import codec
from switchboard.responses.v1 import items_pb2, response_pb2, responses_service_pb2
from switchboard.service.pipeline.plugins import (
    check_plugins,
    compress,
    enabled_plugins,
    estimate_tokens,
    heal_json,
    heal_response,
    parse_files,
    truncate_oldest,
)
from switchboard.shared.errors import ApiError

Request = responses_service_pb2.CreateResponseRequest
Item = items_pb2.Item
JSON_FORMAT = {"format": {"type": "json_object"}}
SCHEMA_FORMAT = {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}


def request(plugins: list[dict[str, Any]], **extra: Any) -> Request:
    return codec.decode({"model": "fake/echo", "input": "hi", "plugins": plugins, **extra}, Request)


def item(data: dict[str, Any]) -> Item:
    return codec.decode(data, Item)


def dump(items: list[Item]) -> list[Any]:
    return [codec.encode(i) for i in items]


# ------------------------------------------------------------------ check_plugins

# (id, plugins, extra request fields, stream, web configured, error param or None, message substring)
CHECKS: list[tuple[str, list[dict[str, Any]], dict[str, Any], bool, bool, str | None, str]] = [
    ("web-unconfigured", [{"id": "web"}], {}, False, False, "plugins[0].id", "needs a search backend"),
    ("web-configured", [{"id": "web", "max_results": 3}], {}, False, True, None, ""),
    ("web-disabled", [{"id": "web", "enabled": False}], {}, False, False, None, ""),
    ("moderation", [{"id": "file-parser"}, {"id": "moderation"}], {}, False, True, "plugins[1].id",
     "not available"),
    ("auto-router", [{"id": "auto-router"}], {}, False, True, "plugins[0].id", "not available"),
    ("auto-router-disabled", [{"id": "auto-router", "enabled": False}], {}, False, True, None, ""),
    ("healing-stream", [{"id": "response-healing"}], {"text": JSON_FORMAT}, True, True, "plugins[0].id",
     "non-streaming"),
    ("healing-no-format", [{"id": "response-healing"}], {}, False, True, "plugins[0].id", "json_object"),
    ("healing-text-format", [{"id": "response-healing"}], {"text": {"format": {"type": "text"}}}, False, True,
     "plugins[0].id", "json_schema"),
    ("healing-json-object", [{"id": "response-healing"}], {"text": JSON_FORMAT}, False, True, None, ""),
    ("healing-json-schema", [{"id": "response-healing"}], {"text": SCHEMA_FORMAT}, False, True, None, ""),
    ("healing-disabled-stream", [{"id": "response-healing", "enabled": False}], {}, True, True, None, ""),
    ("others", [{"id": "file-parser"}, {"id": "context-compression"}], {}, True, False, None, ""),
]


@pytest.mark.parametrize("case", CHECKS, ids=[c[0] for c in CHECKS])
def test_check_plugins(case: tuple[str, list[dict[str, Any]], dict[str, Any], bool, bool, str | None, str]) -> None:
    _, plugins, extra, stream, web, param, message = case
    req = request(plugins, **extra)
    if param is None:
        check_plugins(req, stream=stream, web_search_configured=web)
        return
    with pytest.raises(ApiError) as raised:
        check_plugins(req, stream=stream, web_search_configured=web)
    assert raised.value.param == param
    assert raised.value.error_type == "invalid_request_error"
    assert message in raised.value.message


def test_enabled_plugins() -> None:
    req = request([{"id": "web", "enabled": False}, {"id": "file-parser"}, {"id": "context-compression",
                                                                          "enabled": True}])
    assert enabled_plugins(req) == {"file-parser", "context-compression"}


# ------------------------------------------------------------------ parse_files


def make_pdf(text: str) -> bytes:
    """A minimal valid one-page PDF whose content stream shows ``text`` with a Tj operator."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


PDF = make_pdf("Hello from the PDF")
PDF_B64 = base64.b64encode(PDF).decode()


def user_file(file_data: str, filename: str = "report.pdf", **extra: Any) -> Item:
    return item({"role": "user", **extra, "content": [
        {"type": "input_text", "text": "summarise"},
        {"type": "input_file", "filename": filename, "file_data": file_data}]})


@pytest.mark.parametrize("file_data", [f"data:application/pdf;base64,{PDF_B64}", PDF_B64,
                                       f"data:application/octet-stream;base64,{PDF_B64}"],
                         ids=["data-url", "raw-base64", "sniffed"])
def test_parse_files_pdf(file_data: str) -> None:
    system = item({"role": "system", "content": "be brief"})
    original = user_file(file_data)
    before = original.SerializeToString()
    result = parse_files([system, original])
    assert result[0] is system
    assert original.SerializeToString() == before  # not mutated
    parts = codec.encode(result[1])["content"]
    assert parts[0] == {"type": "input_text", "text": "summarise"}
    assert parts[1] == {"type": "input_text", "text": "report.pdf:\nHello from the PDF"}


def test_parse_files_in_tool_output() -> None:
    output = item({"type": "function_call_output", "call_id": "c1", "output": [
        {"type": "input_file", "filename": "t.pdf", "file_data": PDF_B64}]})
    [parsed] = parse_files([output])
    assert codec.encode(parsed)["output"] == [{"type": "input_text", "text": "t.pdf:\nHello from the PDF"}]


@pytest.mark.parametrize("file_data", [
    "data:text/plain;base64," + base64.b64encode(b"just text").decode(),
    base64.b64encode(b"PK\x03\x04 a zip").decode(),
    "not base64 at all!",
], ids=["text-data-url", "raw-zip", "garbage"])
def test_parse_files_leaves_other_files(file_data: str) -> None:
    original = user_file(file_data, filename="notes.txt")
    url = item({"role": "user", "content": [{"type": "input_file", "file_url": "https://example.com/a.pdf"}]})
    result = parse_files([original, url])
    assert result[0] is original and result[1] is url


@pytest.mark.parametrize("file_data", [
    "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4\nthis is not a pdf at all").decode(),
    base64.b64encode(b"%PDF-1.7 truncated garbage \x00\x01").decode(),
    "data:application/pdf;base64,@@@not-base64@@@",
    "data:application/pdf,%25PDF-plain",
], ids=["corrupt-data-url", "corrupt-raw", "bad-base64", "not-base64-url"])
def test_parse_files_corrupt_pdf(file_data: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_files([item({"role": "user", "content": "hi"}), user_file(file_data, id="msg_1")])
    assert raised.value.code == "invalid_file"
    assert raised.value.error_type == "invalid_request_error"
    assert "'report.pdf'" in raised.value.message and "msg_1" in raised.value.message


# ------------------------------------------------------------------ compress, truncate_oldest


def msg(role: str, text: str) -> Item:
    return item({"role": role, "content": text})


def call(call_id: str, arguments: str) -> Item:
    return item({"type": "function_call", "call_id": call_id, "name": "f", "arguments": arguments})


def output(call_id: str, text: str) -> Item:
    return item({"type": "function_call_output", "call_id": call_id, "output": text})


def texts(items: list[Item]) -> list[str]:
    out = []
    for i in items:
        kind = i.WhichOneof("item")
        if kind == "message":
            out.append(i.message.content.text)
        elif kind == "function_call":
            out.append(f"call:{i.function_call.call_id}")
        else:
            out.append(f"out:{i.function_call_output.call_id}")
    return out


X = "x" * 400  # 100 tokens


def conversation() -> list[Item]:
    return [msg("system", "sys"), msg("developer", "dev"), msg("user", "u1" + X), msg("assistant", "a1" + X),
            call("c1", X), msg("user", "u2" + X), output("c1", X), msg("assistant", "a2" + X),
            msg("user", "u3" + X), msg("assistant", "a3" + X), msg("user", "last")]


def test_estimate_tokens() -> None:
    assert estimate_tokens([msg("user", "abcde")]) == 2  # ceil(5 / 4)
    assert estimate_tokens([msg("user", "é")]) == 1  # utf-8 bytes
    assert estimate_tokens([call("c", "1234"), output("c", "12345678")]) == 2 + 2  # name "f" + arguments
    parts = item({"role": "assistant", "content": [{"type": "output_text", "text": "x" * 8},
                                                   {"type": "refusal", "refusal": "no"}]})
    assert estimate_tokens([parts]) == 3


COMPRESS = [
    # (id, context_length, reserve, kept texts) - every droppable unit is ~100 tokens; the pair c1 is ~200.
    ("fits", 10_000, 1000, ["sys", "dev", "u1", "a1", "call:c1", "u2", "out:c1", "a2", "u3", "a3", "last"]),
    ("middle-pair-first", 800, 100, ["sys", "dev", "u1", "a1", "u2", "a2", "u3", "a3", "last"]),
    ("outwards-from-the-middle", 600, 100, ["sys", "dev", "u1", "a2", "u3", "a3", "last"]),
    ("all-but-protected", 10, 0, ["sys", "dev", "last"]),
]


@pytest.mark.parametrize("case", COMPRESS, ids=[c[0] for c in COMPRESS])
def test_compress_middle_out(case: tuple[str, int, int, list[str]]) -> None:
    _, context_length, reserve, kept = case
    items = conversation()
    before = dump(items)
    result = compress(items, context_length=context_length, reserve_output=reserve)
    assert [t[:2] if t[0] in "ua" and t != "last" else t for t in texts(result)] == kept
    assert estimate_tokens(result) <= context_length - reserve
    assert dump(items) == before


TRUNCATE = [
    ("fits", 10_000, 0, ["sys", "dev", "u1", "a1", "call:c1", "u2", "out:c1", "a2", "u3", "a3", "last"]),
    ("oldest-first", 750, 0, ["sys", "dev", "a1", "call:c1", "u2", "out:c1", "a2", "u3", "a3", "last"]),
    ("pair-goes-together", 600, 100, ["sys", "dev", "u2", "a2", "u3", "a3", "last"]),
    ("all-but-protected", 10, 0, ["sys", "dev", "last"]),
]


@pytest.mark.parametrize("case", TRUNCATE, ids=[c[0] for c in TRUNCATE])
def test_truncate_oldest(case: tuple[str, int, int, list[str]]) -> None:
    _, context_length, reserve, kept = case
    result = truncate_oldest(conversation(), context_length=context_length, reserve_output=reserve)
    assert [t[:2] if t[0] in "ua" and t != "last" else t for t in texts(result)] == kept


@pytest.mark.parametrize("fit", [compress, truncate_oldest], ids=["compress", "truncate"])
@pytest.mark.parametrize("items", [
    [msg("system", X), msg("user", "u" + X), msg("user", "last")],  # the protected head is too long
    [msg("user", "a"), msg("user", X * 3)],  # the last user message alone is too long
], ids=["head", "last-user"])
def test_too_long_raises(fit: Any, items: list[Item]) -> None:
    with pytest.raises(ApiError) as raised:
        fit(items, context_length=150, reserve_output=50)
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.param == "input"
    assert raised.value.error_type == "invalid_request_error"


def test_reasoning_goes_with_its_call() -> None:
    reasoning = item({"type": "reasoning", "summary": [{"type": "summary_text", "text": X}]})
    items = [msg("user", "u1"), reasoning, call("c1", X), output("c1", X), msg("user", "last")]
    # middle-out drops the reasoning item with the call it precedes, and the call's output with it
    assert [i.WhichOneof("item") for i in compress(items, context_length=50, reserve_output=0)] == \
        ["message", "message"]
    assert texts(truncate_oldest(items, context_length=10, reserve_output=0)) == ["last"]


# ------------------------------------------------------------------ heal_json, heal_response

HEAL: list[tuple[str, str, Any]] = [
    ("valid-object", '{"a": 1}', None),
    ("valid-array", "[1, 2]", None),
    ("valid-scalar", "42", None),
    ("fenced", 'Here you go:\n```json\n{"a": 1, "b": [1, 2]}\n```\nEnjoy!', {"a": 1, "b": [1, 2]}),
    ("fenced-no-lang", '```\n{"a": "x"}\n```', {"a": "x"}),
    ("trailing-comma", '{"a": 1, "b": 2,}', {"a": 1, "b": 2}),
    ("single-quotes", "{'a': 'b', 'c': [1, 'd']}", {"a": "b", "c": [1, "d"]}),
    ("prose-around", 'Sure! The answer is {"answer": "yes"} as requested.', {"answer": "yes"}),
    ("prose-array", "Result: [1, 2, 3] done", [1, 2, 3]),
    ("truncated", '{"a": 1, "b": "unfinished', {"a": 1, "b": "unfinished"}),
    ("unicode", "{'name': 'Zoë'}", {"name": "Zoë"}),
    ("python-literals", "{'ok': True, 'v': None}", {"ok": True, "v": None}),
    ("hopeless-prose", "I cannot help with that.", None),
    ("hopeless-empty", "", None),
]


@pytest.mark.parametrize("case", HEAL, ids=[c[0] for c in HEAL])
def test_heal_json(case: tuple[str, str, Any]) -> None:
    _, text, expected = case
    healed = heal_json(text)
    if expected is None:
        assert healed is None
    else:
        assert healed is not None and json.loads(healed) == expected


def response_with(*texts_: str) -> response_pb2.Response:
    response = response_pb2.Response()
    for text in texts_:
        message = response.output.add().message
        message.role = items_pb2.MESSAGE_ROLE_ASSISTANT
        part = message.content.parts.parts.add().output_text
        part.text = text
        part.annotations.add().url_citation.url = "https://example.com"
    response.output.add().function_call.arguments = "{'not': 'touched'"
    response.output_text = "".join(texts_)
    return response


def test_heal_response() -> None:
    response = response_with("```json\n{'a': 1,}\n```")
    assert heal_response(response)
    part = response.output[0].message.content.parts.parts[0].output_text
    assert json.loads(part.text) == {"a": 1}
    assert not part.annotations  # offsets into the old text
    assert response.output_text == part.text
    assert response.output[1].function_call.arguments == "{'not': 'touched'"


@pytest.mark.parametrize("text", ['{"a": 1}', "no json here"], ids=["valid", "hopeless"])
def test_heal_response_unchanged(text: str) -> None:
    response = response_with(text)
    before = response.SerializeToString()
    assert not heal_response(response)
    assert response.SerializeToString() == before
