"""The packaged local models on a small fixed prompt set: does each follow instructions, and how fast is it?

    python -m bench.models [--threads 2] [--models smollm2-135m-instruct,gemma-3-270m]

Each model runs in its own worker process, started by the llama-cpp provider exactly as the service starts it, and
answers every prompt greedily (temperature 0), so a run is repeatable. A prompt scores 1 when its check passes.
Speed: tokens per second of a 64-token answer after its first token (decode), and the time to the first token.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from switchboard.responses.v1 import content_pb2, items_pb2
from switchboard.service.providers.base import TextDelta, Turn, UsageDelta
from switchboard.service.providers.llama_cpp import LlamaCppProvider

_COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "black", "white", "pink", "brown")


@dataclass(frozen=True)
class Prompt:
    name: str
    user: str
    check: Callable[[str], bool]
    system: str | None = None


PROMPTS = [
    Prompt("reply exactly OK", "Reply with exactly OK and nothing else.",
           lambda t: t.strip().strip(".!\"'") == "OK"),
    Prompt("system prompt obeyed (pirate)", "How are you today?", lambda t: "arr" in t.lower(),
           system="You are a pirate. Every answer starts with 'Arr'."),
    Prompt("system prompt obeyed (yes/no)", "Is the sky blue on a clear day?",
           lambda t: t.strip().lower().startswith(("yes", "no")), system="Answer only with yes or no."),
    Prompt("capital of France", "What is the capital of France? Answer in one word.",
           lambda t: "paris" in t.lower() and len(t.split()) <= 8),
    Prompt("arithmetic", "What is 2 + 3? Answer with just the number.",
           lambda t: re.search(r"\b5\b", t) is not None and len(t.split()) <= 5),
    Prompt("translation", "Translate 'thank you' into French.", lambda t: "merci" in t.lower()),
    Prompt("three colors", "List three colors, separated by commas.",
           lambda t: sum(c in t.lower() for c in _COLORS) >= 3),
    Prompt("say hello", "Say hello.", lambda t: "hello" in t.lower() and len(t) < 200),
]


def message(role: items_pb2.MessageRole.ValueType, text: str) -> items_pb2.Item:
    return items_pb2.Item(message=items_pb2.Message(role=role, content=content_pb2.Content(text=text)))


async def answer(provider: LlamaCppProvider, model: str, prompt: Prompt, max_tokens: int = 48,
                 ) -> tuple[str, float, float, int]:
    """(text, seconds to the first token, seconds in all, output tokens)."""
    items = [message(items_pb2.MESSAGE_ROLE_SYSTEM, prompt.system)] if prompt.system else []
    items.append(message(items_pb2.MESSAGE_ROLE_USER, prompt.user))
    turn = Turn(model=model, items=items, max_output_tokens=max_tokens, temperature=0.0)
    start = time.perf_counter()
    first = 0.0
    text: list[str] = []
    tokens = 0
    async for delta in provider.stream(turn):
        if isinstance(delta, TextDelta):
            first = first or time.perf_counter() - start
            text.append(delta.text)
        elif isinstance(delta, UsageDelta):
            tokens = delta.output_tokens
    return "".join(text), first, time.perf_counter() - start, tokens


async def run(models: list[str], threads: int) -> None:
    provider = LlamaCppProvider("local", models=dict.fromkeys(models), n_threads=threads)
    try:
        started = time.perf_counter()
        await provider.warm_up()
        print(f"workers ready in {time.perf_counter() - started:.2f}s")
        for model in models:
            score = 0
            print(f"\n== local/{model}")
            for prompt in PROMPTS:
                text, _, _, _ = await answer(provider, model, prompt)
                ok = prompt.check(text)
                score += ok
                shown = text.strip().replace("\n", " ")
                print(f"  [{'x' if ok else ' '}] {prompt.name:32} {shown[:90]!r}")
            story = Prompt("speed", "Write a short story about a robot who learns to paint.", lambda t: True)
            text, first, total, tokens = await answer(provider, model, story, max_tokens=64)
            decode = (tokens - 1) / (total - first) if total > first and tokens > 1 else 0.0
            print(f"  score {score}/{len(PROMPTS)}; {tokens} tokens: first after {first * 1000:.0f} ms, "
                  f"{decode:.1f} tokens/s after it ({threads} threads)")
    finally:
        await provider.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m")
    args = parser.parse_args()
    asyncio.run(run(args.models.split(","), args.threads))


if __name__ == "__main__":
    main()
