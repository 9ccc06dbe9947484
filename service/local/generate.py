"""One model loaded with llama-cpp-python, and one generation at a time on it (run in a worker thread).

Chat messages (OpenAI Chat Completions shape) become a prompt through the GGUF's own chat template when the file
carries one, or a ``User:`` / ``Assistant:`` transcript that a base model (gemma-3-270m) completes. A prompt longer
than the context loses its oldest turns first. Generation stops between tokens when cancelled or past its deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_types import CreateCompletionStreamResponse

DEFAULT_MAX_TOKENS = 256
# "Assistant:" again means the model started writing another turn of the transcript by itself.
TRANSCRIPT_STOP = ["\nUser:", "\nSystem:", "\nAssistant:"]
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Done:
    reason: str  # "stop" or "length" (max tokens or the deadline)
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class Job:
    """One generation request, already validated."""

    messages: list[JSON]
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    deadline: float | None = None  # time.monotonic() value
    cancel: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False  # set by the generation when it stopped because of ``cancel``


# Generation thread -> caller: a text piece, then the Done (or the exception that ended it).
Emit = Callable[[str | Done | BaseException], None]


def _text(content: Any) -> str:
    """The text of a message's content: a string or a list of text parts (validated by the worker)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _flatten(message: JSON) -> tuple[str, str]:
    """(role, text) of a message, with tool calls and results written out: the local models know no tools."""
    role = str(message.get("role", "user"))
    text = _text(message.get("content")).strip()
    if role == "developer":
        role = "system"
    if role == "assistant" and message.get("tool_calls"):
        calls = [f"Called {c.get('function', {}).get('name')}({c.get('function', {}).get('arguments', '')})"
                 f" [call {c.get('id')}]" for c in message["tool_calls"]]
        text = "\n".join([text, *calls]).strip()
    elif role == "tool":
        role, text = "user", f"Result of call {message.get('tool_call_id')}: {text}"
    return role, text


def transcript(messages: Sequence[JSON]) -> str:
    """The conversation as a transcript that ends where the assistant should continue (for base models)."""
    preamble: list[str] = []
    lines: list[str] = []
    for message in messages:
        role, text = _flatten(message)
        if role == "system":
            preamble.append(text)
        elif role == "assistant":
            lines.append(f"Assistant: {text}")
        else:
            lines.append(f"User: {text}")
    head = "\n\n".join(p for p in preamble if p)
    body = "\n".join([*lines, "Assistant:"])
    return f"{head}\n\n{body}" if head else body


class Model:
    """A loaded GGUF. Not thread-safe: the worker runs one :meth:`generate` at a time."""

    def __init__(self, path: str, *, n_ctx: int, n_threads: int) -> None:
        from llama_cpp import Llama

        self.path = path
        self.n_ctx = n_ctx
        self.llm: Llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                                logits_all=False, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        self._formatter: Callable[..., Any] | None = None
        self._stop: list[str] = TRANSCRIPT_STOP
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._piece(eos), bos_token=self._piece(bos), add_generation_prompt=True)
            self._stop = [s for s in [self._piece(eos)] if s]

    @property
    def templated(self) -> bool:
        return self._formatter is not None

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "ignore") if token >= 0 else ""

    def close(self) -> None:
        self.llm.close()

    # ------------------------------------------------------------ prompt

    def _render(self, messages: list[JSON]) -> list[int]:
        if self._formatter is None:
            # special=False: text that looks like a control token in user input stays plain text.
            return self.llm.tokenize(transcript(messages).encode("utf-8"), add_bos=True, special=False)
        flat = [{"role": role, "content": text} for role, text in map(_flatten, messages)]
        prompt = self._formatter(messages=flat).prompt
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, messages: list[JSON], max_tokens: int) -> list[int]:
        """The prompt, cut to leave room for the answer: the oldest turns go first (system messages stay), then,
        when one turn alone is too long, its oldest tokens."""
        budget = self.n_ctx - min(max_tokens, self.n_ctx // 2)
        messages = list(messages)
        tokens = self._render(messages)
        while len(tokens) > budget:
            oldest = next((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")), None)
            if oldest is None or sum(m.get("role") not in ("system", "developer") for m in messages) <= 1:
                break
            del messages[oldest]
            tokens = self._render(messages)
        if len(tokens) > budget:
            bos = tokens[:1] if tokens and tokens[0] == self.llm.token_bos() else []
            tokens = bos + tokens[len(tokens) - budget + len(bos):]
        return tokens

    # ------------------------------------------------------------ generation

    def generate(self, job: Job, emit: Emit) -> int:
        """Run one completion, emitting text pieces and then a :class:`Done`, or the error that ended it; a
        cancelled job emits nothing more. Returns the number of tokens generated."""
        generated = 0
        try:
            from llama_cpp import StoppingCriteriaList

            tokens = self.prompt_tokens(job.messages, job.max_tokens)
            n_prompt = len(tokens)
            if job.deadline is not None and time.monotonic() >= job.deadline:
                emit(Done("length", n_prompt, 0))
                return 0
            timed_out = False

            # llama.cpp calls this after sampling each token (and once more at the end), so it is both the token
            # counter and the place to stop promptly between tokens.
            def should_stop(input_ids: Sized, _logits: object) -> bool:
                nonlocal generated, timed_out
                generated = max(generated, len(input_ids) - n_prompt + 1)
                if job.cancel.is_set():
                    job.cancelled = True
                    return True
                if job.deadline is not None and time.monotonic() >= job.deadline:
                    timed_out = True
                    return True
                return False

            chunks = cast(
                "Generator[CreateCompletionStreamResponse, None, None]",
                self.llm.create_completion(
                    tokens, stream=True, max_tokens=job.max_tokens, temperature=job.temperature, top_p=job.top_p,
                    top_k=job.top_k, presence_penalty=job.presence_penalty, frequency_penalty=job.frequency_penalty,
                    # Small models loop easily; a mild penalty keeps them from repeating themselves.
                    repeat_penalty=1.1, stop=self._stop, stopping_criteria=StoppingCriteriaList([should_stop]),
                ),
            )
            reason = "stop"
            started = False
            try:
                for chunk in chunks:
                    if job.cancel.is_set():
                        job.cancelled = True
                        break
                    choice = chunk["choices"][0]
                    text = choice["text"]
                    if not started:
                        # A transcript ends with "Assistant:"; the model answers with a leading space.
                        text = text.lstrip()
                        started = bool(text)
                    if text:
                        emit(text)
                    reason = choice["finish_reason"] or reason
            finally:
                chunks.close()
            if job.cancelled:
                return generated
            # Cut short by the deadline: the answer is incomplete, like one cut by max tokens.
            emit(Done("length" if timed_out else reason, n_prompt, generated))
        except BaseException as exc:
            emit(exc)
        return generated
