"""The providers' event-stream reader (`sse_events`): WHATWG line endings and fields, whatever the chunking."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from switchboard.service.providers.http import sse_events

STREAM = ("event: a\r\ndata: one\r\n\r\n"            # CRLF
          ": a comment\rdata: two\rdata: lines\r\r"  # CR, a comment, multi-line data, no event name
          "event: b\ndata: " + "x" * 200_000 + "\n\n"  # LF, a line longer than aiohttp's readline limit
          "data: é ✓\n\n"                              # multi-byte UTF-8, split below across chunks
          "data: last, no blank line at the end")
EXPECTED = [("a", "one"), ("message", "two\nlines"), ("b", "x" * 200_000), ("message", "é ✓")]


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


@pytest.mark.parametrize("size", [1, 3, 7, 4096, 1 << 20])
async def test_events_whatever_the_chunking(size: int) -> None:
    events = [(sse.event, sse.data) async for sse in sse_events(_chunks(STREAM.encode(), size))]
    assert events == EXPECTED
