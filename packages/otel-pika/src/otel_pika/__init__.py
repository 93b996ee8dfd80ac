"""OpenTelemetry tracing and metrics for `pika <https://pika.readthedocs.io>`_ (RabbitMQ).

Every publish, every consumed message and every lost message becomes a span with the messaging
semantic-convention attributes; the trace context rides in the message headers, so the spans of a
consumer join the trace of the producer; the four semconv messaging metrics are recorded. It
covers ``BlockingConnection`` and the async adapters (``SelectConnection``,
``AsyncioConnection``, ...), pika 1.1 to the newest 1.x, Python 3.10 to 3.13.

Instrument
----------

.. code-block:: python

    from otel_pika import PikaInstrumentor   # pip install "otel-pika[instruments]"

    PikaInstrumentor().instrument()          # before or after connections are opened

Installing, the entry point (``otel_pika``) and what ``instrument()`` called again does are the
same for every plugin: :doc:`index`. ``instrument()`` patches pika's classes, so channels that
already exist are covered too, and so are consumers registered before it; after
``uninstrument()`` existing channels stop producing telemetry. To instrument a single channel
without touching pika's classes:

.. code-block:: python

    PikaInstrumentor.instrument_channel(channel, settle_spans=True)   # BlockingChannel or Channel
    ...
    PikaInstrumentor.uninstrument_channel(channel)

``instrument()`` and ``instrument_channel()`` take the keywords every plugin takes
(:doc:`configuration`). In a hook's envelope, pika's ``envelope.raw`` is the message's
``pika.spec.BasicProperties`` and, on publish, ``envelope.headers`` the headers actually sent.

Spans
-----

The spans, their attributes, their errors and the metrics are those of every plugin, and the pika
column of :doc:`reference` says which call makes which span: ``basic_publish`` on a
``BlockingChannel`` or a ``Channel`` (one span per call), ``basic_consume`` callbacks on both,
the ``BlockingChannel.consume()`` generator, ``basic_get``, ``basic_ack`` / ``basic_nack`` /
``basic_reject``. ``server.address`` is the host of the connection parameters. What is pika's own:

* the receive span of an async ``Channel.basic_get`` runs from the get to the end of its
  callback, which runs in the span's context (pika is handed your callback untouched);
* a mandatory publish the broker returns (``basic.return``) on the async adapters, or on a
  ``BlockingChannel`` without ``confirm_delivery()``, arrives after the publish call ended: a
  short PRODUCER span ``publish {exchange}``, child of that message's publish span, records it
  as ERROR ``unroutable``. With ``confirm_delivery()``, ``UnroutableError`` gives the publish
  span ``error.type=unroutable`` and ``NackError`` ``broker_nack``;
* an exception raised by a consumer callback marks its process span and reaches
  ``start_consuming()`` (or the I/O loop) as the same object;
* where the instrumentation adds nothing to a message (inside ``suppress_instrumentation()``
  with no span current, or with tracing switched off), pika gets your arguments exactly as
  given: no ``BasicProperties(headers={})`` where you passed none.

Pulled messages
---------------

``basic_get`` leaves the caller's context alone, since nothing marks where handling ends.
``message_context(properties)`` makes a pulled message's context (and baggage) current for a block:

.. code-block:: python

    from otel_pika import message_context

    method, properties, body = channel.basic_get("orders")
    if method is not None:
        with message_context(properties):
            handle(body)              # its spans join the order's trace

Limits
------

* ``consume()``: the receive span of the last message stays open, and its context current, until
  the generator is asked for the next message, ends, is closed or dropped, or
  ``channel.cancel()`` is called. ``for ... in channel.consume(q): ... break`` drops the generator
  at once; if you keep a reference to it after ``break``, call ``channel.cancel()`` (as pika's
  documentation asks anyway) or ``close()`` it. What ``consume()`` returns is then an iterator
  with the generator methods (``send``, ``throw``, ``close``), not a generator object.
* A consumer registered with ``queue=""`` (the channel's last server-named queue), or before
  ``instrument()``, has no queue name on record: on the default exchange the routing key names
  it, otherwise spans are named after the exchange.
* Publisher confirms on the async adapters: the broker's ack/nack goes to your callback; a
  ``basic.nack`` there makes no span (``basic.return`` does, see above).
* A ``basic.return`` span is not counted in the metrics (the publish already was).
* The settle span of a delivery consumed before instrumentation (or one of more than 65,536
  unsettled deliveries on one channel) has no queue name or producer link; an ack of such a
  delivery makes no span, a nack/reject without requeue still makes its ERROR span.

.. _pika-migration:

Migrating from opentelemetry-instrumentation-pika
-------------------------------------------------

Replace ``from opentelemetry.instrumentation.pika import PikaInstrumentor`` with
``from otel_pika import PikaInstrumentor`` and uninstall the contrib package. If both end up
instrumented (``opentelemetry-instrument`` loads every installed instrumentor, in no fixed
order), ``instrument()`` turns the contrib instrumentor off with a warning naming both, and a
later contrib ``instrument()`` patches nothing (another warning), so no message is traced
twice; ``uninstrument()`` does not switch it back on. Channels opened while the contrib
instrumentor alone was active keep its per-channel patches until they close, and
``instrument_channel()`` does not turn it off. Hooks change signature: contrib calls
``hook(span, body, properties)``, this package ``hook(span, envelope)`` with ``envelope.body``
and ``envelope.raw`` (the properties). Dashboards and queries need the renames every contrib
package needs (:doc:`migration`: attributes, the consumer span's link) and these:

.. list-table::
   :header-rows: 1

   * - opentelemetry-instrumentation-pika (0.66b1)
     - otel-pika
   * - span ``{exchange or routing key} send`` (two nested per ``BlockingChannel.basic_publish``)
     - ``publish {exchange}`` (one per call)
   * - span ``{exchange or routing key} receive`` (callbacks and ``consume()``)
     - ``process {queue}`` (callbacks), ``receive {queue}`` (``consume()``, ``basic_get``)
   * - no span for ``basic_get``, ack, nack, reject, or a returned message
     - ``receive {queue}``, ``ack``/``nack``/``reject {queue}``, ``publish {exchange}`` ERROR
   * - ``messaging.destination`` (exchange, or routing key on the default exchange)
     - ``messaging.destination.name`` (``exchange:routing_key[:queue]``) and
       ``messaging.rabbitmq.destination.routing_key``
   * - no metrics
     - the four ``messaging.*`` metrics above
"""

from otel_pika.instrumentor import PikaInstrumentor, message_context
from otel_pika.version import __version__

__all__ = ["PikaInstrumentor", "__version__", "message_context"]
