"""OpenTelemetry set-up for every process. Export is OTLP, configured by the standard OTEL_* variables."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False
# Providers of their own (a part that shares a process but keeps its name in traces), shut down with the global one.
_own: list[TracerProvider] = []


def setup(service_name: str, *, enabled: bool, grpc_server: bool = False, grpc_client: bool = False,
          http_client: bool = False) -> None:
    """Installs the SDK with an OTLP exporter and instruments the libraries; a no-op when disabled."""
    global _configured
    if not enabled or _configured:
        return
    trace.set_tracer_provider(_provider(service_name))
    if grpc_server:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

        GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    if grpc_client:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

        GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    if http_client:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        AioHttpClientInstrumentor().instrument()
    _configured = True


def _provider(service_name: str) -> TracerProvider:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def own_provider(service_name: str) -> TracerProvider:
    """A provider that exports as ``service_name``: the edge's, when it runs inside the service's process, so a
    trace shows the same edge -> service -> upstream spans whichever way `serve` runs them."""
    provider = _provider(service_name)
    _own.append(provider)
    return provider


def shutdown() -> None:
    for provider in (trace.get_tracer_provider(), *_own):
        if isinstance(provider, TracerProvider):
            provider.shutdown()
    _own.clear()

