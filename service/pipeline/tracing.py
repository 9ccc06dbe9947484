"""Per-request tracing in the pipeline: the request's observability fields on the current span, the name and links
of an upstream call's span, and compact item summaries for gen_ai.*.messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from switchboard.responses.v1 import items_pb2, responses_service_pb2
from switchboard.service.providers.base import message_text, role_name

_KNOWN_TRACE_KEYS = ("trace_id", "trace_name", "span_name", "generation_name", "parent_span_id")


def session_id(request: responses_service_pb2.CreateResponseRequest,
               metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The body's session_id wins over the x-session-id header."""
    if request.HasField("session_id") and request.session_id:
        return request.session_id
    for key, value in metadata or ():
        if key == "x-session-id":
            return value.decode() if isinstance(value, bytes) else value
    return None


def annotate(request: responses_service_pb2.CreateResponseRequest,
             metadata: Sequence[tuple[str, Any]] | None) -> None:
    """Puts the request's observability fields on the current span."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    session = session_id(request, metadata)
    if session:
        span.set_attribute("session.id", session)
        span.set_attribute("switchboard.session_id", session)
    if request.HasField("user"):
        span.set_attribute("user.id", request.user)
    if request.HasField("safety_identifier"):
        span.set_attribute("switchboard.safety_identifier", request.safety_identifier)
    if request.HasField("model"):
        span.set_attribute("gen_ai.request.model", request.model)
    if request.HasField("trace"):
        options = request.trace
        for key in _KNOWN_TRACE_KEYS:
            if options.HasField(key):  # type: ignore[arg-type]
                span.set_attribute(f"switchboard.trace.{key}", getattr(options, key))
        if options.HasField("span_name"):
            span.update_name(options.span_name)
        for key, value in options.attributes.fields.items():
            kind = value.WhichOneof("kind")
            if kind in ("string_value", "number_value", "bool_value"):
                span.set_attribute(f"switchboard.trace.{key}", getattr(value, str(kind)))


def _hex_id(value: str, length: int) -> int | None:
    text = value.strip().lower().replace("-", "")
    if len(text) != length or any(c not in "0123456789abcdef" for c in text) or not int(text, 16):
        return None
    return int(text, 16)


def generation_span(options: responses_service_pb2.TraceOptions | None, default: str) -> tuple[str, list[Link]]:
    """The name of an upstream call's span (`generation_name`, else the GenAI default) and, when the request
    names an external trace (`trace_id`, with `parent_span_id`), a link to it: the W3C `traceparent` header
    stays the parent, and tools that group by the client's own ids can follow the link."""
    if options is None:
        return default, []
    name = options.generation_name if options.HasField("generation_name") and options.generation_name else default
    trace_id = _hex_id(options.trace_id, 32) if options.HasField("trace_id") else None
    span_id = _hex_id(options.parent_span_id, 16) if options.HasField("parent_span_id") else None
    if trace_id is None:
        return name, []
    context = SpanContext(trace_id=trace_id, span_id=span_id or 1, is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return name, [Link(context, {"switchboard.trace.link": "trace_id"})]


def item_summary(item: items_pb2.Item) -> dict[str, Any]:
    """A compact, readable form of an item for gen_ai.*.messages (recorded only when config allows)."""
    kind = item.WhichOneof("item")
    if kind == "message":
        return {"role": role_name(item.message.role), "content": message_text(item.message)}
    if kind == "function_call":
        return {"role": "assistant", "tool_call": {"id": item.function_call.call_id, "name": item.function_call.name,
                                                   "arguments": item.function_call.arguments}}
    if kind == "function_call_output":
        output = item.function_call_output.output
        return {"role": "tool", "id": item.function_call_output.call_id,
                "content": output.text if output.WhichOneof("value") == "text" else "[parts]"}
    return {"type": str(kind)}
