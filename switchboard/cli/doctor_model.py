"""`python -m switchboard.cli.doctor_model OPTIONS_JSON`: loads the embedded models and has each generate one token.

Run by `switchboard doctor` in a child process, so a crash in native code cannot take doctor down. Prints one
JSON line: {ok, load_ms, token_ms (the slowest model), models, system_info} or {ok: false, error, system_info}.
It drives the llama-cpp provider through its public API (warm_up, model_ids, stream), as the service does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from switchboard.responses.v1 import content_pb2, items_pb2
from switchboard.service.providers.base import Turn


def _system_info() -> str:
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
    except Exception:  # noqa: BLE001 (the report says what is missing)
        return ""
    text = info.decode() if isinstance(info, bytes) else str(info)
    return " ".join(text.split())


async def probe(options: dict[str, Any]) -> dict[str, Any]:
    """Starts every model of the provider, then asks each for one token."""
    from switchboard.service.providers.llama_cpp import LlamaCppProvider

    provider = LlamaCppProvider("doctor", **options)
    tokens: dict[str, float] = {}
    try:
        started = time.monotonic()
        await provider.warm_up()
        loaded = time.monotonic()
        message = items_pb2.Message(role=items_pb2.MESSAGE_ROLE_USER, content=content_pb2.Content(text="Hello"))
        for model_id in provider.model_ids:
            began = time.monotonic()
            turn = Turn(model=model_id, items=[items_pb2.Item(message=message)], max_output_tokens=1,
                        temperature=0.0)
            try:
                async for _ in provider.stream(turn):
                    pass
            except Exception as exc:
                raise RuntimeError(f"model {model_id}: {exc}") from exc
            tokens[model_id] = (time.monotonic() - began) * 1000
    finally:
        await provider.aclose()
    return {"ok": True, "load_ms": (loaded - started) * 1000, "token_ms": max(tokens.values(), default=0.0),
            "models": list(tokens)}


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
