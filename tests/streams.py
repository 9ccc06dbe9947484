"""The event order rules of openresponses-streaming-events.md, as one checker used by every stream test."""

from __future__ import annotations

from typing import Any

from tests import wire

TERMINAL = {"response.completed", "response.failed", "response.incomplete"}
_DELTA_DONE = {
    "response.output_text.delta": ("response.output_text.done", "text"),
    "response.refusal.delta": ("response.refusal.done", "refusal"),
    "response.reasoning_text.delta": ("response.reasoning_text.done", "text"),
    "response.reasoning.delta": ("response.reasoning.done", "text"),
    "response.reasoning_summary_text.delta": ("response.reasoning_summary_text.done", "text"),
    "response.function_call_arguments.delta": ("response.function_call_arguments.done", "arguments"),
}


def check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Validates every event (openai-python strict and the OpenAPI, tests/wire.py) and the order rules; returns
    the final response."""
    assert events, "empty stream"
    for event in events:
        wire.check_event(event)
    assert [e["sequence_number"] for e in events] == list(range(events[0]["sequence_number"],
                                                                events[0]["sequence_number"] + len(events)))
    assert events[0]["type"] == "response.created"
    terminals = [i for i, e in enumerate(events) if e["type"] in TERMINAL]
    assert terminals == [len(events) - 1], f"exactly one terminal event, last: {[e['type'] for e in events]}"
    final: dict[str, Any] = events[-1]["response"]
    wire.check_response(final)

    open_items: dict[int, dict[str, Any]] = {}
    done_items: dict[int, dict[str, Any]] = {}
    deltas: dict[tuple[str, int, int], list[str]] = {}
    for event in events[1:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            index = event["output_index"]
            assert index not in open_items and index not in done_items
            assert index == len(open_items) + len(done_items), "output_index is the item's index in output"
            assert event["item"]["status"] == "in_progress"
            open_items[index] = event["item"]
        elif kind == "response.output_item.done":
            index = event["output_index"]
            assert index in open_items, "output_item.done without added"
            assert event["item"]["id"] == open_items.pop(index)["id"]
            done_items[index] = event["item"]
        elif kind in ("response.in_progress", "response.queued", "error"):
            continue
        else:
            index = event["output_index"]
            assert index in open_items, f"{kind} outside its item"
            assert event["item_id"] == open_items[index]["id"]
            part = event.get("content_index", event.get("summary_index", -1))
            if kind in _DELTA_DONE:
                deltas.setdefault((kind, index, part), []).append(event["delta"])
            for delta_kind, (done_kind, field) in _DELTA_DONE.items():
                if kind == done_kind:
                    joined = "".join(deltas.pop((delta_kind, index, part), []))
                    assert joined == event[field], f"{delta_kind} deltas must concatenate to {done_kind}"
    assert not open_items, "every item is closed before the terminal event"
    assert not deltas, "every delta run ends with its done event"
    assert [done_items[i] for i in sorted(done_items)] == final["output"]
    return final
