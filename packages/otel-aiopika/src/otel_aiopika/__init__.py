"""OpenTelemetry tracing and metrics for `aio-pika <https://aio-pika.readthedocs.io>`_ (RabbitMQ).

Every publish, every consumed message and every lost message becomes a span with the messaging
semantic-convention attributes; the trace context rides in the message headers, so the spans of a
consumer join the trace of the producer, in every consumption style (callbacks, the queue
iterator, ``Queue.get``); the four semconv messaging metrics are recorded. It covers plain and
robust connections, aio-pika 8.x, 9.x and 10.x, Python 3.10 to 3.13.

Instrument
----------

.. code-block:: python

    from otel_aiopika import AioPikaInstrumentor   # pip install "otel-aiopika[instruments]"

    AioPikaInstrumentor().instrument()   # before or after consumers are registered

Installing, the entry point (``otel_aiopika``) and what ``instrument()`` called again does are
the same for every plugin: :doc:`index`. ``instrument()`` patches aio-pika's classes, so
exchanges, queues, iterators and messages that already exist are covered, and so are
``Queue.consume`` callbacks registered before it (from their next message on); after
``uninstrument()`` consumers stop producing telemetry. To instrument one channel (plain or
robust) with options of its own:

.. code-block:: python

    AioPikaInstrumentor.instrument_channel(channel, settle_spans=True)
    ...
    AioPikaInstrumentor.uninstrument_channel(channel)

Exchanges, queues and messages of that channel then use these options, whether or not
``instrument()`` was called; other channels are left to ``instrument()`` (or alone). Both take the
keywords every plugin takes (:doc:`configuration`). In a hook's envelope, aio-pika's
``envelope.raw`` is the caller's ``aio_pika.Message`` on publish and the ``IncomingMessage`` on
consume.

Spans
-----

The spans, their attributes, their errors and the metrics are those of every plugin, and the
aio-pika column of :doc:`reference` says which call makes which span: ``Exchange.publish``
(``channel.default_exchange`` too; one span per call), ``Queue.consume`` callbacks, each message
of the queue iterator (``async for message in queue.iterator()``), ``Queue.get``,
``IncomingMessage.ack`` / ``nack`` / ``reject`` and those ``message.process()`` makes.
``server.address`` is the host of the connection URL. What is aio-pika's own:

* with ``settle_spans=False``, aio-pika's ``reject()`` and ``message.process()`` do not requeue
  unless told to: such a reject always makes its ERROR span;
* with publisher confirms (aio-pika's default), a publish the broker nacks (a full queue with
  ``x-overflow=reject-publish``, say) raises ``aiormq.exceptions.DeliveryError``:
  ``error.type=broker_nack``; a ``mandatory`` publish (aio-pika's default) the broker cannot
  route is ``error.type=unroutable``, whether it raises ``PublishError``
  (``on_return_raises=True``) or comes back as ``publish()``'s result (the default);
* inside ``async with message.process():`` an exception rejects the message (or requeues it with
  ``requeue=True``): the reject span (always made without requeue, with ``settle_spans``
  otherwise) is ERROR and records that exception; its ``error.type`` is ``rejected`` when the
  message is dropped, else the exception's class name;
* a queue a robust channel names for you (``declare_queue()`` without a name: ``amq_<hex>``) is
  named ``amq.gen``, as one the broker names.

Consumption styles
------------------

.. code-block:: python

    async def on_message(message):           # a process span around every call
        async with message.process():
            await handle(message)            # its spans join the order's trace

    await queue.consume(on_message)

    async with queue.iterator() as messages:  # a receive span per message
        async for message in messages:
            async with message.process():
                await handle(message)        # runs in that message's context
    # nothing of the last message is current here

aio-pika runs every delivered message in a task of its own, so with ``prefetch_count > 1``
concurrent handlers each stay in their own message's trace. The queue iterator's body runs in the
task that iterates: the message's context is made current there when ``__anext__`` returns it and
the previous context is restored when the next message is asked for, when the loop ends (by
``break`` out of ``async with``, an exception, the iterator's timeout or ``close()``).

``Queue.get`` leaves the caller's context alone, since nothing marks where handling ends.
``message_context(message)`` makes a got message's context (and baggage) current for a block:

.. code-block:: python

    from otel_aiopika import message_context

    message = await queue.get(fail=False)
    if message is not None:
        with message_context(message):
            await handle(message)            # children of its receive span

Robust connections
------------------

After the broker drops a robust connection, aio-pika re-registers the consumers it recorded with
your own callbacks; they are traced again, once (a traced callback is marked and never wrapped
twice). Queue iterators go on making one receive span per message across the reconnect.

Limits
------

* A ``Queue.consume`` callback registered before ``instrument()`` (or ``instrument_channel()``)
  is traced from its channel's next delivery on, but its queue's name is not on record: on the
  default exchange the routing key names the span, otherwise the exchange does. Registered again
  (a robust reconnect does that), it is named after its queue as usual.
* The queue iterator without ``async with``: ``async for message in queue: ... break`` leaves
  the last receive span open, and its context current in that task, until the iterator is
  closed (``await iterator.close()``) or asked for the next message. Leave the loop inside
  ``async with queue.iterator()``, as aio-pika's documentation shows. An iterator closed from
  another task ends the span there; the iterating task restores its own context on its next call
  into the iterator.
* ``uninstrument()`` while a queue iterator's loop body runs ends its open receive span and
  restores the iterating task's context. Called from another task on Python < 3.12 (which gives
  no access to a suspended task's context), that task keeps the message's context until it ends.
* Without publisher confirms (``channel(publisher_confirms=False)``) nothing tells the client
  that a mandatory message was returned (aiormq drops the return and logs "Unhandled message"),
  so such a publish span ends OK, and a broker nack cannot exist.
* A message published without a ``message_id`` gets one from aiormq after the publish span
  started: consumer spans show it, the publish span does not.
* The settle record of a manual-ack delivery is kept on its aiormq channel (aio-pika >= 9 gives
  ``IncomingMessage`` no room for it) until the settle, the channel's close, or 65,536 newer
  unsettled deliveries on that channel. A settle without a record (those, or a message
  consumed before instrumentation) has no producer link; an ack of one makes no span, a
  nack/reject without requeue still makes its ERROR span.
* ``message_context()`` finds the receive span of a manual-ack get until it is settled and of
  the last 256 ``no_ack=True`` gets per channel; for older ones it continues the producer's
  trace from the headers.
* The per-channel mode patches aio-pika's classes too (``Queue`` and ``IncomingMessage`` take
  no per-object attributes); for channels that are not instrumented the patched methods only
  look up a cached "not instrumented" and call the original.
* aio-pika 8.x runs a plain-function callback as it is (a coroutine it returns is never
  awaited); its process span covers the function call.

.. _aiopika-migration:

Migrating from opentelemetry-instrumentation-aio-pika
-----------------------------------------------------

Replace ``from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor`` with
``from otel_aiopika import AioPikaInstrumentor`` and uninstall the contrib package. If both end
up instrumented (``opentelemetry-instrument`` loads every installed instrumentor, in no fixed
order), ``instrument()`` turns the contrib instrumentor off with a warning naming both, and a
later contrib ``instrument()`` patches nothing (another warning), so no message is traced
twice; ``uninstrument()`` does not switch it back on, and ``instrument_channel()`` does not turn
it off. Dashboards and queries need the renames every contrib package needs
(:doc:`migration`: attributes, the consumer span's link) and these:

.. list-table::
   :header-rows: 1

   * - opentelemetry-instrumentation-aio-pika (0.66b1)
     - otel-aiopika
   * - span ``{exchange},{routing_key} send``
     - ``publish {exchange}``
   * - span ``{exchange or routing key} receive``, kind CONSUMER (``Queue.consume`` callbacks)
     - ``process {queue}``
   * - queue iterator: no span, the loop body has no trace context
     - ``receive {queue}`` per message, current while the body runs
   * - no span for ``Queue.get``, ack, nack, reject, a broker nack or a returned message
     - ``receive {queue}``, ``ack``/``nack``/``reject {queue}``, publish span ERROR
       (``broker_nack``, ``unroutable``)
   * - ``messaging.destination`` (``{exchange},{routing_key}`` on publish, the exchange or
       routing key on consume)
     - ``messaging.destination.name`` (``exchange:routing_key[:queue]``) and
       ``messaging.rabbitmq.destination.routing_key``
   * - the context is written into the caller's ``Message.headers``
     - sent in a copy; the caller's message and headers dict are never touched
   * - a ``bytes`` ``traceparent`` (other producers) raises ``TypeError`` in the consumer
     - decoded; no header content breaks a consumer
   * - no hooks, no metrics, aio-pika < 10
     - ``publish_hook``/``consume_hook``, the four ``messaging.*`` metrics, aio-pika 8 to 10
"""

from otel_aiopika.instrumentor import AioPikaInstrumentor, message_context
from otel_aiopika.version import __version__

__all__ = ["AioPikaInstrumentor", "__version__", "message_context"]
