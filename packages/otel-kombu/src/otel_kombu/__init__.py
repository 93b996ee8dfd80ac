"""OpenTelemetry tracing and metrics for kombu, on RabbitMQ and on kombu's other transports.

Instrument
==========

.. code-block:: python

    from otel_kombu import KombuInstrumentor   # pip install "otel-kombu[instruments]"

    KombuInstrumentor().instrument()

Installing, the entry point (``otel_kombu``) and what ``instrument()`` called again does are the
same for every plugin: :doc:`index`.

``instrument()`` may run after consumers started consuming (a startup hook): kombu handed such a
consumer's callback to the channel before it was wrapped, so the connection's next
``drain_events`` (``ConsumerMixin``, ``kombu.common.eventloop``, your own loop) rewires it and its
next message is traced; a consumer driven by an event loop that never calls ``drain_events``
(Celery's worker) is rewired at the first message it gets and traced from the one after.

Supported: kombu 5.3 to 5.7 (tested with 5.3.7, 5.5.4 and the newest release), Python 3.10 to
3.13.

Options
=======

``instrument()`` and ``instrument_connection()`` take the keywords every plugin takes
(:doc:`configuration`), plus one of kombu's own:

``skip_celery_messages`` (default ``("control", "events")``; ``OTEL_PYTHON_KOMBU_SKIP_CELERY_MESSAGES``)
    The kinds of Celery message left untraced: ``tasks``, ``control``, ``events``, ``True`` for
    all, ``False`` for none. By default Celery's heartbeats, gossip and remote control are not
    traced and its task messages are: see `Celery`_.

In a hook's envelope, kombu's ``envelope.raw`` is, on publish, the message properties dict kombu
sends and, on consume, the kombu ``Message``.

One connection only
-------------------

``KombuInstrumentor.instrument_connection(connection, **options)`` records the producers,
consumers and messages of one ``kombu.Connection`` with its own options, with or without
``instrument()``; ``KombuInstrumentor.uninstrument_connection(connection)`` stops it. kombu has no
per-connection hook for producers and consumers, so this installs the same class-level wrappers
as ``instrument()``; they act only for instrumented connections and pass everything else straight
through, and they are removed when neither ``instrument()`` nor any connection needs them.
A connection made by ``clone()`` (connection pools, Celery) is a different connection.

Spans
=====

The spans, their attributes, their errors and the metrics are those of every plugin, and the kombu
column of :doc:`reference` says which call makes which span. What is kombu's own:

* One PRODUCER span per ``publish`` call, whatever the exchange, ``declare=``, serializer or
  compression; with ``retry=True`` the attempts ``Connection.ensure`` makes after a lost
  connection are one span, ending with the outcome the caller sees.
  ``messaging.message.body.size`` is the size kombu sends (serialised, compressed). The caller's
  ``headers`` dict is never changed: the context goes into a copy (with compression, kombu itself
  would write its ``compression`` header into the caller's dict; it gets a copy too).
* A process span covers decoding and every callback of one message (or ``on_message``). A
  callback's exception marks the span ERROR and reaches ``drain_events`` as the same object.
* kombu has no nack: ``Message.reject`` and ``Message.requeue`` make the ``reject`` spans.
* A pull leaves the caller's context as it was. To handle the message in its trace::

      message = queue.get(timeout=5)
      with otel_kombu.message_context(message):
          handle(message.payload)
          message.ack()

Transports
==========

``messaging.system`` is ``rabbitmq`` for the AMQP transports (``amqp://``, ``pyamqp://``,
``librabbitmq://``) and the transport's own name otherwise (``redis``, ``memory``, ``sqs``, ...).
The ``messaging.rabbitmq.*`` attributes are left out on other transports; ``server.address`` is
left out for in-process transports (``memory``, ``filesystem``).

Limits
======

RabbitMQ (pyamqp)
    A mandatory publish the broker returns as unroutable is never silent. With publisher confirms
    (``transport_options={"confirm_publish": True}``) the broker returns it before confirming,
    while ``publish`` still runs, and the publish span itself ends ERROR
    (``error.type=unroutable``). Without confirms the return arrives later, at some
    ``drain_events`` on that connection (kombu then calls your ``on_return``), after the publish
    span has ended OK: a short PRODUCER span named like the publish, child of it, records the
    return as ERROR ``unroutable``; on a channel opened before ``instrument()``, from the
    connection's next ``drain_events`` on. A confirm nack raises ``MessageNacked`` from
    ``publish`` and marks the span ERROR with ``error.type=broker_nack``.
librabbitmq
    Untested: the C driver does not build on the supported Pythons. Publishing and settling go
    through kombu's own code and are traced; consumption depends on the driver's message type.
Redis, memory and other virtual transports
    No broker confirms or returns: a message published to an exchange with no matching binding
    is dropped by kombu without an error, so its span cannot say so.
    ``messaging.rabbitmq.message.delivery_tag`` does not apply (their tags are UUIDs).
``Producer.batch()`` (kombu 5.7, Redis)
    A publish span covers handing the message to the batch; the batch sends it on flush.

.. _kombu-celery:

Celery
======

Celery sends and receives its messages through kombu, so Celery's tasks are traced with no
Celery-specific setup, next to ``opentelemetry-instrumentation-celery``'s spans and with the task
id as ``messaging.message.id`` on both. The :doc:`celery` guide says where to call
``instrument()`` for each worker pool (prefork: in the parent, before it forks), what each pool
does to the spans' timing, retries, failures, rejects, link mode, and the
``skip_celery_messages`` option, which by default leaves Celery's heartbeats, gossip and remote
control untraced.
"""

from otel_kombu._consume import message_context
from otel_kombu.instrumentor import KombuInstrumentor
from otel_kombu.version import __version__

__all__ = ["KombuInstrumentor", "__version__", "message_context"]
