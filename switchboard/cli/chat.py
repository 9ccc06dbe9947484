"""`switchboard chat`: a terminal chat over the gateway's public API (HTTP by default, `--grpc` for gRPC).

Text streams as it arrives, reasoning is shown dimmed, tool calls as they happen, usage and cost after each turn.
The conversation continues with `previous_response_id` (unless `--stateless`, which resends the whole history).
Commands: `/model NAME`, `/new`, `/exit`, `/help`. With stdin not a terminal, each input line is one turn and
the answers go to stdout (usage to stderr), so `echo hi | switchboard chat ...` prints the answer and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.settings import Config, load, parse_address

HELP = "commands: /model NAME (switch model), /new (new conversation), /exit (quit), /help"


def register(commands: Any) -> None:
    parser = commands.add_parser("chat", help="chat with the gateway in the terminal")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="reach the gateway at this configuration's public listener")
    where.add_argument("--base-url", help="the gateway's URL (HTTP: http://HOST:PORT; --grpc: HOST:PORT)")
    parser.add_argument("--api-key", help="API key (default: $SWITCHBOARD_API_KEY)")
    parser.add_argument("--model", help="model to use (default: the configuration's default_model)")
    parser.add_argument("--grpc", action="store_true", help="use the gRPC API instead of HTTP")
    parser.add_argument("--stateless", action="store_true",
                        help="resend the whole conversation each turn instead of previous_response_id")
    parser.add_argument("--instructions", help="system instructions for every turn")
    parser.set_defaults(run=run)


def _host(address: str, what: str) -> str:
    host, port = parse_address(address, what)
    return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def target(config: Config, *, grpc: bool) -> str:
    """The public listener of a configuration: Envoy when it runs, else the edge (HTTP) or the service (gRPC)."""
    server = config.server
    if grpc:
        return _host(server.envoy_grpc, "server.envoy_grpc") if server.envoy_grpc else _host(server.grpc,
                                                                                               "server.grpc")
    return "http://" + (_host(server.envoy, "server.envoy") if server.envoy else _host(server.http, "server.http"))


@dataclass
class Conversation:
    model: str | None
    stateless: bool
    instructions: str | None = None
    previous_id: str | None = None
    # The whole history, for --stateless (input items, then each answer's output items).
    history: list[dict[str, Any]] = field(default_factory=list)

    def request(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"stream": True, "store": not self.stateless}
        if self.model:
            body["model"] = self.model
        if self.instructions:
            body["instructions"] = self.instructions
        message = {"type": "message", "role": "user", "content": text}
        if self.stateless:
            self.history.append(message)
            body["input"] = list(self.history)
        else:
            body["input"] = [message]
            if self.previous_id:
                body["previous_response_id"] = self.previous_id
        return body

    def finished(self, response: dict[str, Any]) -> None:
        if self.stateless:
            self.history += [item for item in response.get("output") or () if item.get("type") == "message"]
        else:
            self.previous_id = response.get("id")

    def reset(self) -> None:
        self.previous_id = None
        self.history.clear()


class Renderer:
    """Prints stream events (as JSON dicts) as they arrive."""

    def __init__(self, out: Console, info: Console) -> None:
        self.out = out
        self.info = info
        self.at_line_start = True
        self.response: dict[str, Any] | None = None
        self.error: str | None = None

    def _write(self, text: str, style: str | None = None) -> None:
        if text:
            self.out.print(text, end="", style=style, markup=False, highlight=False, soft_wrap=True)
            self.at_line_start = text.endswith("\n")

    def _newline(self) -> None:
        if not self.at_line_start:
            self._write("\n")

    def event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        if kind == "response.output_text.delta":
            self._write(str(event.get("delta", "")))
        elif kind.startswith("response.reasoning") and kind.endswith(".delta"):
            # response.reasoning_text.delta, response.reasoning_summary_text.delta (and older names alike).
            self._write(str(event.get("delta", "")), style="dim")
        elif kind.startswith("response.reasoning") and kind.endswith(".done") and "part" not in kind:
            self._newline()
        elif kind == "response.output_item.added" and (event.get("item") or {}).get("type") == "function_call":
            # A tool call shows as it happens: its name first, then the arguments as they stream.
            self._newline()
            self._write(f"→ tool call {event['item'].get('name')}(", style="cyan")
        elif kind == "response.function_call_arguments.delta":
            self._write(str(event.get("delta", "")), style="cyan")
        elif kind == "response.output_item.done" and (event.get("item") or {}).get("type") == "function_call":
            self._write(f") [{event['item'].get('call_id', '')}]\n", style="cyan")
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.response = event.get("response") or {}
            failure = (self.response.get("error") or {}).get("message")
            if failure:
                self.error = str(failure)
        elif kind == "error":
            self.error = str(event.get("message") or (event.get("error") or {}).get("message") or event)

    def finish(self) -> None:
        self._newline()
        if self.error:
            self.info.print(f"error: {self.error}", style="bold red", markup=False, highlight=False)
        response = self.response or {}
        usage = response.get("usage") or {}
        if usage:
            cost = usage.get("cost")
            price = f", ${cost:.6f}" if isinstance(cost, int | float) else ""
            self.info.print(f"[{response.get('model', '?')}: {usage.get('input_tokens', 0)} in, "
                            f"{usage.get('output_tokens', 0)} out{price}]", style="dim", markup=False,
                            highlight=False)


class HttpTransport:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        import openai

        self._client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key or "none",
                                     max_retries=1, timeout=600)

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import openai

        try:
            with self._client.responses.create(**body) as events:
                for event in events:
                    yield event.to_dict()
        except openai.APIStatusError as exc:
            yield {"type": "error", "message": _api_message(exc)}
        except openai.APIConnectionError as exc:
            yield {"type": "error", "message": f"cannot reach the gateway: {exc}"}

    def close(self) -> None:
        self._client.close()


def _api_message(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return f"HTTP {exc.status_code}: {error.get('message') if isinstance(error, dict) else exc.message}"


class GrpcTransport:
    def __init__(self, address: str, api_key: str | None) -> None:
        import grpc

        from switchboard.responses.v1 import responses_service_pb2_grpc

        self._channel = grpc.insecure_channel(address)
        self._stub = responses_service_pb2_grpc.ResponsesStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import grpc

        from switchboard.edge import codec
        from switchboard.responses.v1 import responses_service_pb2 as pb

        body = {k: v for k, v in body.items() if k != "stream"}
        try:
            for event in self._stub.StreamResponse(codec.decode(body, pb.CreateResponseRequest),
                                                   metadata=self._metadata, timeout=600):
                yield codec.encode(event)
        except grpc.RpcError as exc:
            yield {"type": "error", "message": f"{exc.code().name}: {exc.details()}"}

    def close(self) -> None:
        self._channel.close()


def _lines(console: Console, interactive: bool) -> Iterator[str]:
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\n")
        return
    while True:
        try:
            yield console.input("[bold green]you>[/] ")
        except EOFError:
            console.print()
            return


def run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    out = Console(highlight=False)
    info = out if interactive else Console(stderr=True, highlight=False)
    model = args.model
    if args.config is not None:
        try:
            config = load(args.config)
        except ConfigError as exc:
            info.print(f"switchboard chat: configuration error: {exc}", markup=False)
            return 2
        address = target(config, grpc=args.grpc)
        model = model or config.default_model
    else:
        address = args.base_url
    api_key = args.api_key or os.environ.get("SWITCHBOARD_API_KEY")
    transport = GrpcTransport(address, api_key) if args.grpc else HttpTransport(address, api_key)
    conversation = Conversation(model=model, stateless=args.stateless, instructions=args.instructions)
    if interactive:
        out.print(f"switchboard chat: {address} ({'gRPC' if args.grpc else 'HTTP'}), model "
                  f"{model or '(gateway default)'}. {HELP}", style="dim", markup=False)
    failures = 0
    try:
        for line in _lines(out, interactive):
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command, _, rest = text.partition(" ")
                if command in ("/exit", "/quit"):
                    break
                if command == "/new":
                    conversation.reset()
                    info.print("(new conversation)", style="dim", markup=False)
                elif command == "/model" and rest.strip():
                    conversation.model = rest.strip()
                    info.print(f"(model: {conversation.model})", style="dim", markup=False)
                else:
                    info.print(HELP, style="dim", markup=False)
                continue
            renderer = Renderer(out, info)
            try:
                for event in transport.stream(conversation.request(text)):
                    renderer.event(event)
            except KeyboardInterrupt:
                renderer.error = "interrupted"
            renderer.finish()
            if renderer.error or renderer.response is None:
                failures += 1
                if conversation.stateless and conversation.history:
                    conversation.history.pop()  # the turn that failed is not part of the conversation
            else:
                conversation.finished(renderer.response)
    except KeyboardInterrupt:
        out.print()
    finally:
        transport.close()
    return 1 if failures and not interactive else 0
