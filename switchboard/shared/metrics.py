"""OpenTelemetry metrics: exported over OTLP (when OTEL_* configures an endpoint) and on a Prometheus endpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

# Seconds: from sub-millisecond gateway overhead up to long generations.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    duration: Histogram
    time_to_first_token: Histogram
    tokens: Histogram
    cost: Counter
    upstream_duration: Histogram
    upstream_errors: Counter
    active_streams: UpDownCounter
    rate_limited: Counter

    @classmethod
    def from_meter(cls, meter: Meter) -> Metrics:
        return cls(
            requests=meter.create_counter("switchboard.requests", "{request}", "Requests by route, status, model "
                                          "and provider"),
            duration=meter.create_histogram("switchboard.request.duration", "s", "Request duration"),
            time_to_first_token=meter.create_histogram("gen_ai.server.time_to_first_token", "s",
                                                       "Time to the first output token"),
            tokens=meter.create_histogram("gen_ai.client.token.usage", "{token}", "Input and output tokens"),
            cost=meter.create_counter("switchboard.cost", "USD", "Cost from the configured price table"),
            upstream_duration=meter.create_histogram("switchboard.upstream.duration", "s",
                                                     "Upstream call duration"),
            upstream_errors=meter.create_counter("switchboard.upstream.errors", "{error}", "Failed upstream calls"),
            active_streams=meter.create_up_down_counter("switchboard.active_streams", "{stream}",
                                                        "Streams in flight"),
            rate_limited=meter.create_counter("switchboard.rate_limit.rejections", "{request}",
                                              "Requests rejected by rate limits"),
        )


_provider: MeterProvider | None = None


def setup(service_name: str, *, prometheus: tuple[str, int] | None, otlp: bool) -> Metrics:
    """Installs the meter provider once per process; instruments are no-ops when nothing exports.

    OTLP export follows the standard variables (OTEL_EXPORTER_OTLP_*ENDPOINT, OTEL_METRIC_EXPORT_INTERVAL);
    OTEL_METRICS_EXPORTER=none keeps traces on OTLP and metrics on the Prometheus endpoint only."""
    global _provider
    if _provider is not None:
        return Metrics.from_meter(metrics.get_meter("switchboard"))
    readers: list[MetricReader] = []
    if prometheus is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = prometheus
        start_http_server(port, addr=host)
        readers.append(PrometheusMetricReader())
    if otlp and os.environ.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() != "none":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if readers:
        views = [
            View(instrument_name="switchboard.request.duration",
                 aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS)),
            View(instrument_name="switchboard.upstream.duration",
                 aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS)),
            View(instrument_name="gen_ai.server.time_to_first_token",
                 aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS)),
            View(instrument_name="gen_ai.client.token.usage",
                 aggregation=ExplicitBucketHistogramAggregation(_TOKEN_BUCKETS)),
        ]
        _provider = MeterProvider(metric_readers=readers, resource=Resource.create({"service.name": service_name}),
                                  views=views)
        metrics.set_meter_provider(_provider)
    return Metrics.from_meter(metrics.get_meter("switchboard"))


def shutdown() -> None:
    if _provider is not None:
        _provider.shutdown()
