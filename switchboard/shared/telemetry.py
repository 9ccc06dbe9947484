"""OpenTelemetry set-up for every process. Export is OTLP, configured by the standard OTEL_* variables."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def setup(service_name: str, *, enabled: bool, grpc_server: bool = False, grpc_client: bool = False,
          http_client: bool = False) -> None:
    """Installs the SDK with an OTLP exporter and instruments the libraries; a no-op when disabled."""
    global _configured
    if not enabled or _configured:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
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


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()

