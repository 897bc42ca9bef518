"""Request tracing with OpenTelemetry: one tracer provider per process, built from the `tracing` config section;
spans started with an explicit parent (a span of this process, or the W3C trace context another process sent in a
plain dict); errors recorded as the request's status code.

Spans are never made "current" (no contextvars): the router's request path is an async generator that one task
resumes and another may close, and a context attached in one and detached in the other fails. Every span names its
parent instead, and crosses a process as a carrier dict (`traceparent`, `tracestate`) inside the objects the router
already sends: PrefillRequest.trace_context, PrefillResult.trace_context.

Tracing off (the default) costs nothing on the request path: `process_tracing` returns None, and the workers and the
router's RequestTrace (services/router/request_trace.py) then start no span and make no carrier; nothing is done per
token in any case.

The worker modules (overfill/serving/*_worker.py) do not import this one: the GPU machine, which runs them, has no
OpenTelemetry. Their servers (services/) hand them a Tracing, or None."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode as SpanStatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from overfill.serving.config import ConfigError, TracingConfig
from overfill.status import StatusCode

Carrier = dict[str, str]  # W3C trace context as text headers: what travels to another process
Parent = Span | Carrier | None  # a span of this process, a carrier from another, or None: a new trace
Attributes = Mapping[str, str | int | float | bool]

# Spans are exported in batches on a thread of the SDK's, at most this long after they end: a trace is complete in
# the collector (or the file) a second after its request, and the request path never waits on an export.
EXPORT_DELAY_MS = 1000
FLUSH_TIMEOUT_MS = 5000  # how long a replica that stops waits for its last spans to leave
STATUS_CODE_ATTRIBUTE = "overfill.status_code"  # the gRPC status name a failed span ended with
OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C trace context only, whatever OTEL_PROPAGATORS says


class Tracing:
    """This process's spans, exported as the `tracing` section says. `component` (router, prefill, decode) tells the
    replicas apart in a trace: the resource attribute `overfill.component`, next to `service.name` and `process.pid`."""

    def __init__(self, config: TracingConfig, component: str):
        exporter = span_exporter(config)
        resource = Resource.create({"service.name": config.service_name, "overfill.component": component,
                                    "process.pid": os.getpid()})
        # ParentBased: the router samples by trace id; a replica follows the sampled flag of the context it is sent.
        self.provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
        self.tracer = self.provider.get_tracer("overfill.serving")

    def start(self, name: str, parent: Parent, attributes: Attributes | None = None,
              kind: SpanKind = SpanKind.INTERNAL) -> Span:
        """A span under `parent`, started now; the caller ends it (`end`)."""
        return self.tracer.start_span(name, context=parent_context(parent), kind=kind, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False)

    @contextmanager
    def span(self, name: str, parent: Parent, attributes: Attributes | None = None,
             code_of: Callable[[BaseException], StatusCode] | None = None) -> Iterator[Span]:
        """A span around a block, ended with the status of the exception that leaves it, if any: `code_of(error)`,
        by default `status_code_of`."""
        span = self.start(name, parent, attributes)
        try:
            yield span
        except BaseException as error:
            self.end(span, (code_of or status_code_of)(error))
            raise
        self.end(span)

    @staticmethod
    def end(span: Span, code: StatusCode | None = None) -> None:
        """End a span; a failure sets its status to ERROR with the status code (its name only: an exception's
        message may quote the request or name internal addresses)."""
        if code is not None:
            span.set_attribute(STATUS_CODE_ATTRIBUTE, code.value)
            span.set_status(Status(SpanStatusCode.ERROR, code.value))
        span.end()

    def flush(self) -> None:
        """Export what has ended so far (a replica that stops calls it; the SDK also flushes at interpreter exit)."""
        self.provider.force_flush(FLUSH_TIMEOUT_MS)

    def close(self) -> None:
        self.provider.shutdown()


def process_tracing(config: TracingConfig, component: str) -> Tracing | None:
    """This process's Tracing for `config`, built once (a replica's server and its worker share it), or None when
    tracing is off."""
    if not config.enabled:
        return None
    return _tracing_of(dataclasses.astuple(config), component)


@functools.cache
def _tracing_of(config_fields: tuple, component: str) -> Tracing:
    return Tracing(TracingConfig(*config_fields), component)


def carrier_of(span: Span) -> Carrier:
    """The W3C trace context naming `span` as the parent, for another process."""
    carrier: Carrier = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def parent_context(parent: Parent) -> Context:
    """The context a span starts in: its parent's, or an empty one (a new trace, whatever another library may have
    made current)."""
    if parent is None:
        return Context()
    if isinstance(parent, Mapping):
        return _PROPAGATOR.extract(dict(parent))
    return trace.set_span_in_context(parent)


def status_code_of(error: BaseException) -> StatusCode:
    """The status an exception stands for: its own `code` (ServiceError, KVTransferError), CANCELLED for a caller
    that left, else INTERNAL."""
    code = getattr(error, "code", None)
    if isinstance(code, StatusCode):
        return code
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return StatusCode.CANCELLED
    return StatusCode.INTERNAL


# ---- exporters -------------------------------------------------------------------------------------------------------


def span_exporter(config: TracingConfig) -> SpanExporter:
    """The exporter `tracing.exporter` names; ConfigError naming the field when it cannot be built."""
    if config.exporter == "otlp":
        return otlp_exporter_class()(endpoint=config.endpoint)
    if config.exporter == "console":
        return ConsoleSpanExporter()
    return JsonLinesSpanExporter(config.file)


def otlp_exporter_class() -> type:
    """OTLP/HTTP's span exporter, or ConfigError naming tracing.exporter when its package is not installed (the
    driver checks this before deploying, and every replica again where it runs)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(f"tracing.exporter = 'otlp' needs the package {OTLP_PACKAGE}, which is not installed "
                          f"here: pip install {OTLP_PACKAGE} (or choose tracing.exporter file or console)") from None
    return OTLPSpanExporter


def check_exporter(config: TracingConfig) -> None:
    """Refuse, at service start, an exporter this environment cannot build (before any replica tries)."""
    if config.enabled and config.exporter == "otlp":
        otlp_exporter_class()


class JsonLinesSpanExporter(SpanExporter):
    """Spans as JSON lines appended to a file, for tests and for people without a collector (`jq` reads it). Every
    replica on the node appends to the same file: it is opened O_APPEND and each export is one write, so lines of
    different processes never interleave."""

    def __init__(self, path: str):
        path = os.path.expanduser(path)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as error:
            raise ConfigError(f"tracing.file = {path!r} cannot be opened for appending: {error.strerror}") from None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_record(span), separators=(",", ":")) + "\n" for span in spans).encode()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        os.close(self._fd)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is written through


def span_record(span: ReadableSpan) -> dict:
    """One span as the file exporter writes it: ids in hex as W3C writes them, times in Unix nanoseconds."""
    context = span.get_span_context()
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "attributes": dict(span.attributes or {}),
        "events": [{"name": event.name, "time_unix_nano": event.timestamp, "attributes": dict(event.attributes or {})}
                   for event in span.events],
        "resource": dict(span.resource.attributes),
    }
