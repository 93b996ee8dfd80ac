"""Tracing never turns itself off silently: a bad ``OTEL_PYTHON_RABBITMQ_*`` value under
``opentelemetry-instrument`` costs nothing but an ERROR line, and options given in code while
already instrumented take effect and are said at INFO.

The first test runs a real ``opentelemetry-instrument python app.py`` in a subprocess, with a
bad value in every variable and a second, unrelated instrumentor installed beside ours (a probe
distribution put on ``PYTHONPATH``): every instrumentor loads, our spans appear, each bad
variable is named once, and the service's own ``instrument(baggage_attributes=...)`` call takes
effect.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

from broker_harness import Broker, Recorder, span_summary
from integration_tests.reliability.conftest import Instrument

BAD_VALUES = {
    "OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT": "links",
    "OTEL_PYTHON_RABBITMQ_SETTLE_SPANS": "maybe",
    "OTEL_PYTHON_RABBITMQ_CAPTURE_HEADERS_MAX_LENGTH": "1kB",
    "OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES": "perhaps",
}

PROBE_MODULE = '''
"""An instrumentor of another library, standing for Flask's or requests' in a real service."""
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

INSTRUMENTED = []


class ProbeInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self):
        return []

    def _instrument(self, **kwargs):
        INSTRUMENTED.append(True)

    def _uninstrument(self, **kwargs):
        INSTRUMENTED.clear()
'''

APP = '''
"""A pika service under opentelemetry-instrument: it sets up the SDK, instruments again with an
option of its own, publishes with baggage and pulls the message back."""
import json
import logging
import sys
import time

import pika
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import probe_instrumentor
from otel_aiopika import AioPikaInstrumentor
from otel_kombu import KombuInstrumentor
from otel_pika import PikaInstrumentor

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

instrumented = {
    "otel_pika": PikaInstrumentor().is_instrumented_by_opentelemetry,
    "otel_aiopika": AioPikaInstrumentor().is_instrumented_by_opentelemetry,
    "otel_kombu": KombuInstrumentor().is_instrumented_by_opentelemetry,
    "probe": bool(probe_instrumentor.INSTRUMENTED),
}
PikaInstrumentor().instrument(baggage_attributes="order.id")  # the service's own options

connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
queue = channel.queue_declare("", exclusive=True).method.queue
token = context.attach(baggage.set_baggage("order.id", "42"))
channel.basic_publish("", queue, b"order")
context.detach(token)
deadline = time.monotonic() + 10
while channel.basic_get(queue, auto_ack=True)[0] is None:
    assert time.monotonic() < deadline, "no message"
    time.sleep(0.05)
connection.close()
spans = [
    {
        "name": s.name,
        "parent": s.parent.span_id if s.parent else None,
        "id": s.context.span_id,
        "attributes": dict(s.attributes),
    }
    for s in exporter.get_finished_spans()
]
print(json.dumps({"instrumented": instrumented, "spans": spans}))
'''


def _probe_distribution(path: Path) -> None:
    """A distribution with an ``opentelemetry_instrumentor`` entry point, found on ``path``."""
    (path / "probe_instrumentor.py").write_text(textwrap.dedent(PROBE_MODULE))
    info = path / "probe_instrumentor-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: probe-instrumentor\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[opentelemetry_instrumentor]\nprobe = probe_instrumentor:ProbeInstrumentor\n"
    )
    (info / "RECORD").write_text("")


def test_bad_variables_under_opentelemetry_instrument_cost_only_an_error_line(
    rabbitmq: Broker, tmp_path: Path
) -> None:
    """With a bad value in every OTEL_PYTHON_RABBITMQ_* variable, opentelemetry-instrument
    still loads every instrumentor (ours and another), our spans appear with the defaults,
    each bad variable is named once at ERROR, and the service's own instrument(options) call
    takes effect."""
    instrument_command = Path(sys.executable).parent / "opentelemetry-instrument"
    assert instrument_command.exists(), "opentelemetry-instrumentation is not installed here"
    _probe_distribution(tmp_path)
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    env = {
        **os.environ,
        **BAD_VALUES,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p
        ),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    done = subprocess.run(
        [str(instrument_command), sys.executable, str(tmp_path / "app.py"), rabbitmq.url],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Failed to auto initialize" not in done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["instrumented"] == {
        "otel_pika": True,
        "otel_aiopika": True,
        "otel_kombu": True,
        "probe": True,
    }
    for variable, value in BAD_VALUES.items():
        named = [line for line in done.stderr.splitlines() if variable in line]
        assert len(named) == 1, (variable, done.stderr)
        assert repr(value) in named[0]
        assert "accepted" in named[0]
    assert "its options now apply: baggage_attributes=('order.id',) (was ())" in done.stderr
    spans = {span["name"]: span for span in result["spans"]}
    publish = spans["publish amq.default"]
    receive = next(span for name, span in spans.items() if name.startswith("receive "))
    assert publish["attributes"]["order.id"] == "42"
    assert receive["parent"] == publish["id"]  # the default consumer_context, "parent"
    assert not [name for name in spans if name.startswith("ack ")]  # settle_spans default


@pytest.mark.parametrize("plugin", ["pika", "aiopika", "kombu"])
def test_instrument_again_with_options_applies_them_and_says_what_changed(
    plugin: str,
    request: pytest.FixtureRequest,
    otel: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """instrument(**options) on an instrumentor already instrumented (as under
    opentelemetry-instrument) replaces its options, logs each change at INFO, and a wrong
    keyword there is still a TypeError that leaves the live options alone."""
    instrument: Instrument = request.getfixturevalue(f"instrument_{plugin}")
    instrumentor = instrument()
    with caplog.at_level(logging.INFO):
        instrumentor.instrument(
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
            consumer_context="link",
            capture_headers="x-tenant,x-retry",
        )
    changes = [r.getMessage() for r in caplog.records if "its options now apply" in r.getMessage()]
    assert len(changes) == 1
    assert "consumer_context='link' (was 'parent')" in changes[0]
    assert "capture_headers=('x-tenant', 'x-retry') (was ())" in changes[0]
    assert "Attempting to instrument while already instrumented" not in caplog.text
    with pytest.raises(TypeError, match="tracer_provider must be"):
        instrumentor.instrument(tracer_provider="x")
    assert _live_options(plugin).consumer_context == "link"


def _live_options(plugin: str) -> Any:
    if plugin == "pika":
        from otel_pika._state import SCOPES

        assert SCOPES.global_ is not None
        return SCOPES.global_.options
    if plugin == "aiopika":
        from otel_aiopika._state import SCOPES as AIOPIKA_SCOPES

        assert AIOPIKA_SCOPES.global_ is not None
        return AIOPIKA_SCOPES.global_.options
    from otel_kombu._binding import SCOPES

    assert SCOPES.global_ is not None
    return SCOPES.global_.options


def test_options_applied_again_change_the_spans(
    instrument_pika: Instrument,
    otel: Recorder,
    pika_connect: Any,
    unique: Any,
) -> None:
    """After a second instrument(consumer_context="link", baggage_attributes=...) the next
    messages are traced with those options: the consumer span starts its own trace, linked to
    the publish, and carries the baggage entry."""
    instrumentor = instrument_pika()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        consumer_context="link",
        baggage_attributes="order.id",
    )
    channel = pika_connect().channel()
    queue = unique("q")
    channel.queue_declare(queue, exclusive=True)
    token = otel_context.attach(baggage.set_baggage("order.id", "42"))
    try:
        channel.basic_publish("", queue, b"order")
    finally:
        otel_context.detach(token)
    deadline = time.monotonic() + 10
    while channel.basic_get(queue, auto_ack=True)[0] is None:
        assert time.monotonic() < deadline, "no message"
        time.sleep(0.05)
    spans = otel.spans()
    (receive,) = [s for s in spans if s.name == f"receive {queue}"]
    summary = span_summary(receive, spans)
    assert summary["parent"] is None
    assert summary["links"] == ["publish amq.default"]
    assert summary["attributes"]["order.id"] == "42"
