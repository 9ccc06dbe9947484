"""OpenRouter's plugins, as pure functions over the request, the conversation items and the final response.

- ``check_plugins``: refuses plugins this gateway cannot honour (400, never a silent no-op).
- ``parse_files`` (file-parser): PDF ``input_file`` parts -> ``input_text``, extracted locally with pypdf.
- ``compress`` (context-compression) and ``truncate_oldest`` (``truncation: auto``): drop whole turns until the
  conversation fits the context window; a function call and its output go together.
- ``heal_json`` / ``heal_response`` (response-healing): repair JSON output when a JSON format was requested.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Iterable

import grpc
import json_repair
import pypdf

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, responses_service_pb2
from switchboard.shared.errors import ApiError, invalid

Request = responses_service_pb2.CreateResponseRequest
Item = items_pb2.Item

WEB, FILE_PARSER, RESPONSE_HEALING = "web", "file-parser", "response-healing"
CONTEXT_COMPRESSION, MODERATION, AUTO_ROUTER = "context-compression", "moderation", "auto-router"
_UNAVAILABLE = (MODERATION, AUTO_ROUTER)
_LEADING_ROLES = (items_pb2.MESSAGE_ROLE_SYSTEM, items_pb2.MESSAGE_ROLE_DEVELOPER)
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")

# ------------------------------------------------------------------ request checks


def enabled_plugins(request: Request) -> frozenset[str]:
    """The ids of the plugins the request turns on (`enabled: false` turns one off)."""
    return frozenset(p.id for p in request.plugins if not p.HasField("enabled") or p.enabled)


def check_plugins(request: Request, *, stream: bool, web_search_configured: bool) -> None:
    """Raises 400 for an enabled plugin this gateway cannot honour for this request. Ids are already validated."""
    for index, plugin in enumerate(request.plugins):
        if plugin.HasField("enabled") and not plugin.enabled:
            continue
        param = f"plugins[{index}].id"
        if plugin.id == WEB and not web_search_configured:
            raise invalid("The web plugin needs a search backend; none is configured on this gateway.", param,
                          code="unsupported_value")
        if plugin.id in _UNAVAILABLE:
            raise invalid(f"Invalid '{param}': the {plugin.id} plugin is not available on this gateway.", param,
                          code="unsupported_value")
        if plugin.id == RESPONSE_HEALING:
            if stream:
                raise invalid(f"Invalid '{param}': the response-healing plugin works on non-streaming responses "
                              "only; it cannot repair a stream already sent.", param, code="unsupported_value")
            if request.text.format.WhichOneof("format") not in ("json_object", "json_schema"):
                raise invalid(f"Invalid '{param}': the response-healing plugin repairs JSON output; it needs "
                              "'text.format' of type 'json_object' or 'json_schema'.", param, code="invalid_value")


# ------------------------------------------------------------------ file-parser

_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_PDF_MAGIC = b"%PDF"


def _pdf_bytes(file_data: str) -> tuple[bool, bytes | None]:
    """(is_pdf, bytes): is_pdf when the data claims or looks like a PDF; bytes None when it cannot be decoded."""
    match = _DATA_URL.fullmatch(file_data.strip())
    if match is not None:
        claims_pdf = match["mime"].strip().lower() == "application/pdf"
        if ";base64" not in match["params"].lower():
            return claims_pdf, None
        try:
            data = base64.b64decode(match["data"], validate=False)
        except (binascii.Error, ValueError):
            return claims_pdf, None
        return claims_pdf or data.startswith(_PDF_MAGIC), data
    try:
        data = base64.b64decode(file_data[:16].ljust(16, "="), validate=True)  # cheap sniff of the header first
    except (binascii.Error, ValueError):
        return False, None
    if not data.startswith(_PDF_MAGIC):
        return False, None
    try:
        return True, base64.b64decode(file_data, validate=False)
    except (binascii.Error, ValueError):
        return True, None


def _extract_pdf(data: bytes) -> str:
    """The text of every page. Raises on a file pypdf cannot read."""
    reader = pypdf.PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError("encrypted")
    pages = [page.extract_text() or "" for page in reader.pages]
    return "\n".join(text.strip() for text in pages if text.strip())


def _parse_part(part: content_pb2.ContentPart, where: str) -> content_pb2.ContentPart | None:
    """The input_text part replacing a PDF input_file part; None when the part is not a PDF (left alone)."""
    if part.WhichOneof("part") != "input_file" or not part.input_file.HasField("file_data"):
        return None
    is_pdf, data = _pdf_bytes(part.input_file.file_data)
    if not is_pdf:
        return None
    name = part.input_file.filename or "file.pdf"
    try:
        if data is None:
            raise ValueError("undecodable")
        text = _extract_pdf(data)
    except Exception as error:  # pypdf raises many kinds on damaged input; all mean the same to the client
        raise invalid(f"The file {name[:200]!r} in {where} is not a readable PDF (file-parser could not extract "
                      "its text).", "input", code="invalid_file") from error
    return content_pb2.ContentPart(
        input_text=content_pb2.InputTextContent(text=f"{name}:\n{text or '[no extractable text]'}"))


def parse_files(items: list[Item]) -> list[Item]:
    """The file-parser plugin: each PDF ``input_file`` (``file_data`` as a data URL or raw base64) becomes an
    ``input_text`` part "<filename>:\\n<text>". Other files are left alone; an unreadable PDF is a 400
    ``invalid_file``. Returns a new list; the inputs are not mutated (items without a PDF are shared)."""
    result: list[Item] = []
    for index, item in enumerate(items):
        kind = item.WhichOneof("item")
        if kind == "message":
            inner_id, content = item.message.id, item.message.content
        elif kind == "function_call_output":
            inner_id, content = item.function_call_output.id, item.function_call_output.output
        else:
            result.append(item)
            continue
        label = f"item {inner_id!r}" if inner_id else f"conversation item {index}"
        parsed = {j: new for j, part in enumerate(content.parts.parts)
                  if (new := _parse_part(part, f"{label}, content part {j}")) is not None}
        if not parsed:
            result.append(item)
            continue
        copy = Item()
        copy.CopyFrom(item)
        parts = (copy.message.content if kind == "message" else copy.function_call_output.output).parts.parts
        for j, new in parsed.items():
            parts[j].CopyFrom(new)
        result.append(copy)
    return result


# ------------------------------------------------------------------ context-compression, truncation: auto


def _content_bytes(content: content_pb2.Content) -> int:
    if content.WhichOneof("value") == "text":
        return len(content.text.encode())
    return sum(_part_bytes(part) for part in content.parts.parts)


def _part_bytes(part: content_pb2.ContentPart) -> int:
    kind = part.WhichOneof("part")
    if kind in _TEXT_PARTS:
        return len(getattr(part, kind).text.encode())
    if kind == "refusal":
        return len(part.refusal.refusal.encode())
    return 0


def item_tokens(item: Item) -> int:
    """Estimated tokens of one item: ceil(utf-8 bytes / 4) of its text, tool call arguments or tool output."""
    kind = item.WhichOneof("item")
    size = 0
    if kind == "message":
        size = _content_bytes(item.message.content)
    elif kind == "function_call":
        size = len(item.function_call.name.encode()) + len(item.function_call.arguments.encode())
    elif kind == "function_call_output":
        size = _content_bytes(item.function_call_output.output)
    elif kind == "reasoning":
        size = sum(_part_bytes(p) for p in (*item.reasoning.summary, *item.reasoning.content))
    return math.ceil(size / 4)


def estimate_tokens(items: Iterable[Item]) -> int:
    return sum(item_tokens(item) for item in items)


def _units(items: list[Item]) -> tuple[list[list[int]], list[bool]]:
    """Items grouped into what is dropped together, in order of first item, and whether each unit is protected.

    A function call and its output(s) share a unit (by call_id); reasoning items join the item after them. The
    leading system/developer messages and the last user message are protected."""
    head = 0
    while head < len(items) and items[head].WhichOneof("item") == "message" \
            and items[head].message.role in _LEADING_ROLES:
        head += 1
    last_user = max((i for i, item in enumerate(items) if item.WhichOneof("item") == "message"
                     and item.message.role == items_pb2.MESSAGE_ROLE_USER), default=-1)
    units: list[list[int]] = []
    by_call: dict[str, list[int]] = {}
    pending: list[int] = []
    for i, item in enumerate(items):
        kind = item.WhichOneof("item")
        if kind == "reasoning":
            pending.append(i)
            continue
        call_id = ""
        if kind == "function_call":
            call_id = item.function_call.call_id
        elif kind == "function_call_output":
            call_id = item.function_call_output.call_id
        if call_id and call_id in by_call:
            by_call[call_id].extend([*pending, i])
        else:
            units.append([*pending, i])
            if call_id:
                by_call[call_id] = units[-1]
        pending = []
    if pending:
        units.append(pending)
    protected = [any(i < head or i == last_user for i in unit) for unit in units]
    return units, protected


def _too_long(total: int, context_length: int, reserve_output: int, how: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded",
                    f"The input (about {total} tokens) does not fit the model's context length of {context_length} "
                    f"tokens with {reserve_output} reserved for output, even after {how}.", param="input")


def _fit(items: list[Item], order: list[int], units: list[list[int]], *, context_length: int,
         reserve_output: int, how: str) -> list[Item]:
    """Drops units in ``order`` until the estimate fits ``context_length - reserve_output``."""
    budget = context_length - reserve_output
    costs = [item_tokens(item) for item in items]
    total = sum(costs)
    dropped: set[int] = set()
    for u in order:
        if total <= budget:
            break
        dropped.update(units[u])
        total -= sum(costs[i] for i in units[u])
    if total > budget:
        raise _too_long(total, context_length, reserve_output, how)
    return [item for i, item in enumerate(items) if i not in dropped]


def compress(items: list[Item], *, context_length: int, reserve_output: int) -> list[Item]:
    """context-compression (middle-out): drops the units nearest the middle of the conversation first, keeping its
    start and end, until it fits. Raises 400 ``context_length_exceeded`` (param ``input``) when it cannot."""
    units, protected = _units(items)
    middle = (len(units) - 1) / 2
    order = sorted((u for u in range(len(units)) if not protected[u]), key=lambda u: (abs(u - middle), u))
    return _fit(items, order, units, context_length=context_length, reserve_output=reserve_output,
                how="context-compression dropped every message it may drop")


def truncate_oldest(items: list[Item], *, context_length: int, reserve_output: int) -> list[Item]:
    """``truncation: auto``: drops the oldest units after the leading system/developer messages until it fits.
    Raises 400 ``context_length_exceeded`` (param ``input``) when it cannot."""
    units, protected = _units(items)
    order = [u for u in range(len(units)) if not protected[u]]
    return _fit(items, order, units, context_length=context_length, reserve_output=reserve_output,
                how="truncation dropped every earlier turn")


# ------------------------------------------------------------------ response-healing

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)
_CLOSERS = {"{": "}", "[": "]"}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _is_json(text: str) -> bool:
    """Strict JSON: Python's parser also takes NaN and Infinity, which JSON does not."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return False
    return True


