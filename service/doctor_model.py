"""`python -m service.doctor_model OPTIONS_JSON`: loads the embedded model and generates one token.

Run by `switchboard doctor` in a child process, so a crash in native code cannot take doctor down. Prints one
JSON line: {ok, load_ms, token_ms, system_info} or {ok: false, error, system_info}. It drives the llama-cpp
provider through its public API (warm_up, stream), as the service does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from service.providers.base import TextDelta, Turn
from switchboard.responses.v1 import content_pb2, items_pb2


def _system_info() -> str:
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
    except Exception:  # noqa: BLE001 (the report says what is missing)
        return ""
    text = info.decode() if isinstance(info, bytes) else str(info)
    return " ".join(text.split())


async def probe(options: dict[str, Any]) -> dict[str, Any]:
    from service.providers.llama_cpp import LlamaCppProvider

    provider = LlamaCppProvider("doctor", **options)
    try:
        started = time.monotonic()
        await provider.warm_up()
        loaded = time.monotonic()
        message = items_pb2.Message(role=items_pb2.MESSAGE_ROLE_USER, content=content_pb2.Content(text="Hello"))
        turn = Turn(model="doctor", items=[items_pb2.Item(message=message)], max_output_tokens=1, temperature=0.0)
        text = ""
        async for delta in provider.stream(turn):
            if isinstance(delta, TextDelta):
                text += delta.text
        done = time.monotonic()
    finally:
        await provider.aclose()
    return {"ok": True, "load_ms": (loaded - started) * 1000, "token_ms": (done - loaded) * 1000, "text": text}


def main(argv: list[str]) -> int:
    options = json.loads(argv[0]) if argv else {}
    try:
        report = asyncio.run(probe(options))
    except Exception as exc:  # noqa: BLE001
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    report["system_info"] = _system_info()
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