def _candidate(text: str) -> str | None:
    """The JSON-looking part of ``text``: inside the first ``` fence if any, from the first { or [ to its last
    matching closer (or to the end, for truncated output). None when there is no { or [ at all."""
    fenced = _FENCE.search(text)
    if fenced is not None and any(c in fenced[1] for c in _CLOSERS):
        text = fenced[1]
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    end = text.rfind(_CLOSERS[text[start]])
    return text[start:end + 1] if end > start else text[start:]


def heal_json(text: str) -> str | None:
    """response-healing for one text: None when ``text`` is valid JSON already or cannot be repaired into a JSON
    object or array; otherwise the repaired JSON text."""
    if _is_json(text):
        return None
    candidate = _candidate(text)
    if candidate is None:
        return None
    try:
        repaired = json_repair.repair_json(candidate, return_objects=True)
        if not isinstance(repaired, dict | list):
            return None
        return json.dumps(repaired, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return None


def heal_response(response: response_pb2.Response) -> bool:
    """Repairs the ``output_text`` parts of the response's messages, then ``output_text``. True if anything
    changed. Annotations of a repaired part are dropped: their offsets point into the text that was replaced."""
    changed = False
    for item in response.output:
        if item.WhichOneof("item") != "message":
            continue
        for part in item.message.content.parts.parts:
            if part.WhichOneof("part") != "output_text":
                continue
            healed = heal_json(part.output_text.text)
            if healed is not None:
                part.output_text.text = healed
                del part.output_text.annotations[:]
                changed = True
    if changed:  # as the engine computes it
        response.output_text = "".join(
            p.output_text.text for item in response.output if item.WhichOneof("item") == "message"
            for p in item.message.content.parts.parts if p.WhichOneof("part") == "output_text")
    return changed


__all__ = ["check_plugins", "compress", "enabled_plugins", "estimate_tokens", "heal_json", "heal_response",
           "parse_files", "truncate_oldest"]
